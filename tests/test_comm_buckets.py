"""Gradient buckets: averages over replicas exactly, and starts during backward."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from splitnet.launchers.simulate import launch


def bucket_job(rank: int, world: int, cfg: dict[str, Any]) -> dict[str, Any]:
    from splitnet.comm import Transport
    from splitnet.comm.buckets import GradBuckets
    from splitnet.model.spec import load_spec
    from splitnet.partition import Mesh, make_plan

    spec = load_spec(cfg["model"])
    plan = make_plan(spec, {"strategy": "columns"}, Mesh(1, world), 4)
    transport = Transport(plan, rank, timeout_s=30)
    torch.manual_seed(0)  # the same weights on both replicas
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    params = list(model.parameters())
    # one parameter per bucket, so several can start before backward reaches the first layer
    buckets = GradBuckets(params, transport, transport.replica_group, world, "replicas", average=True,
                          overlap=True, bucket_bytes=1)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(rank))  # each replica its own batch
    loss = model(x).square().mean()
    started_in_backward: list[int] = []
    # the first layer's weight gets its gradient last: when it does, see which buckets are running
    params[0].register_post_accumulate_grad_hook(
        lambda p: started_in_backward.extend(b for b, s in enumerate(buckets.started) if s is not None))
    buckets.arm()
    loss.backward()
    local = {n: p.grad.clone() for n, p in model.named_parameters()}
    buckets.finish()
    return {"buckets": len(buckets.buckets), "started_in_backward": started_in_backward,
            "averaged": {n: p.grad.clone() for n, p in model.named_parameters()},
            "calls": transport.meter.calls[("replicas", "bwd")], "local": local}


@pytest.mark.timeout(60)
def test_buckets_average_over_replicas_and_start_during_backward():
    from tests.training import config

    a, b = launch(bucket_job, 2, {"model": config()["model"]})
    assert a["buckets"] == 6 and a["calls"] == 6
    # buckets fill in reverse order: the last two layers' four were running before backward
    # reached the first layer's weight
    assert {0, 1, 2, 3} <= set(a["started_in_backward"])
    for name, g in a["averaged"].items():
        want = (a["local"][name] + b["local"][name]) / 2
        assert torch.allclose(g, want, rtol=1e-6, atol=1e-8), name
        assert torch.equal(g, b["averaged"][name])
        assert not torch.equal(a["local"][name], b["local"][name])
