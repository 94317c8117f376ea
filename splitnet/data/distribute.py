"""Who reads what: shards per replica (evaluation), batches per epoch, batches per DataLoader worker.

All pure functions of (seed, epoch, replica): never of the rank, so every rank of a
model-parallel group computes the same answers and sees the same batches; and never of
the number of DataLoader workers, which only decides who decodes which batch. The rank
decides only which rows of a batch it decodes (``row_parts``): the replica's ranks then
assemble the same batch from their parts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from splitnet.data.errors import DataError
from splitnet.model.seeding import stream_seed


def epoch_order(shards: Sequence[str], *, seed: int, epoch: int, shuffle: bool) -> list[str]:
    """The epoch's shard order, identical on every replica (so the replica split is disjoint)."""
    if not shuffle:
        return list(shards)
    rng = np.random.default_rng(stream_seed(seed, epoch, "shard-order"))
    return [shards[i] for i in rng.permutation(len(shards))]


def replica_shards(ordered: Sequence[str], replica: int, num_replicas: int) -> list[str]:
    """Every ``num_replicas``-th shard from ``replica``: disjoint, and together complete.

    Evaluation only (training reads the global sequence of every shard): a replica beyond
    the shard count reads nothing, since evaluation scores each sample once and needs no
    equal batch counts.
    """
    if not 0 <= replica < num_replicas:
        raise DataError(f"replica {replica} is not in 0..{num_replicas - 1}")
    return list(ordered[replica::num_replicas])


def batches_per_epoch(total: int, batch_size: int, num_replicas: int) -> int:
    """Full batches each replica yields: every replica the same, remainder dropped.

    Shards hold unequal counts (the last one is short), so a replica whose shards run out
    first wraps around to its own first samples: no replica waits at a collective for a
    batch that another replica never produces.
    """
    n = total // (batch_size * num_replicas)
    if n < 1:
        raise DataError(
            f"{total} samples cannot fill one batch of {batch_size} on each of {num_replicas} "
            "replicas; lower batch_size"
        )
    return n


def eval_batches(samples: int, batch_size: int) -> int:
    """Batches that score every one of a replica's ``samples`` once: the last may be partial."""
    return -(-samples // batch_size)


def role_of(worker: int, workers: int, start: int) -> int:
    """The batch stream DataLoader worker ``worker`` serves after ``start`` skipped batches.

    DataLoader takes batch k from worker k mod W, counting from 0 at every new iterator; a
    resumed epoch starts at batch ``start``, so worker 0 must serve stream ``start`` mod W.
    """
    return (worker + start) % workers


def role_batches(role: int, workers: int, n_batches: int, start: int) -> tuple[int, int]:
    """(batches stream ``role`` skips, batches it yields): its batches are role, role+W, ..."""
    mine = range(role, n_batches, workers)
    skipped = len(range(role, min(start, n_batches), workers))
    return skipped, len(mine) - skipped


def row_parts(rows: int, parts: int) -> tuple[int, ...]:
    """The rows each of ``parts`` ranks decodes of a ``rows``-row batch, in row order: as equal
    as they can be, the first ``rows mod parts`` one larger (32 over 3: 11, 11, 10; a batch
    smaller than ``parts`` leaves the last ranks none)."""
    if parts < 1:
        raise DataError(f"a batch cannot be split into {parts} parts; use 1 or more")
    return tuple(rows // parts + (i < rows % parts) for i in range(parts))
