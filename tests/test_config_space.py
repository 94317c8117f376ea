"""Configurations drawn at random: each one is refused in the parent, before any process
starts, in one line that names what is wrong, or it trains and evaluates.

The draws cover every group a user sets on the command line: the model (each shipped
spec, and specs generated from them by changing a layer's sizes, groups and
connectivity), the partition and its keys, the mesh, the batch, the optimizer and its
schedule, evaluation, data and training keys; values in range, zeros, negatives, huge
values, wrong types and unknown keys. The plan-level draws run ``preflight`` alone and
check what a worker would meet with an accepted config; a few draws run end to end.
Derandomized, so CI sees the same draws every time.
"""

from __future__ import annotations

import copy
import multiprocessing
import re
from typing import Any

import pytest
import torch
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitnet.cli import main
from splitnet.data.config import DataConfig
from splitnet.errors import SplitnetError
from splitnet.train.lr import LrSchedule
from splitnet.train.preflight import preflight
from tests.conftest import CONF, SHIPPED
from tests.test_preflight import shard_set
from tests.training import config

# The values a user can type: in range, on the edges, absurd, and of the wrong type.
WRONG = st.sampled_from(["abc", "'1.5'", "true", "null", "[1,2]", "{a: 1}"])
INTS = st.one_of(st.integers(-2, 12), st.sampled_from([0, -1, 10**9]), WRONG)
FLOATS = st.one_of(st.floats(-1, 2, allow_nan=False).map(lambda v: round(v, 3)),
                   st.sampled_from([0.0, -1.0, 1e30, 1e-30]), WRONG)
SIZES = st.one_of(st.sampled_from(["3GiB", "'1.5GB'", "64MiB", "1", "'-5'", "0"]), INTS)
LAYER_KEYS = st.sampled_from(["out", "kernel", "stride", "pad", "groups", "connect", "size", "p"])

KEYS: dict[str, st.SearchStrategy[str]] = {
    "batch_size": INTS,
    "seed": INTS,
    "mesh.devices": INTS,
    "mesh.replicas": st.one_of(st.integers(1, 3), INTS),
    "mesh.device_memory": SIZES,
    "partition.chunks": INTS,
    "partition.microbatches": INTS,
    "partition.schedule": st.one_of(st.sampled_from(["gpipe", "1f1b", "zigzag"]), WRONG),
    "partition.exchange": st.one_of(st.sampled_from(["gather", "reduce", "auto", "scatter"]), WRONG),
    "partition.balance": st.one_of(st.sampled_from(["flops", "params", "memory"]), WRONG),
    "partition.boundaries": st.sampled_from(["conv3", "[conv2,fc6]", "[relu1,conv2]", "nosuch", "[]"]),
    "optim.lr": FLOATS,
    "optim.momentum": FLOATS,
    "optim.weight_decay": FLOATS,
    "optim.schedule": st.one_of(st.sampled_from(["plateau", "step", "constant", "cosine"]), WRONG),
    "optim.factor": FLOATS,
    "optim.patience": INTS,
    "optim.max_cuts": INTS,
    "optim.milestones": st.sampled_from(["[]", "[1,2]", "[0]", "[-3]", "abc", "[a]"]),
    "optim.warmup_steps": INTS,
    "eval.crops": INTS,
    "eval.batch_size": INTS,
    "eval.enabled": st.one_of(st.booleans().map(str).map(str.lower), WRONG),
    "data.fraction": FLOATS,
    "data.side": st.one_of(st.sampled_from(["null", "36", "40", "100000"]), INTS),
    "data.augment": st.one_of(st.booleans().map(str).map(str.lower), WRONG),
    "data.workers": INTS,
    "train.epochs": INTS,
    "train.max_steps": INTS,
    "train.log_every": INTS,
    "train.keep": INTS,
    "train.checkpoint_every": INTS,
    "comm.timeout_s": FLOATS,
}
UNKNOWN = st.sampled_from(["optim.lrr", "train.epoch", "mesh.device", "partition.stages", "data.sides",
                           "eval.crop", "comm.timeout"])


