"""Split equals reference: every strategy, run as CPU processes by ``run_verify``.

Training mode with dropout on, 2 SGD-momentum steps at batch 8 (per replica). Each case
checks values (logits, loss, gradients, parameters after the steps), the meter against
the plan at every exchange point (and nowhere else), and each rank's parameter bytes.
"""

from __future__ import annotations

import pytest

from splitnet.launchers.simulate import WorkerFailed
from splitnet.model.spec import load_spec
from splitnet.verify import run_verify
from tests.splitting import alexnet_small_12, assert_equivalent, model_dict, plan_of, random_spec, verify_cfg

# (config, exchange points the case must have, with their modes: the case is what its id says)
GATHER4 = {**dict.fromkeys(("norm1", "norm2"), "halo"),
           **dict.fromkeys(("conv2", "conv3", "conv4", "conv5"), "gather")}
# auto: conv5 narrows its towers (48 -> 32 channels), so summing partial outputs moves fewer
# bytes; conv4 (48 -> 48) ties on bytes, and the sum keeps less for backward
AUTO4 = {**GATHER4, "conv4": "reduce", "conv5": "reduce"}


def conv_dropout() -> dict:
    """alexnet_small with a dropout after relu3: inside the layers a chunked step runs in chunks."""
    model = model_dict("alexnet_small")
    model = {**model, "name": "alexnet_small_drop3", "layers": list(model["layers"])}
    at = next(i for i, layer in enumerate(model["layers"]) if layer["name"] == "relu3")
    model["layers"].insert(at + 1, {"name": "drop3", "op": "dropout", "p": 0.5})
    return model


def paper_dropout() -> dict:
    """alexnet_small with the paper's dropout: kept units unscaled in training (scale: test)."""
    model = model_dict("alexnet_small")
    return {**model, "name": "alexnet_small_paper_dropout",
            "layers": [{**layer, "scale": "test"} if layer["op"] == "dropout" else layer for layer in model["layers"]]}


