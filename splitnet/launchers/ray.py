"""``launcher=ray``: every rank is a Ray actor; each replica's ranks share one node.

Built on Ray core (actors in placement groups), not Ray Train: Ray Train puts all of a
job's workers in one placement group with one strategy and numbers the ranks itself, so
it cannot say "the D ranks of each replica together on one node, the replicas wherever
they fit". One ``STRICT_PACK`` placement group per replica says exactly that (the ranks of
a replica exchange activations every step; replicas only average gradients), and the
actor for global rank ``replica * D + device`` takes bundle ``device`` of its replica's
group. A replica is never split across nodes unless ``launcher.split_replicas=true`` (then,
when no live node could hold D ranks, ``PACK``, with a warning): the placement waits up to
``launcher.placement_timeout_s`` for a node that holds it (an autoscaler may boot one).

What it promises:

- ``launcher.address=null`` starts a local Ray instance on 127.0.0.1 (temp dir
  ``launcher.temp_dir`` or a fresh one in the system temp) and stops it at the end;
  ``auto`` or ``HOST:PORT`` / ``ray://HOST:PORT`` joins a running cluster. An address no one
  answers is one error line within ``launcher.connect_timeout_s``. A driver already
  connected to Ray (a notebook, a test) keeps its connection.
- One GPU per rank when ``launcher.use_gpu`` (``auto``: ``comm.backend=nccl`` or the cluster
  has GPUs now; a joined cluster with none is an error, never a silent CPU run), NCCL, and
  the rank's tensors on the GPU Ray made visible to it; otherwise CPU ranks of
  ``launcher.cpus_per_worker`` CPUs (fractions allowed) and gloo.
- A placement no node can satisfy fails after ``launcher.placement_timeout_s`` naming what
  was asked and what the cluster has.
- A failing rank (an exception, its process killed, its node lost) stops every rank. Up to
  ``launcher.max_failures`` times the job then starts all ranks again, with the config its
  caller's ``restart`` gives (train's resumes from the run folder's latest complete
  checkpoint); after that the rank's error is raised.
- Elastic restarts: every start asks for ``mesh.replicas`` replicas. When a restart cannot
  place them all within ``launcher.placement_timeout_s`` (a node lost for good), it goes on
  with the replicas that were placed if they are at least ``launcher.min_replicas`` (null:
  all of them, so not elastic unless asked); ``restart`` then gets that number in
  ``mesh.replicas`` (train's plans again and keeps the global batch). A later restart that
  places more grows back, up to ``mesh.replicas``. The first start, and a caller without
  ``restart``, place all replicas or fail. Each size is a line on the console and in
  ``placement.json``; the ranks' step records carry it (``splitnet report``).
- ``placement.json`` in the run folder says where every rank ran (node, IP, process).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from splitnet.errors import SplitnetError
from splitnet.launchers.backend import choose_backend
from splitnet.launchers.core import Job, WorkerFailed, cause_of, free_port, open_store, rank_environment, run_in_group
from splitnet.launchers.placement import describe_resources, min_replicas, replica_strategy, resolve_use_gpu


class RayLaunchError(SplitnetError, RuntimeError):
    pass


class _RankLost(Exception):
    def __init__(self, rank: int, detail: str, cause: str | None, cfg: dict[str, Any], replicas: int) -> None:
        super().__init__(detail)
        self.rank = rank
        self.detail = detail
        self.cause = cause  # the one line of a SplitnetError the rank raised
        self.cfg = cfg  # the attempt's config, the one to restart from
        self.replicas = replicas  # the attempt ran on this many


def _check_reachable(address: str, timeout_s: float) -> None:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise RayLaunchError(f"launcher.address={address!r}: no Ray cluster answers there within "
                             f"launcher.connect_timeout_s={timeout_s:g}s ({exc}); start one with `ray start "
                             "--head`, or use launcher.address=null for a local instance") from None


def connect(launcher: dict[str, Any]) -> bool:
    """Connect this driver to Ray; True if this call started or joined (and so must shut down)."""
    address = launcher.get("address")
    if address is None and "ray" not in sys.modules:
        # Ray reads this when imported, and the processes it starts inherit it: the node
        # address becomes 127.0.0.1 and every Ray process of the local instance, the rank
        # actors included, listens on loopback only (Ray has no authentication by default).
        # A driver that imported ray before (a notebook, a test) keeps what it chose.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if address not in (None, "auto"):
        _check_reachable(str(address), float(launcher["connect_timeout_s"]))
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        temp = launcher.get("temp_dir") or tempfile.mkdtemp(prefix="splitnet-ray-")
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, _temp_dir=str(temp),
                 num_cpus=launcher.get("num_cpus"), log_to_driver=True)
        return True
    try:
        ray.init(address=address, log_to_driver=True)
    except ConnectionError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RayLaunchError(f"launcher.address={address!r}: {first}; start a cluster with `ray start --head` "
                             "or use launcher.address=null for a local instance") from None
    return True


def _use_gpu(launcher: dict[str, Any], backend: str) -> bool:
    import ray

    try:
        return resolve_use_gpu(launcher.get("use_gpu", "auto"), backend, launcher.get("address") is not None,
                               ray.cluster_resources().get("GPU", 0))
    except ValueError as exc:
        raise RayLaunchError(str(exc)) from None


class RankActor:
    """One rank (a Ray actor): reports where it runs, then joins the process group and runs the job."""

    def where(self) -> dict[str, Any]:
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                "pid": os.getpid()}

    def free_port(self, host: str) -> int:
        return free_port(host)

    def run(self, job: Job, rank: int, world: int, cfg: dict[str, Any], host: str, port: int,
            backend: str) -> Any:
        import torch

        rank_environment(host, port, rank, world, 0, 1)
        if backend == "nccl":
            torch.cuda.set_device(0)  # Ray made exactly this rank's GPU visible
        timeout_s = cfg["comm"]["timeout_s"]
        threads = cfg["launcher"].get("threads") or max(1, int(cfg["launcher"]["cpus_per_worker"]))
        return run_in_group(job, rank, world, cfg, backend=backend, timeout_s=timeout_s, threads=threads,
                            store=open_store(host, port, rank, world, timeout_s))


def _placement_error(launcher: dict[str, Any], bundle: dict[str, float], replicas: int, devices: int,
                     strategy: str, placed: int, minimum: int) -> RayLaunchError:
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    have = "; ".join(f"node {i}: {describe_resources(r)}" for i, r in enumerate(nodes))
    least = f" (launcher.min_replicas={minimum} needed)" if minimum < replicas else ""
    return RayLaunchError(
        f"placement: asked for {replicas} replica(s) x {devices} rank(s) of {describe_resources(bundle)} each "
        f"({strategy}: {'a replica on one node' if strategy == 'STRICT_PACK' else 'packed'}), "
        f"{placed} of {replicas} placed{least} within launcher.placement_timeout_s="
        f"{launcher['placement_timeout_s']:g}s; the cluster has {len(nodes)} node(s): {have}; lower "
        "launcher.cpus_per_worker, add nodes (an autoscaling cluster may need a longer "
        "launcher.placement_timeout_s to boot one), or let replicas span nodes (launcher.split_replicas=true)")


def _place(launcher: dict[str, Any], bundle: dict[str, float], devices: int, strategy: str, replicas: int,
           minimum: int) -> list[Any]:
    """Placement groups for ``replicas`` replicas, one each; after ``launcher.placement_timeout_s``
    the ones placed by then, if they are at least ``minimum`` (the others are removed)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    groups = [placement_group([bundle] * devices, strategy=strategy) for _ in range(replicas)]
    refs = [g.ready() for g in groups]
    ready, _ = ray.wait(refs, num_returns=replicas, timeout=float(launcher["placement_timeout_s"]))
    done = set(ready)
    placed = {i for i, ref in enumerate(refs) if ref in done}
    if len(placed) < minimum:
        placed = set()
    for i, group in enumerate(groups):
        if i not in placed:
            remove_placement_group(group)
    if not placed:
        raise _placement_error(launcher, bundle, replicas, devices, strategy, len(ready), minimum)
    return [groups[i] for i in sorted(placed)]


