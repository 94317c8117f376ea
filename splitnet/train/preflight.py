"""Everything ``splitnet train`` can check before a worker starts, checked once, in the parent.

``preflight(cfg, run_dir)`` returns the model spec, the plan and the data set's description,
or raises a ``SplitnetError`` whose one line names the key, its value and the fix:

- the keys a worker reads: ``seed``, ``optim.*`` (what SGD and the lr schedule accept),
  ``train.*``, ``eval.*`` and ``comm.*``, each of the right type and range;
- the runtime's precision (``train.precision``) and the evaluation settings (``eval.crops``, ``eval.batch_size``);
- sizes no machine holds: simulated ranks whose planned memory exceeds this machine's, a
  ``data.side`` far past the model's input, more data workers than cores can serve;
- the mesh against the model (the partitioner's own errors: a width the devices cannot
  split, a batch hybrid devices cannot share, more stages than layers);
- the data against the model: class count, image channels, stored image size and
  ``data.side`` against the model's input;
- the data against the job: enough training samples for one global batch (replicas x
  micro-steps x batch size), and a validation split unless ``eval.enabled=false`` (then
  the lr schedule must not need one);
- a checkpoint to resume from: the same model, a global batch this mesh can hold
  (``train.global_batch``: the replicas may change, the global batch stays), and the same
  data position mid-epoch.

It reads the config, ``meta.json`` files and checkpoint metadata; it starts no process and
never imports torch.distributed, Ray or Hydra.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitnet.data import DataInfo, data_info
from splitnet.data.shardset import resolve
from splitnet.data.subset import subset_size
from splitnet.errors import SplitnetError
from splitnet.keys import is_int, is_number, need, need_int
from splitnet.model.spec import ModelSpec, load_spec
from splitnet.partition import Mesh, make_plan
from splitnet.partition.plan import Plan
from splitnet.train.global_batch import global_batch, recorded_global_batch


@dataclass(frozen=True)
class Checked:
    """What a job that passed every check runs: its spec, its plan, its data."""

    spec: ModelSpec
    plan: Plan
    info: DataInfo


def preflight(cfg: dict[str, Any], run_dir: Path) -> Checked:
    """Check a resolved training config; every failure is one line naming key, value and fix."""
    spec = load_spec(cfg["model"])
    check_keys(cfg)
    check_runtime(cfg)
    plan = make_plan(spec, cfg["partition"], Mesh.from_dict(cfg["mesh"]), cfg["batch_size"], compute_bytes(cfg))
    check_scale(cfg, spec, plan)
    info = data_info(cfg["data"])
    if cfg["train"].get("resume"):
        total = check_checkpoint(cfg, plan, run_dir)
    else:
        total, _ = global_batch(cfg["train"], cfg["batch_size"], plan.replicas)
    check_data(cfg, spec, plan, info, total)
    return Checked(spec, plan, info)


PRECISIONS = {"fp32": 4, "bf16": 2}  # train.precision -> bytes of an activation and of what exchanges carry


def compute_bytes(cfg: dict[str, Any]) -> int:
    """The plan's ``dtype_bytes`` for ``train.precision``: bf16 computes under autocast and its
    exchanges carry bf16 (half the bytes); master weights and optimizer state stay float32."""
    precision = cfg.get("train", {}).get("precision", "fp32")
    if precision not in PRECISIONS:
        raise SplitnetError(f"train.precision={precision!r}; valid: fp32, bf16")
    if cfg.get("dtype_bytes", 4) != 4:
        raise SplitnetError(f"dtype_bytes={cfg.get('dtype_bytes')!r}: the runtime computes in float32 or bf16 "
                            "(set train.precision=bf16); other sizes are for `splitnet plan` estimates only")
    return PRECISIONS[precision]


def check_runtime(cfg: dict[str, Any]) -> None:
    compute_bytes(cfg)
    if cfg["launcher"].get("name") == "ray" and importlib.util.find_spec("ray") is None:
        raise SplitnetError('launcher=ray needs Ray, an optional extra: pip install "splitnet[ray]"')
    ev = cfg["eval"]
    if ev["crops"] not in (1, 5, 10):
        raise SplitnetError(f"eval.crops={ev['crops']!r}; valid: 1 (centre), 5 (corners and centre) or 10 "
                            "(and their mirrors, where training flips)")
    if not isinstance(ev["batch_size"], int) or ev["batch_size"] < 1:
        raise SplitnetError(f"eval.batch_size={ev['batch_size']!r} must be an integer >= 1")
    schedule = cfg["optim"].get("schedule", "plateau")
    if not ev.get("enabled", True) and schedule == "plateau":
        raise SplitnetError("optim.schedule=plateau cuts the lr when the validation error stops improving, "
                            "but eval.enabled=false measures none; use optim.schedule=step (with "
                            "optim.milestones) or optim.schedule=constant")
    every = ev.get("every", 1)
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise SplitnetError(f"eval.every={every!r} must be an integer >= 1 (score every Nth epoch)")
    if every > 1 and schedule == "plateau":
        raise SplitnetError(f"eval.every={every} leaves epochs unscored, but optim.schedule=plateau reads the "
                            "validation error of every epoch; use eval.every=1 or optim.schedule=step/constant")


def check_data(cfg: dict[str, Any], spec: ModelSpec, plan: Plan, info: DataInfo, total_batch: int) -> None:
    """``total_batch``: the global batch a step trains on (``splitnet.train.global_batch``)."""
    if info.num_classes != spec.num_classes:
        raise SplitnetError(f"data.num_classes={info.num_classes} (data {info.name!r}) but model {spec.name!r} "
                            f"ends in {spec.num_classes} outputs (layer {spec.layers[-1].name!r}, without weights); "
                            "end the model in a conv or linear layer, whose width then follows data.num_classes")
    if info.synthetic:
        return
    size, side = spec.input_size, cfg["data"].get("side")
    if spec.input_channels != 3:
        raise SplitnetError(f"model.input.channels={spec.input_channels} but data {info.name!r} holds RGB "
                            "images; set model.input.channels=3")
    if side is not None and side < size:
        raise SplitnetError(f"data.side={side} is smaller than the {size}x{size} input of model {spec.name!r} "
                            f"(model.input.size); set data.side >= {size}, or null")
    if side is None and info.image_size is not None and info.image_size < size:
        raise SplitnetError(f"data {info.name!r} stores {info.image_size}x{info.image_size} images but model "
                            f"{spec.name!r} takes {size}x{size} crops (model.input.size={size}); to scale "
                            f"them up on purpose set data.side={size * 256 // 224}, or pick a model for "
                            f"{info.image_size}x{info.image_size} input")
    train = resolve(info.patterns["train"], "train")
    fraction = cfg["data"].get("fraction", 1.0)
    total = subset_size(train.total, fraction)
    if total < total_batch:
        used = f" (data.fraction={fraction} of {train.total})" if fraction < 1 else ""
        parts = total_batch // cfg["batch_size"]  # replicas x micro-steps, each taking batch_size samples
        fix = f"set batch_size <= {total // parts}" if total >= parts else "lower train.global_batch"
        raise SplitnetError(f"batch_size={cfg['batch_size']}: data {info.name!r} has {total} training "
                            f"samples{used}, fewer than one global batch of mesh.replicas x micro-steps x "
                            f"batch_size = {plan.replicas} x {parts // plan.replicas} x {cfg['batch_size']} = "
                            f"{total_batch}; {fix} or use more data")
    if cfg["eval"].get("enabled", True) and "val" not in info.counts:
        raise SplitnetError(f"data.val={info.patterns['val']!r} matches no shards: data {info.name!r} has no "
                            "validation split; write the set with one (`splitnet shards ... --val-fraction "
                            "0.1`), point data.val at one, or train without validation: eval.enabled=false "
                            "optim.schedule=constant")


def check_checkpoint(cfg: dict[str, Any], plan: Plan, run_dir: Path) -> int:
    """An unusable checkpoint is refused here, not in every worker; the global batch the
    resumed job trains on."""
    from splitnet.train.checkpoint import (
        CheckpointError,
        complete_checkpoints,
        find_checkpoint,
        model_difference,
        read_meta,
    )

    resume = cfg["train"]["resume"]
    done = complete_checkpoints(run_dir / "checkpoints") if resume == "auto" else [find_checkpoint(resume)]
    if not done:
        return global_batch(cfg["train"], cfg["batch_size"], plan.replicas)[0]
    meta = read_meta(done[-1])
    diff = model_difference(meta["config"]["model"], cfg["model"])
    if diff is not None:
        raise CheckpointError(f"checkpoint {done[-1]} is for a different model: {diff}")
    recorded = recorded_global_batch(meta)
    total, _ = global_batch(cfg["train"], cfg["batch_size"], plan.replicas, recorded, str(done[-1]))
    if meta["batch_in_epoch"]:  # mid-epoch: the data position counts global batches of this data
        was = meta["config"]
        now = {"train.global_batch": total, "seed": cfg["seed"], "data": _position_keys(cfg["data"])}
        then = {"train.global_batch": recorded, "seed": was["seed"], "data": _position_keys(was["data"])}
        changed = [k for k in now if now[k] != then[k]]
        if changed:
            raise CheckpointError(
                f"checkpoint {done[-1]} stopped inside an epoch (after batch {meta['batch_in_epoch']}); "
                f"resuming there needs the same {', '.join(changed)} as before ({then}); resume from "
                "an epoch-end checkpoint to change them")
    return total


def _position_keys(data: dict[str, Any]) -> dict[str, Any]:
    """The data keys a mid-epoch position depends on: all but data.workers, which only
    decides which process decodes a batch, never which batch comes next."""
    return {k: v for k, v in data.items() if k != "workers"}


def check_keys(cfg: dict[str, Any]) -> None:
    """The keys a worker reads, each refused here rather than in every rank that reads it.

    Keys a group does not have are Hydra's to refuse (its struct mode); a key added on
    purpose (``+train.x=1``) passes, as other commands and launchers may read it."""
    need(is_int(cfg.get("seed")) and cfg["seed"] >= 0, "seed", cfg.get("seed"), "must be an integer >= 0")
    check_optim(cfg["optim"])
    train = cfg["train"]
    for key, least in (("epochs", 1), ("checkpoint_every", 0), ("keep", 1), ("max_steps", 0), ("log_every", 1)):
        need_int({key: train.get(key, least)}, "train", key, least)
    for key in ("resume", "run_dir"):
        value = train.get(key)
        need(value is None or isinstance(value, str), f"train.{key}", value, "must be a path or null")
    enabled = cfg["eval"].get("enabled", True)
    need(isinstance(enabled, bool), "eval.enabled", enabled, "must be true or false")
    check_comm(cfg.get("comm", {}))


def check_optim(optim: dict[str, Any]) -> None:
    """What SGD and the lr schedule accept (``train`` and ``profile`` step with them)."""
    lr = optim.get("lr")
    need(is_number(lr) and lr > 0, "optim.lr", lr, "must be a number > 0, e.g. 0.01 (the paper's)")
    momentum = optim.get("momentum", 0)
    need(is_number(momentum) and 0 <= momentum < 1, "optim.momentum", momentum,
         "must be a number from 0 (plain SGD) to below 1, e.g. 0.9 (the paper's)")
    decay = optim.get("weight_decay", 0)
    need(is_number(decay) and decay >= 0, "optim.weight_decay", decay,
         "must be a number >= 0, e.g. 0.0005 (the paper's)")
    schedule = optim.get("schedule", "plateau")
    need(schedule in ("plateau", "step", "constant"), "optim.schedule", schedule, "valid: plateau, step, constant")
    factor = optim.get("factor", 0.1)
    need(is_number(factor) and 0 < factor <= 1, "optim.factor", factor,
         "the lr is multiplied by it at each cut: a number in (0, 1], e.g. 0.1")
    for key in ("patience", "max_cuts", "warmup_steps"):
        need_int({key: optim.get(key, 0)}, "optim", key, 0)
    milestones = optim.get("milestones") or []
    need(isinstance(milestones, list) and all(is_int(m) and m >= 1 for m in milestones), "optim.milestones",
         milestones, "must be a list of epochs >= 1 after which the lr is cut, e.g. [30, 60]")


def check_comm(comm: dict[str, Any]) -> None:
    timeout = comm.get("timeout_s", 300)
    need(is_number(timeout) and timeout > 0, "comm.timeout_s", timeout, "must be a number of seconds > 0, e.g. 300")
    backend = comm.get("backend", "auto")
    need(backend in ("auto", "nccl", "gloo"), "comm.backend", backend, "valid: auto, nccl, gloo")


# A shorter side past this many times the model's input only spends memory: the crop is
# the input size, and the paper rescales 256 for 224.
SIDE_LIMIT = 8
# DataLoader processes per replica beyond this many per core only wait for a core.
WORKERS_PER_CORE = 4


def check_scale(cfg: dict[str, Any], spec: ModelSpec, plan: Plan) -> None:
    """Sizes that pass every type check but that no machine runs: refused before a rank
    allocates them and dies of it."""
    side, size = cfg["data"].get("side"), spec.input_size
    if is_int(side) and side > SIDE_LIMIT * size:
        raise SplitnetError(f"data.side={side} rescales every image far past the {size}x{size} input of "
                            f"model {spec.name!r}; use data.side <= {SIDE_LIMIT * size} (the paper: 256 for 224), "
                            "or null")
    workers, cores = cfg["data"].get("workers", 0), os.cpu_count() or 1
    if is_int(workers) and workers > WORKERS_PER_CORE * cores:
        raise SplitnetError(f"data.workers={workers} DataLoader processes per replica on a machine with {cores} "
                            f"core(s); use data.workers <= {WORKERS_PER_CORE * cores}")
    if cfg.get("launcher", {}).get("name", "simulate") != "simulate":
        return  # other launchers place ranks on machines this process does not see
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # evaluation holds no gradients, but its batches may be larger than training's
    scale = max(1.0, cfg["eval"]["batch_size"] * cfg["eval"]["crops"] / plan.batch_size)
    need = plan.replicas * sum(c.memory_bytes - c.activation_bytes + c.activation_bytes * scale
                               for c in plan.costs)
    if need > host:
        raise SplitnetError(f"batch_size={plan.batch_size}, eval.batch_size={cfg['eval']['batch_size']}: the "
                            f"plan's {plan.devices * plan.replicas} simulated ranks need about "
                            f"{need / 2**30:,.1f} GiB together, more than this machine's {host / 2**30:,.1f} "
                            "GiB; use a smaller batch_size or eval.batch_size")
