"""splitnet's LRN against torch's: the same values and gradients, bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from splitnet.model.layers import lrn


@pytest.mark.parametrize("shape", [(32, 32, 16, 16), (7, 5, 3, 3), (4, 96, 8, 8), (6, 12, 1), (3, 10, 7),
                                   (2, 9, 3, 4, 5)])
@pytest.mark.parametrize("size", [5, 4, 1, 7])
def test_lrn_is_torchs_bit_for_bit_forward_and_backward(shape, size):
    gen = torch.Generator().manual_seed(len(shape) * 100 + size)
    x = (3 * torch.randn(shape, generator=gen)).requires_grad_()
    upstream = torch.randn(shape, generator=gen)
    alpha, beta, k = 1e-2, 0.75, 2.0  # a large alpha, so the window's sum moves the result
    theirs = F.local_response_norm(x, size, alpha, beta, k)
    ours = lrn(x, size, alpha, beta, k)
    (g_theirs,) = torch.autograd.grad(theirs, x, upstream)
    (g_ours,) = torch.autograd.grad(ours, x, upstream)
    assert torch.equal(ours, theirs)
    assert torch.equal(g_ours, g_theirs)
    # and the window matters: without the neighbours' squares the result would differ
    assert not torch.equal(ours, x / (k + alpha * x * x / size).pow(beta)) or size == 1


def test_lrn_under_autocast_is_torchs_own():
    x = torch.randn(2, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = lrn(x.bfloat16(), 5, 1e-4, 0.75, 2.0), F.local_response_norm(x.bfloat16(), 5, 1e-4, 0.75, 2.0)
    assert ours.dtype == theirs.dtype == torch.float32
    assert torch.equal(ours, theirs)
