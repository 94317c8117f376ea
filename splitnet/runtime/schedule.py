"""The pipeline schedules: which micro-batch each stage runs forward or backward, and when.

Two orders over M micro-batches and D stages, each a pure function listing every
stage's actions (``("F", m)`` or ``("B", m)``):

- ``gpipe_actions``: fill-drain (GPipe). Every stage runs all M forwards, then all M
  backwards in reverse; ``clock_cycles`` is its forward fill, tick by tick. A stage
  holds every micro-batch's saved tensors when its backward starts.
- ``one_f_one_b``: the non-interleaved 1F1B order (PipeDream-Flush, Narayanan et al.
  2021). Stage s runs D-1-s warm-up forwards, then alternates one forward and one
  backward, then drains the last backwards; it holds at most min(M, D-s) micro-batches.
  Same idle fraction as GPipe, same bytes; only the order (and the memory) differ.

``pipeline_step`` runs one stage of either order. Activations and gradients travel by
point to point with one tag per (micro-batch, direction): m forward, M + m backward.
Sends are asynchronous and receives block, so a stage never waits on its own queued
send; each stage's actions only receive what an earlier action of its neighbour sent,
so the order cannot deadlock (tests/test_runtime_schedule.py plays it out). A send is
waited on once the peer has provably taken it (its reply, or its next message, has
arrived), so a micro-batch's tensors go as soon as its backward is done.

Each micro-batch's loss is its summed cross-entropy divided by the whole batch, so the
accumulated gradient is exactly the full-batch gradient in either order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from splitnet.comm.transport import Transport
from splitnet.model.layers import set_step
from splitnet.runtime.precision import compute
from splitnet.runtime.shard import ShardNet

Action = tuple[str, int]  # ("F", m): forward of micro-batch m; ("B", m): its backward


def clock_cycles(microbatches: int, stages: int) -> list[list[tuple[int, int]]]:
    """The forward fill: at tick t, stage s works on micro-batch t - s (pairs (m, s))."""
    return [[(t - s, s) for s in range(stages) if 0 <= t - s < microbatches]
            for t in range(microbatches + stages - 1)]


def gpipe_actions(microbatches: int, stages: int) -> list[list[Action]]:
    """Per stage: every forward in order, then every backward in reverse order."""
    ticks = clock_cycles(microbatches, stages)
    return [[("F", m) for tick in ticks for m, s in tick if s == stage]
            + [("B", m) for m in reversed(range(microbatches))] for stage in range(stages)]


def one_f_one_b(microbatches: int, stages: int) -> list[list[Action]]:
    """Per stage s: min(M, D-1-s) warm-up forwards, then one forward and one backward in
    turn, then the remaining backwards; backwards run in micro-batch order."""
    m, out = microbatches, []
    for s in range(stages):
        warm = min(m, stages - 1 - s)
        acts: list[Action] = [("F", i) for i in range(warm)]
        for i in range(m - warm):
            acts += [("F", warm + i), ("B", i)]
        acts += [("B", i) for i in range(m - warm, m)]
        out.append(acts)
    return out


ORDERS: dict[str, Callable[[int, int], list[list[Action]]]] = {"gpipe": gpipe_actions, "1f1b": one_f_one_b}


def released_by(actions: list[list[Action]], stage: int) -> dict[int, list[int]]:
    """Micro-batch m' -> the micro-batches whose input gradients ``stage`` may stop sending
    once m''s activation from the stage before has arrived: that stage sent m' after its
    backward of them, so it has received their gradients."""
    out: dict[int, list[int]] = {}
    done: list[int] = []
    for kind, m in actions[stage - 1] if stage > 0 else ():
        if kind == "B":
            done.append(m)
        elif done:
            out[m], done = done, []
    return out


def _stage_shapes(shard: ShardNet) -> tuple[str, str | None, tuple[int, ...], tuple[int, ...]]:
    """(first layer, next stage's first layer, input shape, output shape) of this stage."""
    plan, spec, stage = shard.plan, shard.spec, shard.mp_rank
    mine = [p for p in plan.layers if p.shard(stage) is not None]
    nxt = next((p.name for p in plan.layers if p.shard(stage + 1) is not None), None)
    first, last = spec.index(mine[0].name), spec.index(mine[-1].name)
    in_flat = first > 0 and spec.layers[first - 1].flat
    return (mine[0].name, nxt, _tensor_shape(spec.layers[first].in_shape, in_flat),
            _tensor_shape(spec.layers[last].out_shape, spec.layers[last].flat))


def _tensor_shape(shape: tuple[int, int, int], flat: bool) -> tuple[int, ...]:
    """A spec shape (C, H, W) as a per-sample tensor shape: flat activations are (C,)."""
    return shape[:1] if flat else shape


def pipeline_forward(shard: ShardNet, x: torch.Tensor, transport: Transport) -> torch.Tensor | None:
    """Inference through the stages, the batch as one micro-batch; logits on the last stage."""
    stage, stages = shard.mp_rank, shard.plan.devices
    first, _, in_shape, _ = _stage_shapes(shard)
    inp = x if stage == 0 else transport.recv((x.shape[0], *in_shape), stage - 1, 0, first, "fwd")
    with compute(transport):  # the stages hand each other the exchanges' dtype
        out = shard(inp)
    if stage < stages - 1:
        transport.wait(transport.send(out.detach(), stage + 1, 0), first, "send")
        return None
    return out


def pipeline_step(shard: ShardNet, x: torch.Tensor, y: torch.Tensor, transport: Transport, step: int,
                  row_offset: int, full_batch: int,
                  loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
                  before_last_backward: Callable[[], None] | None = None,
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One training step of this stage in the plan's schedule; returns (loss, logits) on the
    last stage, else (None, None).

    ``before_last_backward`` runs just before the backward that completes the gradients
    (the last one in this stage's order: micro-batch 0 under gpipe, M-1 under 1f1b), so
    gradient sums can start during it.
    """
    plan = shard.plan
    stage, stages, m_count = shard.mp_rank, plan.devices, plan.microbatches
    last_stage = stage == stages - 1
    batch = x.shape[0]
    mb = batch // m_count
    first, next_layer, in_shape, _ = _stage_shapes(shard)
    orders = ORDERS[plan.schedule](m_count, stages)
    actions, releases = orders[stage], released_by(orders, stage)
    final_backward = max(i for i, (kind, _) in enumerate(actions) if kind == "B")
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    sent_fwd: dict[int, Any] = {}   # activation sends, until the next stage answers with the gradient
    sent_bwd: dict[int, Any] = {}   # gradient sends, until the stage before sends its next activation
    graphs: dict[int, torch.Tensor] = {}  # the last stage's losses, until their backward
    losses: dict[int, torch.Tensor] = {}
    logits: dict[int, torch.Tensor] = {}
    for i, (kind, m) in enumerate(actions):
        if kind == "F":
            set_step(shard, step, row_offset + m * mb, full_batch)
            if stage == 0:
                inp = x[m * mb:(m + 1) * mb]
            else:
                inp = transport.recv((mb, *in_shape), stage - 1, m, first, "fwd")
                inp.requires_grad_(True)
                for done in releases.get(m, ()):
                    transport.wait(sent_bwd.pop(done), first, "send")
            with compute(transport):
                out = shard(inp)
                if last_stage:
                    graphs[m] = loss_fn(out, y[m * mb:(m + 1) * mb], reduction="sum") / batch
            if last_stage:
                losses[m], logits[m] = graphs[m].detach(), out.detach()
            else:
                sent_fwd[m] = transport.send(out.detach(), stage + 1, m)
            inputs[m], outputs[m] = inp, out
            continue
        if i == final_backward and before_last_backward is not None:
            before_last_backward()
        if last_stage:
            graphs.pop(m).backward()  # the graph holds this micro-batch's input: let both go
        else:
            grad = transport.recv(tuple(outputs[m].shape), stage + 1, m_count + m, next_layer or "", "bwd")
            transport.wait(sent_fwd.pop(m), first, "send")
            outputs[m].backward(grad.to(outputs[m].dtype))  # sent in the exchanges' dtype
        inp = inputs.pop(m)
        del outputs[m]
        if stage > 0:
            sent_bwd[m] = transport.send(inp.grad, stage - 1, m_count + m)
    for work in [*sent_fwd.values(), *sent_bwd.values()]:
        transport.wait(work, first, "send")
    if last_stage:
        return (torch.stack([losses[m] for m in range(m_count)]).sum(),
                torch.cat([logits[m] for m in range(m_count)]))
    return None, None
