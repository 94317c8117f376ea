"""The training worker: one function, given (rank, world size, resolved config).

Any launcher calls ``train_worker`` after setting up the process group; nothing here
knows how the processes were started. It reads top to bottom: build the shard,
restore, then epochs of steps, evaluation, schedule, checkpoints.

A step is one global batch (``train.global_batch``): this replica's part of it, in
``accumulate`` micro-batches of ``batch_size``. SIGTERM (a preemption) asks for a stop:
every rank finishes the step it is in, the job writes a complete checkpoint at that
step boundary, and the worker returns ``preempted`` (the command then exits with
``PREEMPTED_EXIT``, which schedulers requeue on; docs/launchers.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from splitnet.comm import Transport
from splitnet.comm.exchange import combine_metrics
from splitnet.data import ShardLoader, SyntheticLoader, build_loader
from splitnet.data.pipeline import merged
from splitnet.data.transfer import HostTransfer, host_transfer, to_device
from splitnet.errors import SplitnetError
from splitnet.model.spec import ModelSpec
from splitnet.partition.plan import Plan
from splitnet.runtime import ShardNet, accumulated_step, open_transport, setup_rank
from splitnet.runtime.precision import compute
from splitnet.runtime.schedule import pipeline_forward
from splitnet.train import checkpoint
from splitnet.train.evaluate import pad_rows, score, scores_text, summarize
from splitnet.train.global_batch import global_batch, recorded_global_batch
from splitnet.train.lr import LrSchedule

# 128 + SIGTERM: what a process that SIGTERM ended reports, so a scheduler that requeues
# or restarts a terminated job (Slurm's batch script, Kubernetes, compose) does so here.
PREEMPTED_EXIT = 128 + signal.SIGTERM


def _logger(run_dir: Path, rank: int, console: bool) -> logging.Logger:
    log = logging.getLogger(f"splitnet.rank{rank}")
    log.setLevel(logging.INFO)
    log.propagate = False
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "logs" / f"rank{rank}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s rank " + str(rank) + " %(message)s"))
    log.addHandler(handler)
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(stream)
    return log


def log_tail(run_dir: Path, rank: int, lines: int = 10) -> str:
    """The end of a rank's log and where the run lives, for the report of a failed job."""
    path = run_dir / "logs" / f"rank{rank}.log"
    if not path.exists():
        return f"rank {rank} wrote no log ({path})\nrun folder: {run_dir}"
    last = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join([f"last lines of {path}:", *(f"  {line}" for line in last), f"run folder: {run_dir}"])


def _append(path: Path, record: dict[str, Any]) -> None:
    # One write() per line: a reader never sees half a record
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def report_damage(damage: dict[str, Any], reported: set[str], log: logging.Logger, metrics_path: Path,
                  rank: int, epoch: int, step: int) -> None:
    """Each shard that lost samples, once per run: which file, how many samples, and why; the
    job trains on with the rest (data.on_error=skip)."""
    for shard, lost in sorted(damage.items()):
        if shard in reported:
            continue
        reported.add(shard)
        log.warning(f"data: skipped {lost.samples} sample(s) of {shard} ({lost.reason}); training goes on "
                    "with the other samples")
        _append(metrics_path, {"kind": "data_skipped", "rank": rank, "epoch": epoch, "step": step, "file": shard,
                               "samples": lost.samples, "reason": lost.reason})


class StopRequest:
    """Set by SIGTERM while the worker runs; the previous handler is back when it returns."""

    def __init__(self) -> None:
        self.asked = False

    def ask(self, signum: int, frame: Any) -> None:
        self.asked = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        try:
            previous = signal.signal(signal.SIGTERM, self.ask)
        except ValueError:  # not the main thread: the launcher that started it handles SIGTERM
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)


def forward_only(shard: ShardNet, x: torch.Tensor, transport: Transport) -> torch.Tensor | None:
    with compute(transport):  # exchanges carry the compute dtype in evaluation too
        if shard.plan.strategy == "pipeline":
            return pipeline_forward(shard, x, transport)
        return shard(x)


