"""Learning-rate schedules.

Paper section 5: "divide the learning rate by 10 when the validation error rate
stopped improving with the current learning rate", three times in all. ``plateau``
does that after each epoch's evaluation, once ``patience`` + 1 epochs in a row have
brought no new best error: by default 3, so one or two noisy epochs (a held-out error
measured on a few hundred images moves by a point from one epoch to the next) never
cut the rate, and a real plateau costs two epochs more than with no patience. ``step``
divides at fixed epochs; either can start with a linear warm-up over ``warmup_steps``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from splitnet.errors import SplitnetError


@dataclass
class LrSchedule:
    base_lr: float
    kind: str = "plateau"            # plateau | step | constant
    factor: float = 0.1
    patience: int = 2                # epochs without improvement tolerated; the next one cuts
    max_cuts: int = 3
    milestones: list[int] = field(default_factory=list)   # step: epochs after which to cut
    warmup_steps: int = 0
    threshold: float = 1e-4          # improvement smaller than this does not count
    # state
    cuts: int = 0
    best: float = float("inf")
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("plateau", "step", "constant"):
            raise SplitnetError(f"optim.schedule={self.kind!r}; valid: plateau, step, constant")
        if not self.base_lr > 0:
            raise SplitnetError(f"optim.lr={self.base_lr!r} must be > 0")

    def lr(self, step: int) -> float:
        lr = self.base_lr * self.factor**self.cuts
        if self.warmup_steps and step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr

    def end_epoch(self, epoch: int, val_error: float) -> bool:
        """Record the epoch's validation error (epoch counts from 0); True if the lr was cut."""
        if self.kind == "step":
            if epoch + 1 in self.milestones and self.cuts < self.max_cuts:
                self.cuts += 1
                return True
            return False
        if self.kind == "constant":
            return False
        if val_error < self.best - self.threshold:
            self.best, self.bad_epochs = val_error, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.patience and self.cuts < self.max_cuts:
            self.cuts += 1
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"cuts": self.cuts, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cuts, self.best, self.bad_epochs = int(state["cuts"]), float(state["best"]), int(state["bad_epochs"])

    @classmethod
    def from_config(cls, optim: dict[str, Any]) -> LrSchedule:
        return cls(base_lr=float(optim["lr"]), kind=optim.get("schedule", "plateau"),
                   factor=float(optim.get("factor", 0.1)), patience=int(optim.get("patience", 2)),
                   max_cuts=int(optim.get("max_cuts", 3)), milestones=list(optim.get("milestones") or []),
                   warmup_steps=int(optim.get("warmup_steps", 0)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
