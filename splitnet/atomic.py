"""Files that appear whole or not at all: write to a temporary name, fsync, rename.

Used for checkpoints, exported models, shards' meta.json: a run killed mid-write leaves
the old file (or none), never a truncated one under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename durable: without this a crash can forget it even after the file's fsync."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` fills a temporary file beside ``path``, which then replaces ``path``."""
    tmp = path.with_name(f".{path.name}.partial")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(payload))
