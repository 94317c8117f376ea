"""``columns``: the 2012 layout, generalised to D devices.

Every weighted layer's output channels are cut into D contiguous shards as equal as
possible (sizes differ by at most one channel): rank r holds [r*C//D, (r+1)*C//D). Where
the towers allow it the cuts fall on tower boundaries: D may equal the group count,
divide it (several towers per device) or be a multiple of it (one tower over several
devices); otherwise a device holds the end of one tower and the start of the next.
Weightless layers keep their input's shards. A layer talks only where it reads channels
it does not hold:

- a ``connect: full`` layer whose input is sharded: ``gather`` (all-gather the input;
  backward reduce-scatters its gradient) or ``reduce`` (each device applies the input
  columns it holds; the partial outputs are reduce-scattered, or all-reduced for the last
  layer, whose logits the loss needs whole);
- a ``connect: group`` layer whose towers' inputs lie partly on other devices, or an LRN
  whose window reaches across a device boundary inside a tower: a gather among the
  devices that need each other's channels (the devices of one tower, when a tower spans
  several), found as the connected sets of "needs a channel held by";
- the loss, if the last layer's output is sharded: the logits are all-gathered (every
  device then computes the same loss, so the backward needs no exchange).

Every exchange states each device's part; unequal parts are padded to the largest around
the collective, and the bytes the plan states are the padded ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from math import prod

from splitnet.errors import SplitnetError
from splitnet.partition.plan import Exchange, Placement, Shard, ring_bytes
from splitnet.spec import Layer, ModelSpec

Range = tuple[int, int]


class PartitionError(SplitnetError, ValueError):
    pass


def split(channels: int, devices: int, rank: int) -> Range:
    """Rank ``rank``'s contiguous share of ``channels``: sizes differ by at most one."""
    return (rank * channels // devices, (rank + 1) * channels // devices)


def check_devices(spec: ModelSpec, layers: Sequence[Layer], devices: int, strategy: str) -> None:
    """Every device must hold at least one channel of every weighted layer it shards."""
    weighted = [layer for layer in layers if layer.weighted]
    narrowest = min(weighted, key=lambda layer: layer.out, default=None)
    if narrowest is not None and narrowest.out < devices:
        raise PartitionError(
            f"{strategy}: layer {narrowest.name!r} has out={narrowest.out} channels, fewer than "
            f"mesh.devices={devices}, so some device would hold none of it; use mesh.devices <= "
            f"{narrowest.out} (the narrowest layer's width), or partition=pipeline")


def group_need(layer: Layer, out: Range) -> Range:
    """The input channels a ``connect: group`` layer's output channels ``out`` read: the
    whole input towers of every tower those outputs belong to."""
    per_out, per_in = layer.out // layer.groups, layer.in_shape[0] // layer.groups
    return ((out[0] // per_out) * per_in, -(-out[1] // per_out) * per_in)


def lrn_reach(layer: Layer, own: Range) -> Range:
    """The channels an LRN over channels ``own`` reads: the window's reach on either side
    (torch's padding: [c - size//2, c + (size-1)//2]), never beyond a tower's edge."""
    per_group = layer.in_shape[0] // layer.groups
    a, b = own
    first_tower, last_tower_end = a // per_group * per_group, ((b - 1) // per_group + 1) * per_group
    return (max(a - layer.size // 2, first_tower), min(b + (layer.size - 1) // 2, last_tower_end))


def gather_groups(held: Sequence[Range], need: Sequence[Range]) -> tuple[tuple[int, ...], ...]:
    """The device sets that gather together: rank r joins every rank holding a channel of
    ``need[r]``, and a set is closed over the ranks between its ends, so what it gathers
    is one contiguous channel range. Devices that need nothing of anyone are left out."""
    n = len(held)
    parent = list(range(n))

    def root(r: int) -> int:
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    for r in range(n):
        holders = [s for s in range(n) if s != r and held[s][0] < need[r][1] and need[r][0] < held[s][1]
                   and held[s][0] < held[s][1]]
        if holders:
            for s in range(min(r, *holders), max(r, *holders) + 1):
                parent[root(s)] = root(r)
    sets: dict[int, list[int]] = {}
    for r in range(n):
        sets.setdefault(root(r), []).append(r)
    return tuple(tuple(g) for g in sorted(sets.values()) if len(g) > 1)


def parted(mode: str, collective: str, backward: str, groups: tuple[tuple[int, ...], ...],
           parts: tuple[tuple[int, ...], ...], unit_bytes: int) -> Exchange:
    """An exchange whose groups each join (or split) their members' parts; each member
    receives (k-1) parts padded to the group's largest, forward and (unless ``none``)
    backward. ``unit_bytes``: the bytes of one channel, feature or row of a part."""
    per_group = [Fraction((len(g) - 1) * max(p) * unit_bytes) for g, p in zip(groups, parts, strict=True)]
    bwd = [b if backward != "none" else Fraction(0) for b in per_group]
    per_rank: tuple[tuple[int, Fraction, Fraction], ...] = ()
    if len(set(per_group)) > 1:
        per_rank = tuple((r, f, b) for g, f, b in zip(groups, per_group, bwd, strict=True) for r in g)
    return Exchange(mode, collective, backward, groups, per_group[0], bwd[0], per_rank, parts)


def _widths(ranges: Sequence[Range], group: Sequence[int]) -> tuple[int, ...]:
    return tuple(ranges[r][1] - ranges[r][0] for r in group)


def _gather(held: Sequence[Range], groups: tuple[tuple[int, ...], ...], unit_bytes: int) -> Exchange:
    return parted("gather", "all_gather", "reduce_scatter", groups,
                  tuple(_widths(held, g) for g in groups), unit_bytes)


def _reduce(devices: int, outs: Sequence[Range], unit_bytes: int, nbytes: int, last: bool) -> Exchange:
    everyone = (tuple(range(devices)),)
    parts = (_widths(outs, everyone[0]),)
    if last:
        return Exchange("reduce", "all_reduce", "none", everyone, ring_bytes("all_reduce", nbytes, devices),
                        ring_bytes("none", 0, devices), (), parts)
    return parted("reduce", "reduce_scatter", "all_gather", everyone, parts, unit_bytes)


def shard_columns(spec: ModelSpec, layers: Sequence[Layer], devices: int, exchange: str,
                  rows: int, dtype_bytes: int, sharded_input: bool,
                  strategy: str = "columns") -> tuple[list[Placement], list[Range] | None]:
    """Column-shard a run of layers; returns the placements and the output's shards (None:
    every rank holds the whole output).

    Follows, for every rank, the input channels it holds when each layer starts (``held``;
    None while every rank holds the whole tensor), as the runtime will."""
    if exchange not in ("gather", "reduce", "auto"):
        raise PartitionError(f"partition.exchange={exchange!r}; valid: gather, reduce, auto")
    check_devices(spec, layers, devices, strategy)
    ranks = range(devices)
    everyone = (tuple(ranks),)
    last_name = spec.layers[-1].name
    placements: list[Placement] = []
    held: list[Range] | None = [split(layers[0].in_shape[0], devices, r) for r in ranks] \
        if sharded_input else None
    for layer in layers:
        channels = layer.out_shape[0]
        spatial_in = prod(layer.in_shape[1:])
        unit_in = rows * spatial_in * dtype_bytes  # one input channel (or feature) of the batch
        ex: Exchange | None = None
        if layer.weighted:
            outs = [split(channels, devices, r) for r in ranks]
            shards = tuple(Shard(r, outs[r]) for r in ranks)
            if held is not None and devices > 1 and layer.connect == "full":
                last = layer.name == last_name
                unit_out = rows * prod(layer.out_shape[1:]) * dtype_bytes
                gather = _gather(held, everyone, unit_in)
                reduce = _reduce(devices, outs, unit_out, rows * prod(layer.out_shape) * dtype_bytes, last)
                gather_cost = gather.bytes_fwd + gather.bytes_bwd
                if last:  # gather mode then also gathers the logits for the loss
                    gather_cost += (devices - 1) * max(b - a for a, b in outs) * unit_out
                use_reduce = exchange == "reduce" or (
                    exchange == "auto" and reduce.bytes_fwd + reduce.bytes_bwd < gather_cost)
                if use_reduce:  # each rank applies the weight's columns for the inputs it holds
                    shards = tuple(Shard(r, outs[r], held[r]) for r in ranks)
                    ex = reduce
                else:
                    ex = gather
            elif held is not None and layer.connect == "group":
                groups = gather_groups(held, [group_need(layer, o) for o in outs])
                ex = _gather(held, groups, unit_in) if groups else None
            summed = ex is not None and ex.collective == "all_reduce"
            held = None if summed else outs
        else:
            if held is not None and layer.op == "lrn" and layer.size > 1:
                groups = gather_groups(held, [lrn_reach(layer, h) for h in held])
                ex = _gather(held, groups, unit_in) if groups else None
            if held is not None and layer.op == "flatten":
                held = [(a * spatial_in, b * spatial_in) for a, b in held]
            shards = tuple(Shard(r, held[r] if held is not None else (0, channels)) for r in ranks)
        placements.append(Placement(layer.name, layer.op, shards, ex))
    return placements, held


def loss_placement(spec: ModelSpec, devices: int, rows: int, dtype_bytes: int,
                   held: Sequence[Range] | None) -> Placement:
    """The loss needs every logit: gather them if the last layer left them sharded."""
    ex = None
    if held is not None and devices > 1:
        everyone = (tuple(range(devices)),)
        spatial = prod(spec.layers[-1].out_shape[1:])  # a conv's logits are gathered flattened
        parts = tuple(w * spatial for w in _widths(held, everyone[0]))
        ex = parted("logits", "all_gather", "none", everyone, (parts,), rows * dtype_bytes)
    return Placement("loss", "loss", (), ex)


def columns(spec: ModelSpec, devices: int, exchange: str, batch: int, dtype_bytes: int) -> list[Placement]:
    placements, held = shard_columns(spec, spec.layers, devices, exchange, batch, dtype_bytes,
                                     sharded_input=False)
    return [*placements, loss_placement(spec, devices, batch, dtype_bytes, held)]