def evaluate(shard: ShardNet, transport: Transport, spec: ModelSpec, plan: Plan, cfg: dict[str, Any],
             crops: int) -> dict[str, Any]:
    """Top-1/top-5 and loss over the whole validation split, the same on every rank: each
    replica scores its own shards' images once (a last partial batch included), and the
    counts are summed over the replicas through comm/."""
    shard.eval()
    move = host_transfer(transport.device)
    loader = build_loader(cfg["data"], split="val", image_size=spec.input_size, channels=spec.input_channels,
                          batch_size=cfg["eval"]["batch_size"], replica=transport.replica,
                          num_replicas=plan.replicas, epoch=0, seed=cfg["seed"], crops=crops,
                          pin_memory=move.pin_memory)

    def logits(x: torch.Tensor) -> torch.Tensor | None:
        rows = x.shape[0]
        if shard.batch_split:  # hybrid devices take equal parts of a batch: pad a partial one
            x = pad_rows(x, plan.devices)
        out = forward_only(shard, x.to(transport.device, non_blocking=move.non_blocking), transport)
        return None if out is None else out[:rows].float().cpu()

    counts = score(logits, loader)
    shard.train()
    return summarize(combine_metrics(counts, transport, plan.output_rank), spec.num_classes, crops)


def replica_batch(batch: tuple[torch.Tensor, ...], loader: ShardLoader | SyntheticLoader, transport: Transport,
                  move: HostTransfer) -> tuple[torch.Tensor, torch.Tensor]:
    """The (images, labels) this rank trains on, on its device: the loader's batch, or where each
    rank of the replica decoded its own rows (``loader.parts``), all the ranks' rows gathered
    (uint8 pixels: a quarter of the bytes of float32) and finished into float32 images."""
    moved = to_device(batch, transport.device, move)
    if loader.parts is None:
        return moved[0], moved[1]
    pixels, offsets, labels = transport.gather_rows(moved, loader.parts)
    return loader.finish(pixels, offsets), labels


class RankError(SplitnetError):
    """A ``SplitnetError`` a training rank met, its message pointing at the rank's log."""


def train_worker(rank: int, world_size: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """Train as ``rank``. A ``SplitnetError`` (bad data, a checkpoint, a stalled exchange)
    leaves with its message and the place of its traceback, which goes to the rank's log:
    the launcher reports the one line; any other exception is a bug and travels whole."""
    try:
        with StopRequest().installed() as stop:
            return _train(rank, world_size, cfg, stop)
    except SplitnetError as exc:
        path = Path(cfg["run_dir"]) / "logs" / f"rank{rank}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} rank {rank} failed: "
                      + "".join(traceback.format_exception(exc)))
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RankError(f"{message} (its traceback: {path})") from exc


