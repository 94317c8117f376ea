"""The Plan: the single source of truth for placement, exchanges and their cost.

Which model-parallel rank holds which slice of which layer, where each exchange
happens and with which collective, and what every device will hold and receive.
Ranks here are model-parallel ranks 0..D-1; every replica has the same layout.
The runtime reads a Plan and never decides placement on its own.

Exchange bytes are what each receiving device receives per training step, forward
and backward, under the ring accounting of NCCL's bus-bandwidth figures: all-gather
and reduce-scatter of an S-byte tensor over k devices: (k-1)/k * S; all-reduce:
2(k-1)/k * S; a point-to-point send of S bytes: S, to the receiver only. Where the k
parts differ (a width the device count does not divide), every part is padded to the
largest, P bytes, and an all-gather or reduce-scatter moves (k-1) * P to each device.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

# The pseudo-layers that carry exchanges of no single spec layer.
PSEUDO = ("loss", "conv_grads", "replicas")


def ring_bytes(collective: str, nbytes: int, k: int) -> Fraction:
    """Bytes one device receives when ``collective`` runs on an S-byte tensor over k devices."""
    if collective in ("all_gather", "reduce_scatter"):
        return Fraction((k - 1) * nbytes, k)
    if collective == "all_reduce":
        return Fraction(2 * (k - 1) * nbytes, k)
    if collective == "send":
        return Fraction(nbytes)
    if collective == "none":
        return Fraction(0)
    raise ValueError(f"unknown collective {collective!r}")


def split(size: int, devices: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share [r*S//D, (r+1)*S//D) of ``size`` channels or batch
    rows: the shares differ by at most one."""
    return (rank * size // devices, (rank + 1) * size // devices)


@dataclass(frozen=True)
class Shard:
    """What one rank computes of a layer: output channels [out0, out1), and for a
    weight held by input columns (reduce mode) the weight's columns [cols0, cols1) of the
    weight rows ``rows`` (default: every row; a ``connect: group`` layer in reduce mode
    holds one tower's rows, and its columns count from that tower's first input channel).

    ``reads``: the input channels (features, for a linear layer) this rank's computation
    reads, in the layer's input numbering, where they are not the whole input: a
    ``connect: group`` layer's towers, a reduce-mode layer's columns, an LRN's own channels
    widened by its window's reach into its neighbours' (which a halo brings). None: all of
    them (a weighted layer) or exactly ``out`` (a weightless one)."""

    rank: int
    out: tuple[int, int]
    cols: tuple[int, int] | None = None
    rows: tuple[int, int] | None = None
    reads: tuple[int, int] | None = None

    def weight_rows(self, out: int) -> tuple[int, int]:
        """The weight rows this rank holds, for a layer of ``out`` output channels."""
        if self.rows is not None:
            return self.rows
        return (0, out) if self.cols is not None else self.out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rank": self.rank, "out_channels": list(self.out)}
        if self.cols is not None:
            d["in_columns"] = list(self.cols)
        if self.rows is not None:
            d["weight_rows"] = list(self.rows)
        if self.reads is not None:
            d["reads"] = list(self.reads)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Shard:
        cols, rows, reads = d.get("in_columns"), d.get("weight_rows"), d.get("reads")
        return cls(int(d["rank"]), tuple(d["out_channels"]), tuple(cols) if cols else None,  # type: ignore[arg-type]
                   tuple(rows) if rows else None, tuple(reads) if reads else None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Exchange:
    """One exchange point.

    ``collective`` runs in forward, ``backward`` in backward; ``groups`` are the sets of
    model-parallel ranks that talk to each other (several disjoint groups run at once,
    e.g. the devices of each tower). ``per_rank`` overrides the uniform byte figures
    where devices receive different amounts (point-to-point sends, gradient sums, groups
    whose parts differ). ``parts``: per group, each member's part of the exchanged tensor
    along the dimension the exchange joins or splits (channels, features or batch rows),
    in the group's rank order. Parts may differ by a channel or a row where a width does
    not divide by the device count; the collective then pads every part to the largest,
    and the bytes here are the padded ones, which are what moves.

    ``moves``: a halo's point-to-point transfers, (from, to, channels) with channels in the
    layer's numbering: forward ``from`` sends ``to`` those of its channels, backward their
    gradients go back. Every other exchange has none.
    """

    mode: str
    collective: str
    backward: str
    groups: tuple[tuple[int, ...], ...]
    bytes_fwd: Fraction
    bytes_bwd: Fraction
    per_rank: tuple[tuple[int, Fraction, Fraction], ...] = ()
    parts: tuple[tuple[int, ...], ...] = ()
    moves: tuple[tuple[int, int, tuple[int, int]], ...] = ()

    @property
    def uneven(self) -> str:
        """The parts where some group's differ, as text ("10/11/11"; groups joined by "; "), else ""."""
        if all(len(set(p)) <= 1 for p in self.parts):
            return ""
        return "; ".join("/".join(str(n) for n in p) for p in self.parts)

    def parts_of(self, rank: int) -> tuple[int, ...] | None:
        """The parts of the group ``rank`` belongs to (None: the plan states none)."""
        for g, p in zip(self.groups, self.parts, strict=False):
            if rank in g:
                return p
        return None

    def received(self, rank: int) -> tuple[Fraction, Fraction]:
        """(forward, backward) bytes model-parallel rank ``rank`` receives per step."""
        if self.per_rank:
            for r, fwd, bwd in self.per_rank:
                if r == rank:
                    return fwd, bwd
            return Fraction(0), Fraction(0)
        if any(rank in g for g in self.groups):
            return self.bytes_fwd, self.bytes_bwd
        return Fraction(0), Fraction(0)

    def group_of(self, rank: int) -> tuple[int, ...] | None:
        for g in self.groups:
            if rank in g:
                return g
        return None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "mode": self.mode, "collective": self.collective, "backward": self.backward,
            "groups": [list(g) for g in self.groups],
            "bytes_fwd": round(self.bytes_fwd), "bytes_bwd": round(self.bytes_bwd),
            "exact": {"bytes_fwd": str(self.bytes_fwd), "bytes_bwd": str(self.bytes_bwd)},
            "per_rank": [{"rank": r, "bytes_fwd": round(f), "bytes_bwd": round(b),
                          "exact": [str(f), str(b)]} for r, f, b in self.per_rank],
            "parts": [list(p) for p in self.parts],
        }
        if self.moves:
            d["moves"] = [{"from": s, "to": t, "channels": list(ch)} for s, t, ch in self.moves]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Exchange:
        exact = d.get("exact", {})
        return cls(
            d["mode"], d["collective"], d["backward"], tuple(tuple(g) for g in d["groups"]),
            Fraction(exact.get("bytes_fwd", d["bytes_fwd"])),
            Fraction(exact.get("bytes_bwd", d["bytes_bwd"])),
            tuple((int(p["rank"]), Fraction(p["exact"][0]), Fraction(p["exact"][1]))
                  for p in d.get("per_rank", [])),
            tuple(tuple(int(n) for n in p) for p in d.get("parts", [])),
            tuple((int(m["from"]), int(m["to"]), (int(m["channels"][0]), int(m["channels"][1])))
                  for m in d.get("moves", [])),
        )


@dataclass(frozen=True)
class Placement:
    """One row of the plan: a spec layer (or a pseudo-layer from PSEUDO) and its exchange.

    ``exchange`` happens at the layer's input (gather, batch, send), at its output
    (reduce, logits) or on its gradients (grads). ``batch_split``: each rank computes
    its own slice of the batch (hybrid conv layers). ``stage``: pipeline stage.
    """

    name: str
    op: str
    shards: tuple[Shard, ...]
    exchange: Exchange | None = None
    batch_split: bool = False
    stage: int = 0

    def rows(self, batch: int, devices: int, rank: int) -> int:
        """The batch rows ``rank`` computes here: all of them, or for a batch-split layer its
        part [r*B//D, (r+1)*B//D), the parts differing by at most one row."""
        if not self.batch_split:
            return batch
        first, end = split(batch, devices, rank)
        return end - first

    def shard(self, rank: int) -> Shard | None:
        for s in self.shards:
            if s.rank == rank:
                return s
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "shards": [s.to_dict() for s in self.shards],
                "exchange": self.exchange.to_dict() if self.exchange else None,
                "batch_split": self.batch_split, "stage": self.stage}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Placement:
        return cls(d["name"], d["op"], tuple(Shard.from_dict(s) for s in d["shards"]),
                   Exchange.from_dict(d["exchange"]) if d.get("exchange") else None,
                   bool(d.get("batch_split", False)), int(d.get("stage", 0)))


