"""Find a split's shard files from a pattern and take their sample counts from meta.json."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from braceexpand import braceexpand

from splitnet.data.errors import DataError
from splitnet.data.meta import ShardMeta, read_meta


@dataclass(frozen=True)
class SplitShards:
    """One split's shards in name order, each with its sample count."""

    pattern: str
    paths: list[str]
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def default_pattern(root: str | Path, split: str) -> str:
    return str(Path(root) / f"{split}-*.tar")


def resolve(pattern: str, split: str) -> SplitShards:
    """Expand ``pattern`` ({a..b} braces, then globs); errors name the pattern."""
    paths = sorted({
        str(Path(p).resolve()) for part in braceexpand(pattern) for p in glob.glob(part)
    })
    if not paths:
        raise DataError(
            f"no shards match {pattern!r} (data.{split}); write a shard set with "
            "`splitnet shards ...` or fix the path"
        )
    metas: dict[Path, ShardMeta] = {}
    counts: dict[str, int] = {}
    for path in paths:
        directory = Path(path).parent
        if directory not in metas:
            metas[directory] = read_meta(directory)
        listed = {e.name: e.count for entries in metas[directory].splits.values() for e in entries}
        if Path(path).name not in listed:
            raise DataError(
                f"{path} matches {pattern!r} but is not listed in {directory}/meta.json; "
                "it is left over from another run: rewrite the set with --overwrite"
            )
        counts[path] = listed[Path(path).name]
    result = SplitShards(pattern, paths, counts)
    if result.total == 0:
        raise DataError(f"the shards matching {pattern!r} (data.{split}) hold no samples")
    return result