def _train(rank: int, world_size: int, cfg: dict[str, Any], stop_request: StopRequest) -> dict[str, Any]:
    from tqdm import tqdm

    # tqdm's default lock is a named semaphore registered with multiprocessing's resource
    # tracker; a rank that is killed never unregisters it, and the tracker then warns of a
    # leak at exit. One process draws at most one bar: a thread lock is all it needs.
    tqdm.set_lock(threading.RLock())
    run_dir = Path(cfg["run_dir"])
    tcfg, ocfg, seed = cfg["train"], cfg["optim"], cfg["seed"]
    transport = open_transport(cfg, rank)
    reporter = transport.replica == 0 and transport.mp_rank == Plan.from_dict(cfg["plan"]).output_rank
    log = _logger(run_dir, rank, console=reporter)  # before the build: a rank killed in it still has a log
    me = setup_rank(cfg, rank, optim=ocfg, transport=transport)
    spec, plan, shard, opt = me.spec, me.plan, me.shard, me.optimizer
    if tcfg.get("channels_last"):  # NHWC conv weights (and inputs below): tensor cores' layout
        shard = shard.to(memory_format=torch.channels_last)
    if transport.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(tcfg.get("tf32", True))
    held = sum(p.numel() for p in shard.parameters())
    log.info(f"rank {rank} of {world_size}: replica {transport.replica}, device {transport.mp_rank}, "
             f"layers {', '.join(shard.names)}; {held:,} parameters held")
    schedule = LrSchedule.from_config(ocfg)
    step, first_epoch, skip = 0, 0, 0
    ckpt = None
    if tcfg.get("resume") == "auto":  # the run folder's latest, or a fresh start if it has none
        done = checkpoint.complete_checkpoints(run_dir / "checkpoints")
        ckpt = done[-1] if done else None
    elif tcfg.get("resume"):
        ckpt = checkpoint.find_checkpoint(tcfg["resume"])
    recorded = recorded_global_batch(checkpoint.read_meta(ckpt)) if ckpt is not None else None
    total_batch, micro_steps = global_batch(tcfg, plan.batch_size, plan.replicas, recorded, str(ckpt))
    log.info(f"global batch {total_batch} = {plan.replicas} replica(s) x {micro_steps} micro-step(s) x "
             f"batch_size {plan.batch_size}")
    if ckpt is not None:
        model_state, momentum, meta, rng = checkpoint.restore(ckpt, plan, rank, cfg["model"])
        shard.load_state_dict(model_state)
        named = dict(shard.named_parameters())
        for name, buf in momentum.items():
            opt.state[named[name]]["momentum_buffer"] = buf.to(named[name].device, copy=True)
        schedule.load_state_dict(meta["schedule"])
        if rng is not None:
            torch.set_rng_state(rng)
        step, first_epoch, skip = meta["step"], meta["epoch"], meta["batch_in_epoch"]
        log.info(f"resumed from {ckpt} at step {step} (epoch {first_epoch}, batch {skip})")
    # One writer per file: metrics.jsonl is the reporting rank's alone (appends from ranks on
    # different nodes interleave on NFS, where O_APPEND is not atomic across clients); every
    # other rank's step records (its bytes per layer) go to its own file beside its log
    metrics_path = run_dir / "metrics.jsonl" if reporter else run_dir / "logs" / f"rank{rank}.metrics.jsonl"
    board = None
    if reporter and cfg.get("logging", {}).get("tensorboard"):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise SplitnetError("logging.tensorboard=true needs the tensorboard package: "
                                "pip install 'splitnet[tensorboard]'") from exc
        board = SummaryWriter(str(run_dir / "tensorboard"))

    def save(epoch: int, batch_in_epoch: int) -> None:
        root = run_dir / "checkpoints"
        if transport.replica == 0:
            named = dict(shard.named_parameters())
            momentum = {n: opt.state[p]["momentum_buffer"] for n, p in named.items()
                        if "momentum_buffer" in opt.state.get(p, {})}
            checkpoint.write_shard(root, step, transport.mp_rank, {
                "model": shard.state_dict(), "momentum": momentum, "rng": torch.get_rng_state(),
                "mp_rank": transport.mp_rank})
        transport.barrier("checkpoint")
        if rank == 0:
            path = checkpoint.publish(root, step, {
                "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "plan": plan.to_dict(),
                "global_batch": total_batch, "replicas": plan.replicas, "accumulate": micro_steps,
                "config": {k: v for k, v in cfg.items() if k != "plan"}, "schedule": schedule.state_dict()},
                tcfg["keep"])
            log.info(f"checkpoint {path}")
        transport.barrier("checkpoint")

    final: dict[str, Any] = {}
    stop = preempted = False
    damaged: set[str] = set()
    evaluating = cfg["eval"].get("enabled", True)
    every = int(cfg["eval"].get("every", 1))
    move = host_transfer(transport.device)
    for epoch in range(first_epoch, tcfg["epochs"]):
        # Each rank of the replica decodes its rows of the batch; the step all-gathers them
        loader = build_loader(cfg["data"], split="train", image_size=spec.input_size,
                              channels=spec.input_channels, batch_size=plan.batch_size * micro_steps,
                              replica=transport.replica, num_replicas=plan.replicas, epoch=epoch, seed=seed,
                              skip_batches=skip, part=(transport.mp_rank, plan.devices),
                              pin_memory=move.pin_memory)
        bar = tqdm(total=len(loader) + skip, initial=skip, disable=not reporter, desc=f"epoch {epoch + 1}",
                   unit="step", dynamic_ncols=True, leave=True, file=sys.stderr)
        total, taken = len(loader) + skip, skip
        for batch in loader:
            lr = schedule.lr(step)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            transport.meter.reset()
            t0 = time.perf_counter()
            x, y = replica_batch(batch, loader, transport, move)
            if tcfg.get("channels_last"):
                x = x.contiguous(memory_format=torch.channels_last)
            result = accumulated_step(shard, x, y, transport, step, micro_steps)
            opt.step()
            if transport.device.type == "cuda":  # CUDA runs asynchronously: time the work, not its launch
                torch.cuda.synchronize(transport.device)
            seconds = time.perf_counter() - t0
            step += 1
            record: dict[str, Any] = {
                "kind": "step", "rank": rank, "step": step, "epoch": epoch, "replicas": plan.replicas,
                "accumulate": micro_steps,
                "comm_bytes": round(transport.meter.total()), "data_bytes": round(transport.meter.data_bytes),
                "comm": {k: round(v["fwd"] + v["bwd"]) for k, v in transport.meter.per_layer().items()}}
            if reporter:
                images = total_batch / seconds
                record.update(loss=float(result.loss), lr=lr, images_per_s=images, step_s=seconds)
                bar.set_postfix(loss=f"{float(result.loss):.3f}", lr=f"{lr:.3g}", img_s=f"{images:.0f}")
                if board is not None:
                    for key in ("loss", "lr", "images_per_s", "comm_bytes"):
                        board.add_scalar(f"train/{key}", record[key], step)
            if step % tcfg["log_every"] == 0:
                _append(metrics_path, record)
            bar.update(1)
            taken += 1
            saved = bool(tcfg["checkpoint_every"]) and step % tcfg["checkpoint_every"] == 0
            if saved:
                save(epoch, taken)
            if transport.any_rank(stop_request.asked, "preemption"):
                if not saved:
                    save(epoch, taken)
                log.info(f"stopped by SIGTERM after step {step}: resume from the checkpoint with "
                         "train.resume=auto")
                preempted = True
                break
            if tcfg["max_steps"] and step >= tcfg["max_steps"]:
                stop = True
                break
        bar.close()
        if preempted:
            break
        damage = getattr(loader, "damage", {})
        if loader.parts is not None:  # each rank met the bad samples of its own rows
            damage = merged(transport.gather_objects(damage))
        if transport.mp_rank == plan.output_rank:  # one rank per replica reports for all of it
            report_damage(damage, damaged, log, metrics_path, rank, epoch, step)
        complete = taken == total
        skip = 0
        # eval.every > 1 skips the scoring of epochs between (the last one is always scored)
        scoring = evaluating and (stop or (epoch + 1) % every == 0 or epoch + 1 == tcfg["epochs"])
        val = evaluate(shard, transport, spec, plan, cfg, cfg["eval"]["crops"]) if scoring else {}
        # an epoch left unscored runs only step and constant schedules (preflight), which ignore the error
        cut = complete and schedule.end_epoch(epoch, 1.0 - val["top1"] if val else math.nan)
        final = {"kind": "epoch", "epoch": epoch, "step": step, **val, "lr": schedule.lr(step), "lr_cut": cut}
        if reporter:
            _append(metrics_path, final)
            if board is not None and val:
                for key in ("top1", "top5", "val_loss"):
                    if key in val:
                        board.add_scalar(f"val/{key}", val[key], step)
                board.flush()
        scores = (f"{scores_text(val)}, val loss {val['val_loss']:.4f}" if val
                  else "not validated (eval.enabled=false)" if not evaluating else "not scored (eval.every)")
        log.info(f"epoch {epoch + 1}: {scores}" + (f"; lr now {schedule.lr(step):.3g}" if cut else ""))
        # an epoch cut short by train.max_steps resumes after its last batch taken
        save(*((epoch + 1, 0) if complete else (epoch, taken)))
        if stop:
            break
    if not final and not preempted:  # nothing left to train (a finished run resumed): report where it stands
        final = {"kind": "epoch", "epoch": first_epoch - 1, "step": step,
                 **(evaluate(shard, transport, spec, plan, cfg, cfg["eval"]["crops"]) if evaluating else {})}
    if board is not None:
        board.close()
    return {"rank": rank, "reporter": reporter, "final": final, "step": step, "preempted": preempted}
