"""The documented launch commands, run as written on this CPU, scaled down (fewer ranks, gloo,
2 steps): launch/torchrun.sh on two nodes (two agents on 127.0.0.1), and launch/slurm.sbatch
under a faked Slurm (``srun`` and ``scontrol`` stand-ins that run the script's own torchrun
line once per node).

Every server stays on 127.0.0.1: a ``torchrun`` stand-in first on PATH runs the real one
with the rendezvous moved to a store this test serves on loopback (torchrun's own agent
would serve it on every interface) and records the arguments it was given, which the test
holds against the script's.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launching import ROOT, loopback_rendezvous

# 2 steps of alexnet_small at batch 16, no validation pass worth the time
TWO_STEPS = ["data=synthetic", "data.num_classes=10", "data.train_batches=2", "data.val_batches=1", "batch_size=16",
             "eval.batch_size=16", "train.epochs=1", "comm.timeout_s=60", "launcher.threads=1"]

TORCHRUN = '''#!{python}
"""torchrun as the scripts call it, its rendezvous moved to the test's loopback store."""
import json, os, sys, uuid
args = sys.argv[1:]
with open(os.path.join(os.environ["LAUNCH_LOG"], f"torchrun-{{uuid.uuid4().hex}}.json"), "w") as f:
    json.dump(args, f)
loopback = os.environ["LOOPBACK_RDZV"].split()
moved = [a for a in args if a != "--standalone" and not a.startswith("--rdzv-endpoint=")]
if "--standalone" in args:
    moved = [a for a in moved if not a.startswith("--rdzv-")]
else:
    loopback = [a for a in loopback if a.startswith(("--rdzv-endpoint=", "--rdzv-conf=", "--local-addr="))]
os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", *loopback, *moved])
'''

SRUN = '''#!/usr/bin/env bash
# srun for one task per node: record the options, run the command once per node, fail if one fails
set -u
opts=()
while [[ "$1" == --* ]]; do opts+=("$1"); shift; done
printf '%s\\n' "${opts[@]}" > "$LAUNCH_LOG/srun-options.txt"
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do
    SLURM_NODEID=$node SLURM_PROCID=$node "$@" > "$LAUNCH_LOG/node$node.txt" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