CASES = [
    pytest.param(verify_cfg(devices=1), {}, id="columns-D1"),
    pytest.param(verify_cfg(devices=2, exchange="gather"),
                 {"conv3": "gather", "fc6": "gather", "fc7": "gather", "fc8": "gather", "loss": "logits"},
                 id="columns-D2-gather"),
    pytest.param(verify_cfg(devices=2, exchange="reduce"),
                 {"conv3": "reduce", "fc6": "reduce", "fc7": "reduce", "fc8": "reduce"}, id="columns-D2-reduce"),
    # D=4: each tower spans 2 devices: LRN takes its halo from the neighbour, conv2 gathers its
    # tower's input, conv4 and conv5 sum partial outputs within the tower
    pytest.param(verify_cfg(alexnet_small_12(), devices=4), AUTO4, id="columns-D4-towers-over-2"),
    pytest.param(verify_cfg(partition="pipeline", devices=2, microbatches=4), {}, id="pipeline-D2-M4"),
    pytest.param(verify_cfg(partition="pipeline", devices=3, microbatches=1), {}, id="pipeline-D3-M1"),
    pytest.param(verify_cfg(partition="pipeline", devices=3, microbatches=4), {}, id="pipeline-D3-M4"),
    pytest.param(verify_cfg(partition="pipeline", devices=2, microbatches=4, schedule="1f1b"), {},
                 id="pipeline-1f1b-D2-M4"),
    # stages of 4, 18 and 1 layers
    pytest.param(verify_cfg(partition="pipeline", devices=3, microbatches=4, schedule="1f1b",
                            boundaries=["conv2", "fc8"]), {}, id="pipeline-1f1b-D3-M4-4-18-1-layers"),
    pytest.param(verify_cfg(partition="hybrid", devices=2, exchange="gather"),
                 {"fc6": "batch", "fc7": "gather", "loss": "logits", "conv_grads": "grads"}, id="hybrid-D2"),
    pytest.param(verify_cfg(devices=2, replicas=2, exchange="reduce"),
                 {"conv3": "reduce", "fc8": "reduce", "replicas": "grads"}, id="replicas2-x-D2-reduce"),
    # chunks: the spatial layers in 2 (3) chunks whose exchanges overlap compute; a dropout
    # among them draws each chunk's rows of the batch's mask (5 rows: chunks of 2 and 3)
    pytest.param(verify_cfg(conv_dropout(), devices=2, replicas=2, batch=5, exchange="auto", chunks=2),
                 {"conv3": "gather", "fc6": "reduce", "fc8": "reduce", "replicas": "grads"},
                 id="replicas2-x-D2-auto-chunks2-conv-dropout"),
    # Uneven shards: widths the device count does not divide. D=3: device 1 holds the end of
    # tower 0 and the start of tower 1, so the group convs gather over all three.
    pytest.param(verify_cfg(devices=3, exchange="reduce"),
                 {"norm1": "halo", "conv2": "gather", "conv4": "gather", "fc6": "reduce", "fc8": "reduce"},
                 id="uneven-columns-D3-reduce"),
    # D=4: the towers split evenly except fc8's 10 outputs (2, 3 | 2, 3), gathered for the loss
    pytest.param(verify_cfg(devices=4, exchange="gather"), {**GATHER4, "fc8": "gather", "loss": "logits"},
                 id="uneven-columns-D4-gather"),
    pytest.param(verify_cfg(devices=5, exchange="auto"), {"norm1": "halo", "conv3": "gather"},
                 id="uneven-columns-D5-auto"),
    # 7 samples in 3 chunks (2, 2, 3 rows), the halo and the gathers of each on its own lane
    pytest.param(verify_cfg(devices=3, batch=7, exchange="auto", chunks=3), {"norm1": "halo", "conv2": "gather"},
                 id="uneven-columns-D3-chunks3"),
    # 7 samples over 3 devices: 2, 2, 3 rows each for the replicated convs
    pytest.param(verify_cfg(partition="hybrid", devices=3, batch=7, exchange="gather"),
                 {"fc6": "batch", "fc7": "gather", "loss": "logits", "conv_grads": "grads"}, id="uneven-hybrid-D3"),
    pytest.param(verify_cfg(paper_dropout(), devices=2, exchange="reduce"),
                 {"conv3": "reduce", "fc6": "reduce", "fc7": "reduce", "fc8": "reduce"}, id="dropout-scale-test-D2"),
    # cuda-convnet's 18% network over 3 devices (32 maps: 11, 11, 10): its rnorm and pools read
    # each map alone, so only the connecting convs, fc10 and the loss talk
    pytest.param(verify_cfg("cuda_convnet_18pct", devices=3, exchange="gather"),
                 {"conv2": "gather", "conv3": "gather", "fc10": "gather", "loss": "logits"},
                 id="cuda-convnet-18pct-uneven-D3"),
]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("cfg", "must_talk"), CASES)
def test_split_equals_reference(cfg, must_talk):
    report = run_verify(cfg)
    plan = assert_equivalent(report, cfg)
    exchanges = plan.exchanges()
    # each rank joins each collective once per direction that moves bytes (per chunk, where
    # the layer runs in chunks)
    world = plan.devices * plan.replicas
    for row in report["exchanges"]:
        ex = exchanges[row["layer"]]
        if ex.mode in ("gather", "reduce", "logits"):
            per_chunk = sum(bool(b) for r in range(world) for b in ex.received(r % plan.devices))
            chunks = plan.chunks if row["layer"] in plan.in_chunks() else 1
            assert row["calls"] == chunks * per_chunk, (row, chunks, per_chunk)
    assert {name: exchanges[name].mode for name in must_talk if name in exchanges} == must_talk
    if plan.strategy == "pipeline":  # stage s+1's first layer receives from stage s, nothing else talks
        assert [ex.mode for ex in exchanges.values()] == ["send"] * (plan.devices - 1)
        assert plan.microbatches == cfg["partition"]["microbatches"]
        assert plan.schedule == cfg["partition"]["schedule"]
    if plan.devices == 1:
        assert exchanges == {}