def _run_once(job: Job, cfg: dict[str, Any], attempt: int, minimum: int,
              restart: Callable[[dict[str, Any]], dict[str, Any]] | None, was: int) -> list[Any]:
    """One attempt: place the replicas, start a rank actor per bundle, wait for every rank.
    A restart (``attempt`` > 0) runs the config ``restart`` gives for the replicas placed;
    ``was``: the replicas the attempt before ran on."""
    import ray
    from ray.util.placement_group import remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    launcher = cfg["launcher"]
    devices, wanted = cfg["mesh"]["devices"], cfg["mesh"]["replicas"]
    gpu = _use_gpu(launcher, cfg["comm"].get("backend", "auto"))
    backend = choose_backend(cfg["comm"].get("backend", "auto"), gpu, "needs GPU ranks; set launcher.use_gpu=true "
                             "on a cluster with GPUs, or comm.backend=gloo", RayLaunchError)
    bundle = {"CPU": float(launcher["cpus_per_worker"]), **({"GPU": 1.0} if gpu else {})}
    strategy = replica_strategy(bundle, devices, [n["Resources"] for n in ray.nodes() if n.get("Alive")],
                                bool(launcher.get("split_replicas", False)))
    if strategy != "STRICT_PACK":
        print(f"splitnet train: warning: no node can hold the {devices} ranks of a replica "
              f"({describe_resources(bundle)} each); launcher.split_replicas=true: replicas will span nodes",
              file=sys.stderr)
    groups = _place(launcher, bundle, devices, strategy, wanted, minimum if attempt and restart else wanted)
    actors: list[Any] = []
    try:
        replicas = len(groups)
        if attempt and restart is not None:
            try:
                cfg = restart({**cfg, "mesh": {**cfg["mesh"], "replicas": replicas}})
            except SplitnetError as exc:
                raise RayLaunchError(f"placement: {replicas} of {wanted} replica(s) placed on restart: {exc}") from None
        if replicas != was:
            timeout = launcher["placement_timeout_s"]
            within = f" within launcher.placement_timeout_s={timeout:g}s" if replicas < wanted else ""
            print(f"splitnet train: placement: {replicas} of {wanted} replica(s) placed{within}; attempt {attempt} "
                  f"runs on {replicas} replica(s) instead of {was} (launcher.min_replicas={minimum}), with the same "
                  "global batch", file=sys.stderr)
        world = replicas * devices
        for rank in range(world):
            where = PlacementGroupSchedulingStrategy(groups[rank // devices],
                                                     placement_group_bundle_index=rank % devices)
            actors.append(ray.remote(RankActor).options(num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0),
                                            scheduling_strategy=where).remote())
        places = ray.get([a.where.remote() for a in actors])
        run_dir = Path(cfg["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "placement.json").write_text(json.dumps(
            [{"rank": r, "replica": r // devices, "device": r % devices, "attempt": attempt, "replicas": replicas,
              **p} for r, p in enumerate(places)], indent=1))
        host = places[0]["node_ip"]
        port = ray.get(actors[0].free_port.remote(host))
        run_cfg = {**cfg, "mesh": {**cfg["mesh"], "replicas": wanted}}  # what the next attempt asks for again
        refs = {a.run.remote(job, r, world, cfg, host, port, backend): r for r, a in enumerate(actors)}
        results: list[Any] = [None] * world
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                results[refs[done[0]]] = ray.get(done[0])
            except ray.exceptions.RayError as exc:
                # a task's error carries the rank's own exception as its cause, when it unpickles
                raise _RankLost(refs[done[0]], str(exc), cause_of(getattr(exc, "cause", None) or exc),
                                run_cfg, replicas) from None
        return results
    finally:
        for actor in actors:
            ray.kill(actor)
        for group in groups:
            remove_placement_group(group)


