"""Where a training step's time goes: torch.profiler around a few steps of one contender, rank 0.

    python bench/profile_step.py [model] [batch] [contender] [steps]   (default: alexnet_cifar 64 columns_auto 3)

Prints the operators by self CPU time (collectives and the copies around them show up as
gloo/record_param_comms, cat, copy_) and writes a Chrome trace to profile-<contender>.json.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from splitnet.bench.contenders import contenders
from splitnet.bench.worker import make_runner
from splitnet.configs import model_config
from splitnet.launchers.simulate import launch
from splitnet.model.spec import load_spec
from splitnet.verify import verify_batch


def job(rank: int, world: int, cfg: dict[str, Any]) -> str:
    from torch.profiler import ProfilerActivity, profile

    spec = load_spec(cfg["model"])
    batches = [verify_batch(spec, 0, k, cfg["batch"]) for k in range(2)]
    runner = make_runner(spec, cfg["model"], batches, rank, world, cfg["contender"], 300.0)
    runner.step(0)
    runner.step(1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for k in range(2, 2 + cfg["steps"]):
            runner.step(k)
    if rank == 0:
        prof.export_chrome_trace(f"profile-{cfg['contender']['key']}.json")
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


def main(argv: list[str]) -> None:
    model, batch, key, steps = (argv + ["alexnet_cifar", "64", "columns_auto", "3"][len(argv):])[:4]
    raw = model_config(model)
    torch.set_printoptions(linewidth=200)
    (c,) = [c for c in contenders(load_spec(raw), int(batch), 2, 2, 4) if c.key == key]
    tables = launch(job, c.world, {"model": raw, "batch": int(batch), "contender": c.to_dict(), "steps": int(steps)})
    print(tables[0])


if __name__ == "__main__":
    main(sys.argv[1:])
