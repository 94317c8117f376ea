"""The experiment configs (conf/experiment/*.yaml), their parametrised spec and the data subset."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from splitnet.configs import register_resolver
from splitnet.data.config import DataConfig
from splitnet.data.errors import DataError
from splitnet.data.subset import in_subset, subset_size
from splitnet.errors import SplitnetError
from splitnet.model.convstack import conv_stack
from splitnet.model.spec import load_spec
from tests.conftest import CONF, shipped_spec

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if p.stem != "alexnet_imagenet")
# A few steps on random tensors: what the tests can afford for every experiment.
TINY = ["data=synthetic", "data.num_classes=10", "data.train_batches=2", "data.val_batches=1", "batch_size=8",
        "eval.batch_size=10", "train.epochs=1", "train.max_steps=2", "comm.timeout_s=60"]


def sweep_params(name: str) -> dict[str, list[str]]:
    raw = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())
    return {k: str(v).split(",") for k, v in raw["hydra"]["sweeper"]["params"].items()}


def compose_cfg(*overrides: str) -> dict[str, Any]:
    register_resolver()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def spec_of(**arch: Any) -> Any:
    return load_spec({"name": "convnet", "input": {"channels": 3, "size": 32}, "groups": 2, "init_std": "he",
                      "layers": conv_stack(**arch)})


def test_every_experiment_is_a_sweep_whose_header_gives_its_command():
    assert EXPERIMENTS == sorted(["towers", "dropout", "augment", "lrn_pool", "depth_data", "strategies",
                                  "test_crops"])
    for name in EXPERIMENTS:
        assert f"splitnet train -m +experiment={name}\n" in (CONF / "experiment" / f"{name}.yaml").read_text()
        points = math.prod(len(values) for values in sweep_params(name).values())
        assert points > 1, f"{name}: a sweep of one point"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_sweep_point_composes_to_a_valid_spec_and_plan(name):
    from splitnet.cli import make_plan_from

    params = sweep_params(name)
    specs = set()
    for values in itertools.product(*params.values()):
        cfg = compose_cfg(f"+experiment={name}", *(f"{k}={v}" for k, v in zip(params, values, strict=True)))
        spec, plan = make_plan_from(cfg)
        specs.add((spec.name, spec.total_params, len(spec.layers), plan.strategy, plan.devices))
        assert cfg["data"]["name"] == "embedded"
    varies_model = {"towers", "dropout", "lrn_pool", "depth_data", "strategies"}
    assert (len(specs) > 1) == (name in varies_model), specs


@pytest.fixture
def one_rank_in_process(monkeypatch):
    """A one-device job runs in this process (no spawn, no torch import in a child): the tests'
    launcher, so that seven experiments fit the CI budget. Wider meshes still get processes."""
    import logging

    import splitnet.launchers.simulate as simulate

    spawn = simulate.launch

    def launch(worker: Any, world_size: int, cfg: dict[str, Any], **options: Any) -> list[Any]:
        return [worker(0, 1, cfg)] if world_size == 1 else spawn(worker, world_size, cfg, **options)

    monkeypatch.setattr(simulate, "launch", launch)
    yield
    logging.getLogger("splitnet.rank0").handlers.clear()  # train_worker's file handler into tmp_path


@pytest.mark.slow
@pytest.mark.timeout(600)  # a hang guard only: two processes on a loaded 2-core machine are slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_trains_a_few_steps(tmp_path, name, one_rank_in_process):
    from splitnet.launchers import choose_launcher
    from splitnet.train.job import run_train

    last = [f"{k}={v[-1]}" for k, v in sweep_params(name).items()]  # the non-default end of every sweep
    cfg = compose_cfg(f"+experiment={name}", *last, *TINY)
    out = run_train(cfg, tmp_path, choose_launcher(cfg))
    assert out["final"]["step"] == 2
    assert out["final"]["val_samples"] == 10
    assert (tmp_path / "metrics.jsonl").is_file()


def test_real_data_replaces_the_embedded_set_and_keeps_the_experiment():
    cfg = compose_cfg("+experiment=dropout", "data=cifar10", "data.root=/data/c10", "data.fraction=1")
    assert (cfg["data"]["name"], cfg["data"]["root"], cfg["data"]["fraction"]) == ("cifar10", "/data/c10", 1)
    assert cfg["model"]["name"] == "convnet" and cfg["arch"]["dropout"] == 0.5


def test_the_dropout_sweep_runs_inverted_dropout_the_papers_and_none():
    seen = {}
    for kind in sweep_params("dropout")["arch.dropout_kind"]:
        layers = compose_cfg("+experiment=dropout", f"arch.dropout_kind={kind}")["model"]["layers"]
        seen[kind] = [(x["p"], x["scale"]) for x in layers if x["op"] == "dropout"]
    assert seen == {"inverted": [(0.5, "train")] * 2, "paper": [(0.5, "test")] * 2, "none": []}


def test_the_test_crops_sweep_scores_five_crops_without_flips_and_the_papers_ten_with_them():
    from splitnet.data.augment import eval_crops

    scored = {}
    for flip in sweep_params("test_crops")["data.flip"]:
        cfg = compose_cfg("+experiment=test_crops", f"data.flip={flip}")
        scored[flip] = eval_crops(cfg["eval"]["crops"], cfg["data"]["flip"] and cfg["data"]["augment"])
    assert scored == {"false": 5, "true": 10}


def test_towers_puts_the_two_tower_net_on_two_devices_and_the_half_net_on_one():
    two = compose_cfg("+experiment=towers", "model=alexnet_small")
    one = compose_cfg("+experiment=towers", "model=alexnet_small_onetower")
    assert (two["mesh"]["devices"], one["mesh"]["devices"]) == (2, 1)


def test_the_one_tower_net_halves_every_conv_but_the_last(alexnet_small):
    half = shipped_spec("alexnet_small_onetower")
    convs = [(a.out, b.out) for a, b in zip(alexnet_small.layers, half.layers, strict=True) if a.op == "conv"]
    assert convs[:-1] == [(2 * b, b) for _, b in convs[:-1]]
    assert convs[-1][0] == convs[-1][1]
    assert [a.out for a in alexnet_small.layers if a.op == "linear"] == [b.out for b in half.layers
                                                                           if b.op == "linear"]
    assert half.groups == 1 and alexnet_small.total_params > half.total_params


@pytest.mark.parametrize("depth", [2, 3, 4, 6, 9])
def test_conv_stack_depth_is_the_number_of_conv_layers(depth):
    spec = spec_of(depth=depth)
    assert sum(layer.op == "conv" for layer in spec.layers) == depth
    assert spec.layers[-1].out_shape[0] == 10


def test_conv_stack_default_is_alexnet_small_with_padded_pools(alexnet_small):
    spec = spec_of()
    assert [(x.name, x.op, x.out, x.connect) for x in spec.layers if x.op != "maxpool"] == \
        [(x.name, x.op, x.out, x.connect) for x in alexnet_small.layers if x.op != "maxpool"]


def test_conv_stack_toggles_change_only_what_they_name():
    base = spec_of()
    plain = spec_of(pool=2)
    assert plain.total_params == base.total_params
    assert [x.out_shape for x in plain.layers] == [x.out_shape for x in base.layers]
    assert [(x.kernel, x.stride) for x in plain.layers if x.op == "maxpool"] == [(2, 2)] * 3
    assert [(x.kernel, x.stride) for x in base.layers if x.op == "maxpool"] == [(3, 2)] * 3
    no_lrn = spec_of(lrn=False)
    assert not any(x.op == "lrn" for x in no_lrn.layers) and no_lrn.total_params == base.total_params
    assert [x.p for x in base.layers if x.op == "dropout"] == [0.5, 0.5]
    assert not any(x.op == "dropout" for x in spec_of(dropout=0.0).layers)
    assert {x.scale for x in base.layers if x.op == "dropout"} == {"train"}
    paper = spec_of(dropout_scale="test")
    assert [x.scale for x in paper.layers if x.op == "dropout"] == ["test", "test"]
    assert [x.out_shape for x in paper.layers] == [x.out_shape for x in base.layers]


@pytest.mark.parametrize(("arch", "message"), [({"depth": 1}, "arch.depth=1"), ({"pool": 4}, "arch.pool=4")])
def test_conv_stack_names_a_bad_knob(arch, message):
    with pytest.raises(SplitnetError, match=message):
        conv_stack(**arch)


def test_conv_stack_accepts_exactly_the_pools_its_error_names():
    accepted, message = [], ""
    for pool in range(1, 6):
        try:
            spec_of(pool=pool)
            accepted.append(pool)
        except SplitnetError as error:
            message = str(error)
    assert accepted == [2, 3]
    assert all(f"{pool} (" in message for pool in accepted), message


def test_a_subset_is_seeded_nested_and_about_its_size():
    keys = [f"sample{i:05d}" for i in range(20000)]
    small = {k for k in keys if in_subset(k, 0.1, seed=0)}
    large = {k for k in keys if in_subset(k, 0.3, seed=0)}
    other = {k for k in keys if in_subset(k, 0.1, seed=1)}
    assert small < large
    assert abs(len(small) - 2000) < 150 and abs(len(large) - 6000) < 250
    assert len(small & other) < 400  # another seed, another subset (about 10% of 10% overlap)
    assert all(in_subset(k, 1.0, seed=5) for k in keys[:100])
    assert subset_size(4500, 0.1) == 450 and subset_size(3, 0.01) == 1


def test_a_training_fraction_shortens_the_epoch_and_leaves_validation_whole(tmp_path):
    from splitnet.data import build_loader, data_info

    cfg = {"fraction": 0.1, "flip": False}
    info = data_info(cfg)
    common = {"image_size": 32, "channels": 3, "batch_size": 25, "replica": 0, "num_replicas": 1, "epoch": 0,
              "seed": 0}
    train = build_loader(cfg, split="train", **common)
    assert len(train) == subset_size(info.counts["train"], 0.1) // 25
    assert sum(int(y.numel()) for _, y in train) == len(train) * 25
    assert len(build_loader(cfg, split="val", **common)) == info.counts["val"] // 25


@pytest.mark.parametrize("fraction", [0, 1.5])
def test_a_bad_fraction_is_named(fraction):
    with pytest.raises(DataError, match=f"data.fraction={fraction}"):
        DataConfig.from_dict({"fraction": fraction})


def test_augment_false_trains_on_the_evaluation_crop(monkeypatch):
    from splitnet.data import augment, build_loader

    def no_random_crop(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a random crop was drawn")

    common = {"split": "train", "image_size": 32, "channels": 3, "batch_size": 20, "replica": 0,
              "num_replicas": 1, "epoch": 0, "seed": 0}
    cfg = {"flip": False, "fraction": 0.01}
    loader = build_loader({**cfg, "augment": False}, **common)
    assert loader.stream.augmenter.train is False and loader.stream.train  # still shuffled
    monkeypatch.setattr(augment, "random_crop", no_random_crop)
    assert next(iter(loader))[0].shape == (20, 3, 32, 32)
    with pytest.raises(AssertionError, match="random crop"):
        next(iter(build_loader(cfg, **common)))


def test_experiment_configs_name_their_command():
    for name in EXPERIMENTS:
        text = Path(CONF / "experiment" / f"{name}.yaml").read_text()
        assert f"splitnet train -m +experiment={name}" in text


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_fixes_its_schedule_and_budget(name):
    """The default schedule may change; an experiment's numbers must not change with it."""
    raw = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())
    assert raw["optim"]["schedule"] == "step" and raw["optim"]["milestones"], name
    assert "warmup_steps" in raw["optim"], name
    for share in sweep_params(name).get("data.fraction", [None]):  # a budget may follow the share
        cfg = compose_cfg(f"+experiment={name}", *([f"data.fraction={share}"] if share else []))
        assert cfg["train"]["epochs"] >= 2 * 5, (name, share)  # 10 epochs show convergence
    seeds = sweep_params(name).get("seed", ["0"])
    assert len(seeds) >= (1 if name == "strategies" else 3), name


