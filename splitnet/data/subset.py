"""A seeded share of the training split (``data.fraction``), chosen sample by sample.

A sample belongs to the subset when a hash of (``data.subset_seed``, its key) falls
below ``fraction``: a pure function of the key, so every rank, replica, DataLoader
worker and epoch agrees without reading the whole split first, and a smaller fraction's
subset is contained in a larger one's (same seed). The subset holds about
``fraction`` x N samples (binomial spread); an epoch is ``round(fraction x N)`` samples,
and a stream that runs short wraps around its subset as it does around its shards.
"""

from __future__ import annotations

from splitnet.model.seeding import stream_seed

_SCALE = float(1 << 63)


def in_subset(key: str, fraction: float, seed: int) -> bool:
    """Whether the sample named ``key`` is in the ``fraction`` subset drawn with ``seed``."""
    return fraction >= 1.0 or stream_seed(seed, "subset", key) / _SCALE < fraction


def subset_size(total: int, fraction: float) -> int:
    """Samples an epoch counts for a split of ``total`` samples."""
    return max(1, round(total * fraction))
