"""Shared fixtures for the runtime, comm, launcher and verify tests.

- ``verify_cfg``: a resolved config for ``run_verify``, from the shipped ``conf/`` defaults.
- ``random_spec``: seeded small specs that mix group counts, strides, pads, connections
  and every op, so equivalence is tested on more than AlexNet's shape.
- Job functions for the simulate launcher. Spawned processes import them by name, so
  they live here, at module level.
"""

from __future__ import annotations

import copy
import functools
import os
import random
import threading
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from splitnet.errors import SplitnetError
from splitnet.model.spec import SpecError, load_spec
from splitnet.partition import Mesh, make_plan
from splitnet.partition.plan import Plan

CONF = Path(__file__).resolve().parent.parent / "conf"


def shipped(path: str) -> dict[str, Any]:
    return yaml.safe_load((CONF / path).read_text())


def model_dict(name: str) -> dict[str, Any]:
    return shipped(f"model/{name}.yaml")


def alexnet_small_12() -> dict[str, Any]:
    """alexnet_small with fc8 out=12, so 4 devices divide every layer."""
    model = copy.deepcopy(model_dict("alexnet_small"))
    model["name"] = "alexnet_small12"
    fc8 = next(layer for layer in model["layers"] if layer["name"] == "fc8")
    fc8["out"] = 12
    return model


def verify_cfg(model: dict[str, Any] | str = "alexnet_small", partition: str = "columns", *, devices: int = 2,
               replicas: int = 1, steps: int = 2, batch: int = 8, timeout_s: float = 60.0,
               **partition_keys: Any) -> dict[str, Any]:
    """The config ``splitnet verify`` would resolve, with these choices: ``conf/`` composed by
    Hydra as the CLI composes it, then these values set; a key the configuration lacks is an
    error. A model given as a dict (a test's own spec) replaces the composed one."""
    cfg = copy.deepcopy(_composed("alexnet_small" if isinstance(model, dict) else model, partition))
    if isinstance(model, dict):
        cfg["model"] = model
    unknown = sorted(set(partition_keys) - set(cfg["partition"]))
    if unknown:
        raise KeyError(f"partition={partition} has no keys {unknown}; it has {sorted(cfg['partition'])}")
    cfg["partition"].update(partition_keys)
    cfg["mesh"].update(devices=devices, replicas=replicas)
    cfg["comm"]["timeout_s"] = timeout_s
    cfg["verify"].update(steps=steps, batch_size=batch)
    return cfg


@functools.cache
def _composed(model: str, partition: str) -> dict[str, Any]:
    # one Hydra compose per (model, partition): composing costs tens of ms, and the
    # parametrised tests call verify_cfg dozens of times while they are collected
    from tests.training import config  # here: the spawned ranks import this module and need no Hydra

    return config(f"model={model}", f"partition={partition}")


def plan_of(cfg: dict[str, Any]) -> Plan:
    """The plan ``run_verify`` makes for ``cfg`` (computed here, independently of the report)."""
    spec = load_spec(cfg["model"])
    bf16 = cfg.get("train", {}).get("precision") == "bf16"  # exchanges carry 2 bytes an element
    return make_plan(spec, cfg["partition"], Mesh.from_dict(cfg["mesh"]), cfg["verify"]["batch_size"],
                     2 if bf16 else 4)


def talking_layers(plan: Plan) -> set[str]:
    """The exchange points at which some rank receives bytes."""
    return {name for name, ex in plan.exchanges().items()
            if any(sum(ex.received(r)) for r in range(plan.devices))}


# Random small specs --------------------------------------------------------------------------


def random_spec(seed: int) -> dict[str, Any]:
    """A small valid spec: a few convs (groups 1/2/4, group or full connections, strides,
    pads) with relu, lrn, maxpool and dropout, then flatten and a few linear layers.
    Every weighted layer's ``out`` is a multiple of 4, so columns over 2 or 4 devices is
    valid. Drawn until ``load_spec`` accepts it (deterministic per seed)."""
    rng = random.Random(seed)
    while True:
        raw = _draw_spec(rng, f"random{seed}")
        try:
            load_spec(raw)
        except SpecError:
            continue
        return raw


def _weighted(rng: random.Random, name: str, op: str, in_groups: int, in_channels: int) -> dict[str, Any]:
    if in_groups > 1 and in_channels % in_groups == 0 and rng.random() < 0.5:
        groups, connect = in_groups, "group"
    else:
        groups, connect = rng.choice([1, 2, 4]), "full"
    layer = {"name": name, "op": op, "out": 4 * rng.randint(1, 3), "groups": groups, "connect": connect,
             "bias_init": rng.choice([0.0, 0.1])}
    if op == "conv":
        layer.update(kernel=rng.choice([1, 2, 3]), stride=rng.choice([1, 1, 2]), pad=rng.choice([0, 1]))
    return layer


