"""Counter-based random numbers: every value is a pure function of (seed, layer, index).

A rank that holds output channels 96..191 of a layer must produce exactly the numbers
the single-device reference holds there, without drawing the other channels first.
So each output channel (a conv filter or a linear row) gets its own generator,
seeded by a hash of (seed, layer name, channel). Dropout masks are drawn full-width
from a generator seeded by (seed, layer, step) that every rank shares, then sliced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def stream_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of names and numbers (stable across processes and runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def draw_rows(seed: int, layer: str, rows: range, row_shape: Sequence[int], std: float,
              cols: tuple[int, int] | None = None) -> torch.Tensor:
    """Rows ``rows`` of a layer's weight, each N(0, std^2) from its own stream; with ``cols``,
    only those input columns of each row (a row is drawn whole, one at a time, so a rank
    that holds columns never holds the whole layer)."""
    if cols is None:
        out = torch.empty((len(rows), *row_shape))
        gen = torch.Generator()
        for j, row in enumerate(rows):
            gen.manual_seed(stream_seed(seed, layer, row))
            out[j].normal_(0.0, std, generator=gen)
        return out
    out = torch.empty((len(rows), cols[1] - cols[0], *row_shape[1:]))
    whole = torch.empty(tuple(row_shape))
    gen = torch.Generator()
    for j, row in enumerate(rows):
        gen.manual_seed(stream_seed(seed, layer, row))
        out[j] = whole.normal_(0.0, std, generator=gen)[cols[0]:cols[1]]
    return out


def dropout_keep(seed: int, layer: str, step: int, shape: Sequence[int], p: float) -> torch.Tensor:
    """The full-width keep mask (bool) of one dropout layer at one step."""
    gen = torch.Generator()
    gen.manual_seed(stream_seed(seed, layer, "dropout", step))
    return torch.rand(tuple(shape), generator=gen) >= p