# Under NCCL's rules (comm.nccl_rules=true: tags ignored, one work per batch of transfers,
# point-to-point only after a collective in its group, no timeout polling): halos, chunks on
# lanes, replicas, hybrid and a pipeline
UNDER_NCCL_RULES = ("columns-D4-towers-over-2", "uneven-columns-D3-chunks3", "replicas2-x-D2-auto-chunks2-conv-dropout",
                    "hybrid-D2", "pipeline-D3-M4")


def _nccl_rules(cfg: dict) -> dict:
    return {**cfg, "comm": {**cfg["comm"], "nccl_rules": True}}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("cfg", "must_talk"), [pytest.param(_nccl_rules(case.values[0]), case.values[1], id=case.id)
                                                for case in CASES if case.id in UNDER_NCCL_RULES])
@pytest.mark.slow
def test_split_equals_reference_under_nccls_rules(cfg, must_talk):
    test_split_equals_reference(cfg, must_talk)


@pytest.mark.slow
def test_1f1b_is_refused_under_nccls_rules_as_on_nccl():
    cfg = _nccl_rules(verify_cfg(partition="pipeline", devices=2, microbatches=4, schedule="1f1b"))
    with pytest.raises(WorkerFailed, match="partition.schedule=1f1b runs on gloo only for now"):
        run_verify(cfg)


# Seeded random specs: (seed, columns devices, columns exchange mode); seeds 0 and 3 also run
# as hybrid over 2 devices. Seed 0 over 4 devices has an LRN of size 1 whose group spans
# devices: no exchange is needed there, and the shard must not ask for one. Seed 3 over 3
# devices shards every layer unevenly.
RANDOM = [(0, 4, "auto"), (6, 2, "gather"), (7, 2, "reduce"), (3, 3, "auto")]
HYBRID_TOO = {0, 3}


def test_random_specs_are_valid_deterministic_and_cover_every_feature():
    specs = [load_spec(random_spec(seed)) for seed, _, _ in RANDOM]
    assert all(random_spec(seed) == random_spec(seed) for seed, _, _ in RANDOM)
    layers = [layer for spec in specs for layer in spec.layers]
    convs = [layer for layer in layers if layer.op == "conv"]
    assert {layer.op for layer in layers} == {"conv", "linear", "relu", "lrn", "maxpool", "dropout", "flatten"}
    assert {layer.groups for layer in layers if layer.weighted} == {1, 2, 4}
    assert {(layer.op, layer.connect) for layer in layers if layer.weighted} == {
        ("conv", "group"), ("conv", "full"), ("linear", "group"), ("linear", "full")}
    assert {layer.stride for layer in convs} == {1, 2} and {layer.pad for layer in convs} == {0, 1}
    assert {layer.size == 1 for layer in layers if layer.op == "lrn"} == {True, False}
    modes = {ex.mode for seed, devices, exchange in RANDOM
             for ex in plan_of(verify_cfg(random_spec(seed), devices=devices, exchange=exchange)).exchanges().values()}
    assert {"gather", "reduce"} <= modes


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("seed", "devices", "exchange"), RANDOM)
def test_random_spec_split_equals_reference(seed, devices, exchange):
    model = random_spec(seed)
    cfgs = [verify_cfg(model, devices=devices, exchange=exchange)]
    if seed in HYBRID_TOO:
        cfgs.append(verify_cfg(model, "hybrid", devices=2))
    for cfg in cfgs:
        assert_equivalent(run_verify(cfg), cfg)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_alexnet_224_one_step_on_two_ranks():
    cfg = verify_cfg("alexnet", devices=2, steps=1, batch=2)
    report = run_verify(cfg)
    plan = assert_equivalent(report, cfg)
    assert report["model"] == "alexnet" and report["steps"] == 1
    assert sum(c.param_count for c in plan.costs) == 60_965_224
