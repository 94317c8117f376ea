"""One training step of a shard: forward, loss, backward, gradient sums. Optimizer outside."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from splitnet.comm.buckets import GradBuckets
from splitnet.comm.transport import Transport
from splitnet.model.layers import set_step
from splitnet.runtime.precision import compute
from splitnet.runtime.schedule import pipeline_step
from splitnet.runtime.shard import ShardNet


@dataclass
class StepResult:
    loss: torch.Tensor | None     # this replica's mean loss, where this rank holds the logits
    logits: torch.Tensor | None


def forward_backward(shard: ShardNet, x: torch.Tensor, y: torch.Tensor, transport: Transport,
                     step: int, micro: int = 0, micro_steps: int = 1) -> StepResult:
    """Gradients of this replica's mean cross-entropy on (x, y), summed and averaged as the plan says.

    ``x``/``y`` are this replica's batch for micro-step ``micro`` of ``micro_steps`` (every
    rank of a model-parallel group gets the same one). Backward adds into ``.grad``; only
    the last micro-step sums gradients over devices and replicas. Dropout masks are drawn
    for the global batch (all replicas' micro-batches, replica-major), so row offsets
    include the replica's and the micro-step's position.
    """
    plan = shard.plan
    batch = x.shape[0]
    row_offset = (transport.replica * micro_steps + micro) * batch
    full_batch = plan.replicas * micro_steps * batch
    syncs = gradient_syncs(shard, transport)
    last = micro == micro_steps - 1
    if plan.strategy == "pipeline":  # in the plan's schedule: gpipe or 1f1b
        loss, logits = pipeline_step(shard, x, y, transport, step, row_offset, full_batch,
                                     before_last_backward=syncs.arm if last else None)
    else:
        set_step(shard, step, row_offset, full_batch)
        with compute(transport):
            logits = shard(x)
            loss = F.cross_entropy(logits, y)
        if last:
            syncs.arm()
        loss.backward()
        loss, logits = loss.detach(), logits.detach()
    if last:
        syncs.finish()
    return StepResult(loss, logits)


def accumulated_step(shard: ShardNet, x: torch.Tensor, y: torch.Tensor, transport: Transport, step: int,
                     micro_steps: int) -> StepResult:
    """One optimizer step's gradients from this replica's ``micro_steps`` x B rows, in micro-batches of B.

    The gradient is the mean over the global batch: micro-step gradients add up in
    ``.grad``, the replicas' sums are averaged, and the sum is divided by the micro-step
    count. Two replicas of one micro-step and one replica of two add the same two numbers
    and divide by two: the same bits.
    """
    if x.shape[0] % micro_steps:
        raise ValueError(f"a batch of {x.shape[0]} rows does not split into {micro_steps} micro-batches")
    results = [forward_backward(shard, xm, ym, transport, step, m, micro_steps)
               for m, (xm, ym) in enumerate(zip(x.chunk(micro_steps), y.chunk(micro_steps), strict=True))]
    if micro_steps == 1:
        return results[0]
    for param in shard.parameters():
        if param.grad is not None:
            param.grad /= micro_steps
    losses = [r.loss for r in results if r.loss is not None]
    logits = [r.logits for r in results if r.logits is not None]
    return StepResult(torch.stack(losses).mean() if losses else None, torch.cat(logits) if logits else None)


class GradientSyncs:
    """The plan's gradient exchanges for one shard, in the order they must finish.

    Hybrid conv weights are summed over the devices first and averaged over replicas
    after, so they wait for backward to end; every other shard's gradients are averaged
    over replicas while backward still runs.
    """

    def __init__(self, shard: ShardNet, transport: Transport) -> None:
        plan = shard.plan
        names = {p.name for p in plan.layers}
        conv = [param for p in plan.layers if p.batch_split and hasattr(shard, p.name)
                for param in getattr(shard, p.name).parameters()]
        rest = [param for param in shard.parameters() if all(param is not c for c in conv)]
        self.ordered: list[GradBuckets] = []
        if "conv_grads" in names and plan.devices > 1 and conv:
            group = transport.group(tuple(range(plan.devices)))
            self.ordered.append(GradBuckets(conv, transport, group, plan.devices, "conv_grads",
                                            average=False, overlap=False))
        if "replicas" in names and transport.replica_group is not None:
            group, r = transport.replica_group, plan.replicas
            if conv:
                self.ordered.append(GradBuckets(conv, transport, group, r, "replicas", average=True, overlap=False))
            self.ordered.append(GradBuckets(rest, transport, group, r, "replicas", average=True, overlap=True))

    def arm(self) -> None:
        for sync in self.ordered:
            sync.arm()

    def finish(self) -> None:
        for sync in self.ordered:
            sync.finish()


def gradient_syncs(shard: ShardNet, transport: Transport) -> GradientSyncs:
    """The shard's gradient syncs, made once (their hooks stay on the parameters)."""
    syncs = shard.__dict__.get("_gradient_syncs")
    if syncs is None:
        syncs = GradientSyncs(shard, transport)
        shard.__dict__["_gradient_syncs"] = syncs
    return syncs
