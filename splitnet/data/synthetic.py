"""``data=synthetic``: random tensors of the model's input shape. Not a dataset.

For benchmarks and for the 224x224 network on machines without ImageNet: accuracy on
it means nothing. Every batch is a pure function of (seed, epoch, split, its index), so
every rank of a model-parallel group draws the same batch without talking, and no split
depends on the number of replicas:

- Train: replica r's batch k is the r-th part of global batch k (``num_replicas`` x
  ``batch_size`` rows drawn at once); with one replica it is the batch it always was.
- Val: the split is ``n_batches`` batches of ``batch_size``; replica r scores batches
  r, r + R, r + 2R, ... (a replica beyond the batch count gets none), so the replicas
  together score the same images, once each, on any number of replicas.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from splitnet.model.seeding import stream_seed

log = logging.getLogger(__name__)


def random_batch(rows: int, image_shape: Sequence[int], num_classes: int,
                 *key: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` N(0, 1) images of ``image_shape`` and uniform labels, a pure function of
    ``key`` (its ``stream_seed``): every caller names its own stream (``verify`` its step,
    the loader its seed, epoch, replica, split and batch), so no two streams share numbers."""
    gen = torch.Generator().manual_seed(stream_seed(*key))
    images = torch.randn((rows, *image_shape), generator=gen)
    labels = torch.randint(0, num_classes, (rows,), generator=gen)
    return images, labels


class SyntheticLoader:
    """Yields this replica's batches from ``start`` of ``n_batches``: N(0, 1) images and uniform labels."""

    synthetic = True
    parts = None  # drawing a batch costs next to nothing: every rank draws it whole

    def __init__(self, *, n_batches: int, start: int, batch_size: int, channels: int,
                 image_size: int, num_classes: int, crops: int, seed: int, epoch: int,
                 replica: int, num_replicas: int, split: str, pin_memory: bool = False) -> None:
        self.pin_memory = pin_memory
        train = split == "train"
        parts = num_replicas if train else 1
        # train: every replica takes its rows of each batch; val: its own batches, whole
        self.indices = range(start, n_batches) if train else range(start + replica, n_batches, num_replicas)
        self.rows = slice(replica * batch_size, (replica + 1) * batch_size) if train else slice(None)
        self.shape = (batch_size * parts, *([crops] if crops > 1 else []), channels, image_size, image_size)
        self.num_classes = num_classes
        # no replica in the key (the 0 keeps the numbers one replica always drew): train batches are
        # split among the replicas, val batches dealt out whole
        self.key = (seed, epoch, 0, split)
        self.stats: dict[str, int] = {"skipped": 0, "batches": 0}
        log.info("data=synthetic: random tensors %s, not real images", self.shape)

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = random_batch(self.shape[0], self.shape[1:], self.num_classes, *self.key, "synthetic", k)
        images, labels = images[self.rows].contiguous(), labels[self.rows].contiguous()
        return (images.pin_memory(), labels.pin_memory()) if self.pin_memory else (images, labels)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k in self.indices:
            self.stats["batches"] += 1
            yield self.batch(k)
