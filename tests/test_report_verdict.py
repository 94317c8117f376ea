"""The verdict statistics on constructed numbers whose answers are derived here independently."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from splitnet.report.sweep import collect
from splitnet.report.verdict import (
    CLAIMS,
    Agreement,
    Claim,
    judge,
    judge_all,
    main,
    paired_interval,
    t975,
    verdict,
)
from tests.test_report_sweep import write_run


def t_density(x: float, df: int) -> float:
    return (math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
            * (1 + x * x / df) ** (-(df + 1) / 2))


def t_mass_from_zero(upper: float, df: int, n: int = 20000) -> float:
    """P(0 < T < upper) by Simpson's rule."""
    h = upper / n
    inner = sum((4 if i % 2 else 2) * t_density(i * h, df) for i in range(1, n))
    return h / 3 * (t_density(0.0, df) + inner + t_density(upper, df))


def test_the_t_quantile_has_the_closed_forms_for_one_and_two_degrees_of_freedom():
    assert t975(1) == pytest.approx(math.tan(0.475 * math.pi), abs=5e-4)  # Cauchy
    assert t975(2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), abs=5e-4)


@pytest.mark.parametrize("df", [3, 4, 5, 9, 19, 30, 31, 45, 120])
def test_the_t_quantile_leaves_two_and_a_half_percent_above_it(df):
    # a quantile rounded to 3 decimals misses 0.475 by at most 0.0005 x the density there
    q = t975(df)
    assert abs(t_mass_from_zero(q, df) - 0.475) <= 6e-4 * t_density(q, df) + 1e-7


def test_the_interval_is_mean_plus_minus_t_times_the_standard_error():
    # differences 1, 2, 3: mean 2, sample sd 1, t(2) = 4.303
    mean, (low, high) = paired_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and low == pytest.approx(2 - 4.303 / math.sqrt(3)) and high == pytest.approx(2 + 4.303 / 3**0.5)
    assert verdict((low, high)) == "inconclusive"  # -0.48 .. 4.48
    # 2, 3, 4, 3, 3: mean 3, sd sqrt(2/4), t(4) = 2.776: 3 -+ 0.878
    mean, interval = paired_interval([2.0, 3.0, 4.0, 3.0, 3.0])
    assert interval == pytest.approx((3 - 2.776 * math.sqrt(0.5 / 5), 3 + 2.776 * math.sqrt(0.5 / 5)))
    assert verdict(interval) == "reproduced"
    assert verdict(paired_interval([-2.0, -3.0, -4.0, -3.0, -3.0])[1]) == "contradicted"
    assert paired_interval([5.0]) == (5.0, None) and verdict(None) == "not measured"


def _runs(root: Path, key: str, top1: dict[tuple[str, int], float],
          falling: set[tuple[str, int]] = frozenset()) -> Path:
    """A 10-epoch run per (value of ``key``, seed), scored at the end; converged unless falling."""
    for (setting, seed), acc in top1.items():
        losses = ([[2.0 - 0.1 * e] for e in range(10)] if (setting, seed) in falling
                  else [[1.0]] * 5 + [[0.995]] * 5)
        write_run(root, [f"{key}={setting}", f"seed={seed}"], [None] * 9 + [(acc, 1.0, 0.5)], losses, planned=10)
    return root


def _sweep(root: Path, top1: dict[tuple[str, int], float], falling: set[tuple[str, int]] = frozenset()) -> Path:
    return _runs(root, "data.augment", top1, falling)


AUGMENT = Claim("augmentation", "augment", ((1.0, (("data.augment", "true"),)), (-1.0, (("data.augment", "false"),))),
                "splitnet train -m +experiment=augment")


def test_a_claim_pairs_converged_runs_by_seed_and_drops_the_rest(tmp_path):
    # per seed on - off: 0.10, 0.20, 0.30 (seed 3 left out: its "off" run has not converged)
    top1 = {("True", 0): 0.60, ("False", 0): 0.50, ("True", 1): 0.70, ("False", 1): 0.50,
            ("True", 2): 0.80, ("False", 2): 0.50, ("True", 3): 0.10, ("False", 3): 0.90}
    result = judge(AUGMENT, collect(_sweep(tmp_path, top1, falling={("False", 3)})))
    half = 100 * 4.303 * 0.1 / math.sqrt(3)
    assert result["seeds"] == ["0", "1", "2"] and result["converged_runs"] == 7 and result["runs"] == 8
    assert result["effect"] == pytest.approx(20.0)
    assert result["interval"] == pytest.approx([20.0 - half, 20.0 + half], abs=0.01)
    assert result["verdict"] == "inconclusive"  # 20 -+ 24.8


