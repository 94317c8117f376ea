"""The plan as a picture, in the spirit of Figure 2 of the AlexNet paper (Krizhevsky et al. 2012).

One column per model-parallel device, layers flowing top to bottom. A block is a layer
and the weightless layers that follow it on the same device (relu, LRN, pool...),
labelled with the local shapes. Blocks are cut wherever an exchange happens, so lines
cross between columns only at the plan's exchange points, and every crossing carries
its collective and the bytes a device receives per step. The pseudo-rows (loss,
conv_grads, replicas) sit at the bottom. Pure drawing: it reads the Plan, decides nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from splitnet.errors import SplitnetError
from splitnet.model.spec import ModelSpec
from splitnet.partition.plan import PSEUDO, Exchange, Placement, Plan
from splitnet.units import human

FORMATS = (".svg", ".png", ".pdf")

# One colour per exchange mode, so a glance tells gathers from reductions and sends.
_COLOUR = {"gather": "#1f77b4", "reduce": "#d62728", "logits": "#9467bd", "send": "#2ca02c",
           "batch": "#ff7f0e", "grads": "#7f7f7f", "halo": "#17becf"}
_FILL = {"weighted": "#dde8f4", "weightless": "#eeeeee", "replicated": "#e3f1dc", "loss": "#f6e6e6"}

# Layout in data units of _INCH inches each, so text and boxes keep their proportions
# whatever the device count; the figure grows instead of the text shrinking.
_INCH = 0.5
_COL = 4.2          # column pitch per device
_BOX = 3.7          # block width
_BLOCK_H = 0.95     # a block with one line of notes; each further line adds _LINE_H
_LINE_H = 0.25
_CROSS_H = 1.0      # an exchange: the lines between columns
_GAP_H = 0.45       # a plain arrow between two blocks of one device
_NOTE_W = 7.6       # the annotation column at the right
_HEAD_H = 3.0       # title and per-device headers
_MIN_W = 15.0       # room for the title when there are few devices


def _at_output(ex: Exchange | None) -> bool:
    """A reduce exchange moves its layer's partial outputs, so it is drawn after the layer;
    every other exchange assembles the layer's input and is drawn before it."""
    return ex is not None and ex.mode == "reduce"


@dataclass
class _Block:
    """Consecutive layers drawn as one box on each device that computes them."""

    layers: list[Placement]

    @property
    def head(self) -> Placement:
        return self.layers[0]

    @property
    def ranks(self) -> list[int]:
        return [s.rank for s in self.head.shards]


def _blocks(plan: Plan) -> list[_Block]:
    """Merge each weightless layer into the block above it, except where the picture must
    show a boundary: an exchange, a new pipeline stage, or a change of batch split."""
    blocks: list[_Block] = []
    for p in plan.layers:
        if p.op in PSEUDO:
            continue
        prev = blocks[-1].layers[-1] if blocks else None
        if (prev is None or p.op in ("conv", "linear") or _at_output(prev.exchange)
                or (p.exchange is not None and not _at_output(p.exchange))
                or p.stage != prev.stage or p.batch_split != prev.batch_split):
            blocks.append(_Block([p]))
        else:
            blocks[-1].layers.append(p)
    return blocks


def _shape(spec: ModelSpec, p: Placement, rank: int) -> str:
    """The output shape ``rank`` holds: its channels, with the map size for conv outputs."""
    layer = spec.layer(p.name)
    shard = p.shard(rank)
    channels = layer.out_shape[0] if shard is None else shard.out[1] - shard.out[0]
    if p.exchange is not None and p.exchange.mode == "reduce" and p.exchange.collective == "all_reduce":
        channels = layer.out_shape[0]  # the all-reduce leaves every device the whole output
    _, h, w = layer.out_shape
    return f"{channels}x{h}x{w}" if (h, w) != (1, 1) else f"{channels}"


