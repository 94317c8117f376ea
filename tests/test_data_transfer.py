"""Batches bound for a CUDA device are pinned and copied without waiting; for the CPU neither."""

from __future__ import annotations

import torch

from splitnet.data import build_loader
from splitnet.data.transfer import HostTransfer, host_transfer, to_device


def test_a_cuda_device_gets_pinned_batches_and_asynchronous_copies():
    # deciding needs no GPU: a torch.device names one without opening it
    assert host_transfer(torch.device("cuda", 3)) == HostTransfer(pin_memory=True, non_blocking=True)


def test_the_cpu_gets_neither():
    assert host_transfer(torch.device("cpu")) == HostTransfer(pin_memory=False, non_blocking=False)


def test_a_batch_for_the_cpu_stays_where_it_is():
    x, y = torch.ones(2, 3), torch.arange(2)
    moved = to_device([x, y], torch.device("cpu"), host_transfer(torch.device("cpu")))
    assert moved[0] is x and moved[1] is y


def test_the_loader_pins_only_when_asked():
    synthetic = {"kind": "synthetic", "num_classes": 10, "train_batches": 2, "val_batches": 1}
    args = {"split": "train", "image_size": 8, "channels": 3, "batch_size": 4, "replica": 0, "num_replicas": 1,
            "epoch": 0, "seed": 0}
    assert build_loader(synthetic, **args).pin_memory is False
    assert build_loader(synthetic, **args, pin_memory=True).pin_memory is True
