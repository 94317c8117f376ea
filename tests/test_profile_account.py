"""The allocation account and the time split: hand-made traces with known answers."""

from __future__ import annotations

from splitnet.comm.clock import time_split
from splitnet.profile.account import account, allocations, categorize


def test_peak_and_its_split_by_category():
    trace = [
        (0, 0xA, 400, "build"),      # a parameter (named by address at the mark)
        (1, 0xB, 100, "build"),      # a build temporary
        (2, 0xB, -100, "build"),
        (3, 0xC, 64, "input"),
        (4, 0xD, 1000, "forward"),   # an activation saved for backward
        (5, 0xE, 300, "exchange"),   # a gathered input
        (6, 0xF, 400, "backward"),   # becomes the parameter's gradient
        (7, 0xD, -1000, "backward"),
        (8, 0xE, -300, "backward"),
        (9, 0x9, -50, "other"),      # freed, but allocated before the trace began: ignored
        (10, 0x1, 400, "optimizer"),  # momentum
    ]
    allocs = allocations(trace)
    categorize(allocs, [(11, {"parameters": {0xA}, "gradients": {0xF}, "optimizer": {0x1}})])
    acc = account(allocs)
    assert acc.peak == 400 + 64 + 1000 + 300 + 400
    assert acc.at_peak == {"parameters": 400, "gradients": 400, "optimizer": 0, "activations": 1000,
                           "backward": 0, "exchange": 300, "input": 64, "other": 0}
    assert sum(acc.at_peak.values()) == acc.peak
    assert acc.largest["optimizer"] == 400 and acc.largest["other"] == 100


def test_an_address_reused_after_a_free_is_a_new_tensor():
    # 0xA is first a temporary, then (after its free) the gradient alive at the mark
    allocs = allocations([(0, 0xA, 8, "forward"), (1, 0xA, -8, "forward"), (2, 0xA, 16, "backward")])
    categorize(allocs, [(3, {"gradients": {0xA}})])
    assert [(a.size, a.category) for a in allocs] == [(8, "activations"), (16, "gradients")]


def test_a_buffer_freed_outside_the_trace_keeps_its_bytes_but_not_the_address():
    # 0xA: an exchange buffer whose free happened on a thread the trace does not follow; the
    # allocator hands 0xA out again for the gradient that the mark names. The allocator's own
    # count still holds the old bytes, so the account does too, but as an exchange buffer.
    allocs = allocations([(0, 0xA, 48, "exchange"), (1, 0xB, 8, "backward"), (2, 0xA, 16, "backward")])
    categorize(allocs, [(3, {"gradients": {0xA, 0xB}})])
    assert [(a.size, a.category) for a in allocs] == [(48, "exchange"), (8, "gradients"), (16, "gradients")]
    acc = account(allocs)
    assert acc.peak == 48 + 8 + 16
    assert acc.largest["gradients"] == 24 and acc.largest["exchange"] == 48


def test_waiting_is_the_gap_before_the_last_peer_arrives():
    # rank 0 enters at t=100 and waits; rank 1 issues at t=400; the transfer ends at t=500
    rank0 = [{"keys": [(0, 1, 0)], "issued": 100, "entered": 100, "left": 500}]
    rank1 = [{"keys": [(0, 1, 0)], "issued": 400, "entered": 400, "left": 500}]
    t0, t1 = time_split([rank0, rank1], [1e-6, 1e-6])
    assert (t0["blocked_s"], t0["peer_wait_s"]) == (400e-9, 300e-9)
    assert (t1["blocked_s"], t1["peer_wait_s"]) == (100e-9, 0.0)
    assert abs(t0["compute_s"] - 600e-9) < 1e-15
