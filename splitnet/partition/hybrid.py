"""``hybrid``: "one weird trick" (Krizhevsky 2014).

Convolutional layers hold most of the compute and few of the weights: replicate them
and give each device its own slice of the batch. Fully-connected layers hold most of
the weights and little compute: shard them like ``columns``. Device r takes rows
[r*B//D, (r+1)*B//D) of the batch (parts differ by at most one row). At the first
fully-connected layer every device gathers every device's samples (backward: each
sample's gradient is reduce-scattered back to the device that owns it); after backward
the replicated conv weights' gradients are summed over the devices (all-reduce).
"""

from __future__ import annotations

from fractions import Fraction
from math import prod

from splitnet.model.spec import ModelSpec
from splitnet.partition.columns import loss_placement, parted, shard_columns
from splitnet.partition.cost import shard_params, weight_bytes
from splitnet.partition.errors import PartitionError
from splitnet.partition.plan import Exchange, Placement, Shard, ring_bytes, split


def hybrid(spec: ModelSpec, devices: int, exchange: str, batch: int, dtype_bytes: int) -> list[Placement]:
    first_fc = next((i for i, layer in enumerate(spec.layers) if layer.op == "linear"), None)
    if first_fc is None:
        raise PartitionError(f"hybrid: {spec.name} has no linear layer to shard; use partition=columns")
    if batch < devices:
        raise PartitionError(f"hybrid: batch_size={batch} is smaller than mesh.devices={devices}, so some "
                             f"device would get no sample; use batch_size >= {devices}")
    everyone = (tuple(range(devices)),)
    conv_part = [Placement(layer.name, layer.op,
                           tuple(Shard(r, (0, layer.out_shape[0])) for r in range(devices)), None,
                           batch_split=True)
                 for layer in spec.layers[:first_fc]]
    fc_part, held = shard_columns(spec, spec.layers[first_fc:], devices, exchange, batch, dtype_bytes,
                                     sharded_input=False, strategy="hybrid")
    if devices > 1:
        fc = spec.layers[first_fc]
        rows = tuple(b - a for a, b in (split(batch, devices, r) for r in everyone[0]))
        gather = parted("batch", "all_gather", "reduce_scatter", everyone, (rows,),
                        prod(fc.in_shape) * dtype_bytes)
        head = fc_part[0]
        fc_part[0] = Placement(head.name, head.op, head.shards, gather)
    rows = [*conv_part, *fc_part, loss_placement(spec, devices, batch, dtype_bytes, held)]
    conv_bytes = sum(shard_params(layer, Shard(0, (0, layer.out))) for layer in spec.layers[:first_fc]
                     if layer.weighted) * weight_bytes(dtype_bytes)
    if devices > 1 and conv_bytes:
        rows.append(Placement("conv_grads", "conv_grads", (), Exchange(
            "grads", "none", "all_reduce", everyone, Fraction(0),
            ring_bytes("all_reduce", conv_bytes, devices))))
    return rows
