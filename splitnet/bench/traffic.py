"""The bytes suite: what each contender receives per step and device, against what the plan says.

One timed step per contender (bytes do not drift with load), or the last round of a
throughput run just made (``splitnet bench all`` measures once for both). splitnet's figures come
from its meter and sit beside the cost model's prediction; DDP's from a comm hook on its
gradient buckets; torch pipelining's are what its stage split must move. The ratio
column is bytes relative to DDP, the data-parallel default a user would otherwise run.
"""

from __future__ import annotations

from typing import Any

from splitnet.bench.machine import machine
from splitnet.bench.throughput import measure, settings
from splitnet.model.spec import load_spec


def run_bytes(cfg: dict[str, Any], throughput: dict[str, Any] | None = None) -> dict[str, Any]:
    """The bytes table; from ``throughput``'s last round when given, else from one step of each contender."""
    if throughput is not None:
        s, before, measured = throughput["settings"], throughput["machine"], throughput["rounds"][-1]
    else:
        s = settings(cfg) | {"rounds": 1, "steps": 1, "warmup": 0}
        before = machine()
        _, (measured,) = measure(cfg, s)
    ddp = next((m["bytes_per_step"] for m in measured.values() if m["key"] == "ddp"), None)
    rows = []
    for name, m in measured.items():
        ratio = m["bytes_per_step"] / ddp if ddp else None
        rows.append({"name": name, "bytes_per_step": m["bytes_per_step"],
                     "planned_bytes_per_step": m["planned_bytes_per_step"], "ratio": ratio, "ratio_min": ratio,
                     "ratio_max": ratio, "key": m["key"], "world": m["world"]})
    spec = load_spec(cfg["model"])
    return {"suite": "bytes", "rows": rows, "rate": "bytes_per_step",
            "machine": {"load_avg_after": machine()["load_avg"]} | before, "settings": s | {"model": spec.name},
            "title": f"{spec.name}, batch {s['batch']}: bytes received per step by the busiest device",
            "xlabel": "bytes per step and device relative to torch DDP"}
