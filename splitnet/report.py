"""Plain-text tables for the terminal: the spec, and (later) plans and verify results."""

from __future__ import annotations

from collections.abc import Sequence

from splitnet.spec import ModelSpec


def table(header: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> str:
    """A fixed-width table; columns in ``right`` are right-aligned (numbers)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'; bytes use unit='B' and binary prefixes."""
    if unit == "B":
        for prefix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(n) < 1024 or prefix == "TiB":
                return f"{n:.0f} B" if prefix == "B" else f"{n:.2f} {prefix}"
            n /= 1024
    for prefix in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000 or prefix == "P":
            return f"{n:.0f}" if prefix == "" else f"{n:.2f}{prefix}"
        n /= 1000
    return str(n)


def spec_table(spec: ModelSpec) -> str:
    rows = [
        (layer.name, layer.op, layer.groups, layer.connect or "-",
         "x".join(str(d) for d in layer.out_shape), f"{layer.params:,}", human(layer.flops))
        for layer in spec.layers
    ]
    rows.append(("total", "", "", "", "", f"{spec.total_params:,}", human(spec.total_flops)))
    head = f"{spec.name}: input {'x'.join(str(d) for d in spec.input_shape)}, default groups {spec.groups}"
    return head + "\n" + table(("layer", "op", "groups", "connect", "output", "params", "fwd FLOPs"),
                               rows, right=(2, 5, 6))
