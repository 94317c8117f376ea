"""The data suite: decode + augment rates of the input pipeline, in images/s per worker process.

Cases: the embedded MNIST set (36x36 PNG, 32x32 crops; training and 10-crop
validation) and a 256x256 JPEG shard set written into a temporary folder (224x224
crops, the paper's setting). The JPEG images are smooth random fields (noise scaled
up), so they compress like photographs rather than like white noise. ``workers=0``
decodes in the calling process; for W workers the rate is divided by W. Cases
alternate over rounds; ratios are against the first case of the same round.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from splitnet.bench.machine import machine
from splitnet.bench.rounds import summarise


def smooth_images(n: int, side: int, seed: int = 0) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(n, max(1, side // 16), max(1, side // 16), 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(s).resize((side, side), Image.Resampling.BICUBIC))
                     for s in small])


def rate(data: dict[str, Any], *, split: str, image_size: int, batch_size: int, batches: int, workers: int,
         crops: int, cache_dir: str) -> float:
    """Images per second per worker over up to ``batches`` batches, after one warm-up batch."""
    from splitnet.data import build_loader

    loader = build_loader(data | {"workers": workers}, split=split, image_size=image_size, channels=3,
                          batch_size=batch_size, replica=0, num_replicas=1, epoch=0, seed=0, crops=crops,
                          cache_dir=cache_dir)
    it = iter(loader)
    next(it)  # worker start-up and the first shard open are not throughput
    start, images = time.perf_counter(), 0
    for _, (_, labels) in zip(range(batches), it, strict=False):
        images += len(labels)
    return images / (time.perf_counter() - start) / max(1, workers)


def run_data(cfg: dict[str, Any]) -> dict[str, Any]:
    from splitnet.data.shards import write_shard_set
    from splitnet.data.sources import ArraySource

    b = cfg["bench"]
    smoke = bool(b.get("smoke"))
    n = 40 if smoke else b["data_images"]  # 40: a stratified quarter still leaves one val image per class
    batches = 2 if smoke else b["data_batches"]
    workers = [0] if smoke else list(b["data_workers"])
    rounds_n = 1 if smoke else b["rounds"]
    before = machine()
    with tempfile.TemporaryDirectory(prefix="splitnet-bench-data-") as tmp:
        jpeg_dir = Path(tmp) / "jpeg256"
        write_shard_set(ArraySource(smooth_images(n, 256), np.arange(n) % 10), jpeg_dir, per_shard=64,
                        val_fraction=0.25, encoding="jpeg", quality=90, progress=False)
        embedded = {"kind": "embedded", "num_classes": 10, "flip": False}
        jpeg = {"kind": "shards", "root": str(jpeg_dir), "num_classes": 10, "flip": True}
        small = 4 if smoke else None
        cases = [("embedded 36->32 train", embedded, "train", 32, small or 128, 1),
                 # flip: true, or the digits (trained unflipped) would be scored on 5 crops, not 10
                 ("embedded 36->32 val 10-crop", {**embedded, "flip": True}, "val", 32, small or 50, 10),
                 ("jpeg 256->224 train", jpeg, "train", 224, small or 32, 1),
                 ("jpeg 256->224 val centre", jpeg, "val", 224, small or 32, 1)]
        if smoke:  # the training pipelines only: a check that every kind of source still decodes
            cases = [c for c in cases if c[2] == "train"]
        rounds = []
        for r in range(rounds_n):
            print(f"round {r + 1}/{rounds_n}: data pipelines", file=sys.stderr, flush=True)
            measured = {}
            for name, data, split, size, batch, crops in cases:
                for w in workers:
                    label = f"{name}, workers={w}"
                    measured[label] = {"images_per_s": rate(data, split=split, image_size=size, batch_size=batch,
                                                            batches=batches, workers=w, crops=crops,
                                                            cache_dir=str(Path(tmp) / "cache"))}
                    print(f"    {label}: {measured[label]['images_per_s']:,.0f} images/s/worker", file=sys.stderr,
                          flush=True)
            rounds.append(measured)
    rows = summarise(rounds, next(iter(rounds[0])))
    return {"suite": "data", "rows": rows, "machine": before | {"load_avg_after": machine()["load_avg"]},
            "settings": {"images": n, "batches": batches, "workers": workers, "rounds": rounds_n, "smoke": smoke},
            "title": "input pipeline: decode + augment, images/s per worker",
            "xlabel": "rate relative to the embedded training pipeline, within each round"}