def test_eval_every_scores_every_nth_epoch_and_the_last(tmp_path, one_rank_in_process):
    import json

    from splitnet.launchers import choose_launcher
    from splitnet.train.job import run_train

    cfg = compose_cfg("+experiment=augment", *TINY, "train.epochs=5", "train.max_steps=0", "eval.every=2")
    run_train(cfg, tmp_path, choose_launcher(cfg))
    epochs = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3, 4]
    assert ["top1" in e for e in epochs] == [False, True, False, True, True]


@pytest.mark.parametrize(("overrides", "message"), [
    (["eval.every=2", "optim.schedule=plateau"], "optim.schedule=plateau reads the validation error of every epoch"),
    (["eval.every=0"], r"eval.every=0 must be an integer >= 1"),
])
def test_eval_every_is_checked(tmp_path, overrides, message):
    from splitnet.launchers import choose_launcher
    from splitnet.train.job import run_train

    cfg = compose_cfg("+experiment=augment", *TINY, *overrides)
    with pytest.raises(SplitnetError, match=message):
        run_train(cfg, tmp_path, choose_launcher(cfg))


def test_depth_data_gives_each_data_share_its_own_budget():
    seen = {}
    for share in sweep_params("depth_data")["data.fraction"]:
        cfg = compose_cfg("+experiment=depth_data", f"data.fraction={share}")
        steps = cfg["train"]["epochs"] * (subset_size(4500, float(share)) // cfg["batch_size"])
        seen[float(share)] = (cfg["train"]["epochs"], cfg["optim"]["milestones"], steps)
        assert cfg["optim"]["milestones"][0] < cfg["train"]["epochs"] and cfg["eval"]["every"] <= cfg["train"]["epochs"]
        assert steps >= 240, (share, steps)
    epochs = [seen[k][0] for k in sorted(seen)]
    assert epochs == sorted(epochs, reverse=True) and epochs[0] > epochs[-1]  # less data, more epochs
    assert compose_cfg("+experiment=depth_data", "data.fraction=1")["train"]["epochs"] == seen[1.0][0]


def test_a_share_without_a_budget_is_refused_by_name():
    from omegaconf.errors import InterpolationResolutionError

    with pytest.raises(InterpolationResolutionError, match=r"no entry for 0\.5; .*0\.02, 0\.05, 0\.1, 0\.3, 1\.0 only"):
        compose_cfg("+experiment=depth_data", "data.fraction=0.5")


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_the_suite_script_reports_every_sweep_and_names_the_ones_that_failed(tmp_path, jobs):
    """run_all.sh with stand-ins for splitnet and python that record their calls."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in ("splitnet", "python"):  # the sweep "broken" fails to train, "unreported" to report
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n'
                                    'case "$*" in *+experiment=broken*) exit 3;;\n'
                                    '  "report "*unreported*) exit 4;; esac\n')
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "JOBS": jobs,
           "SWEEPS": "first broken unreported last"}
    done = subprocess.run(["bash", str(CONF.parent / "docs" / "experiments" / "run_all.sh"), str(tmp_path / "r"),
                           "data.fraction=0.5"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "these sweeps failed: broken unreported " in done.stderr, done.stderr
    lines = calls.read_text().splitlines()
    for name in ("first", "broken", "unreported", "last"):
        train = [line for line in lines if f"train -m +experiment={name} " in line]
        assert len(train) == 1 and train[0].endswith("data.fraction=0.5")
        assert f"splitnet report {tmp_path}/r/{name} out={tmp_path}/r/reports/{name}" in lines
    assert lines[-1] == f"python -m splitnet.report.verdict {tmp_path}/r out={tmp_path}/r/reports/verdicts.json"
    if jobs == "2":
        assert "== broken ended" in done.stdout and "exit 3" in done.stdout and "exit 4" in done.stdout
        assert (tmp_path / "r" / "first.log").is_file()


@pytest.mark.parametrize("jobs", ["0", "two", "-1"])
def test_the_suite_script_refuses_a_jobs_count_that_is_not_one_or_more(tmp_path, jobs):
    import os
    import subprocess

    done = subprocess.run(["bash", str(CONF.parent / "docs" / "experiments" / "run_all.sh"), str(tmp_path / "r")],
                          env={**os.environ, "JOBS": jobs}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"JOBS={jobs}: give the number of sweeps" in done.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("table", "key", "message"), [
    ({"0.1": {"epochs": 4}}, "0.10", None),
    ({"0.1": {"epochs": 4}}, "a tenth", "the key 'a tenth' is not a number"),
    ({"tenth": {"epochs": 4}}, 0.1, "the table's key 'tenth' is not a number"),
    ({"0.1": 4}, 0.1, "the entry for 0.1 is 4, which has no 'epochs'"),
    (4, 0.1, "the table is 4, not a mapping"),
])
def test_by_number_finds_the_entry_of_a_number_or_names_what_is_wrong(table, key, message):
    from splitnet.configs import by_number

    if message is None:
        assert by_number(table, key, "epochs") == 4
    else:
        with pytest.raises(SplitnetError, match=message):
            by_number(table, key, "epochs")
