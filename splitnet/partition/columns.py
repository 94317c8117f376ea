"""``columns``: the 2012 layout, generalised to D devices.

Every weighted layer's output channels are cut into D equal contiguous shards, which
follow the group (tower) structure: D may equal the group count, divide it (several
towers per device) or be a multiple of it (one tower over several devices). Weightless
layers keep their input's shards. A layer talks only where it reads channels it does
not hold:

- a ``connect: full`` layer whose input is sharded: ``gather`` (all-gather the input;
  backward reduce-scatters its gradient) or ``reduce`` (each device applies its input
  columns of the weight; the partial outputs are reduce-scattered, or all-reduced for
  the last layer, whose logits the loss needs whole);
- a ``connect: group`` layer or an LRN whose tower spans several devices: a gather
  among that tower's devices only;
- the loss, if the last layer's output is sharded: the logits are all-gathered (every
  device then computes the same loss, so the backward needs no exchange).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from splitnet.errors import SplitnetError
from splitnet.partition.plan import Exchange, Placement, Shard, ring_bytes
from splitnet.spec import Layer, ModelSpec


class PartitionError(SplitnetError, ValueError):
    pass


def split(channels: int, devices: int, rank: int) -> tuple[int, int]:
    return (rank * channels // devices, (rank + 1) * channels // devices)


def shardable(layer: Layer, devices: int) -> bool:
    g = layer.groups
    return layer.out % devices == 0 and (g % devices == 0 or devices % g == 0)


def check_devices(spec: ModelSpec, layers: Sequence[Layer], devices: int, strategy: str) -> None:
    weighted = [layer for layer in layers if layer.weighted]
    for layer in weighted:
        if not shardable(layer, devices):
            works = [d for d in range(1, 129) if all(shardable(w, d) for w in weighted)]
            raise PartitionError(
                f"{strategy}: layer {layer.name!r} (out={layer.out}, groups={layer.groups}) cannot be "
                f"split over mesh.devices={devices}: the device count must divide out and either "
                f"divide the group count or be a multiple of it. Values that work for {spec.name}: "
                f"{works}")


def _gather(groups: tuple[tuple[int, ...], ...], nbytes: int) -> Exchange:
    k = len(groups[0])
    return Exchange("gather", "all_gather", "reduce_scatter", groups,
                    ring_bytes("all_gather", nbytes, k), ring_bytes("reduce_scatter", nbytes, k))


def _reduce(devices: int, nbytes: int, last: bool) -> Exchange:
    everyone = (tuple(range(devices)),)
    if last:
        return Exchange("reduce", "all_reduce", "none", everyone,
                        ring_bytes("all_reduce", nbytes, devices), ring_bytes("none", 0, devices))
    return Exchange("reduce", "reduce_scatter", "all_gather", everyone,
                    ring_bytes("reduce_scatter", nbytes, devices), ring_bytes("all_gather", nbytes, devices))


def tower_groups(devices: int, groups: int) -> tuple[tuple[int, ...], ...]:
    """The device sets that share one tower when a tower spans several devices."""
    k = devices // groups
    return tuple(tuple(range(g * k, (g + 1) * k)) for g in range(groups))


def shard_columns(spec: ModelSpec, layers: Sequence[Layer], devices: int, exchange: str,
                  rows: int, dtype_bytes: int, sharded_input: bool,
                  strategy: str = "columns") -> tuple[list[Placement], bool]:
    """Column-shard a run of layers; returns the placements and whether the output is sharded."""
    if exchange not in ("gather", "reduce", "auto"):
        raise PartitionError(f"partition.exchange={exchange!r}; valid: gather, reduce, auto")
    check_devices(spec, layers, devices, strategy)
    everyone = (tuple(range(devices)),)
    last_name = spec.layers[-1].name
    placements: list[Placement] = []
    sharded = sharded_input
    for layer in layers:
        channels = layer.out_shape[0]
        s_in = rows * prod(layer.in_shape) * dtype_bytes
        s_out = rows * prod(layer.out_shape) * dtype_bytes
        shards = tuple(Shard(r, split(channels, devices, r) if sharded else (0, channels))
                       for r in range(devices))
        ex: Exchange | None = None
        if layer.weighted:
            shards = tuple(Shard(r, split(channels, devices, r)) for r in range(devices))
            if sharded and devices > 1 and layer.connect == "full":
                last = layer.name == last_name
                gather = _gather(everyone, s_in)
                reduce = _reduce(devices, s_out, last)
                gather_cost = gather.bytes_fwd + gather.bytes_bwd
                if last:  # gather mode then also gathers the logits for the loss
                    gather_cost += ring_bytes("all_gather", s_out, devices)
                use_reduce = exchange == "reduce" or (
                    exchange == "auto" and reduce.bytes_fwd + reduce.bytes_bwd < gather_cost)
                if use_reduce:
                    cin = layer.in_shape[0]
                    shards = tuple(Shard(r, split(channels, devices, r), split(cin, devices, r))
                                   for r in range(devices))
                    ex = reduce
                else:
                    ex = gather
            elif sharded and devices > layer.groups and layer.connect == "group":
                ex = _gather(tower_groups(devices, layer.groups), s_in // layer.groups)
            sharded = not (ex is not None and ex.collective == "all_reduce")
        elif layer.op == "lrn" and sharded and devices > layer.groups and layer.size > 1:
            ex = _gather(tower_groups(devices, layer.groups), s_in // layer.groups)
        placements.append(Placement(layer.name, layer.op, shards, ex))
    return placements, sharded


def loss_placement(spec: ModelSpec, devices: int, rows: int, dtype_bytes: int, sharded: bool) -> Placement:
    """The loss needs every logit: gather them if the last layer left them sharded."""
    ex = None
    if sharded and devices > 1:
        s = rows * prod(spec.layers[-1].out_shape) * dtype_bytes
        ex = Exchange("logits", "all_gather", "none", (tuple(range(devices)),),
                      ring_bytes("all_gather", s, devices), ring_bytes("none", 0, devices))
    return Placement("loss", "loss", (), ex)


def columns(spec: ModelSpec, devices: int, exchange: str, batch: int, dtype_bytes: int) -> list[Placement]:
    placements, sharded = shard_columns(spec, spec.layers, devices, exchange, batch, dtype_bytes,
                                        sharded_input=False)
    return [*placements, loss_placement(spec, devices, batch, dtype_bytes, sharded)]
