"""The batch a rank trains on: decoded once per replica, each rank its rows, then gathered.

Each of a replica's D model-parallel ranks decodes and augments only its rows of every
batch (uneven where D does not divide it), and the ranks all-gather the rows into the
batch the single-device path decodes whole. The gather is a data transfer: the meter keeps
it apart, so each step's per-layer record still equals the plan's exchanges.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch

from splitnet.data import build_loader
from splitnet.data.distribute import row_parts
from splitnet.launchers import Launcher
from splitnet.partition.plan import ring_bytes
from splitnet.train.job import run_train
from tests.training import config


def recording_job(rank: int, world: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """``train_worker``, keeping each batch handed to a step and each loader the loop built."""
    import splitnet.train.loop as loop

    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    loaders: list[Any] = []
    step, build = loop.accumulated_step, loop.build_loader

    def recording_step(shard: Any, x: torch.Tensor, y: torch.Tensor, *args: Any) -> Any:
        batches.append((x.clone(), y.clone()))
        return step(shard, x, y, *args)

    def recording_build(*args: Any, **kwargs: Any) -> Any:
        loaders.append(build(*args, **kwargs))
        return loaders[-1]

    loop.accumulated_step, loop.build_loader = recording_step, recording_build
    result = loop.train_worker(rank, world, cfg)
    return {**result, "batches": batches, "decoded": [ld.stats["decoded"] for ld in loaders],
            "parts": [ld.parts for ld in loaders]}


@dataclass(frozen=True)
class Recording(Launcher):
    def launch(self, job: Any, world_size: int, cfg: dict[str, Any], **kwargs: Any) -> list[Any]:
        return super().launch(recording_job, world_size, cfg, **kwargs)


def read_steps(path: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "step"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_each_rank_trains_on_the_single_device_batch_having_decoded_a_third_of_it(tmp_path):
    overrides = ["mesh.devices=3", "batch_size=32", "train.epochs=1", "train.max_steps=2", "eval.enabled=false",
                 "optim.schedule=constant",
                 "comm.timeout_s=60"]
    cfg = config(*overrides)
    out = run_train(cfg, tmp_path, Recording("simulate"))
    single = build_loader(cfg["data"], split="train", image_size=32, channels=3, batch_size=32, replica=0,
                          num_replicas=1, epoch=0, seed=cfg["seed"])
    want = [batch for _, batch in zip(range(2), single, strict=False)]
    sizes = row_parts(32, 3)
    assert sizes == (11, 11, 10)
    for rank, got in enumerate(out["results"]):
        assert got["parts"] == [sizes]
        assert got["decoded"] == [2 * sizes[rank]]  # two steps, each rank its rows only
        assert len(got["batches"]) == 2
        for (x, y), (wx, wy) in zip(got["batches"], want, strict=True):
            assert torch.equal(x, wx) and torch.equal(y, wy)
    plan = out["plan"]
    # uint8 3x32x32 pixels, float32 RGB offsets and int64 labels, each part padded to the largest (11 rows)
    gathered = sum((ring_bytes("all_gather", 11 * row * 3, 3) for row in (3 * 32 * 32, 3 * 4, 8)), Fraction(0))
    for rank in range(3):
        path = tmp_path / ("metrics.jsonl" if rank == plan.output_rank else f"logs/rank{rank}.metrics.jsonl")
        steps = [r for r in read_steps(path) if r["rank"] == rank]
        assert len(steps) == 2
        expected = plan.expected(rank)
        for r in steps:  # the gather is data, counted apart: the layers' bytes are still the plan's
            assert r["comm"] == {k: round(f + b) for k, (f, b) in expected.items()}
            assert r["data_bytes"] == round(gathered)
