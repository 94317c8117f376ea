"""``pipeline``: contiguous layer ranges become stages, one stage per device.

Stage s sends its last activation to stage s+1 in forward, and receives that
activation's gradient back in backward. Boundaries are given by layer names or chosen
to minimise the largest stage's cost (FLOPs or parameters), by exact dynamic programming.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from math import prod

from splitnet.model.spec import ModelSpec
from splitnet.partition.errors import PartitionError
from splitnet.partition.plan import Exchange, Placement, Shard


def balanced_starts(costs: Sequence[int], stages: int, cut_bytes: Sequence[int] | None = None,
                    weighted: Sequence[bool] | None = None) -> list[int]:
    """First layer index of each stage, minimising the largest stage sum (each stage non-empty).

    Among the cuts that reach that minimum, the one whose boundaries send the fewest bytes
    (``cut_bytes[i]``: what a cut before layer i sends) wins; weightless layers cost almost
    nothing, so without this the cut would land on either side of them by chance. With
    ``weighted``, every stage holds at least one layer marked True: a stage without
    parameters has nothing to train, and its rank's optimizer would hold nothing.
    """
    n = len(costs)
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    held = [0]
    for w in weighted or [True] * n:
        held.append(held[-1] + bool(w))
    inf = float("inf")

    def solve(key: object) -> tuple[list[list[float]], list[list[int]]]:
        best = [[inf] * (n + 1) for _ in range(stages + 1)]
        cut = [[0] * (n + 1) for _ in range(stages + 1)]
        best[0][0] = 0
        for s in range(1, stages + 1):
            for i in range(s, n + 1):
                for j in range(s - 1, i):
                    if held[i] == held[j]:
                        continue
                    value = key(best[s - 1][j], j, i)  # type: ignore[operator]
                    if value < best[s][i]:
                        best[s][i], cut[s][i] = value, j
        return best, cut

    # pass 1: the smallest possible largest stage; pass 2: fewest bytes among cuts within it
    best, cut = solve(lambda prev, j, i: max(prev, prefix[i] - prefix[j]))
    limit = best[stages][n]
    sends = cut_bytes or [0] * n
    _, cut = solve(lambda prev, j, i: prev + (sends[j] if j else 0) if prefix[i] - prefix[j] <= limit else inf)
    starts, i = [], n
    for s in range(stages, 0, -1):
        i = cut[s][i]
        starts.append(i)
    return starts[::-1]


def stage_starts(spec: ModelSpec, stages: int, balance: str, boundaries: Sequence[str] | None) -> list[int]:
    weighted = [layer.params > 0 for layer in spec.layers]
    if stages > sum(weighted):
        raise PartitionError(f"pipeline: mesh.devices={stages} stages but {spec.name} has only {sum(weighted)} "
                             f"layers with weights, and every stage needs one to train; use mesh.devices <= "
                             f"{sum(weighted)}, or partition=columns")
    if isinstance(boundaries, str):  # `partition.boundaries=fc6` on the command line: one name
        boundaries = [boundaries]
    if boundaries:
        names = [layer.name for layer in spec.layers]
        if len(boundaries) != stages - 1:
            raise PartitionError(f"pipeline: partition.boundaries={list(boundaries)} names {len(boundaries)} "
                                 f"stage starts; mesh.devices={stages} needs exactly {stages - 1}")
        for b in boundaries:
            if b not in names:
                raise PartitionError(f"pipeline: partition.boundaries names {b!r}, which is not a layer "
                                     f"of {spec.name}; layers: {', '.join(names)}")
        starts = [0] + [names.index(b) for b in boundaries]
        if any(a >= b for a, b in zip(starts, starts[1:], strict=False)) or starts[1:2] == [0]:
            raise PartitionError(f"pipeline: partition.boundaries={list(boundaries)} must be layers in "
                                 "model order, after the first layer, each stage non-empty")
        for stage, (a, b) in enumerate(zip(starts, [*starts[1:], len(names)], strict=True)):
            if not any(weighted[a:b]):
                raise PartitionError(f"pipeline: partition.boundaries={list(boundaries)} leave stage {stage} "
                                     f"({', '.join(names[a:b])}) without a layer with weights: it would have "
                                     "nothing to train; move a boundary so every stage holds a conv or linear")
        return starts
    if balance not in ("flops", "params"):
        raise PartitionError(f"pipeline: partition.balance={balance!r}; valid: flops, params")
    costs = [layer.flops if balance == "flops" else layer.params for layer in spec.layers]
    return balanced_starts(costs, stages, [prod(layer.in_shape) for layer in spec.layers], weighted)


def pipeline(spec: ModelSpec, stages: int, balance: str, boundaries: Sequence[str] | None,
             batch: int, dtype_bytes: int) -> tuple[list[Placement], tuple[float, ...]]:
    starts = stage_starts(spec, stages, balance, boundaries)
    ends = starts[1:] + [len(spec.layers)]
    placements: list[Placement] = []
    for stage, (a, b) in enumerate(zip(starts, ends, strict=True)):
        for i in range(a, b):
            layer = spec.layers[i]
            ex = None
            if i == a and stage > 0:
                s = batch * prod(layer.in_shape) * dtype_bytes
                ex = Exchange("send", "send", "send", ((stage - 1, stage),), Fraction(s), Fraction(s),
                              ((stage - 1, Fraction(0), Fraction(s)), (stage, Fraction(s), Fraction(0))))
            placements.append(Placement(layer.name, layer.op, (Shard(stage, (0, layer.out_shape[0])),),
                                        ex, stage=stage))
    placements.append(Placement("loss", "loss", (), None, stage=stages - 1))
    key = "flops" if balance != "params" else "params"
    totals = [sum(getattr(spec.layers[i], key) for i in range(a, b))
              for a, b in zip(starts, ends, strict=True)]
    whole = sum(totals) or 1
    return placements, tuple(round(t / whole, 4) for t in totals)
