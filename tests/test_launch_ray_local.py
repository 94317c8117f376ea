"""A local Ray run, started the way a user starts it (`splitnet train launcher=ray`, nothing
exported by hand), listens on 127.0.0.1 only: Ray has no authentication by default, and a
training job must not open it to the network unless the user joins a cluster.

The listeners are read from /proc while the job runs: every TCP socket in LISTEN state that
belongs to the job's process or any process it started (Ray's GCS, raylet, agents, the
rank actors), by socket inode.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launching import ROOT

TWO_STEPS = ["data=synthetic", "data.num_classes=10", "data.train_batches=2", "data.val_batches=1", "batch_size=16",
             "eval.batch_size=16", "train.epochs=1", "comm.timeout_s=60", "launcher.threads=1"]


def _descendants(root: int) -> dict[int, str]:
    """pid -> command name of ``root`` and every process below it."""
    parent, name = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            pid, rest = int(entry.name), stat.rsplit(")", 1)
            parent[pid] = int(rest[1].split()[1])
            name[pid] = rest[0].split("(", 1)[1]
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in name:
            out[pid] = name[pid]
            todo += [child for child, up in parent.items() if up == pid]
    return out


def _address(hex_address: str) -> str:
    """A /proc/net/tcp{,6} local address (the host's 32-bit words in its byte order) as text."""
    words = [int(hex_address[i:i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(hex_address), 8)]
    packed = b"".join(words)
    if len(packed) == 4:
        return str(ipaddress.IPv4Address(packed))
    v6 = ipaddress.IPv6Address(packed)
    return str(v6.ipv4_mapped or v6)


def _listening() -> dict[int, str]:
    """Socket inode -> local address of every TCP socket in LISTEN state (state 0A)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                found[int(fields[9])] = _address(fields[1].split(":")[0])
    return found


def _sockets(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd) if fd.is_symlink() else ""
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


@pytest.mark.cluster
@pytest.mark.timeout(400)
def test_a_local_ray_run_listens_on_loopback_only_without_anything_exported(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-m", "splitnet", "train", "launcher=ray", "launcher.num_cpus=2",
                             *TWO_STEPS, f"train.run_dir={tmp_path / 'run'}", f"hydra.run.dir={tmp_path / 'hydra'}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: dict[tuple[str, str], int] = {}  # (process name, address) -> pid
    out = ""
    while proc.poll() is None:  # sample the listeners for as long as the job runs
        listening = _listening()
        for pid, name in _descendants(proc.pid).items():
            for inode in _sockets(pid) & listening.keys():
                seen[(name, listening[inode])] = pid
        try:
            out = proc.communicate(timeout=0.2)[0]
        except subprocess.TimeoutExpired:
            continue
    assert proc.returncode == 0, out
    names = {name for name, _ in seen}
    assert {"gcs_server", "raylet"} <= names, seen  # the sampling saw Ray's own servers
    assert len({pid for pid in seen.values()}) >= 4, seen  # and more of the job's processes than those
    assert all(ipaddress.ip_address(address).is_loopback for _, address in seen), sorted(seen)
