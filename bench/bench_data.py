"""Decode + augment throughput of the data pipeline, in images/s per worker process.

    python bench/bench_data.py [--jpeg-images 512] [--batches 20] [--workers 0 2]

Rows: the embedded MNIST set (36x36 PNG, 32x32 crops) and a 256x256 JPEG shard set
written here into a temporary directory (224x224 crops, the paper's setting). The JPEG
images are smooth random fields (noise scaled up), so they compress like photographs
rather than like white noise. workers=0 runs in the calling process, i.e. one worker;
for workers=W the rate is divided by W. Ratios, not assertions: numbers depend on the box.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from splitnet.data import build_loader
from splitnet.data.shards import write_shard_set
from splitnet.data.sources import ArraySource


def smooth_images(n: int, side: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(n, side // 16, side // 16, 3), dtype=np.uint8)
    return np.stack([
        np.asarray(Image.fromarray(s).resize((side, side), Image.Resampling.BICUBIC))
        for s in small
    ])


def rate(cfg: dict, *, split: str, image_size: int, batch_size: int, batches: int, workers: int,
         crops: int, cache_dir: str | None) -> float:
    """Images per second per worker over up to ``batches`` batches, after one warm-up batch."""
    loader = build_loader(cfg | {"workers": workers}, split=split, image_size=image_size,
                          channels=3, batch_size=batch_size, replica=0, num_replicas=1, epoch=0,
                          seed=0, crops=crops, cache_dir=cache_dir)
    it = iter(loader)
    next(it)  # worker start-up and the first shard open are not throughput
    start, images = time.perf_counter(), 0
    for _, (_, labels) in zip(range(batches), it, strict=False):
        images += len(labels)
    return images / (time.perf_counter() - start) / max(1, workers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jpeg-images", type=int, default=512)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        jpeg_dir = Path(tmp) / "jpeg256"
        n = args.jpeg_images
        t = time.perf_counter()
        write_shard_set(ArraySource(smooth_images(n, 256), np.arange(n) % 10), jpeg_dir,
                        per_shard=64, val_fraction=0.25, encoding="jpeg", quality=90,
                        progress=False)
        print(f"wrote {n} 256x256 JPEG images in {time.perf_counter() - t:.1f} s")
        embedded = {"kind": "embedded", "num_classes": 10, "flip": False}
        jpeg = {"kind": "shards", "root": str(jpeg_dir), "num_classes": 10, "flip": True}
        cases = [
            ("embedded 36->32 train", embedded, "train", 32, 128, 1),
            ("embedded 36->32 val 10-crop", embedded, "val", 32, 50, 10),
            ("jpeg 256->224 train", jpeg, "train", 224, 32, 1),
            ("jpeg 256->224 val centre", jpeg, "val", 224, 32, 1),
        ]
        print(f"{'pipeline':30} {'workers':>7} {'images/s/worker':>16}")
        for name, cfg, split, size, batch, crops in cases:
            for workers in args.workers:
                r = rate(cfg, split=split, image_size=size, batch_size=batch,
                         batches=args.batches, workers=workers, crops=crops,
                         cache_dir=str(Path(tmp) / "cache"))
                print(f"{name:30} {workers:>7} {r:>16.0f}")


if __name__ == "__main__":
    main()