def test_an_interaction_claim_takes_four_runs_per_seed(tmp_path):
    claim = Claim("x", "s", ((1.0, (("a", "1"), ("b", "1"))), (-1.0, (("a", "0"), ("b", "1"))),
                             (-1.0, (("a", "1"), ("b", "0"))), (1.0, (("a", "0"), ("b", "0")))), "cmd")
    for seed, (d11, d01, d10, d00) in enumerate([(0.9, 0.7, 0.5, 0.6), (0.8, 0.7, 0.5, 0.5), (0.9, 0.6, 0.4, 0.5)]):
        for (a, b), acc in {("1", "1"): d11, ("0", "1"): d01, ("1", "0"): d10, ("0", "0"): d00}.items():
            write_run(tmp_path, [f"a={a}", f"b={b}", f"seed={seed}"], [None] * 9 + [(acc, 1.0, 0.5)],
                      [[1.0]] * 10, planned=10)
    # contrasts 0.3, 0.1, 0.4: mean 0.2667, sd 0.1528, t(2) = 4.303
    result = judge(claim, collect(tmp_path))
    assert result["effect"] == pytest.approx(26.67, abs=0.01)
    assert result["interval"][0] == pytest.approx(26.67 - 100 * 4.303 * 0.152753 / math.sqrt(3), abs=0.01)