@dataclass(frozen=True)
class DeviceCost:
    rank: int
    param_count: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    flops: int
    bytes_in: int

    @property
    def memory_bytes(self) -> int:
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes + self.activation_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "param_count": self.param_count, "param_bytes": self.param_bytes,
                "grad_bytes": self.grad_bytes, "optimizer_bytes": self.optimizer_bytes,
                "activation_bytes": self.activation_bytes, "memory_bytes": self.memory_bytes,
                "flops": self.flops, "bytes_in": self.bytes_in}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeviceCost:
        return cls(**{k: int(v) for k, v in d.items() if k != "memory_bytes"})


def in_chunks(layers: Sequence[Placement]) -> tuple[str, ...]:
    """Of a chunked columns plan's ``layers``, those that run chunk by chunk (``Plan.in_chunks``)."""
    out = []
    for p in layers:
        if p.op == "linear":
            break
        if p.op not in PSEUDO or p.name == "loss":
            out.append(p.name)
    return tuple(out)


@dataclass(frozen=True)
class Plan:
    model: str
    strategy: str
    devices: int
    replicas: int
    batch_size: int
    microbatches: int
    dtype_bytes: int
    layers: tuple[Placement, ...]
    costs: tuple[DeviceCost, ...] = ()
    rationale: str = ""
    stage_share: tuple[float, ...] = ()
    model_params: int = 0
    candidates: tuple[dict[str, Any], ...] = ()
    schedule: str = "gpipe"  # pipeline micro-batch order: gpipe (fill-drain) or 1f1b
    chunks: int = 1  # columns: the batch runs in this many chunks, one's exchange overlapping another's compute

    def placement(self, name: str) -> Placement:
        for p in self.layers:
            if p.name == name:
                return p
        raise KeyError(name)

    def exchanges(self) -> dict[str, Exchange]:
        """Every exchange point, by layer (or pseudo-layer) name, in plan order."""
        return {p.name: p.exchange for p in self.layers if p.exchange is not None}

    def expected(self, rank: int) -> dict[str, tuple[Fraction, Fraction]]:
        """Per exchange point, the (forward, backward) bytes ``rank`` receives per step."""
        out = {}
        for name, ex in self.exchanges().items():
            fwd, bwd = ex.received(rank)
            if fwd or bwd:
                out[name] = (fwd, bwd)
        return out

    def in_chunks(self) -> tuple[str, ...]:
        """The layers a chunked step runs chunk by chunk: every layer before the first
        fully-connected one (with the loss's logits gather when there is none). From there on
        the batch runs whole: a linear layer reads its whole weight matrix once per call, and
        at a few rows that read, not the arithmetic, is its cost. Empty when ``chunks`` is 1."""
        return in_chunks(self.layers) if self.chunks > 1 else ()

    @property
    def output_rank(self) -> int:
        """The model-parallel rank that holds the whole logits (and so reports the loss)."""
        last = [p for p in self.layers if p.op not in PSEUDO][-1]
        return last.shards[-1].rank if self.strategy == "pipeline" else 0

    @property
    def total_exchange_bytes(self) -> int:
        return round(sum(sum(ex.received(r)) for ex in self.exchanges().values()
                         for r in range(self.devices)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "strategy": self.strategy,
            "mesh": {"devices": self.devices, "replicas": self.replicas},
            "batch_size": self.batch_size, "microbatches": self.microbatches,
            "dtype_bytes": self.dtype_bytes,
            "layers": [p.to_dict() for p in self.layers],
            "devices": [c.to_dict() for c in self.costs],
            "totals": {"params": self.model_params,
                       "params_held": sum(c.param_count for c in self.costs),
                       "exchange_bytes_per_step": self.total_exchange_bytes},
            "rationale": self.rationale, "stage_share": list(self.stage_share),
            "candidates": list(self.candidates),
            "schedule": self.schedule,
            "chunks": self.chunks,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        return cls(
            d["model"], d["strategy"], int(d["mesh"]["devices"]), int(d["mesh"]["replicas"]),
            int(d["batch_size"]), int(d["microbatches"]), int(d["dtype_bytes"]),
            tuple(Placement.from_dict(p) for p in d["layers"]),
            tuple(DeviceCost.from_dict(c) for c in d.get("devices", [])),
            d.get("rationale", ""), tuple(d.get("stage_share", ())),
            int(d.get("totals", {}).get("params", 0)), tuple(d.get("candidates", ())),
            str(d.get("schedule", "gpipe")), int(d.get("chunks", 1)),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)
