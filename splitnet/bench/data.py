"""The data suite: decode + augment rates of the input pipeline, in images/s per worker process.

Cases: the embedded MNIST set (36x36 PNG, 32x32 crops; training and 10-crop
validation) and a 256x256 JPEG shard set written into a temporary folder (224x224
crops, the paper's setting). The JPEG images are smooth random fields (noise scaled
up), so they compress like photographs rather than like white noise. ``workers=0``
decodes in the calling process; for W workers the rate is divided by W. Cases
alternate over rounds; ratios are against the first case of the same round.

Beside it, two more tables (``data-decode``: the JPEG training set; ``data-decode-embedded``:
the embedded digits): one replica's data path at D = 1, 2 and 4 model-parallel ranks, every
rank decoding the whole batch (as before decode once per replica) against each rank
decoding its rows and all-gathering them (the default since), in D real ranks (simulate
launcher, gloo) that run both ways in the same launch. The figure is images of the
replica's batches per CPU-second of all its ranks together (``time.process_time``: gloo's
threads included, the wait for a peer not; one intra-op thread per rank), the measure a
machine shared with other jobs distorts least; ``decode_s`` is the slowest rank's CPU
seconds per batch.
"""

from __future__ import annotations

import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from splitnet.bench.machine import machine
from splitnet.bench.rounds import summarise

DECODE_DEVICES = (1, 2, 4)
MODES = {"all": "every rank decodes the whole batch", "once": "decode once: own rows + all-gather"}


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


def data_path_job(rank: int, world: int, cfg: dict[str, Any]) -> dict[str, float]:
    """Rank ``rank`` of a replica's ``world`` model-parallel ranks: the CPU seconds its data path
    spends on ``batches`` training batches after one untimed batch, for each mode in order
    (``all``: it decodes whole batches; ``once``: its rows, then the all-gather of the train loop)."""
    from splitnet.comm import Transport
    from splitnet.data import build_loader
    from splitnet.data.transfer import host_transfer
    from splitnet.partition.plan import Plan
    from splitnet.train.loop import replica_batch

    transport = Transport(Plan.from_dict(cfg["plan"]), rank)
    move = host_transfer(transport.device)
    spent = {}
    for mode in cfg["modes"]:
        loader = build_loader(cfg["data"] | {"workers": 0}, split="train", image_size=cfg["image_size"], channels=3,
                              batch_size=cfg["batch_size"], replica=0, num_replicas=1, epoch=0, seed=0,
                              part=(rank, world) if mode == "once" else (0, 1), cache_dir=cfg["cache_dir"])
        batches = iter(loader)
        for timed in (False, True):  # first the shard's opening and the group's first collective
            start, images = time.process_time(), 0
            for batch in islice(batches, cfg["batches"] if timed else 1):
                images += len(replica_batch(batch, loader, transport, move)[1])
        spent[mode] = time.process_time() - start
        spent[f"{mode} images"] = images
    return spent


def decode_rounds(name: str, data: dict[str, Any], *, image_size: int, batch_size: int, batches: int,
                  rounds_n: int, cache_dir: str, model: dict[str, Any]) -> list[dict[str, dict[str, Any]]]:
    """Per round, per (D, mode): images per CPU-second of the replica's ranks, and the slowest
    rank's CPU seconds per batch. D=1 has one mode: there is nothing to share."""
    from splitnet.launchers.simulate import launch
    from splitnet.model.spec import load_spec
    from splitnet.partition import Mesh, make_plan

    spec = load_spec(model)
    rounds = []
    for r in range(rounds_n):
        print(f"round {r + 1}/{rounds_n}: decode once per replica, {name}", file=sys.stderr, flush=True)
        measured: dict[str, dict[str, Any]] = {}
        for devices in DECODE_DEVICES:
            modes = ["all"] if devices == 1 else ["all", "once"] if r % 2 == 0 else ["once", "all"]
            job = {"data": data, "image_size": image_size, "batch_size": batch_size, "batches": batches,
                   "cache_dir": cache_dir, "modes": modes,
                   "plan": make_plan(spec, {"strategy": "columns"}, Mesh(devices), batch_size).to_dict()}
            # one intra-op thread per rank at every D: idle OpenMP threads spin, and their CPU time
            # would be counted as the data path's
            ranks = launch(data_path_job, devices, job, threads=1)
            for mode in sorted(modes):
                label = f"{name}, D={devices}" + ("" if devices == 1 else f", {MODES[mode]}")
                cpu = [rank[mode] for rank in ranks]
                images = ranks[0][f"{mode} images"]
                measured[label] = {"images_per_cpu_s": images / sum(cpu), "decode_s": max(cpu) * batch_size / images,
                                   "devices": devices, "mode": mode}
                print(f"    {label}: {measured[label]['images_per_cpu_s']:,.0f} images/CPU-s", file=sys.stderr,
                      flush=True)
        rounds.append(measured)
    return rounds


def run_data(cfg: dict[str, Any]) -> list[dict[str, Any]]:
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
        between = machine()
        results = [{"suite": "data", "rows": summarise(rounds, next(iter(rounds[0]))),
                    "machine": before | {"load_avg_after": between["load_avg"]},
                    "settings": {"images": n, "batches": batches, "workers": workers, "rounds": rounds_n,
                                 "smoke": smoke},
                    "title": "input pipeline: decode + augment, images/s per worker",
                    "xlabel": "rate relative to the embedded training pipeline, within each round"}]
        # the two training pipelines: JPEG photographs' size, and the default set's small PNGs
        for suite, name, data, size, batch in [("data-decode", "jpeg 256->224 train", jpeg, 224, 32),
                                               ("data-decode-embedded", "embedded 36->32 train", embedded, 32, 128)]:
            decode = decode_rounds(name, data, image_size=size, batch_size=small or batch, batches=batches,
                                   rounds_n=rounds_n, cache_dir=str(Path(tmp) / "cache"), model=cfg["model"])
            after = machine()
            results.append({"suite": suite, "rows": summarise(decode, next(iter(decode[0])), rate="images_per_cpu_s"),
                            "rate": "images_per_cpu_s", "machine": between | {"load_avg_after": after["load_avg"]},
                            "settings": {"images": n, "batch_size": small or batch, "batches": batches,
                                         "rounds": rounds_n, "devices": list(DECODE_DEVICES), "smoke": smoke},
                            "title": f"one replica's data path ({name}) at D ranks: images per CPU-second of all "
                                     "its ranks",
                            "xlabel": "rate relative to D=1, within each round"})
            between = after
    return results