@st.composite
def overrides(draw: st.DrawFn) -> list[str]:
    """Hydra overrides; ``++`` sets a key whether or not the chosen group file has it, so a
    key in the wrong group reaches preflight instead of Hydra's composition."""
    data = draw(st.sampled_from(["synthetic", "synthetic", "shards"]))
    model = draw(st.sampled_from(SHIPPED))
    classes = 1000 if model == "alexnet" else 10  # the synthetic set takes the model's class count
    out = [f"model={model}", f"partition={draw(st.sampled_from(['columns', 'pipeline', 'hybrid', 'auto']))}"]
    out += (["data=synthetic", f"data.num_classes={classes}", "data.train_batches=2", "data.val_batches=1"]
            if data == "synthetic" else ["data=cifar10", "data.root=@SHARDS"])
    out += ["batch_size=16", "eval.batch_size=16"]
    for key in draw(st.lists(st.sampled_from(sorted(KEYS)), min_size=1, max_size=4, unique=True)):
        if key.startswith("data.") and data == "synthetic" and key != "data.fraction":
            continue  # the synthetic group has no images to crop, flip or decode in workers
        out.append(f"++{key}={draw(KEYS[key])}")
    if draw(st.integers(0, 3)) == 0:  # a generated spec: one of a shipped spec's layers changed
        out.append(f"++model.layers.{draw(st.integers(0, 8))}.{draw(LAYER_KEYS)}={draw(INTS)}")
    if draw(st.integers(0, 5)) == 0:
        out.append(f"++model.layers.{draw(st.integers(0, 8))}.connect={draw(st.sampled_from(['group', 'full']))}")
    if draw(st.integers(0, 9)) == 0:
        out.append(f"++{draw(UNKNOWN)}=1")
    return out


_BASES: dict[tuple[str, ...], dict[str, Any]] = {}
PARSER = OverridesParser.create()


def compose(args: list[str]) -> dict[str, Any]:
    """What Hydra hands the app for ``args``, faster than composing each draw: the base
    (the data group and plain keys) composed by Hydra once, the model and partition groups
    read from their files (neither has a defaults list or an interpolation), then each
    ``++key=value`` set as Hydra sets it: the value parsed by Hydra's parser, the key added
    where missing."""
    groups = dict(a.split("=", 1) for a in args if a.split("=", 1)[0] in ("model", "partition"))
    plain = tuple(a for a in args if not a.startswith("++") and a.split("=", 1)[0] not in groups)
    if plain not in _BASES:
        _BASES[plain] = config(*plain)
    cfg = copy.deepcopy(_BASES[plain])
    for group, name in groups.items():
        cfg[group] = yaml.safe_load((CONF / group / f"{name}.yaml").read_text())
    for override in PARSER.parse_overrides([a for a in args if a.startswith("++")]):
        *path, leaf = override.key_or_group.split(".")
        node: Any = cfg
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[int(leaf) if isinstance(node, list) else leaf] = override.value()
    return cfg


def shape(message: str) -> str:
    """A refusal with its values blanked: two refusals of one kind count once."""
    message = re.sub(r"'[^']*'|\[[^\]]*\]|\([^)]*\)|\{[^}]*\}", "_", message)
    message = re.sub(r"=[^\s:;,]+", "=_", message)
    return re.sub(r"-?\d[\d,.e+-]*", "N", message)


def _drawn_names(args: list[str]) -> set[str]:
    names = set()
    for arg in args:
        key = arg.lstrip("+").split("=", 1)[0]
        names.update({key, key.split(".")[-1], key.split(".")[0]})
    return names


