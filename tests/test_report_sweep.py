"""``splitnet report`` on a hand-made sweep: finished, unfinished and missing runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from splitnet.cli import main
from splitnet.report.sweep import (
    SweepError,
    collect,
    expected_overrides,
    has_converged,
    loss_difference,
    markdown,
    to_json,
)


def write_run(root: Path, overrides: list[str], epochs: list[tuple[float, float, float] | None],
              losses: list[list[float]], planned: int = 2, seconds: tuple[str, str] = ("00:00:00", "00:01:30"),
              params: int = 1000, comm: int = 0) -> Path:
    """A run folder as `splitnet train` leaves it: epochs are (top1, top5, val_loss), None unscored."""
    run = root / ",".join(overrides)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": planned, "max_steps": 0}}))
    (run / "plan.json").write_text(json.dumps({"totals": {"params": params}}))
    lines, step = [], 0
    for e, (scores, epoch_losses) in enumerate(zip(epochs, losses, strict=True)):
        for loss in epoch_losses:
            step += 1
            lines.append({"kind": "step", "rank": 0, "step": step, "epoch": e, "loss": loss, "comm_bytes": comm,
                          "images_per_s": 100.0 * step})
            lines.append({"kind": "step", "rank": 1, "step": step, "epoch": e, "comm_bytes": comm})
        scored = {} if scores is None else dict(zip(("top1", "top5", "val_loss"), scores, strict=True))
        lines.append({"kind": "epoch", "epoch": e, "step": step, **scored})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run / "logs").mkdir()
    (run / "logs" / "rank0.log").write_text(f"2026-01-01 {seconds[0]},000 rank 0 start\n"
                                            f"2026-01-01 {seconds[1]},500 rank 0 epoch 2\n")
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """lr x seed, 2 x 2: three runs written (one stopped after epoch 1), one never started."""
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"params": {"lr": "0.1,0.01", "seed": "0,1"}},
        "overrides": {"task": ["+experiment=toy", "train.epochs=2"]}}}))
    write_run(tmp_path, ["lr=0.1", "seed=0", "+experiment=toy", "train.epochs=2"],
              [(0.5, 0.9, 1.5), (0.8, 1.0, 0.7)], [[2.0, 1.8], [1.0, 0.6]], comm=10)
    write_run(tmp_path, ["lr=0.1", "seed=1", "+experiment=toy", "train.epochs=2"],
              [(0.6, 0.9, 1.4), (0.6, 0.95, 0.9)], [[2.0, 1.6], [1.2, 0.8]], comm=10)
    write_run(tmp_path, ["lr=0.01", "seed=0", "+experiment=toy", "train.epochs=2"],
              [(0.3, 0.7, 2.0)], [[2.0, 1.9]], comm=10)
    return tmp_path


def test_the_expected_jobs_are_the_sweeps_product_in_hydras_order(sweep):
    jobs = expected_overrides(sweep / "multirun.yaml")
    assert [(j["lr"], j["seed"]) for j in jobs] == [("0.1", "0"), ("0.1", "1"), ("0.01", "0"), ("0.01", "1")]
    assert all(j["experiment"] == "toy" and j["train.epochs"] == "2" for j in jobs)


def test_a_command_line_sweep_replaces_the_configs_params(tmp_path):
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"params": {"lr": "0.1,0.01", "seed": "0,1,2"}}, "overrides": {"task": ["seed=4"]}}}))
    assert [(j["lr"], j["seed"]) for j in expected_overrides(tmp_path / "multirun.yaml")] == \
        [("0.1", "4"), ("0.01", "4")]


def test_runs_are_summarised_and_the_missing_and_unfinished_named(sweep):
    s = collect(sweep)
    assert s.varied == ["lr", "seed"] and s.factors == ["lr"]
    assert [r.status for r in s.runs] == ["done", "done", "incomplete", "missing"]
    first = s.runs[0]
    assert (first.value("top1"), first.value("best_top1"), first.value("best_top5")) == (0.8, 0.8, 1.0)
    assert first.value("gap") == pytest.approx(0.8 - 0.7)  # mean of the last epoch's losses minus val loss
    assert first.train_loss == pytest.approx([1.9, 0.8])
    assert first.wall_s == 90.5 and first.images_per_s == 250.0 and first.params == 1000
    assert first.bytes_per_step == 20  # both ranks' bytes
    assert s.runs[1].value("best_top1") == 0.6 and s.runs[1].value("top1") == 0.6
    assert s.runs[3].overrides["lr"] == "0.01" and s.runs[3].overrides["seed"] == "1"

    mean, std, n = s.settings()[0].stats("top1")
    assert (mean, n) == (pytest.approx(0.7), 2) and std == pytest.approx(0.1414, abs=1e-4)
    assert s.settings()[1].stats("top1") is None  # its one written run is unfinished: no mean yet

    text = markdown(s)
    assert "| 0.1 | 2 of 2 | 0 | 70.0 ± 14.1 |" in text  # 2 epochs cannot show convergence
    assert "## Not finished: 2 of 4 runs" in text
    assert "- 3: missing: lr=0.01 seed=1 experiment=toy train.epochs=2" in text
    assert "incomplete (1 epochs so far)" in text
    report = to_json(s)
    assert report["missing"] == ["3"] and report["incomplete"] == [s.runs[2].name]


def test_the_loss_difference_is_zero_only_for_the_same_training(tmp_path):
    same = ["+experiment=toy"]
    write_run(tmp_path, ["eval.crops=1", "seed=0", *same], [(0.5, 0.9, 1.0)], [[2.0, 1.5]])
    write_run(tmp_path, ["eval.crops=10", "seed=0", *same], [(0.6, 0.9, 0.9)], [[2.0, 1.5]])
    write_run(tmp_path, ["eval.crops=1", "seed=1", *same], [(0.5, 0.9, 1.0)], [[2.0, 1.25]])
    diff = loss_difference(collect(tmp_path))
    assert list(diff.values()) == [0.0, 0.0, 0.0]  # seed 1 is its own reference
    write_run(tmp_path, ["eval.crops=10", "seed=1", *same], [(0.5, 0.9, 1.0)], [[2.0, 1.5]])
    assert loss_difference(collect(tmp_path))["eval.crops=10,seed=1,+experiment=toy"] == 0.25


def test_the_cli_writes_table_json_curves_and_a_heatmap_for_two_factors(tmp_path, capsys):
    for lr in ("0.1", "0.01"):
        for wd in ("0", "5e-4"):
            write_run(tmp_path / "grid", [f"lr={lr}", f"wd={wd}"], [(0.5, 0.9, 1.0), (0.7, 0.9, 0.8)],
                      [[2.0], [1.0]])
    assert main(["report", str(tmp_path / "grid"), f"out={tmp_path / 'out'}", "format=json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["varied"] == ["lr", "wd"] and len(printed["runs"]) == 4 and printed["missing"] == []
    for name in ("report.md", "report.json", "curves.png", "heatmap.png"):
        assert (tmp_path / "out" / name).stat().st_size > 100, name
    assert (tmp_path / "out" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_one_factor_gets_curves_but_no_heatmap(sweep, tmp_path):
    assert main(["report", str(sweep), f"out={tmp_path / 'out'}"]) == 0
    assert (tmp_path / "out" / "curves.png").is_file() and not (tmp_path / "out" / "heatmap.png").exists()
    assert "missing" in (tmp_path / "out" / "report.md").read_text()


def test_a_single_run_folder_is_a_one_row_report(sweep):
    run = next(p for p in sweep.iterdir() if p.name.startswith("lr=0.1,seed=0"))
    s = collect(run)
    assert len(s.runs) == 1 and s.runs[0].status == "done" and s.varied == []


def test_a_corrupt_metrics_line_is_named_but_a_cut_last_line_is_not(sweep):
    run = next(p for p in sweep.iterdir() if p.name.startswith("lr=0.1,seed=1"))
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"kind": "st')  # a run still writing
    assert collect(sweep).runs[1].status == "done"
    metrics.write_text('{"kind": \n' + metrics.read_text())
    with pytest.raises(SweepError, match=r"metrics.jsonl: line 1 is not JSON"):
        collect(sweep)


def test_bad_folders_and_options_are_refused(tmp_path, capsys):
    with pytest.raises(SweepError, match="no run found"):
        collect(tmp_path)
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "colour=red"]) == 2
    assert "unknown option(s) ['colour']" in capsys.readouterr().err


@pytest.mark.parametrize(("losses", "expected"), [
    ([2.0] * 5 + [1.0] * 5, False),             # halved: still falling
    ([1.0] * 5 + [0.985] * 5, True),            # 1.5% lower: within 2%
    ([1.0] * 5 + [0.975] * 5, False),           # 2.5% lower
    ([0.2] * 5 + [0.191] * 5, True),            # 4.5% lower but 0.009 nats: at the floor
    ([0.5] * 5 + [0.6] * 5, True),              # rising: not falling
    ([3.0] + [1.0] * 5 + [0.985] * 5, True),    # only the last ten epochs count
    ([1.0] * 9, False),                         # fewer than 10 epochs cannot show it
    # noisy epochs: a fall of 0.02 (0.07 -> 0.05), within two standard errors (0.032) of it
    ([0.10, 0.04, 0.09, 0.05, 0.07, 0.02, 0.08, 0.03, 0.07, 0.05], True),
    # the same noise 0.05 higher before: a fall of 0.07, beyond two standard errors
    ([0.15, 0.09, 0.14, 0.10, 0.12, 0.02, 0.08, 0.03, 0.07, 0.05], False),
])
def test_convergence_compares_the_last_five_epochs_with_the_five_before(losses, expected):
    assert has_converged(losses) is expected


def test_report_marks_convergence_final_training_loss_and_best_beside_final(tmp_path):
    flat = [[1.0, 1.0]] * 5 + [[0.99, 0.99]] * 5
    falling = [[2.0 - 0.1 * e] * 2 for e in range(10)]
    scores = [None] * 4 + [(0.9, 1.0, 0.5)] + [None] * 4 + [(0.8, 1.0, 0.6)]  # eval.every=5
    write_run(tmp_path, ["seed=0"], scores, flat, planned=10)
    write_run(tmp_path, ["seed=1"], scores, falling, planned=10)
    write_run(tmp_path, ["seed=2"], scores[:5], flat[:5], planned=10)  # stopped half way
    s = collect(tmp_path)
    assert [r.converged for r in s.runs] == [True, False, False]
    first = s.runs[0]
    assert (first.value("top1"), first.value("best_top1")) == (0.8, 0.9)  # the best epoch beside the final
    assert first.value("train_loss") == pytest.approx(0.99)
    assert first.value("gap") == pytest.approx(0.99 - 0.6)
    runs = to_json(s)["runs"]
    assert [(r["converged"], r["final_train_loss"]) for r in runs] == \
        [(True, pytest.approx(0.99)), (False, pytest.approx(1.1)), (False, pytest.approx(1.0))]
    text = markdown(s)
    # last fall: (1.0 - 0.99) / 1.0 and (1.8 - 1.3) / 1.8, in percent
    assert "| 0 | done | 10 | 80.0 | 90.0 | 100.0 | 100.0 | 0.390 | 0.990 | 1 | yes |" in text
    assert "| 1 | done | 10 | 80.0 | 90.0 | 100.0 | 100.0 | 0.500 | 1.100 | 28 | no |" in text


def test_a_two_factor_sweep_gets_a_grid_with_the_best_row_per_column_and_the_gain_per_row(tmp_path):
    # depth x data: the deep net is worse on little data, better on much
    top1 = {("2", "0.1"): (0.60, 0.62), ("2", "1.0"): (0.70, 0.72), ("6", "0.1"): (0.50, 0.50),
            ("6", "1.0"): (0.90, 0.80)}
    for (depth, fraction), accs in top1.items():
        for seed, acc in enumerate(accs):
            write_run(tmp_path, [f"depth={depth}", f"fraction={fraction}", f"seed={seed}"], [(acc, 1.0, 0.5)],
                      [[1.0]], planned=1)
    text = markdown(collect(tmp_path))
    assert "| depth \\ fraction | 0.1 | 1.0 | gain 0.1 -> 1.0 |" in text
    assert "| 2 | 61.0 ± 1.4 | 71.0 ± 1.4 | +10.0 |" in text
    assert "| 6 | 50.0 ± 0.0 | 85.0 ± 7.1 | +35.0 |" in text
    assert "| best depth | 2 | 6 |  |" in text


def test_curves_are_drawn_from_the_scored_epochs_only(tmp_path):
    write_run(tmp_path / "runs", ["seed=0"], [None, (0.5, 0.9, 1.0), None, (0.7, 0.9, 0.8)], [[2.0]] * 4, planned=4)
    assert main(["report", str(tmp_path / "runs"), f"out={tmp_path / 'out'}"]) == 0
    assert (tmp_path / "out" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_an_elastic_run_is_one_series_and_the_report_shows_where_its_size_changed(tmp_path):
    run = write_run(tmp_path, ["lr=0.1"], [(0.5, 0.9, 1.0)], [[2.0, 1.9, 1.8, 1.7]], planned=1)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:  # steps 1-3 on two replicas; a node lost after the checkpoint at step 2
        if r["kind"] == "step":
            r.update({"replicas": 2, "accumulate": 1} if r["step"] <= 3 else {"replicas": 1, "accumulate": 2})
    again = {"kind": "step", "rank": 0, "step": 3, "epoch": 0, "loss": 1.8, "replicas": 1, "accumulate": 2}
    lines = records[:6] + [again] + records[6:]  # the survivor logs step 3 again after resuming at step 2
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    got = collect(run).runs[0]
    assert got.sizes == [{"step": 1, "replicas": 2, "accumulate": 1}, {"step": 3, "replicas": 1, "accumulate": 2}]
    assert list(got.step_loss) == [1, 2, 3, 4]
    assert ("from step 1: 2 replica(s) x 1 micro-step(s); from step 3: 1 replica(s) x 2 micro-step(s)"
            in markdown(collect(run)))


def test_a_budget_given_by_interpolation_is_resolved_as_the_run_resolved_it(tmp_path):
    """Hydra saves a run's config unresolved: depth_data's epochs follow the data share."""
    budget = {"budget": {"0.02": {"epochs": 3}, "1.0": {"epochs": 2}}, "data": {"fraction": 1.0},
              "train": {"epochs": "${by_number:${budget},${data.fraction},epochs}", "max_steps": 0}}
    for fraction, epochs in ((1.0, 2), (0.02, 2)):
        run = write_run(tmp_path, [f"data.fraction={fraction}"], [(0.5, 0.9, 1.5)] * epochs, [[2.0]] * epochs)
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(budget | {"data": {"fraction": fraction}}))
    runs = {r.overrides["data.fraction"]: r.status for r in collect(tmp_path).runs}
    assert runs == {"1.0": "done", "0.02": "incomplete"}  # the 2% run planned 3 epochs and ran 2
