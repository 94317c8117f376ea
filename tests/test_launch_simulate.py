"""launcher=simulate: results by rank; a failing rank stops every rank with its own error;
a stalled peer becomes the timeout error, not a hang."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from splitnet.comm import StalledExchange, Transport
from splitnet.launchers.core import WorkerFailed
from splitnet.launchers.simulate import launch
from tests.splitting import plan_of, raising_job, stalling_job, verify_cfg


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.timeout(60)
def test_a_rank_that_raises_stops_every_rank_with_its_error(tmp_path):
    start = time.monotonic()
    with pytest.raises(WorkerFailed) as failed:
        launch(raising_job, 3, {"fail_rank": 1, "pid_dir": str(tmp_path), "message": "rank one broke: bad shard"})
    assert failed.value.rank == 1
    message = str(failed.value)
    assert message.startswith("rank 1 failed:")
    assert "ValueError: rank one broke: bad shard" in message and "raising_job" in message  # its traceback
    # ranks 0 and 2 were blocked in an all-reduce rank 1 never joined: stopped, not left running
    pids = [int((tmp_path / f"rank{r}.pid").read_text()) for r in (0, 2)]
    assert all(_gone(pid) for pid in pids)
    assert multiprocessing.active_children() == []
    assert time.monotonic() - start < 45  # far below the collectives' 300 s default timeout


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_splitnet_error_in_a_rank_is_the_jobs_one_line_naming_the_rank(tmp_path):
    with pytest.raises(WorkerFailed) as failed:
        launch(raising_job, 3, {"fail_rank": 1, "pid_dir": str(tmp_path), "expected": True,
                                "message": "data: no readable sample in any of the shards ['a.tar']"})
    assert str(failed.value) == "rank 1: data: no readable sample in any of the shards ['a.tar']"
    assert failed.value.with_context("last lines of its log") is failed.value  # still one line
    assert "Traceback" in failed.value.detail and "raising_job" in failed.value.detail
    assert multiprocessing.active_children() == []


@pytest.mark.timeout(60)
def test_the_root_cause_wins_when_the_launcher_notices_late(tmp_path, monkeypatch):
    """Once rank 1 dies, ranks 0 and 2 fail too ("connection closed by peer"). A loaded
    parent that notices only after all three died, rank 0 first, must still report rank 1."""
    real_wait = multiprocessing.connection.wait

    def late_wait(objects, timeout=None):
        pending = list(objects)
        while pending:
            ready = real_wait(pending)
            pending = [o for o in pending if o not in ready]
        return list(objects)

    monkeypatch.setattr(multiprocessing.connection, "wait", late_wait)
    with pytest.raises(WorkerFailed) as failed:
        launch(raising_job, 3, {"fail_rank": 1, "pid_dir": str(tmp_path), "message": "the root cause"})
    assert failed.value.rank == 1
    assert "ValueError: the root cause" in str(failed.value)


@pytest.mark.timeout(60)
def test_a_stalled_peer_gives_the_timeout_error_naming_rank_and_layer():
    cfg = verify_cfg(devices=2, timeout_s=3, exchange="gather")
    plan = plan_of(cfg)
    first = next(iter(plan.exchanges()))
    assert first == "conv3"
    start = time.monotonic()
    with pytest.raises(WorkerFailed) as failed:
        launch(stalling_job, 2, {**cfg, "plan": plan.to_dict(), "stall_rank": 1})
    assert failed.value.rank == 0
    message = str(failed.value)  # the job's one line; the traceback stays with the failure
    assert message.startswith("rank 0: the all_gather at layer 'conv3' did not complete within comm.timeout_s=3s: "
                              "a peer went silent") and "\n" not in message
    assert StalledExchange.__name__ in failed.value.detail
    assert multiprocessing.active_children() == []
    assert time.monotonic() - start < 45


@pytest.mark.parametrize(("waited_s", "error", "words"), [
    (0.2, "Connection closed by peer [127.0.0.1]:40123", "failed after 0.2s: a peer closed its connection (it "
                                                          "exited or crashed; its own error is the cause)"),
    (600.0, "Timed out waiting 600000ms for recv operation to complete",
     "did not complete within comm.timeout_s=600s: a peer went silent (stopped, hung, or slower than the timeout; "
     "raise comm.timeout_s if it is only slow)"),
])
def test_a_peer_that_closed_its_connection_is_told_apart_from_one_that_went_silent(waited_s, error, words):
    # gloo's own words for the two failures; the silent case end to end is the test above
    here = SimpleNamespace(rank=0, timeout=timedelta(seconds=600))
    stalled = Transport.stalled(here, "conv3", "all_gather", waited_s, RuntimeError(error))
    assert str(stalled) == f"rank 0: the all_gather at layer 'conv3' {words} ({error})"


@pytest.mark.timeout(60)
def test_a_job_spawn_cannot_pickle_fails_with_the_pickling_error():
    def local_job(rank, world, cfg):  # spawn needs a module-level function
        return rank

    with pytest.raises(AttributeError, match="Can't pickle local object"):
        launch(local_job, 2, {})
    assert multiprocessing.active_children() == []


def _workers(pid: int) -> list[int]:
    """The worker processes a job started (not multiprocessing's resource tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return [c for c in found if b"multiprocessing.spawn" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _training_job(run_dir) -> tuple[subprocess.Popen, dict[int, int]]:
    """``splitnet train`` in its own session, once its workers train; their pids by rank."""
    from tests.training import FAST

    cmd = [sys.executable, "-m", "splitnet", "train", *FAST, "data.train_batches=100000", "train.epochs=1",
           f"hydra.run.dir={run_dir}"]
    # a terminal's Ctrl-C signals the whole foreground process group: give the job its own, with
    # SIGINT's default action as a shell gives it (a child inherits an ignored SIGINT, and Python
    # then never raises KeyboardInterrupt; an earlier test in this process may have ignored it)
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    while "epoch 1" not in seen:  # rank 0's progress bar: the workers are up and training
        char = job.stderr.read(1)
        assert char, f"the job ended before training: {seen[-2000:]}"
        seen += char
    workers = _workers(job.pid)
    assert len(workers) == 2
    ranks = {int(Path(f"/proc/{pid}/comm").read_text().strip().removeprefix("splitnet-rank")): pid
             for pid in workers}
    return job, ranks


@pytest.mark.timeout(120)
def test_ctrl_c_stops_the_job_and_every_worker(tmp_path):
    job, ranks = _training_job(tmp_path)
    os.killpg(job.pid, signal.SIGINT)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 130, err[-3000:]
    assert "interrupted" in err
    assert "resource_tracker" not in err and "leaked" not in err
    assert all(_gone(pid) for pid in ranks.values())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_worker_is_named_with_its_signal_log_and_run_folder(tmp_path):
    job, ranks = _training_job(tmp_path)
    assert sorted(ranks) == [0, 1]
    log = tmp_path / "logs" / "rank1.log"
    while "rank 1 of 2" not in (log.read_text() if log.exists() else ""):  # rank 0 may train first
        assert job.poll() is None, "the job ended before rank 1 wrote its log"
        time.sleep(0.05)
    os.kill(ranks[1], signal.SIGKILL)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 2, err[-3000:]
    report = err[err.index("splitnet train: error:"):].splitlines()
    assert report[0] == "splitnet train: error: rank 1 was killed by signal 9 (SIGKILL)"
    assert report[1] == f"last lines of {tmp_path / 'logs' / 'rank1.log'}:"
    assert "rank 1 of 2: replica 0, device 1" in report[2]  # its log, not rank 0's
    assert report[-1] == f"run folder: {tmp_path}"
    assert "resource_tracker" not in err and "leaked" not in err  # no semaphore left to any rank
    assert _gone(ranks[0])