def _labels(spec: ModelSpec, plan: Plan, block: _Block, rank: int) -> tuple[str, list[str]]:
    head = block.head
    notes = []
    shard = head.shard(rank)
    if shard is not None and shard.cols is not None:
        notes.append(f"partial sums of inputs {shard.cols[0]}-{shard.cols[1]}")
    if head.batch_split:
        notes.append(f"replicated, 1/{plan.devices} of the batch")
    if len(block.layers) > 1:
        tail = " · ".join(p.name for p in block.layers[1:])
        notes.append(f"{tail} → {_shape(spec, block.layers[-1], rank)}")
    return f"{head.name} {_shape(spec, head, rank)}", notes


def _bytes(n: Fraction | int) -> str:
    return human(float(n), "B")  # a Fraction has no __format__ before Python 3.12


def _note(name: str, ex: Exchange, replicas: int) -> str:
    """An exchange's annotation: where, which collective, bytes in per device per step."""
    groups = " ".join("{" + ",".join(str(r) for r in g) + "}" for g in ex.groups)
    if ex.mode == "send":
        src, dst = ex.groups[0]
        return (f"{name}: send, stage {src} → stage {dst}\n"
                f"fwd {_bytes(ex.bytes_fwd)} into {dst} · bwd {_bytes(ex.bytes_bwd)} into {src}")
    if ex.mode == "halo":
        most = max(ex.per_rank, key=lambda p: p[1] + p[2])
        return (f"{name}: halo, each device ↔ its neighbours in the tower\n"
                f"fwd send ≤ {_bytes(most[1])} · bwd send ≤ {_bytes(most[2])} per device")
    if ex.mode == "grads":
        among = f"devices {groups}" if groups else f"{replicas} replicas, rank by rank"
        return (f"{name}: gradient sum after backward\n"
                f"bwd {ex.backward} over {among}, ≤ {_bytes(ex.bytes_bwd)}")
    bwd = "bwd: none" if ex.backward == "none" else f"bwd {ex.backward} {_bytes(ex.bytes_bwd)}"
    parts = f" (parts {ex.uneven}, padded)" if ex.uneven else ""
    return f"{name}: {ex.mode} among {groups}{parts}\nfwd {ex.collective} {_bytes(ex.bytes_fwd)} · {bwd}"


def _header(plan: Plan, rank: int) -> str:
    stage = f" · stage {rank}" if plan.strategy == "pipeline" else ""
    cost = next((c for c in plan.costs if c.rank == rank), None)
    if cost is None:
        return f"device {rank}{stage}"
    return (f"device {rank}{stage}\n{human(cost.param_count)} params · {_bytes(cost.memory_bytes)}\n"
            f"in {_bytes(cost.bytes_in)}/step")


