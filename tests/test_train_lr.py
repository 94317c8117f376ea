from __future__ import annotations

import pytest

from splitnet.errors import SplitnetError
from splitnet.train.lr import LrSchedule


def test_plateau_divides_by_ten_when_validation_error_stops_improving_at_most_three_times():
    s = LrSchedule(base_lr=0.01)
    errors = [0.5, 0.4, 0.41, 0.3, 0.3, 0.29, 0.35, 0.36, 0.2]
    cuts = [s.end_epoch(e, err) for e, err in enumerate(errors)]
    # improves, improves, worse (cut 1), improves, equal (cut 2), improves, worse (cut 3), worse (no 4th)
    assert cuts == [False, False, True, False, True, False, True, False, False]
    assert s.lr(1000) == pytest.approx(0.01 * 0.1**3)


def test_patience_waits_for_that_many_bad_epochs():
    s = LrSchedule(base_lr=1.0, patience=2)
    assert [s.end_epoch(e, err) for e, err in enumerate([0.5, 0.6, 0.6, 0.6, 0.6])] == \
        [False, False, False, True, False]


def test_step_schedule_and_warmup():
    s = LrSchedule(base_lr=0.1, kind="step", milestones=[2, 4], warmup_steps=10)
    assert s.lr(0) == pytest.approx(0.01) and s.lr(4) == pytest.approx(0.05) and s.lr(9) == pytest.approx(0.1)
    assert [s.end_epoch(e, 0.0) for e in range(5)] == [False, True, False, True, False]
    assert s.lr(100) == pytest.approx(0.001)


def test_state_round_trip_continues_the_same_schedule():
    a = LrSchedule(base_lr=0.01)
    for e, err in enumerate([0.5, 0.6]):
        a.end_epoch(e, err)
    b = LrSchedule(base_lr=0.01)
    b.load_state_dict(a.state_dict())
    assert (b.cuts, b.best, b.bad_epochs) == (a.cuts, a.best, a.bad_epochs) == (1, 0.5, 0)
    assert b.end_epoch(2, 0.7) == a.end_epoch(2, 0.7) is True


def test_bad_schedule_config():
    with pytest.raises(SplitnetError, match="optim.schedule='cosine'"):
        LrSchedule(base_lr=0.1, kind="cosine")
    with pytest.raises(SplitnetError, match="optim.lr=0"):
        LrSchedule(base_lr=0)