'''

SCONTROL = '''#!/usr/bin/env bash
[[ "$1 $2" == "show hostnames" ]] && { echo 127.0.0.1; echo 127.0.0.2; exit 0; }
echo "$@" >> "$LAUNCH_LOG/scontrol.txt"
'''


def _bin(tmp: Path) -> Path:
    folder = tmp / "bin"
    folder.mkdir(parents=True)
    for name, text in (("torchrun", TORCHRUN.format(python=sys.executable)), ("srun", SRUN), ("scontrol", SCONTROL)):
        (folder / name).write_text(text)
        (folder / name).chmod((folder / name).stat().st_mode | stat.S_IXUSR)
    return folder


def _env(tmp: Path, rendezvous: list[str], **extra: str) -> dict[str, str]:
    log = tmp / "log"
    log.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "PATH": f"{_bin(tmp)}{os.pathsep}{os.environ['PATH']}", "LAUNCH_LOG": str(log),
            "LOOPBACK_RDZV": " ".join(rendezvous), "GLOO_SOCKET_IFNAME": "lo",
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **extra}


def _given(tmp: Path) -> list[list[str]]:
    """The arguments each torchrun call was given by the script."""
    return [json.loads(p.read_text()) for p in sorted((tmp / "log").glob("torchrun-*.json"))]


def _steps(run_dir: Path) -> list[int]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["step"] for line in lines if "loss" in line and "step" in line]


@pytest.mark.cluster
@pytest.mark.timeout(400)
def test_torchrun_sh_on_two_nodes_trains_as_written(tmp_path):
    with loopback_rendezvous("two-nodes") as rendezvous:
        procs = [subprocess.Popen(["bash", str(ROOT / "launch" / "torchrun.sh"), *TWO_STEPS], cwd=tmp_path,
                                  env=_env(tmp_path / f"node{n}", rendezvous, NNODES="2", NODE_RANK=str(n),
                                           RDZV="127.0.0.1:29400", JOB_ID="job42", NPROC="1"),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for n in range(2)]
        outs = [p.communicate(timeout=360)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for n in range(2):
        (given,) = _given(tmp_path / f"node{n}")
        assert given[:6] == ["--nnodes=2", f"--node-rank={n}", "--nproc-per-node=1", "--rdzv-backend=c10d",
                             "--rdzv-endpoint=127.0.0.1:29400", "--rdzv-id=job42"]
    assert _steps(tmp_path / "runs" / "torchrun-job42") == [1, 2]


@pytest.mark.cluster
@pytest.mark.timeout(400)
def test_the_slurm_script_trains_under_a_faked_slurm_as_written(tmp_path):
    slurm = {"SLURM_JOB_ID": "777", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NNODES": "2",
             "SLURM_GPUS_PER_NODE": "gpu:1", "SLURM_CPUS_PER_TASK": "3"}
    with loopback_rendezvous("slurm") as rendezvous:
        done = subprocess.run(["bash", str(ROOT / "launch" / "slurm.sbatch"), *TWO_STEPS], cwd=tmp_path,
                              env=_env(tmp_path, rendezvous, **slurm), capture_output=True, text=True, timeout=360)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "log").glob("node*.txt")))
    assert done.returncode == 0, done.stdout + done.stderr + logs
    assert (tmp_path / "log" / "srun-options.txt").read_text().split() == ["--cpus-per-task=3", "--kill-on-bad-exit=1"]
    given = _given(tmp_path)
    assert len(given) == 2  # one torchrun per node
    assert given[0][:6] == ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                            "--rdzv-endpoint=127.0.0.1:29400", "--rdzv-id=777", "--max-restarts=3"]
    assert _steps(tmp_path / "runs" / "slurm-777") == [1, 2]


@pytest.mark.slow
def test_gpu_check_runs_every_check_its_gpus_allow_and_ends_with_one_json_summary(tmp_path):
    """Checks that fail do not stop the script: with stand-ins where `splitnet verify` fails and
    nothing trains, every 2-GPU check still runs, and the last line sums them up."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, body in (("splitnet", '[[ "$1" == verify ]] && { echo "verify: FAILED"; exit 1; }; exit 0'),
                       ("torchrun", "exit 0"), ("nvidia-smi", "exit 9")):
        (stubs / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (stubs / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "GPUS": "2", "OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", str(ROOT / "launch" / "gpu-check.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    summary = json.loads(done.stdout.splitlines()[-1])
    assert done.returncode == 1 and summary["gpus"] == 2 and summary["ok"] is False
    assert [c["name"] for c in summary["checks"]] == [
        "environment", "verify-nccl-rules", "d1-fp32-bf16-images-per-s", "d1-train", "columns-d2", "hybrid-d2",
        "pipeline-d2", "replicas2-x-d1"]
    by_name = {c["name"]: c for c in summary["checks"]}
    assert by_name["verify-nccl-rules"]["ok"] is False and by_name["verify-nccl-rules"]["last"] == "verify: FAILED"
    assert by_name["d1-train"]["ok"] is True  # a stand-in torchrun that succeeds
    assert by_name["columns-d2"]["ok"] is False  # no exported parameters to compare


@pytest.mark.cluster
@pytest.mark.timeout(400)
def test_the_readme_single_node_line_derives_the_replicas_from_the_world(tmp_path):
    """README's one-node line names no mesh.replicas: 4 ranks at the default mesh.devices=2 train
    as 2 replicas (8 GPUs would be 4), with the model and data scaled down."""
    readme = (ROOT / "README.md").read_text().splitlines()
    (line,) = [text for text in readme if text.startswith("torchrun --standalone --nproc-per-node=8 ")]
    args = line.split()[1:]
    assert "mesh.replicas" not in line and args[args.index("-m"):][:3] == ["-m", "splitnet", "train"]
    args = [("--nproc-per-node=4" if a.startswith("--nproc-per-node=") else a) for a in args
            if not a.startswith(("model=", "data="))]
    run_dir = tmp_path / "run"
    with loopback_rendezvous("one-node") as rendezvous:
        done = subprocess.run(["torchrun", *args, "model=alexnet_small", *TWO_STEPS, f"train.run_dir={run_dir}"],
                              cwd=tmp_path, env=_env(tmp_path, rendezvous), capture_output=True, text=True,
                              timeout=360)
    assert done.returncode == 0, done.stdout + done.stderr
    plan = json.loads((run_dir / "plan.json").read_text())
    assert (plan["mesh"]["devices"], plan["mesh"]["replicas"]) == (2, 2)
    assert _steps(run_dir) == [1, 2]
