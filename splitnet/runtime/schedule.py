"""The pipeline schedule: GPipe fill-drain over M micro-batches.

``clock_cycles`` is the schedule as a pure function (which micro-batch each stage
works on at each tick); ``gpipe_step`` runs one stage of it. Forward: every stage
runs all M micro-batches in order, receiving each input from the stage before and
sending each output on (sends are asynchronous, so a stage never waits for its
successor). Backward: in reverse order, receiving each output gradient from the next
stage and sending the input gradient back. Each micro-batch's loss is its summed
cross-entropy divided by the whole batch, so the accumulated gradient is exactly the
full-batch gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from splitnet.comm.exchange import recv_activation, recv_gradient, send_activation, send_gradient
from splitnet.comm.transport import Transport
from splitnet.layers import set_step
from splitnet.runtime.shard import ShardNet


def clock_cycles(microbatches: int, stages: int) -> list[list[tuple[int, int]]]:
    """The forward fill: at tick t, stage s works on micro-batch t - s (pairs (m, s))."""
    return [[(t - s, s) for s in range(stages) if 0 <= t - s < microbatches]
            for t in range(microbatches + stages - 1)]


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
    inp = x if stage == 0 else recv_activation((x.shape[0], *in_shape), transport, stage - 1, 0, first)
    out = shard(inp)
    if stage < stages - 1:
        transport.wait(send_activation(out, transport, stage + 1, 0), first, "send")
        return None
    return out


def gpipe_step(shard: ShardNet, x: torch.Tensor, y: torch.Tensor, transport: Transport, step: int,
               row_offset: int, full_batch: int,
               loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
               before_last_backward: Callable[[], None] | None = None,
               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One training step of this stage; returns (loss, logits) on the last stage, else (None, None).

    ``before_last_backward`` runs just before the backward that completes the gradients
    (the first micro-batch's, the last to run), so gradient sums can start during it.
    """
    plan = shard.plan
    stage, stages, m_count = shard.mp_rank, plan.devices, plan.microbatches
    batch = x.shape[0]
    mb = batch // m_count
    first, next_layer, in_shape, _ = _stage_shapes(shard)
    inputs, outputs, pending = [], [], []
    forward_order = [m for tick in clock_cycles(m_count, stages) for m, s in tick if s == stage]
    for m in forward_order:
        set_step(shard, step, row_offset + m * mb, full_batch)
        if stage == 0:
            inp = x[m * mb:(m + 1) * mb]
        else:
            inp = recv_activation((mb, *in_shape), transport, stage - 1, m, first)
            inp.requires_grad_(True)
        out = shard(inp)
        if stage < stages - 1:
            pending.append(send_activation(out, transport, stage + 1, m))
        inputs.append(inp)
        outputs.append(out)
    losses = []
    if stage == stages - 1:
        for m in range(m_count):
            losses.append(loss_fn(outputs[m], y[m * mb:(m + 1) * mb], reduction="sum") / batch)
    for m in reversed(range(m_count)):
        if m == 0 and before_last_backward is not None:  # this backward completes the gradients
            before_last_backward()
        if stage == stages - 1:
            losses[m].backward()
        else:
            grad = recv_gradient(tuple(outputs[m].shape), transport, stage + 1, m_count + m, next_layer or "")
            outputs[m].backward(grad)
        if stage > 0:
            pending.append(send_gradient(inputs[m].grad, transport, stage - 1, m_count + m))
    for work in pending:
        transport.wait(work, first, "send")
    if stage == stages - 1:
        return torch.stack(losses).sum().detach(), torch.cat([o.detach() for o in outputs])
    return None, None
