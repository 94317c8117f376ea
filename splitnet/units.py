"""Numbers as people read them: counts with SI prefixes, bytes with binary ones."""

from __future__ import annotations


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
