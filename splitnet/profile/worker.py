"""One rank of ``splitnet profile``: a few training steps under the allocator's trace.

The rank builds its shard, its SGD-momentum optimizer and each step's synthetic batch
inside torch.profiler with memory events on, so every byte it allocates from the start
is in the trace (the allocator's own running total, not RSS). Profiler ranges mark
where each allocation was made: the input batch, the step, the optimizer, and (from
the transport) the exchanges; autograd's own ranges mark backward. After each step
the addresses of the parameters, gradients and momentum buffers are read off the live
tensors, so the account can name them (see account.py). On CUDA the same trace is
taken of the device's allocations, and ``torch.cuda.max_memory_allocated`` is
reported beside it.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from splitnet.data.synthetic import random_batch
from splitnet.profile.account import account, allocations, categorize

BUILD, INPUT, STEP, OPTIMIZER, MARK = ("splitnet.build", "splitnet.input", "splitnet.step",
                                       "splitnet.optimizer", "splitnet.mark")

# The innermost of these ranges around an allocation says where it was made.
_TAGS = {BUILD: "build", INPUT: "input", STEP: "forward", OPTIMIZER: "optimizer"}


def _tag(name: str, outer: str) -> str:
    if name.startswith("splitnet.exchange"):
        return "exchange"
    if name.startswith("autograd::engine::evaluate_function"):
        return "backward"
    return _TAGS.get(name, outer)


def _addresses(shard: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, set[int]]:
    def ptr(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    params = list(shard.parameters())
    return {"parameters": {ptr(p) for p in params},
            "gradients": {ptr(p.grad) for p in params if p.grad is not None},
            "optimizer": {ptr(v) for state in opt.state.values() for v in state.values()
                          if isinstance(v, torch.Tensor) and v.numel()}}


def _trace(prof: Any, device: torch.device) -> tuple[list[tuple[int, int, int, str]], list[int], int]:
    """(the allocation trace, the times of the marks, the allocator's largest running total)."""
    from torch._C._profiler import _EventType

    trace: list[tuple[int, int, int, str]] = []
    marks: list[int] = []
    allocator_peak = 0
    stack = [(node, "other") for node in reversed(prof.profiler.kineto_results.experimental_event_tree())]
    while stack:
        node, outer = stack.pop()
        if node.typed[0] == _EventType.Allocation:
            fields = node.typed[1]
            if fields.device.type == device.type:
                trace.append((node.start_time_ns, fields.ptr, fields.alloc_size, outer))
                allocator_peak = max(allocator_peak, fields.total_allocated)
            continue
        if node.name == MARK:
            marks.append(node.start_time_ns)
        tag = _tag(node.name, outer)
        stack.extend((child, tag) for child in reversed(node.children))
    trace.sort(key=lambda e: e[0])  # stable: ties keep the tree's order
    return trace, sorted(marks), allocator_peak


def profile_worker(rank: int, world_size: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """Profile this rank's ``profile.steps`` training steps (any launcher can call this)."""
    from splitnet.runtime import forward_backward, open_transport, setup_rank

    steps = cfg["profile"]["steps"]
    transport = open_transport(cfg, rank)  # its process groups stay out of the trace
    cuda = transport.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    held: list[dict[str, set[int]]] = []
    seconds: list[float] = []
    meters: list[dict[str, Any]] = []
    waits: list[dict[str, Any]] = []
    with profile(activities=activities, profile_memory=True) as prof:
        with record_function(BUILD):  # SGD allocates nothing until its first step
            me = setup_rank(cfg, rank, optim=cfg["optim"], transport=transport)
        spec, plan, shard, opt = me.spec, me.plan, me.shard, me.optimizer
        for k in range(steps):
            with record_function(INPUT):
                x, y = (t.to(transport.device) for t in random_batch(
                    plan.batch_size, spec.input_shape, spec.num_classes, cfg["seed"], "profile", k, transport.replica))
            opt.zero_grad(set_to_none=True)
            transport.meter.reset()
            transport.waits = []
            t0 = time.perf_counter()
            with record_function(STEP):
                forward_backward(shard, x, y, transport, step=k)
                with record_function(OPTIMIZER):
                    opt.step()
            seconds.append(time.perf_counter() - t0)
            del x, y  # the next batch must not be drawn while this one is still held
            waits, transport.waits = transport.waits, None
            meters.append(transport.meter.reading())
            with record_function(MARK):
                held.append(_addresses(shard, opt))
            if rank == 0:
                print(f"splitnet profile: step {k + 1}/{steps} took {seconds[-1]:.2f} s", file=sys.stderr,
                      flush=True)
    trace, mark_times, allocator_peak = _trace(prof, transport.device)
    allocs = allocations(trace)
    categorize(allocs, list(zip(mark_times, held, strict=True)))
    acc = account(allocs)
    return {
        "rank": rank, "steps": [{"meter": m} for m in meters],
        "peak_bytes": acc.peak, "allocator_peak_bytes": allocator_peak,
        "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(transport.device) if cuda else None,
        "at_peak": acc.at_peak, "largest": acc.largest,
        "rss_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_s": seconds[-1], "waits": waits,
    }
