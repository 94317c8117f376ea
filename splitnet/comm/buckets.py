"""Gradient sums over a group, in buckets, started during backward where possible.

Two places need them: replicas average their shards' gradients over the data-parallel
group, and hybrid plans sum the replicated conv weights' gradients over the devices.
Gradients are packed into flat buckets of about 25 MiB (DDP's default), in reverse
parameter order since backward produces the last layers' gradients first. With
``overlap``, a hook on each parameter starts its bucket's all-reduce as soon as the
bucket's last gradient is final, so communication runs while backward computes the
earlier layers; ``finish`` waits for them all and writes the results back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from splitnet.comm.transport import Transport

BUCKET_BYTES = 25 * 2**20


class GradBuckets:
    def __init__(self, params: list[nn.Parameter], transport: Transport, group: Any, k: int, layer: str,
                 average: bool, overlap: bool, bucket_bytes: int = BUCKET_BYTES) -> None:
        self.transport, self.group, self.k, self.layer, self.average = transport, group, k, layer, average
        self.buckets: list[list[nn.Parameter]] = []
        size = bucket_bytes
        for p in reversed([p for p in params if p.requires_grad]):
            if size >= bucket_bytes:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += p.numel() * p.element_size()
        self.bucket_of = {id(p): b for b, bucket in enumerate(self.buckets) for p in bucket}
        self.armed = False
        self.pending: list[int] = []
        self.started: list[tuple[Any, torch.Tensor] | None] = []
        if overlap:
            for bucket in self.buckets:
                for p in bucket:
                    p.register_post_accumulate_grad_hook(self._ready)

    def arm(self) -> None:
        """The next backward completes the gradients: start buckets as they fill."""
        self.armed = True
        self.pending = [len(bucket) for bucket in self.buckets]
        self.started = [None] * len(self.buckets)

    def _ready(self, param: nn.Parameter) -> None:
        if not self.armed:
            return
        b = self.bucket_of[id(param)]
        self.pending[b] -= 1
        if self.pending[b] == 0:
            self._start(b)

    def _start(self, b: int) -> None:
        flat = torch.cat([p.grad.reshape(-1) for p in self.buckets[b]])  # type: ignore[union-attr]
        self.started[b] = (self.transport.start_all_reduce(flat, self.group, self.k, self.layer, "bwd"), flat)

    def finish(self) -> None:
        """Start what backward did not, wait for everything, write the sums (or means) back."""
        if not self.started:
            self.started = [None] * len(self.buckets)
        for b in range(len(self.buckets)):
            if self.started[b] is None:
                self._start(b)
        for b, bucket in enumerate(self.buckets):
            work, flat = self.started[b]  # type: ignore[misc]
            self.transport.wait(work, self.layer, "all_reduce")
            if self.average:
                flat /= self.k
            offset = 0
            for p in bucket:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))  # type: ignore[union-attr]
                offset += p.numel()
        self.armed, self.started = False, []
