"""Launchers start the ranks, set up the process group and call one worker function.

A worker function is ``job(rank, world_size, cfg) -> result``; nothing it calls knows
which launcher started it. ``choose_launcher(cfg)`` is the one place that reads
``launcher.name``; commands that start ranks (train, profile) get a ``Launcher`` and
never import a particular one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from splitnet.errors import SplitnetError
from splitnet.launchers.core import Job, WorkerFailed

NAMES = ("simulate", "torchrun", "ray")


@dataclass(frozen=True)
class Launcher:
    """The launcher ``launcher.name`` names, as a command uses it."""

    name: str

    def prepare(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """The config as this launcher runs it: torchrun derives ``mesh.replicas`` from its world
        size and checks it; the others, which choose the world themselves, read null as 1."""
        if self.name == "torchrun":
            from splitnet.launchers.torchrun import adapt_config

            return adapt_config(cfg)
        if cfg["mesh"].get("replicas") is None:
            return {**cfg, "mesh": {**cfg["mesh"], "replicas": 1}}
        return cfg

    def own_ranks(self, world_size: int) -> list[int]:
        """The global ranks whose results this process gets back: all of them, except under
        torchrun, where every rank is its own process and does its own reporting."""
        if self.name == "torchrun":
            from splitnet.launchers.torchrun import this_rank

            return [this_rank()]
        return list(range(world_size))

    def launch(self, job: Job, world_size: int, cfg: dict[str, Any], *,
               restart: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
               explain: Callable[[int], str] | None = None) -> list[Any]:
        """``job`` on ``world_size`` ranks; the results of ``own_ranks``. ``restart``: the config
        of ranks started again after a failure (torchrun, Ray); ``explain(rank)``: what to add
        to a failed rank's error (its log)."""
        try:
            if self.name == "simulate":
                from splitnet.launchers.simulate import launch

                return launch(job, world_size, cfg, threads=cfg["launcher"].get("threads"),
                              timeout_s=cfg["comm"]["timeout_s"] + 60)
            if self.name == "torchrun":
                from splitnet.launchers.torchrun import launch as torchrun_launch

                return torchrun_launch(job, world_size, cfg, restart=restart)
            from splitnet.launchers.ray import launch as ray_launch

            return ray_launch(job, world_size, cfg, restart=restart)
        except WorkerFailed as failed:
            if explain is None:
                raise
            raise failed.with_context(explain(failed.rank)) from None


def choose_launcher(cfg: dict[str, Any]) -> Launcher:
    """The launcher ``cfg["launcher"]["name"]`` names (simulate when unnamed)."""
    name = cfg["launcher"].get("name", "simulate")
    if name not in NAMES:
        raise SplitnetError(f"launcher={name!r} is not available; valid: {', '.join(NAMES)}")
    return Launcher(name)