class _Canvas:
    """One Axes in data units, y growing downwards, with the few shapes the picture uses."""

    def __init__(self, devices: int, height: float) -> None:
        self.width = max(devices * _COL + _NOTE_W, _MIN_W)
        self.devices = devices
        self.fig = Figure(figsize=(self.width * _INCH, height * _INCH))
        FigureCanvasAgg(self.fig)  # Agg, explicitly: no display, no pyplot global state
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, self.width)
        self.ax.set_ylim(height, 0)
        self.ax.axis("off")

    @staticmethod
    def x(rank: int) -> float:
        return rank * _COL + _COL / 2

    def text(self, x: float, y: float, s: str, size: float, **kw: Any) -> None:
        self.ax.text(x, y, s, fontsize=size, va="center", **kw)

    def box(self, rank: int, top: float, h: float, main: str, notes: list[str], fill: str) -> None:
        self.ax.add_patch(FancyBboxPatch((self.x(rank) - _BOX / 2, top + 0.08), _BOX, h - 0.16,
                                         boxstyle="round,pad=0,rounding_size=0.12", facecolor=fill,
                                         edgecolor="#444444", linewidth=0.8))
        if not notes:
            self.text(self.x(rank), top + h / 2, main, 8.5, ha="center", fontweight="bold")
            return
        self.text(self.x(rank), top + 0.3, main, 8.5, ha="center", fontweight="bold")
        for i, note in enumerate(notes):
            self.text(self.x(rank), top + 0.62 + i * _LINE_H, note, 6.5, ha="center", color="#333333")

    def arrow(self, src: float, dst: float, top: float, bottom: float, colour: str, width: float) -> None:
        self.ax.add_patch(FancyArrowPatch((src, top), (dst, bottom), arrowstyle="-|>", mutation_scale=8,
                                          color=colour, linewidth=width, shrinkA=0, shrinkB=0))

    def down(self, rank: int, top: float, bottom: float) -> None:
        self.arrow(self.x(rank), self.x(rank), top, bottom, "#444444", 0.8)

    def across(self, src: int, dst: int, top: float, bottom: float, colour: str) -> None:
        # Leave from the side facing the destination and land on the side facing the source,
        # so crossings do not pile up on the devices' own straight arrows.
        step = 0.9 / max(1, self.devices - 1)
        self.arrow(self.x(src) + step * (dst - src), self.x(dst) + step * (src - dst), top, bottom,
                   colour, 1.1)

    def bus(self, group: tuple[int, ...], top: float, bottom: float, colour: str) -> None:
        # More than two devices: a bar every shard flows into and out of reads better than
        # k(k-1) crossing lines.
        mid = (top + bottom) / 2
        left, right = self.x(min(group)) - 0.5, self.x(max(group)) + 0.5
        self.ax.plot([left, right], [mid, mid], color=colour, linewidth=3, solid_capstyle="round")
        for rank in group:
            self.ax.plot([self.x(rank) + 0.5, self.x(rank) + 0.5], [top, mid], color=colour, linewidth=1.1)
            self.arrow(self.x(rank) - 0.5, self.x(rank) - 0.5, mid, bottom, colour, 1.1)

    def note(self, y: float, s: str, colour: str) -> None:
        self.text(self.devices * _COL + 0.3, y, s, 7.5, ha="left", color=colour, linespacing=1.3)


# A row of the picture: its height, and what paints it given the canvas and its top.
_Row = tuple[float, Callable[[_Canvas, float, float], None]]


