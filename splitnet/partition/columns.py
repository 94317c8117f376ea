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
- an LRN whose window reaches across a device boundary inside a tower: a ``halo``, point
  to point: each device receives from its neighbours the few channels its window reads
  (``size // 2`` on each side), and in backward sends their gradients back;
- a ``connect: group`` layer whose towers' inputs lie partly on other devices: a gather among the
  devices that need each other's channels (the devices of one tower, when a tower spans
  several), found as the connected sets of "needs a channel held by". Where each such set
  is exactly one tower's devices, a group layer may instead sum partial outputs within
  the tower (``reduce``: each device applies its tower's weight rows at the input columns
  it holds; reduce-scatter forward, all-gather backward), chosen per layer like a
  connecting layer's mode: ``auto`` takes the fewer bytes (alexnet over 4 devices: conv5,
  whose 192 input channels per tower become 128) and, where the bytes tie, the mode that
  keeps less for backward (the sum: a device keeps only its own input channels, not the
  tower's; alexnet's conv4, 192 channels in and out);
- the loss, if the last layer's output is sharded: the logits are all-gathered (every
  device then computes the same loss, so the backward needs no exchange).

Every exchange states each device's part; unequal parts are padded to the largest around
the collective, and the bytes the plan states are the padded ones. Every shard states the
input channels it reads where they are not its whole input (``Shard.reads``), and a halo
every transfer (``Exchange.moves``): the runtime follows them and recomputes neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from fractions import Fraction
from math import prod

from splitnet.model.spec import Layer, ModelSpec
from splitnet.partition.errors import PartitionError
from splitnet.partition.plan import Exchange, Placement, Shard, ring_bytes, split

Range = tuple[int, int]


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


def _tower_of_each(layer: Layer, held: Sequence[Range], outs: Sequence[Range],
                   groups: tuple[tuple[int, ...], ...]) -> dict[int, int] | None:
    """rank -> tower, when every gather group holds exactly one tower's input channels and
    computes exactly that tower's outputs (a tower spread over several devices); else None."""
    per_out, per_in = layer.out // layer.groups, layer.in_shape[0] // layer.groups
    tower: dict[int, int] = {}
    for g in groups:
        t = outs[g[0]][0] // per_out
        if (held[g[0]][0], held[g[-1]][1]) != (t * per_in, (t + 1) * per_in) or \
                (outs[g[0]][0], outs[g[-1]][1]) != (t * per_out, (t + 1) * per_out):
            return None
        tower.update(dict.fromkeys(g, t))
    return tower


def _tower_columns(layer: Layer, held: Sequence[Range], outs: Sequence[Range],
                   tower: dict[int, int]) -> tuple[Shard, ...]:
    """Reduce mode inside towers: a rank holds its tower's weight rows, at the columns of the
    input channels it holds (counted from the tower's first input channel); a rank outside
    every group keeps its own rows."""
    per_out, per_in = layer.out // layer.groups, layer.in_shape[0] // layer.groups
    shards = []
    for r, (out, (a, b)) in enumerate(zip(outs, held, strict=True)):
        if r not in tower:
            shards.append(Shard(r, out))
            continue
        t = tower[r]
        shards.append(Shard(r, out, (a - t * per_in, b - t * per_in), (t * per_out, (t + 1) * per_out)))
    return tuple(shards)


def halo_moves(layer: Layer, held: Sequence[Range]) -> tuple[tuple[int, int, Range], ...]:
    """(from, to, channels): every slice an LRN's device reads from another device's channels
    (its window's reach beyond its own, inside the tower), in (to, from) order."""
    moves = []
    for dst, own in enumerate(held):
        lo, hi = lrn_reach(layer, own)
        for src, (a, b) in enumerate(held):
            if src != dst and max(lo, a) < min(hi, b):
                moves.append((src, dst, (max(lo, a), min(hi, b))))
    return tuple(moves)


def _halo(moves: Sequence[tuple[int, int, Range]], unit_bytes: int) -> Exchange | None:
    """Point-to-point halo transfers: forward each device receives its halo channels, backward
    the gradients of the channels it sent. ``groups``: the pairs that talk."""
    if not moves:
        return None
    fwd: dict[int, int] = {}
    bwd: dict[int, int] = {}
    for src, dst, (a, b) in moves:
        fwd[dst] = fwd.get(dst, 0) + (b - a) * unit_bytes
        bwd[src] = bwd.get(src, 0) + (b - a) * unit_bytes
    ranks = sorted(set(fwd) | set(bwd))
    per_rank = tuple((r, Fraction(fwd.get(r, 0)), Fraction(bwd.get(r, 0))) for r in ranks)
    pairs = tuple(sorted({(min(s, d), max(s, d)) for s, d, _ in moves}))
    return Exchange("halo", "send", "send", pairs, max(f for _, f, _ in per_rank), max(b for _, _, b in per_rank),
                    per_rank, moves=tuple(moves))


def _reads(layer: Layer, shard: Shard, held: Range | None) -> Shard:
    """``shard`` with the input channels its weighted layer reads, where not the whole input:
    a reduce-mode shard its columns' channels (``held``), a group layer its towers' inputs."""
    whole = (0, layer.in_shape[0])
    if shard.cols is not None:
        reads = held
    else:
        reads = group_need(layer, shard.out) if layer.connect == "group" else whole
    return replace(shard, reads=reads) if reads != whole else shard


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
                towers = _tower_of_each(layer, held, outs, groups) if groups and exchange != "gather" else None
                if ex is not None and towers is not None:
                    # each group is one tower's devices: they may instead sum partial outputs
                    unit_out = rows * prod(layer.out_shape[1:]) * dtype_bytes
                    reduce = parted("reduce", "reduce_scatter", "all_gather", groups,
                                    tuple(_widths(outs, g) for g in groups), unit_out)
                    # fewer bytes first; on a tie, less held for backward: a gathering conv keeps the
                    # tower's assembled input, a summing one only the channels it holds
                    kept_gather = max(sum(p) for p in ex.parts) * unit_in
                    kept_reduce = max(b - a for a, b in held) * unit_in
                    if exchange == "reduce" or (reduce.bytes_fwd + reduce.bytes_bwd, kept_reduce) < (
                            ex.bytes_fwd + ex.bytes_bwd, kept_gather):
                        shards = _tower_columns(layer, held, outs, towers)
                        ex = reduce
            shards = tuple(_reads(layer, s, held[s.rank] if held is not None else None) for s in shards)
            summed = ex is not None and ex.collective == "all_reduce"
            held = None if summed else outs
        else:
            reads: list[Range | None] = [None] * devices
            if held is not None and layer.op == "lrn" and layer.size > 1:
                ex = _halo(halo_moves(layer, held), unit_in)
                if ex is not None:  # each device's window reaches into the channels the halo brings
                    reads = [lrn_reach(layer, own) for own in held]
                    reads = [r if r != own else None for r, own in zip(reads, held, strict=True)]
            if held is not None and layer.op == "flatten":
                held = [(a * spatial_in, b * spatial_in) for a, b in held]
            shards = tuple(Shard(r, held[r] if held is not None else (0, channels), reads=reads[r]) for r in ranks)
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
