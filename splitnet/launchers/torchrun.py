"""``launcher=torchrun``: this process is one rank that torchrun started.

torchrun runs ``python -m splitnet train launcher=torchrun ...`` once per rank, so every
rank is its own Hydra app. What this module promises:

- The rank, world size and local rank come from torchrun's environment (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``); nothing else is read.
- Every rank of the job agrees on one run folder without talking: ``train.run_dir`` when
  given, else ``runs/torchrun-<TORCHELASTIC_RUN_ID>``. torchrun keeps the run id across
  restarts, so a restarted worker group finds the checkpoints of the one before it; it
  runs with the config its caller's ``restart`` gives (train's resumes from the latest
  complete checkpoint, no flag needed).
- A world size that disagrees with ``mesh.replicas x mesh.devices`` is one error line
  before any collective; ``mesh.replicas=null`` is derived from the world size.
- ``comm.backend=auto`` is NCCL on ``cuda:LOCAL_RANK`` when CUDA is available, gloo
  otherwise. A model-parallel group that spans nodes is warned about, never refused.
- A ``SplitnetError`` the job raises is this rank's one line (``WorkerFailed``), also in
  torchrun's error file, so its summary shows it; any other exception keeps its traceback
  there.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from splitnet.errors import SplitnetError
from splitnet.launchers.backend import choose_backend
from splitnet.launchers.core import Job, WorkerFailed, cause_of, open_store, run_in_group
from splitnet.launchers.placement import spanning_replicas
from splitnet.partition.mesh import replicas_for_world

_NEEDED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


class TorchrunError(SplitnetError, RuntimeError):
    pass


def torchrun_env(environ: dict[str, str] | None = None) -> dict[str, int]:
    """rank, world_size, local_rank, local_world_size and restart_count from torchrun's variables."""
    env = os.environ if environ is None else environ
    missing = [k for k in _NEEDED if k not in env]
    if missing:
        raise TorchrunError(f"launcher=torchrun but {', '.join(missing)} not set: start it as "
                            "`torchrun --nproc-per-node=N -m splitnet train launcher=torchrun ...`, "
                            "or use launcher=simulate")
    out = {k.lower(): int(env[k]) for k in _NEEDED}
    out["restart_count"] = int(env.get("TORCHELASTIC_RESTART_COUNT", "0"))
    return out


def run_folder_override(args: list[str], environ: dict[str, str] | None = None) -> list[str]:
    """Hydra overrides that give every rank the same run folder and keep ranks other than 0
    from writing Hydra's own files into it. Empty outside torchrun."""
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" not in env or any(a.startswith("hydra.run.dir=") for a in args):
        return []
    given = [a.split("=", 1)[1] for a in args if a.startswith("train.run_dir=")]
    run_id = env["TORCHELASTIC_RUN_ID"]
    if given:
        folder = given[-1]
    elif run_id and run_id != "none":
        folder = f"runs/torchrun-{run_id}"
    else:
        raise TorchrunError("launcher=torchrun: torchrun's --rdzv-id is 'none' (its default), so the ranks "
                            "have no job id to agree on a run folder; pass --rdzv-id=JOB_ID (e.g. "
                            "$SLURM_JOB_ID) or train.run_dir=DIR (on storage every node reaches)")
    quiet = [] if env.get("RANK", "0") == "0" else [
        "hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    return [f"hydra.run.dir={folder}", *quiet]


def adapt_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config as this rank runs it: ``mesh.replicas`` derived when null, checked against the
    world size. An elastic restart on fewer nodes derives fewer replicas here."""
    world = torchrun_env()["world_size"]
    mesh = dict(cfg["mesh"])
    mesh["replicas"] = replicas_for_world(world, mesh["devices"], mesh.get("replicas"), started_by="torchrun")
    return {**cfg, "mesh": mesh}


def backend(requested: str, cuda: bool) -> str:
    return choose_backend(requested, cuda, "but this process sees no CUDA device; use comm.backend=gloo "
                          "(or auto) on CPU machines", TorchrunError)


def this_rank() -> int:
    return torchrun_env()["rank"]


def _store(env: dict[str, int], timeout_s: float) -> Any:
    """The job's key-value store, seen through a prefix of its own for this restart.

    torchrun's agent may serve the same store across restarts; without the prefix a new
    attempt reads the killed attempt's keys (its ranks' gloo addresses) and fails to connect.
    """
    import torch.distributed as dist

    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # else rank 0 serves it
    store = open_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), env["rank"], env["world_size"],
                       timeout_s, served_by_rank0=not agent)
    return dist.PrefixStore(f"splitnet/attempt{env['restart_count']}/", store)


def launch(job: Job, world_size: int, cfg: dict[str, Any], *,
           restart: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> list[Any]:
    """Join torchrun's process group as this rank, run the job, return ``[its result]``.
    ``restart``: the config of a worker group that torchrun restarted after a failure."""
    import torch

    env = torchrun_env()
    if env["world_size"] != world_size:
        raise TorchrunError(f"torchrun started WORLD_SIZE={env['world_size']} ranks, the plan needs {world_size}")
    name = backend(cfg["comm"].get("backend", "auto"), torch.cuda.is_available())
    if name == "nccl":
        torch.cuda.set_device(env["local_rank"])
    devices = cfg["mesh"]["devices"]
    split = spanning_replicas(world_size, devices, env["local_world_size"])
    if split and env["rank"] == 0:
        print(f"splitnet train: warning: {env['local_world_size']} ranks per node split the model-parallel "
              f"group of replica(s) {split} (mesh.devices={devices}) across nodes: its activations cross the "
              "network every step; use --nproc-per-node a multiple of mesh.devices", file=sys.stderr)
    if env["restart_count"] > 0 and restart is not None:
        cfg = restart(cfg)
    timeout_s = cfg["comm"]["timeout_s"]
    try:
        return [run_in_group(job, env["rank"], world_size, cfg, backend=name, store=_store(env, timeout_s),
                             timeout_s=timeout_s, threads=cfg["launcher"].get("threads"))]
    except Exception as exc:
        cause = cause_of(exc)
        failed = WorkerFailed(env["rank"], "", cause=cause) if cause is not None else None
        record_failure(exc, failed)
        if failed is None:
            raise
        raise failed from exc


def record_failure(exc: BaseException, failed: WorkerFailed | None) -> None:
    """Write this rank's failure where torchrun's summary reads it (``TORCHELASTIC_ERROR_FILE``,
    the file its ``record`` decorator writes): the one line of a ``WorkerFailed`` with a
    cause, else the exception with its traceback."""
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if failed is None:
        ErrorHandler().record_exception(exc)
    elif path:
        # no py_callstack: torchrun's summary then shows the message as the failure's traceback
        Path(path).write_text(json.dumps({"message": {"message": str(failed),
                                                      "extraInfo": {"timestamp": str(int(time.time()))}}}))