def runs_in_a_worker(checked, cfg) -> None:
    """What a rank does with the config before its first step, without starting one: every
    rank holds parameters for its optimizer, SGD and the lr schedule take the optim keys,
    and the data keys build the loader's config."""
    plan = checked.plan
    assert all(c.param_count > 0 for c in plan.costs), [c.param_count for c in plan.costs]
    o = cfg["optim"]
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=o["lr"], momentum=o["momentum"],
                    weight_decay=o["weight_decay"])
    LrSchedule.from_config(o).lr(0)
    DataConfig.from_dict(cfg["data"])


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> str:
    return shard_set(tmp_path_factory.mktemp("cifar") / "set", 60, 20, 36)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_every_drawn_configuration_is_refused_in_one_line_or_runnable(cifar, tmp_path):
    refusals: dict[str, str] = {}
    accepted: list[list[str]] = []

    @settings(max_examples=300, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(overrides())
    def draw(args: list[str]) -> None:
        cfg = compose([a.replace("@SHARDS", cifar) for a in args])
        try:
            checked = preflight(cfg, tmp_path)
        except SplitnetError as refused:
            message = str(refused)
            assert "\n" not in message and message, (args, message)
            # the line names what is wrong: a drawn key (or its layer), with its value
            named = _drawn_names(args) | {"layer", "model", "batch_size", "mesh.devices", "data"}
            assert any(name in message for name in named), (args, message)
            refusals.setdefault(shape(message), message)
            return
        runs_in_a_worker(checked, cfg)
        accepted.append(args)

    draw()
    print(f"\n{len(refusals)} distinct refusals, {len(accepted)} runnable configurations drawn")
    for message in sorted(refusals.values()):
        print(f"  {message}")
    # the draw reaches far into the space: many kinds of refusal and many runnable jobs
    assert len(refusals) >= 35 and len(accepted) >= 25


@pytest.mark.parametrize(("overrides", "line"), [
    (["optim.lr=-1"], "splitnet train: error: optim.lr=-1: must be a number > 0, e.g. 0.01 (the paper's)"),
    (["partition=pipeline", "mesh.devices=20"],
     "splitnet train: error: pipeline: mesh.devices=20 stages but alexnet_small has only 8 layers with weights, "
     "and every stage needs one to train; use mesh.devices <= 8, or partition=columns"),
])
def test_the_issue_cases_are_one_line_before_any_worker(tmp_path, capsys, no_workers, overrides, line):
    rc = main(["train", "data=synthetic", "data.num_classes=10", *overrides, f"hydra.run.dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().splitlines() == [line]
    assert no_workers == [] and multiprocessing.active_children() == []


VALID: dict[str, st.SearchStrategy[str]] = {
    "model": st.sampled_from(["alexnet_small", "alexnet_small_onetower"]),
    "partition": st.sampled_from(["columns", "pipeline", "hybrid", "auto"]),
    "mesh.devices": st.integers(1, 2).map(str),
    "mesh.replicas": st.integers(1, 2).map(str),
    "batch_size": st.sampled_from(["4", "8", "12"]),
    "optim.lr": st.sampled_from(["0.01", "1e-6", "5"]),
    "optim.momentum": st.sampled_from(["0", "0.9"]),
    "optim.schedule": st.sampled_from(["constant", "plateau"]),
    "eval.crops": st.sampled_from(["1", "10"]),
    "eval.batch_size": st.sampled_from(["1", "5", "64"]),
}


@st.composite
def small_jobs(draw: st.DrawFn) -> list[str]:
    return [f"{key}={draw(values)}" for key, values in VALID.items()]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_sample_of_drawn_jobs_trains_a_step_and_evaluates_or_is_refused_in_one_line(tmp_path, capsys):
    outcomes: list[str] = []

    @settings(max_examples=3, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(small_jobs())
    def job(args: list[str]) -> None:
        run = tmp_path / f"run{len(outcomes)}"
        rc = main(["train", *args, "data=synthetic", "data.num_classes=10", "data.train_batches=2",
                   "data.val_batches=1", "train.epochs=1", "train.max_steps=1", "comm.timeout_s=60",
                   f"hydra.run.dir={run}"])
        out, err = capsys.readouterr()
        assert "Traceback" not in err, (args, err)
        if rc == 2:
            errors = [line for line in err.splitlines() if line.startswith("splitnet train: error:")]
            assert len(errors) == 1 and not (run / "logs").exists(), (args, err)
            outcomes.append("refused")
            return
        assert rc == 0, (args, err)
        assert "final held-out top-1 accuracy" in out and "step 1)" in out, (args, out)
        assert [p.name for p in sorted((run / "logs").iterdir())][:1] == ["rank0.log"]
        outcomes.append("trained")

    job()
    assert outcomes.count("trained") >= 2, outcomes


@pytest.mark.parametrize(("args", "line"), [
    (["verify", "verify.steps=-1"], "splitnet verify: error: verify.steps=-1: must be an integer >= 1"),
    (["verify", "verify.lr=-1"], "splitnet verify: error: verify.lr=-1: must be a number > 0"),
    (["verify", "verify.rtol=abc"], "splitnet verify: error: verify.rtol='abc': must be a number >= 0"),
    (["verify", "partition=pipeline", "mesh.devices=20"],
     "splitnet verify: error: pipeline: mesh.devices=20 stages but alexnet_small has only 8 layers with weights, "
     "and every stage needs one to train; use mesh.devices <= 8, or partition=columns"),
    (["profile", "profile.steps=0"], "splitnet profile: error: profile.steps=0: must be an integer >= 1"),
    (["profile", "optim.lr=-1"], "splitnet profile: error: optim.lr=-1: must be a number > 0, e.g. 0.01 (the paper's)"),
    (["profile", "comm.timeout_s=0"],
     "splitnet profile: error: comm.timeout_s=0: must be a number of seconds > 0, e.g. 300"),
    (["bench", "throughput", "bench.rounds=0"], "splitnet bench: error: bench.rounds=0: must be an integer >= 1"),
    (["bench", "data", "bench.data_workers=[-1]"],
     "splitnet bench: error: bench.data_workers=[-1]: must be a list of DataLoader worker counts >= 0, e.g. [0, 2]"),
    (["evaluate", "ckpt=/nonexistent"], "splitnet evaluate: error: no complete checkpoint in /nonexistent (looked for "
                                        "step_*/meta.json there and in /nonexistent/checkpoints)"),
    (["export", "ckpt=/nonexistent", "out=x.pt"],
     "splitnet export: error: no complete checkpoint in /nonexistent (looked for step_*/meta.json there and in "
     "/nonexistent/checkpoints)"),
    (["report", "/nonexistent"], "splitnet report: error: /nonexistent: no such folder; give a run folder or a sweep "
                                 "folder (splitnet train -m)"),
])
def test_every_command_refuses_bad_input_in_one_line_before_any_worker(capsys, no_workers, args, line):
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]
    assert no_workers == [] and multiprocessing.active_children() == []
