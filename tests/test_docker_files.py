"""docker/ and launch/ checked without a Docker engine: every file the images copy exists,
they install with the README's commands, the compose services use images and commands that
exist, and the operator scripts parse."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.training import config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Running on GPUs and clusters", 1)[1].split("\n## ", 1)[0]


def test_there_is_a_cuda_and_a_cpu_image():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.cuda"]
    bases = {p.name: dict(_instructions(p))["FROM"] for p in DOCKERFILES}
    assert bases["Dockerfile.cuda"].startswith("pytorch/pytorch:") and "cuda" in bases["Dockerfile.cuda"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_file_an_image_copies_exists(dockerfile):
    copies = [shlex.split(args)[:-1] for op, args in _instructions(dockerfile) if op == "COPY"]
    sources = [s for c in copies for s in c]
    assert sources
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert not missing, f"{dockerfile.name} copies what the repository lacks: {missing}"
    # pyproject, setup.py's package list and the conf/ mapping are what `pip install .` builds from
    assert {"pyproject.toml", "setup.py", "README.md", "conf", "splitnet"} <= set(sources)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_with_the_readme_s_command(dockerfile):
    installs = [args for op, args in _instructions(dockerfile) if op == "RUN" and "pip install" in args]
    assert len(installs) == 1
    assert installs[0].endswith('".[ray]"')  # the images run Ray (compose, the cluster file): its extra
    assert installs[0] in _readme_section(), f"{dockerfile.name}: `{installs[0]}` is not the README's command"
    copied = {s for op, args in _instructions(dockerfile) if op == "COPY" for s in shlex.split(args)[:-1]}
    for constraints in re.findall(r"-c (\S+)", installs[0]):
        assert constraints in copied  # the constraints file is in the image before pip reads it
    cmd = [args for op, args in _instructions(dockerfile) if op == "CMD"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert yaml.safe_load(cmd[0])[0] in scripts  # the image's command is splitnet's entry point


def test_compose_runs_a_ray_head_two_workers_and_a_valid_training_command():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert sorted(services) == ["ray-head", "ray-worker-1", "ray-worker-2"]
    built = {s["image"]: s["build"] for s in services.values() if "build" in s}
    for name, service in services.items():
        assert service["image"] in built, f"{name} uses an image no service builds"
    for build in built.values():
        assert (ROOT / "docker" / build["context"] / build["dockerfile"]).resolve().is_file()
    head = shlex.split(services["ray-head"]["command"])
    assert head[:2] == ["bash", "-c"]
    start, train = head[2].split("&&")
    port = re.search(r"--port=(\d+)", start)
    assert start.split()[:3] == ["ray", "start", "--head"] and port
    for worker in ("ray-worker-1", "ray-worker-2"):
        assert f"--address=ray-head:{port.group(1)}" in services[worker]["command"].split()
    words = train.split()
    assert words[:2] == ["splitnet", "train"] and "launcher=ray" in words
    cfg = config(*words[2:])  # every override names a key the configuration has
    assert cfg["launcher"]["address"] == "auto" and cfg["train"]["run_dir"].startswith("/shared/")


SCRIPTS = sorted(p.name for p in (ROOT / "launch").iterdir() if p.suffix in (".sh", ".sbatch"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_operator_scripts_parse(script):
    subprocess.run(["bash", "-n", str(ROOT / "launch" / script)], check=True)


def test_ray_cluster_file_is_yaml_for_gpu_nodes_running_the_cuda_image():
    cluster = yaml.safe_load((ROOT / "launch" / "ray-cluster.yaml").read_text())
    assert cluster["docker"]["image"].endswith("splitnet:cuda")
    assert cluster["head_node_type"] in cluster["available_node_types"]


def test_the_cuda_image_and_the_torch_floor_are_the_version_ci_tests():
    """The exchanges lean on gloo and NCCL features of recent torch (gloo's list-form
    reduce_scatter is newer than 2.7): the image and the floor name the one version tested."""
    tested = re.search(r"^torch==(\S+)$", (ROOT / "constraints-cpu.txt").read_text(), re.M).group(1)
    args = dict(a.split("=", 1) for op, a in _instructions(ROOT / "docker" / "Dockerfile.cuda") if op == "ARG")
    assert args["TORCH"] == tested
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(d for d in dependencies if d.startswith("torch"))
    assert floor == "torch>=" + ".".join(tested.split(".")[:2])


def test_the_build_context_leaves_out_the_environment_runs_and_history():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv/", "runs/"} <= ignored


def test_ray_cluster_nodes_serve_jobs_mount_the_shared_folder_and_use_no_sudo_in_the_image():
    cluster = yaml.safe_load((ROOT / "launch" / "ray-cluster.yaml").read_text())
    inside = cluster["setup_commands"] + cluster["head_setup_commands"]
    assert not [c for c in inside if "sudo" in c.split()]  # the image runs as root and has no sudo
    assert any('"ray[default]==' in c for c in cluster["setup_commands"])  # the job server `ray job submit` needs
    mounts = [c for c in cluster["initialization_commands"] if " mount " in f" {c} "]
    host_dir = mounts[0].split()[-1]
    assert f"-v {host_dir}:/shared" in cluster["docker"]["run_options"]
    assert any("boto3" in c for c in cluster["head_setup_commands"])  # the autoscaler's AWS client
