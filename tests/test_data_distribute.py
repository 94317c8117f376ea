"""Who reads what: replica shards, batches per epoch, DataLoader worker streams."""

from __future__ import annotations

import pytest

from splitnet.data.distribute import (
    batches_per_epoch,
    epoch_order,
    eval_batches,
    replica_shards,
    role_batches,
    role_of,
    row_parts,
)
from splitnet.data.errors import DataError

SHARDS = [f"train-{i:06d}.tar" for i in range(11)]


@pytest.mark.parametrize("replicas", [1, 2, 3, 11])
def test_replicas_get_disjoint_shards_that_cover_the_set(replicas: int) -> None:
    order = epoch_order(SHARDS, seed=1, epoch=4, shuffle=True)
    parts = [replica_shards(order, r, replicas) for r in range(replicas)]
    assert sorted(s for part in parts for s in part) == SHARDS
    assert sum(len(p) for p in parts) == len(SHARDS)


def test_shard_order_depends_on_seed_and_epoch_only() -> None:
    a = epoch_order(SHARDS, seed=1, epoch=0, shuffle=True)
    assert a == epoch_order(SHARDS, seed=1, epoch=0, shuffle=True)
    assert a != epoch_order(SHARDS, seed=1, epoch=1, shuffle=True)
    assert a != epoch_order(SHARDS, seed=2, epoch=0, shuffle=True)
    assert epoch_order(SHARDS, seed=1, epoch=0, shuffle=False) == SHARDS


def test_a_replica_beyond_the_shard_count_evaluates_nothing() -> None:
    with pytest.raises(DataError, match="replica 4 is not in 0..3"):
        replica_shards(SHARDS, 4, 4)
    assert replica_shards(SHARDS[:3], 3, 4) == []  # evaluation: nothing to score


def test_eval_batches_cover_every_sample() -> None:
    assert [eval_batches(n, 10) for n in (0, 1, 10, 11, 120)] == [0, 1, 1, 2, 12]


def test_batches_per_epoch_drops_the_remainder() -> None:
    assert batches_per_epoch(4500, 64, 2) == 35
    assert batches_per_epoch(128, 64, 2) == 1
    with pytest.raises(DataError, match="cannot fill one batch of 64 on each of 3"):
        batches_per_epoch(128, 64, 3)


@pytest.mark.parametrize(("n", "workers", "start"), [(10, 3, 0), (10, 3, 4), (7, 4, 7), (5, 1, 2)])
def test_worker_streams_cover_the_rest_of_the_epoch_in_order(n, workers, start) -> None:
    # DataLoader worker w serves batches start+w, start+w+W, ...; check every one is
    # produced by the stream that worker serves, exactly once.
    served = []
    for w in range(workers):
        role = role_of(w, workers, start)
        skipped, todo = role_batches(role, workers, n, start)
        mine = list(range(role, n, workers))[skipped : skipped + todo]
        assert mine == list(range(start + w, n, workers))
        served += mine
    assert sorted(served) == list(range(start, n))


@pytest.mark.parametrize(("rows", "parts", "want"), [(32, 3, (11, 11, 10)), (32, 4, (8, 8, 8, 8)), (19, 1, (19,)),
                                                     (2, 4, (1, 1, 0, 0))])
def test_row_parts_are_as_equal_as_they_can_be_and_cover_the_batch(rows, parts, want) -> None:
    assert row_parts(rows, parts) == want


def test_row_parts_refuse_no_parts() -> None:
    with pytest.raises(DataError, match="cannot be split into 0 parts"):
        row_parts(8, 0)