def draw_plan(spec: ModelSpec, plan: Plan, path: str | Path) -> Path:
    """Draw ``plan`` to ``path`` (.svg, .png or .pdf, by its suffix); returns the path."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise SplitnetError(f"picture={str(path)!r}: unknown picture format {path.suffix!r}; "
                            f"use a file name ending in {', '.join(FORMATS)}")
    rows = _rows(spec, plan)
    height = _HEAD_H + sum(h for h, _ in rows) + 0.6
    c = _Canvas(plan.devices, height)
    micro = f" · {plan.microbatches} micro-batches, {plan.schedule}" if plan.strategy == "pipeline" else ""
    c.text(0.3, 0.4, f"{plan.model} · {plan.strategy}", 12, fontweight="bold")
    c.text(0.3, 0.9, f"mesh {plan.replicas} replica(s) x {plan.devices} device(s) · batch {plan.batch_size}"
           f"{micro} · {plan.model_params or spec.total_params:,} parameters", 8.5)
    c.text(0.3, 1.3, "bytes: received per device per training step, forward (fwd) and backward (bwd)",
           7.5, color="#555555")
    for rank in range(plan.devices):
        c.text(c.x(rank), 2.25, _header(plan, rank), 7.5, ha="center", linespacing=1.3)
    if not plan.exchanges():
        c.note(_HEAD_H + 0.5, "no exchanges: the devices never talk", "#555555")
    y = _HEAD_H
    for h, paint in rows:
        paint(c, y, h)
        y += h
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep SVG labels as text, not outlines: smaller files that can be searched and selected.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        c.fig.savefig(path, dpi=110)
    return path


def _rows(spec: ModelSpec, plan: Plan) -> list[_Row]:
    """Top to bottom: the blocks, with the exchange (or a plain arrow) between two blocks,
    then the loss, then the gradient sums that run after backward."""
    blocks = _blocks(plan)
    loss_ranks = [plan.output_rank] if plan.strategy == "pipeline" else list(range(plan.devices))
    rows: list[_Row] = []
    for i, block in enumerate(blocks):
        if i:
            rows.append(_between(plan, blocks[i - 1].layers[-1], block.head, blocks[i - 1].ranks,
                                 block.ranks))
        notes = max(len(_labels(spec, plan, block, r)[1]) for r in block.ranks)
        rows.append((_BLOCK_H + _LINE_H * max(0, notes - 1), partial(_draw_block, spec, plan, block)))
    rows.append(_between(plan, blocks[-1].layers[-1], plan.placement("loss"), blocks[-1].ranks, loss_ranks))
    rows.append((0.6, partial(_draw_loss, loss_ranks)))
    rows.extend((_CROSS_H, partial(_draw_sum, plan, p)) for p in plan.layers
                if p.op in PSEUDO and p.name != "loss" and p.exchange is not None)
    return rows


def _between(plan: Plan, out: Placement, into: Placement, upper: list[int], lower: list[int]) -> _Row:
    """The exchange after ``out`` (a reduce) or before ``into`` (anything else), or a plain arrow."""
    if _at_output(out.exchange):
        return (_CROSS_H, partial(_draw_cross, out.name, out.exchange, upper, lower, plan.replicas))
    if into.exchange is not None and not _at_output(into.exchange):
        return (_CROSS_H, partial(_draw_cross, into.name, into.exchange, upper, lower, plan.replicas))
    return (_GAP_H, partial(_draw_gap, upper, lower))


def _draw_gap(upper: list[int], lower: list[int], c: _Canvas, y: float, h: float) -> None:
    for rank in sorted(set(upper) & set(lower)):
        c.down(rank, y, y + h)


def _draw_loss(ranks: list[int], c: _Canvas, y: float, h: float) -> None:
    for rank in ranks:
        c.box(rank, y, h, "loss", [], _FILL["loss"])


def _draw_block(spec: ModelSpec, plan: Plan, block: _Block, c: _Canvas, y: float, h: float) -> None:
    head = block.head
    fill = _FILL["replicated" if head.batch_split else "weighted" if head.op in ("conv", "linear")
                 else "weightless"]
    for rank in block.ranks:
        main, notes = _labels(spec, plan, block, rank)
        c.box(rank, y, h, main, notes, fill)


def _draw_cross(name: str, ex: Exchange, upper: list[int], lower: list[int], replicas: int, c: _Canvas,
                y: float, h: float) -> None:
    """One exchange: each device's own shard straight down, the others' shards across."""
    colour = _COLOUR.get(ex.mode, "#000000")
    bused = {r for g in ex.groups if len(g) > 2 and ex.mode != "send" for r in g}
    for rank in sorted(set(upper) & set(lower) - bused):
        c.down(rank, y, y + h)
    if ex.mode == "send":
        src, dst = ex.groups[0]
        c.across(src, dst, y, y + h, colour)
    else:
        for group in ex.groups:
            if len(group) > 2:
                c.bus(group, y, y + h, colour)
                continue
            for src in group:
                for dst in group:
                    if src != dst and dst in lower:
                        c.across(src, dst, y, y + h, colour)
    c.note(y + h / 2, _note(name, ex, replicas), colour)


def _draw_sum(plan: Plan, p: Placement, c: _Canvas, y: float, h: float) -> None:
    """A gradient sum after backward: a bar over the devices that sum, each with its bytes in."""
    ex = p.exchange
    assert ex is not None
    colour = _COLOUR["grads"]
    mid = y + h / 2
    ranks = sorted({r for g in ex.groups for r in g} | {r for r, _, _ in ex.per_rank})
    if len(ranks) > 1 and p.name != "replicas":  # replicas sum across meshes, not across devices
        c.ax.plot([c.x(ranks[0]), c.x(ranks[-1])], [mid, mid], color=colour, linewidth=2.5,
                  solid_capstyle="round", zorder=1)
    for rank in ranks:
        what = f"Σ over {plan.replicas} replicas" if p.name == "replicas" else f"Σ {p.name}"
        c.text(c.x(rank), mid, f"{what}\n{_bytes(ex.received(rank)[1])}", 7, ha="center", zorder=2,
               bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": colour})
    c.note(mid, _note(p.name, ex, plan.replicas), colour)
