"""The suites by name, and running one (or ``all``) from a resolved config."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from splitnet.errors import SplitnetError
from splitnet.keys import is_int, need, need_int
from splitnet.train.preflight import check_comm


def _suites() -> dict[str, Callable[[dict[str, Any]], dict[str, Any] | list[dict[str, Any]]]]:
    from splitnet.bench.data import run_data
    from splitnet.bench.throughput import run_throughput
    from splitnet.bench.traffic import run_bytes

    return {"throughput": run_throughput, "bytes": run_bytes, "data": run_data}


NAMES = ("throughput", "bytes", "data", "all")


def check_bench(b: dict[str, Any]) -> None:
    """The ``bench`` group, refused in one line before a contender starts."""
    for key, least in (("rounds", 1), ("steps", 1), ("warmup", 0), ("replicas", 1), ("chunks", 1),
                       ("smoke_batch", 1), ("data_images", 1), ("data_batches", 1)):
        need_int(b, "bench", key, least)
    need(isinstance(b.get("smoke"), bool), "bench.smoke", b.get("smoke"), "must be true or false")
    workers = b.get("data_workers")
    need(isinstance(workers, list) and bool(workers) and all(is_int(w) and w >= 0 for w in workers),
         "bench.data_workers", workers, "must be a list of DataLoader worker counts >= 0, e.g. [0, 2]")


def run_suites(suite: str, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Run ``suite`` (or every one for ``all``); print each result (markdown, or one JSON line with
    ``format=json``) and write its files into ``out`` when given."""
    from splitnet.bench.publish import markdown, write

    if suite not in NAMES:
        raise SplitnetError(f"bench: unknown suite {suite!r}; choose one of {', '.join(NAMES)}")
    check_bench(cfg["bench"])
    check_comm(cfg.get("comm", {}))
    table = _suites()
    results: list[dict[str, Any]] = []
    for name in (list(table) if suite == "all" else [suite]):
        if name == "bytes" and results:  # ``all``: the throughput rounds just run already metered every byte
            from splitnet.bench.traffic import run_bytes

            made: dict[str, Any] | list[dict[str, Any]] = run_bytes(cfg, results[0])
        else:
            made = table[name](cfg)
        for result in made if isinstance(made, list) else [made]:  # the data suite gives two tables
            results.append(result)
            if cfg.get("out"):
                paths = write(result, cfg["out"])
                print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr, flush=True)
            if cfg.get("format") == "json":
                print(json.dumps({k: v for k, v in result.items() if k != "rounds"}), flush=True)
            else:
                print(markdown(result), flush=True)
    return results
