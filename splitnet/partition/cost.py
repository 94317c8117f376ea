"""The cost model: what each device holds, computes and receives, from the plan alone.

Per device, for SGD with momentum; ``dtype_bytes`` is what activations and their exchanges
take (4: float32, 2: bf16 compute), while master weights, their gradients and the
optimizer's state stay at least float32 (``weight_bytes``):
- parameters: the weight rows (and, in reduce mode, input columns) and bias rows of
  its shards; gradients the same; optimizer state one momentum buffer the same.
- activations: everything else it holds at its peak moment of a step (memory.py walks
  the step as autograd does: the input batch, the tensors each op saves for backward at
  its own rows, the tensors its exchanges assemble, the gradients in flight), so that
  parameters + gradients + momentum + activations is the peak the allocator reports.
- FLOPs: forward FLOPs of its share of each layer, times 3 for forward + backward
  (backward costs about twice the forward: one product for the input gradient, one
  for the weight gradient), times its rows of the batch.
- bytes in: the sum over exchange points of what it receives (see plan.py).
"""

from __future__ import annotations

from splitnet.model.spec import Layer, ModelSpec
from splitnet.partition.memory import held_bytes
from splitnet.partition.plan import DeviceCost, Placement, Shard


def weight_bytes(dtype_bytes: int) -> int:
    """Bytes of one parameter, gradient or momentum entry: bf16 (or narrower) compute keeps
    float32 master weights, so the weights never go below 4 bytes."""
    return max(dtype_bytes, 4)


def shard_params(layer: Layer, shard: Shard) -> int:
    """Parameters a rank allocates for its shard of ``layer``."""
    if not layer.weighted:
        return 0
    kernel = layer.kernel**2 if layer.op == "conv" else 1
    rows, cols = _weight_block(layer, shard)
    return rows * cols * kernel + (shard.out[1] - shard.out[0])


def _weight_block(layer: Layer, shard: Shard) -> tuple[int, int]:
    """(rows, columns) of the weight a rank holds: its output rows, or in reduce mode every
    row (or its tower's) at the columns of the inputs it holds."""
    rows0, rows1 = shard.weight_rows(layer.out)
    cols = shard.cols[1] - shard.cols[0] if shard.cols is not None else layer.in_per_group
    return rows1 - rows0, cols


def device_costs(spec: ModelSpec, placements: list[Placement], devices: int, batch: int,
                 dtype_bytes: int, microbatches: int = 1, schedule: str = "gpipe",
                 chunks: int = 1) -> list[DeviceCost]:
    """DeviceCost per model-parallel rank; ``bytes_in`` is filled in by ``with_bytes_in``;
    ``schedule``: a pipeline's micro-batch order, which sets how many it holds at once."""
    costs = []
    for rank in range(devices):
        params = flops = 0
        per_layer: dict[str, int] = {}
        for p in placements:
            shard = p.shard(rank)
            if shard is None:  # another rank's layer, or a pseudo-layer (no shards)
                continue
            layer = spec.layer(p.name)
            rows = p.rows(batch, devices, rank)
            count = shard_params(layer, shard)
            params += count
            per_layer[p.name] = count * weight_bytes(dtype_bytes)
            if layer.weighted:
                block_rows, block_cols = _weight_block(layer, shard)
                share = block_rows * block_cols / (layer.out * layer.in_per_group)
            else:
                share = (shard.out[1] - shard.out[0]) / layer.out_shape[0]
            flops += round(3 * layer.flops * share * rows)
        pbytes = params * weight_bytes(dtype_bytes)
        held = held_bytes(spec, placements, rank, batch, devices, microbatches, dtype_bytes, per_layer, schedule,
                          chunks)
        costs.append(DeviceCost(rank, params, pbytes, pbytes, pbytes, held.peak - 3 * pbytes, flops, 0))
    return costs


def with_bytes_in(costs: list[DeviceCost], placements: list[Placement]) -> list[DeviceCost]:
    out = []
    for c in costs:
        total = sum(sum(p.exchange.received(c.rank)) for p in placements if p.exchange is not None)
        out.append(DeviceCost(c.rank, c.param_count, c.param_bytes, c.grad_bytes, c.optimizer_bytes,
                              c.activation_bytes, c.flops, round(total)))
    return out
