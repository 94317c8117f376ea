"""``bench_worker(rank, world, cfg)``: one rank of a throughput launch, any launcher.

Runs its launch's contenders one after the other in the same processes: for each, it
builds the model, runs ``warmup`` untimed steps, then times ``steps`` steps between two
barriers. Every contender trains with SGD-momentum on the same pre-drawn global batches
(drawing random images inside the clock would time the generator). Per rank it reports
seconds, CPU seconds (every thread of the process, gloo's included), bytes received per
step and, for splitnet, the exchange clock's ``exchange_s`` and ``blocked_s`` (see
comm/clock.py). On a machine shared with other jobs the wall clock measures the
neighbours too; CPU time mostly does not (though a pipeline bubble, idle, costs no CPU
time either).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from splitnet.model.layers import set_step
from splitnet.model.spec import ModelSpec, load_spec
from splitnet.partition.plan import ring_bytes
from splitnet.runtime import sgd
from splitnet.verify import verify_batch

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Runner:
    step: Callable[[int], None]
    reset: Callable[[], None]
    figures: Callable[[], dict[str, float | None]]   # since the last reset: bytes received, the clock's seconds


# Every contender's optimizer: the same SGD-momentum, so only the split differs
SGD = {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}


def _sgd(params: Any) -> torch.optim.Optimizer:
    return sgd(params, SGD)


def _no_figures() -> dict[str, float | None]:
    return {"bytes": 0.0, "exchange_s": None, "blocked_s": None}


def reference_runner(spec: ModelSpec, batches: list[Batch]) -> Runner:
    from splitnet.model.reference import build_reference

    model = build_reference(spec, 0).train()
    opt = _sgd(model.parameters())

    def step(k: int) -> None:
        x, y = batches[k % len(batches)]
        set_step(model, k, 0, x.shape[0])
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return Runner(step, lambda: None, _no_figures)


def ddp_runner(spec: ModelSpec, batches: list[Batch], rank: int, world: int) -> Runner:
    """Each rank a whole network on its B/world rows; DDP's gradient all-reduce metered by a comm hook."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    from splitnet.model.reference import build_reference

    model = build_reference(spec, 0).train()
    ddp = DistributedDataParallel(model)
    received = [0.0]

    def metered(state, bucket):  # type: ignore[no-untyped-def]  # DDP rejects string annotations here
        buffer = bucket.buffer()
        received[0] += float(ring_bytes("all_reduce", buffer.numel() * buffer.element_size(), world))
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, metered)
    opt = _sgd(ddp.parameters())

    def step(k: int) -> None:
        x, y = batches[k % len(batches)]
        rows = x.shape[0] // world
        set_step(model, k, rank * rows, x.shape[0])
        opt.zero_grad()
        F.cross_entropy(ddp(x[rank * rows:(rank + 1) * rows]), y[rank * rows:(rank + 1) * rows]).backward()
        opt.step()

    return Runner(step, lambda: received.__setitem__(0, 0.0),
                  lambda: {"bytes": received[0], "exchange_s": None, "blocked_s": None})


