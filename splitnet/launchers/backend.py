"""``comm.backend``: which torch.distributed backend a launcher's ranks join.

``auto`` is NCCL where the ranks have a GPU and gloo otherwise. A request the ranks cannot
serve is one line naming the key and the value; the fix is the launcher's to say.
"""

from __future__ import annotations

from splitnet.errors import SplitnetError


def choose_backend(requested: str, gpu: bool, nccl_without_gpu: str,
                   error: type[SplitnetError] = SplitnetError) -> str:
    """The backend for ``comm.backend=requested``; ``nccl_without_gpu`` ends the error line
    raised when NCCL is asked for ranks without a GPU."""
    if requested == "auto":
        return "nccl" if gpu else "gloo"
    if requested == "nccl" and not gpu:
        raise error(f"comm.backend=nccl {nccl_without_gpu}")
    if requested not in ("nccl", "gloo"):
        raise error(f"comm.backend={requested!r}; valid: auto, nccl, gloo")
    return requested
