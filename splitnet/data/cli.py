"""``splitnet shards ...``: write shard sets, build the embedded cache, show a set's meta.json."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from splitnet.data.embedded import ensure_embedded
from splitnet.data.errors import DataError
from splitnet.data.meta import read_meta
from splitnet.data.shards import write_shard_set
from splitnet.data.sources import ImageFolderSource, Source, cifar_source, npz_source

SOURCES = {
    "imagefolder": ("SRC/<class>/<image>, or SRC/train/<class>/... and SRC/val/<class>/...",
                    ImageFolderSource),
    "cifar": ("a directory of CIFAR-10/100 binary files (data_batch_*.bin or train.bin)",
              cifar_source),
    "npz": ("an .npz with images (N,H,W[,3]) uint8, labels (N,), optional classes", npz_source),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="splitnet shards",
        description="Write webdataset shards (tar) and their meta.json for `data.kind=shards`.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, (what, _) in SOURCES.items():
        s = sub.add_parser(name, help=f"from {what}")
        s.add_argument("src", type=Path, help=what)
        s.add_argument("out", type=Path, help="output directory for the shards and meta.json")
        s.add_argument("--per-shard", type=int, default=1000, help="samples per shard (1000)")
        s.add_argument("--val-fraction", type=float, default=None,
                       help="hold out this fraction of each class as val (sources without a "
                            "val split of their own; default none)")
        s.add_argument("--resize", type=int, default=None, metavar="N",
                       help="shorter side to N, then centre crop NxN (the paper: 256)")
        s.add_argument("--format", choices=["png", "jpeg"], default="png",
                       help="png (lossless, default) or jpeg")
        s.add_argument("--quality", type=int, default=90, help="JPEG quality (90)")
        s.add_argument("--seed", type=int, default=0, help="seed of the split and write order")
        s.add_argument("--overwrite", action="store_true", help="replace an existing set in OUT")
        s.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = sub.add_parser("embedded", help="convert the embedded MNIST subset now; print its path")
    e.add_argument("--cache-dir", type=Path, default=None,
                   help="default $SPLITNET_CACHE/embedded or ~/.cache/splitnet/embedded")
    i = sub.add_parser("info", help="print a shard set's meta.json summary")
    i.add_argument("directory", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "embedded":
            print(ensure_embedded(args.cache_dir))
        elif args.command == "info":
            meta = read_meta(args.directory)
            summary = {
                "classes": len(meta.classes), "image_size": meta.image_size,
                "encoding": meta.encoding, "mean": meta.mean, "eigval": meta.eigval,
                "splits": {s: {"samples": meta.count(s), "shards": len(e)}
                           for s, e in meta.splits.items()},
                "source": meta.source, "skipped": meta.skipped,
            }
            print(json.dumps(summary, indent=1))
        else:
            source: Source = SOURCES[args.command][1](args.src)
            meta = write_shard_set(
                source, args.out, per_shard=args.per_shard, val_fraction=args.val_fraction,
                side=args.resize, encoding=args.format, quality=args.quality, seed=args.seed,
                overwrite=args.overwrite, progress=not args.no_progress,
            )
            counts = ", ".join(f"{s} {meta.count(s)} in {len(e)} shards"
                               for s, e in meta.splits.items())
            print(f"{args.out}: {counts}; {len(meta.classes)} classes; {meta.skipped} skipped")
    except DataError as exn:
        print(f"splitnet shards: error: {exn}", file=sys.stderr)
        return 2
    return 0
