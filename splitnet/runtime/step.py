"""One training step of a shard: forward, loss, backward, gradient sums. Optimizer outside."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from splitnet.comm.exchange import all_reduce_grads
from splitnet.comm.transport import Transport
from splitnet.layers import set_step
from splitnet.runtime.schedule import gpipe_step
from splitnet.runtime.shard import ShardNet


@dataclass
class StepResult:
    loss: torch.Tensor | None     # this replica's mean loss, where this rank holds the logits
    logits: torch.Tensor | None


def forward_backward(shard: ShardNet, x: torch.Tensor, y: torch.Tensor, transport: Transport,
                     step: int) -> StepResult:
    """Gradients of this replica's mean cross-entropy on (x, y), summed and averaged as the plan says.

    ``x``/``y`` are this replica's whole batch (every rank of a model-parallel group gets the
    same one). Dropout masks are drawn for the batch of all replicas, so row offsets
    include the replica's position.
    """
    plan = shard.plan
    batch = x.shape[0]
    row_offset, full_batch = transport.replica * batch, plan.replicas * batch
    if plan.strategy == "pipeline":
        loss, logits = gpipe_step(shard, x, y, transport, step, row_offset, full_batch)
    else:
        set_step(shard, step, row_offset, full_batch)
        logits = shard(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        loss, logits = loss.detach(), logits.detach()
    sync_gradients(shard, transport)
    return StepResult(loss, logits)


def sync_gradients(shard: ShardNet, transport: Transport) -> None:
    """Sum replicated conv gradients over the devices (hybrid), average shards over replicas."""
    plan = shard.plan
    names = {p.name for p in plan.layers}
    if "conv_grads" in names and transport.mesh.devices > 1:
        conv = [getattr(shard, p.name) for p in plan.layers if p.batch_split]
        params = [param for module in conv for param in module.parameters()]
        group = tuple(range(plan.devices))
        all_reduce_grads(params, transport, transport.group(group), plan.devices, "conv_grads", average=False)
    if "replicas" in names and transport.replica_group is not None:
        all_reduce_grads(shard.parameters(), transport, transport.replica_group, plan.replicas, "replicas",
                         average=True)