def test_every_claim_is_written_and_an_absent_sweep_is_not_measured(tmp_path):
    _sweep(tmp_path / "augment", {("True", s): 0.6 + 0.01 * s for s in range(3)}
           | {("False", s): 0.5 for s in range(3)})
    out = tmp_path / "verdicts.json"
    assert main([str(tmp_path), f"out={out}"]) == 0
    verdicts = json.loads(out.read_text())
    assert len(verdicts) == len(CLAIMS) >= 7
    assert set(verdicts[0]) == {"claim", "verdict", "effect", "interval", "seeds", "converged_runs", "runs",
                                "command"}
    assert verdicts[0]["verdict"] == "reproduced" and verdicts[0]["effect"] == pytest.approx(11.0)
    assert all(v["verdict"] == "not measured" for v in verdicts[1:])
    assert judge_all(tmp_path)[0] == verdicts[0]
    assert (tmp_path / "verdicts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the picture beside it


def test_the_verdict_picture_marks_the_claims_that_have_an_effect(tmp_path):
    from splitnet.report.plots import draw_verdicts

    verdicts = [{"claim": "a", "verdict": "reproduced", "effect": 4.7, "interval": [0.4, 9.1], "seeds": ["0", "2"]},
                {"claim": "b", "verdict": "not measured", "effect": None, "interval": None, "seeds": []},
                {"claim": "c", "verdict": "reproduced", "effect": 0.0, "interval": None, "seeds": ["0"]}]
    assert draw_verdicts(verdicts, tmp_path / "v.png") == ["a", "c"]
    assert (tmp_path / "v.png").stat().st_size > 0


def test_the_suite_runs_every_sweep_and_every_claim_names_one():
    from tests.conftest import CONF

    sweeps = {p.stem for p in (CONF / "experiment").glob("*.yaml")} - {"alexnet_imagenet"}
    script = (CONF.parent / "docs" / "experiments" / "run_all.sh").read_text()
    listed = script.split("SWEEPS:-", 1)[1].split("}", 1)[0].split()
    assert sorted(listed) == sorted(sweeps)
    assert "python -m splitnet.report.verdict" in script
    assert {c.sweep for c in CLAIMS} <= sweeps
    assert all(c.command == f"splitnet train -m +experiment={c.sweep}" for c in CLAIMS)


def _strategies(root: Path, top1: dict[tuple[str, int], float], falling: set[tuple[str, int]] = frozenset()) -> Path:
    return _runs(root, "partition", top1, falling)


STRATEGIES = next(c for c in CLAIMS if isinstance(c, Agreement))


def test_an_agreement_claim_holds_only_when_every_setting_ends_equal(tmp_path):
    equal = {(p, 0): 0.874 for p in ("columns", "pipeline", "hybrid")}
    result = judge(STRATEGIES, collect(_strategies(tmp_path / "equal", equal)))
    assert (result["verdict"], result["effect"], result["interval"], result["seeds"]) == ("reproduced", 0.0, None,
                                                                                          ["0"])
    # one held-out image of 500 apart on seed 1: the largest difference over the seeds is 0.2 points
    apart = equal | {("columns", 1): 0.874, ("pipeline", 1): 0.876, ("hybrid", 1): 0.874}
    result = judge(STRATEGIES, collect(_strategies(tmp_path / "apart", apart)))
    assert result["verdict"] == "contradicted" and result["effect"] == pytest.approx(0.2)
    assert result["seeds"] == ["0", "1"] and result["converged_runs"] == 6
    # a seed counts only when all three of its runs converged
    result = judge(STRATEGIES, collect(_strategies(tmp_path / "falling", apart, falling={("pipeline", 1)})))
    assert (result["verdict"], result["seeds"], result["converged_runs"]) == ("reproduced", ["0"], 5)
    missing = {k: v for k, v in equal.items() if k[0] != "hybrid"}
    assert judge(STRATEGIES, collect(_strategies(tmp_path / "missing", missing)))["verdict"] == "not measured"


def test_every_claim_picks_settings_its_sweep_runs():
    from tests.test_experiments import sweep_params

    for claim in CLAIMS:
        params = {k: [v.lower() for v in values] for k, values in sweep_params(claim.sweep).items()}
        if isinstance(claim, Agreement):
            assert sorted(params[claim.key]) == sorted(claim.settings), claim.claim
            continue
        for _, picks in claim.terms:
            for key, value in picks:
                assert value.lower() in params[key], (claim.claim, key, value)


def test_a_claim_on_two_scorings_of_one_run_pairs_each_run_with_itself(tmp_path):
    # eval.crops=10 runs log the crops' average (top1) and the centre crop alone (top1_centre)
    centre = {0: 0.85, 1: 0.86, 2: 0.80}
    for seed, value in centre.items():
        run = write_run(tmp_path, ["data.flip=true", f"seed={seed}"], [None] * 9 + [(0.9, 1.0, 0.5)],
                        [[1.0]] * 5 + [[0.995]] * 5, planned=10)
        lines = (run / "metrics.jsonl").read_text().splitlines()
        last = json.loads(lines[-1])
        lines[-1] = json.dumps({**last, "top1_centre": value})
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    claim = next(c for c in CLAIMS if isinstance(c, Claim) and c.sweep == "test_crops"
                 and ("data.flip", "true") in c.terms[0][1])
    result = judge(claim, collect(tmp_path))
    mean, (low, high) = paired_interval([0.05, 0.04, 0.10])
    assert result["effect"] == round(100 * mean, 2)
    assert result["interval"] == [round(100 * low, 2), round(100 * high, 2)]
    assert result["seeds"] == ["0", "1", "2"] and result["runs"] == 3 and result["converged_runs"] == 3


def test_noise_zero_judges_with_the_convergence_rule_without_its_noise_allowance(tmp_path, capsys):
    noisy = [[v] for v in (0.10, 0.04, 0.09, 0.05, 0.07, 0.02, 0.08, 0.03, 0.07, 0.05)]  # 0.07 -> 0.05, 2 se 0.032
    for seed in range(3):
        for setting, acc, losses in (("True", 0.6 + 0.01 * seed, noisy), ("False", 0.5, [[1.0]] * 5 + [[0.995]] * 5)):
            write_run(tmp_path / "augment", [f"data.augment={setting}", f"seed={seed}"], [None] * 9 + [(acc, 1.0, 0.5)],
                      losses, planned=10)
    assert judge_all(tmp_path)[0]["seeds"] == ["0", "1", "2"]
    strict = judge_all(tmp_path, noise=0.0)[0]
    assert strict["verdict"] == "not measured" and strict["seeds"] == [] and strict["converged_runs"] == 3
    assert main([str(tmp_path), "noise=0"]) == 0
    assert json.loads(capsys.readouterr().out)[0] == strict
    assert main([str(tmp_path), "nose=0"]) == 2
    assert "unknown option(s) ['nose']" in capsys.readouterr().err

