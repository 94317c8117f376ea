"""The global batch: replicas x accumulation micro-steps x ``batch_size`` samples per optimizer step.

The global batch is the unit of truth. The samples of step k depend on (seed, epoch, k)
only (``splitnet.data``), and the gradient of a step is the mean over the global batch
however it is split, so a job that restarts on another number of replicas trains the
same network as long as the global batch stays: the new replicas times the new
accumulation equal the old ones' product.

What this module promises:

- The first start fixes the global batch: ``train.global_batch`` when set, else
  ``mesh.replicas x train.accumulate x batch_size`` (``train.accumulate`` null counts as
  1). Checkpoints record it, and every (re)start of the run keeps it without a flag.
- On every (re)start the accumulation is derived: global / (replicas x batch_size). A
  global batch the new replicas and batch size do not divide, or a ``train.accumulate``
  that disagrees with it, is one line naming the values and the fix.
- Pure: reads a config and a checkpoint's meta.json contents, nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from splitnet.errors import SplitnetError


class GlobalBatchError(SplitnetError, ValueError):
    pass


def _positive(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GlobalBatchError(f"train.{key}={value!r} must be an integer >= 1, or null")
    return value


def recorded_global_batch(meta: Mapping[str, Any]) -> int:
    """The global batch a checkpoint's run trained with (checkpoints older than the record:
    its replicas x batch size, as they could not accumulate)."""
    if meta.get("global_batch"):
        return int(meta["global_batch"])
    was = meta["config"]
    return int(was["batch_size"]) * int(was["mesh"]["replicas"])


def global_batch(train: Mapping[str, Any], batch_size: int, replicas: int,
                 recorded: int | None = None, source: str = "") -> tuple[int, int]:
    """(global batch, accumulation micro-steps per optimizer step) for ``replicas`` replicas.

    ``recorded``: the global batch of the checkpoint this start resumes (``source`` names
    it in errors); kept unless ``train.global_batch`` is set.
    """
    given = _positive("global_batch", train.get("global_batch"))
    accumulate = _positive("accumulate", train.get("accumulate"))
    per_micro_step = replicas * batch_size
    if given is not None:
        total, origin = given, f"train.global_batch={given}"
    elif recorded is not None:
        total, origin = recorded, f"the global batch {recorded} recorded in {source or 'the checkpoint'}"
    else:
        total = per_micro_step * (accumulate or 1)
        return total, accumulate or 1
    if total % per_micro_step:
        raise GlobalBatchError(
            f"{origin} is not a multiple of mesh.replicas x batch_size = {replicas} x {batch_size} = "
            f"{per_micro_step}; run with replicas x batch_size dividing {total}, or set "
            f"train.global_batch to a multiple of {per_micro_step}")
    steps = total // per_micro_step
    if accumulate is not None and accumulate != steps:
        raise GlobalBatchError(
            f"train.accumulate={accumulate} but {origin} on mesh.replicas={replicas} with batch_size="
            f"{batch_size} needs {steps} micro-steps; set train.accumulate=null to derive it")
    return total, steps