def _draw_spec(rng: random.Random, name: str) -> dict[str, Any]:
    layers: list[dict[str, Any]] = []
    groups, channels = 1, rng.choice([1, 3])
    image = {"channels": channels, "size": rng.randint(8, 12)}
    for i in range(rng.randint(2, 3)):
        conv = _weighted(rng, f"conv{i}", "conv", groups, channels)
        layers.append(conv)
        groups, channels = conv["groups"], conv["out"]
        layers.append({"name": f"relu{i}", "op": "relu"})
        if rng.random() < 0.6:
            layers.append({"name": f"norm{i}", "op": "lrn", "size": rng.choice([1, 3, 5]), "k": 2.0})
        if rng.random() < 0.5:
            kernel = rng.choice([2, 3])
            layers.append({"name": f"pool{i}", "op": "maxpool", "kernel": kernel, "stride": rng.choice([1, 2]),
                           "pad": rng.choice([0, kernel // 2])})
        if rng.random() < 0.3:
            layers.append({"name": f"cdrop{i}", "op": "dropout", "p": 0.3})
    layers.append({"name": "flatten", "op": "flatten"})
    for i in range(rng.randint(2, 3)):
        fc = _weighted(rng, f"fc{i}", "linear", groups, channels)
        layers.append(fc)
        groups, channels = fc["groups"], fc["out"]
        layers.append({"name": f"frelu{i}", "op": "relu"})
        if rng.random() < 0.6:
            layers.append({"name": f"drop{i}", "op": "dropout", "p": 0.5})
    layers.append({"name": "head", "op": "linear", "out": 4 * rng.randint(1, 3), "connect": "full",
                   "groups": rng.choice([1, 2, 4])})
    return {"name": name, "input": image, "groups": 2, "init_std": "he", "layers": layers}


# Job functions for the simulate launcher ------------------------------------------------------


def raising_job(rank: int, world: int, cfg: dict[str, Any]) -> int:
    """``cfg["fail_rank"]`` raises (a ``SplitnetError`` with ``cfg["expected"]``, else a bug's
    ValueError); every other rank then waits in a collective it never joins."""
    if rank != cfg["fail_rank"]:
        (Path(cfg["pid_dir"]) / f"rank{rank}.pid").write_text(str(os.getpid()))
    dist.barrier()  # every other rank has written its pid before anyone fails
    if rank == cfg["fail_rank"]:
        raise (SplitnetError if cfg.get("expected") else ValueError)(cfg["message"])
    dist.all_reduce(torch.ones(1))
    return rank


def stalling_job(rank: int, world: int, cfg: dict[str, Any]) -> int:
    """Every rank builds its shard; ``cfg["stall_rank"]`` then hangs instead of stepping."""
    from splitnet.comm import Transport
    from splitnet.runtime import build_shard, forward_backward
    from splitnet.verify import verify_batch

    spec, plan = load_spec(cfg["model"]), Plan.from_dict(cfg["plan"])
    transport = Transport(plan, rank, timeout_s=cfg["comm"]["timeout_s"])
    shard = build_shard(spec, plan, rank, transport=transport)
    if rank == cfg["stall_rank"]:
        threading.Event().wait()  # the injected fault: a peer that never arrives
    x, y = verify_batch(spec, 0, 0, plan.batch_size)
    forward_backward(shard, x, y, transport, step=0)
    return rank


def meter_job(rank: int, world: int, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One training step per plan in ``cfg["plans"]``; this rank's meter after each."""
    from splitnet.comm import Transport
    from splitnet.runtime import build_shard, forward_backward
    from splitnet.verify import verify_batch

    spec = load_spec(cfg["model"])
    out = []
    for plan_dict in cfg["plans"]:
        plan = Plan.from_dict(plan_dict)
        transport = Transport(plan, rank, timeout_s=60)
        shard = build_shard(spec, plan, rank, transport=transport)
        x, y = verify_batch(spec, 0, 0, plan.batch_size)
        forward_backward(shard, x, y, transport, step=0)
        out.append(transport.meter.reading())
    return out


# What every verify run must show --------------------------------------------------------------

# verify holds each tensor to rtol 1e-4 of its own scale; the splits here land near 1e-6
# (float32 round-off), so a bound 10x tighter catches a split that is only roughly right.
# The parameters' change over the steps is a small difference of float32 values near 1 and
# carries their round-off: about 3e-5 of the change here.
ROUND_OFF = {"logits": 1e-5, "loss": 1e-5, "grads": 1e-5, "params": 1e-3}


def assert_equivalent(report: dict[str, Any], cfg: dict[str, Any]) -> Plan:
    """The split equals the reference, every rank moved exactly the plan's bytes at exactly
    the plan's exchange points, and holds exactly the plan's parameter bytes."""
    plan = plan_of(cfg)
    world = plan.devices * plan.replicas
    assert report["ok"], report
    assert (report["strategy"], report["mesh"]) == (plan.strategy, {"devices": plan.devices,
                                                                     "replicas": plan.replicas})
    for key in ("logits", "loss", "grads", "params"):
        assert report["max_rel_diff"][key] <= ROUND_OFF[key], (key, report["max_rel_diff"])
        assert report["worst"][key]["diff_over_tolerance"] <= 0.5, (key, report["worst"])
    rows = {row["layer"]: row for row in report["exchanges"]}
    assert set(rows) == talking_layers(plan), "a layer talked that the plan keeps silent, or vice versa"
    for name, row in rows.items():
        ex = plan.exchanges()[name]
        planned = round(sum(sum(ex.received(r % plan.devices)) for r in range(world)))
        assert row["planned_bytes"] == planned > 0, row
        assert row["measured_bytes"] == planned, row
        assert row["calls"] > 0 and row["ok"] and row["mismatches"] == [], row
    assert [(row["rank"], row["allocated"]) for row in report["param_bytes"]] == [
        (r, plan.costs[r % plan.devices].param_bytes) for r in range(world)]
    return plan