def launch(job: Job, world_size: int, cfg: dict[str, Any], *,
           restart: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> list[Any]:
    """Run ``job(rank, world_size, cfg)`` on Ray actors; return their results by rank.
    ``restart``: the config all ranks start again with after one failed, given the replicas
    placed for them in ``mesh.replicas`` (``launcher.min_replicas``)."""
    launcher = cfg["launcher"]
    devices = cfg["mesh"]["devices"]
    if world_size != devices * cfg["mesh"]["replicas"]:
        raise RayLaunchError(f"launcher=ray: asked for {world_size} ranks but mesh.replicas x mesh.devices = "
                             f"{cfg['mesh']['replicas']} x {devices}")
    try:
        minimum = min_replicas(launcher.get("min_replicas"), cfg["mesh"]["replicas"])
    except ValueError as exc:
        raise RayLaunchError(str(exc)) from None
    started = connect(launcher)  # first: it must set Ray's environment before anything imports ray
    import ray

    try:
        failures, ran_on = 0, cfg["mesh"]["replicas"]
        while True:
            try:
                return _run_once(job, cfg, failures, minimum, restart, ran_on)
            except _RankLost as lost:
                if failures >= int(launcher["max_failures"]):
                    raise WorkerFailed(lost.rank, lost.detail, cause=lost.cause) from None
                failures += 1
                cfg, ran_on = lost.cfg, lost.replicas
                print(f"splitnet train: rank {lost.rank} failed ({lost.cause or lost.detail.strip().splitlines()[0]}); "
                      f"restarting every rank (failure {failures} of launcher.max_failures="
                      f"{launcher['max_failures']})", file=sys.stderr)
    finally:
        if started:
            ray.shutdown()
