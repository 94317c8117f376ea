"""How a batch travels from the loader to the device that computes on it.

To a CUDA device: the loader hands out batches in page-locked (pinned) host memory and
the copy is issued with ``non_blocking=True``, so the copy engine moves it while the host
goes on (from pageable memory CUDA first stages the batch through a pinned buffer, and the
host waits for it). To the CPU: the batch already lives where it is used; pinning would
need a CUDA driver and buy nothing, and a copy to the CPU is never asynchronous.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class HostTransfer:
    pin_memory: bool  # the loader's batches in page-locked memory
    non_blocking: bool  # the host-to-device copy does not wait


def host_transfer(device: torch.device) -> HostTransfer:
    """The options for batches bound for ``device``: both for CUDA, neither for the CPU."""
    cuda = device.type == "cuda"
    return HostTransfer(pin_memory=cuda, non_blocking=cuda)


def to_device(tensors: Sequence[torch.Tensor], device: torch.device, transfer: HostTransfer) -> list[torch.Tensor]:
    return [t.to(device, non_blocking=transfer.non_blocking) for t in tensors]
