"""The global batch: kept across restarts on other replica counts, accumulation derived."""

from __future__ import annotations

import pytest

from splitnet.train.global_batch import GlobalBatchError, global_batch, recorded_global_batch


@pytest.mark.parametrize(("train", "batch", "replicas", "recorded", "expected"), [
    ({}, 16, 2, None, (32, 1)),                                  # first start: R x B
    ({"accumulate": 3}, 16, 2, None, (96, 3)),                   # first start: R x K x B
    ({"global_batch": 64}, 16, 2, None, (64, 2)),                # set by the user: K derived
    ({}, 16, 1, 32, (32, 2)),                                    # a node lost: R 2 -> 1, K 1 -> 2
    ({}, 16, 4, 64, (64, 1)),                                    # nodes back: R 1 -> 4
    ({"accumulate": 2}, 16, 1, 32, (32, 2)),                     # an explicit K that agrees
    ({"global_batch": 48}, 16, 1, 32, (48, 3)),                  # the user's value wins
])
def test_global_batch_is_kept_and_accumulation_derived(train, batch, replicas, recorded, expected):
    assert global_batch({"accumulate": None, "global_batch": None, **train}, batch, replicas, recorded) == expected


@pytest.mark.parametrize(("train", "batch", "replicas", "recorded", "message"), [
    ({}, 16, 3, 32, r"the global batch 32 recorded in ckpt is not a multiple of mesh.replicas x batch_size = "
                    r"3 x 16 = 48; .*train.global_batch to a multiple of 48"),
    ({"global_batch": 40}, 16, 1, None, r"train.global_batch=40 is not a multiple of .* 1 x 16 = 16"),
    ({"accumulate": 1}, 16, 1, 32, r"train.accumulate=1 but the global batch 32 .* needs 2 micro-steps; "
                                   r"set train.accumulate=null"),
    ({"accumulate": 0}, 16, 1, None, r"train.accumulate=0 must be an integer >= 1, or null"),
    ({"global_batch": "big"}, 16, 1, None, r"train.global_batch='big' must be an integer >= 1"),
])
def test_a_global_batch_the_mesh_cannot_hold_is_one_line(train, batch, replicas, recorded, message):
    with pytest.raises(GlobalBatchError, match=message) as caught:
        global_batch(train, batch, replicas, recorded, "ckpt")
    assert "\n" not in str(caught.value)


def test_recorded_global_batch_of_old_and_new_checkpoints():
    assert recorded_global_batch({"global_batch": 64, "config": {}}) == 64
    # written before the record: those runs could not accumulate
    assert recorded_global_batch({"config": {"batch_size": 16, "mesh": {"replicas": 3}}}) == 48