class _Stage(nn.Sequential):
    """A contiguous run of the reference's layers; the last stage flattens the logits as the reference does."""

    def __init__(self, spec: ModelSpec, names: list[str], last: bool) -> None:
        from splitnet.model.layers import add_layer
        from splitnet.model.reference import build_layer

        super().__init__()
        self.last = last
        for name in names:
            add_layer(self, name, build_layer(spec, spec.layer(name), 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y.flatten(1) if self.last else y


def torch_pipeline_runner(spec: ModelSpec, batches: list[Batch], rank: int, world: int, stages: list[list[str]],
                          microbatches: int, schedule: str) -> Runner:
    """``torch.distributed.pipelining`` on splitnet's stage split. Its traffic is not metered by
    torch; the bytes column is what the split must move: the stage's input activations (from
    the stage before) and its output gradients (from the stage after)."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    names = stages[rank]
    stage = _Stage(spec, names, rank == world - 1).train()
    pipe = PipelineStage(stage, rank, world, torch.device("cpu"))
    kind = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule]
    sched = kind(pipe, microbatches, loss_fn=F.cross_entropy)
    opt = _sgd(stage.parameters())
    batch = batches[0][0].shape[0]
    first, last = spec.layer(names[0]), spec.layer(names[-1])
    moved = ((rank > 0) * prod(first.in_shape) + (rank < world - 1) * prod(last.out_shape)) * batch * 4
    steps = [0]

    def step(k: int) -> None:
        x, y = batches[k % len(batches)]
        set_step(stage, k, 0, 0)
        opt.zero_grad()
        if rank == 0:
            sched.step(x)
        elif rank == world - 1:
            sched.step(target=y)
        else:
            sched.step()
        opt.step()
        steps[0] += 1

    return Runner(step, lambda: steps.__setitem__(0, 0),
                  lambda: {"bytes": float(moved * steps[0]), "exchange_s": None, "blocked_s": None})


def splitnet_runner(model: dict[str, Any], batches: list[Batch], rank: int, plan_dict: dict[str, Any],
                    timeout_s: float) -> Runner:
    from splitnet.comm.clock import ClockedTransport
    from splitnet.runtime import forward_backward, open_transport, setup_rank

    cfg = {"model": model, "plan": plan_dict, "seed": 0, "comm": {"timeout_s": timeout_s}}
    transport = open_transport(cfg, rank, kind=ClockedTransport)
    me = setup_rank(cfg, rank, optim=SGD, transport=transport)
    plan, shard, opt = me.plan, me.shard, me.optimizer
    rows = slice(transport.replica * plan.batch_size, (transport.replica + 1) * plan.batch_size)

    def step(k: int) -> None:
        x, y = batches[k % len(batches)]
        opt.zero_grad()
        forward_backward(shard, x[rows], y[rows], transport, k)
        opt.step()

    def reset() -> None:
        transport.meter.reset()
        transport.reset_clock()

    return Runner(step, reset, lambda: {"bytes": float(transport.meter.total()), "exchange_s": transport.exchange_s,
                                        "blocked_s": transport.blocked_s})


def make_runner(spec: ModelSpec, model: dict[str, Any], batches: list[Batch], rank: int, world: int,
                c: dict[str, Any], timeout_s: float) -> Runner:
    if c["key"] == "reference":
        return reference_runner(spec, batches)
    if c["key"] == "ddp":
        return ddp_runner(spec, batches, rank, world)
    if c["key"] in ("gpipe", "1f1b"):
        return torch_pipeline_runner(spec, batches, rank, world, c["stages"], c["microbatches"], c["key"])
    return splitnet_runner(model, batches, rank, c["plan"], timeout_s)


def bench_worker(rank: int, world: int, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Time each of ``cfg["contenders"]``; per contender this rank's seconds and per-step figures."""
    spec = load_spec(cfg["model"])
    batches = [verify_batch(spec, 0, k, cfg["batch"]) for k in range(2)]
    steps, warmup = cfg["steps"], cfg["warmup"]
    results = []
    for c in cfg["contenders"]:
        runner = make_runner(spec, cfg["model"], batches, rank, world, c, cfg["timeout_s"])
        for k in range(warmup):
            runner.step(k)
        dist.barrier()
        runner.reset()
        start, cpu = time.perf_counter(), time.process_time()
        for k in range(warmup, warmup + steps):
            runner.step(k)
        cpu = time.process_time() - cpu
        dist.barrier()
        seconds = time.perf_counter() - start
        figures = runner.figures()
        results.append({"seconds": seconds, "cpu_s": cpu / steps, "bytes_per_step": figures["bytes"] / steps,  # type: ignore[operator]
                        "exchange_s": None if figures["exchange_s"] is None else figures["exchange_s"] / steps,
                        "blocked_s": None if figures["blocked_s"] is None else figures["blocked_s"] / steps})
        if rank == 0 and cfg.get("progress"):
            print(f"    {c['name']}: {cfg['batch'] * steps / seconds:,.1f} images/s", file=sys.stderr, flush=True)
        del runner
    return results
