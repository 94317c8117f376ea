"""``splitnet bench``: ratios taken within rounds, the contender catalogue, and a smoke run of
every suite (tiny batch, two steps) whose bytes must equal what each contender has to move."""

from __future__ import annotations

import json

import pytest

from splitnet.bench.contenders import contenders, launches
from splitnet.bench.rounds import summarise
from splitnet.cli import main
from splitnet.errors import SplitnetError
from tests.conftest import shipped_spec


def test_ratios_are_medians_of_same_round_ratios_not_ratios_of_medians():
    rounds = [{"ref": {"images_per_s": 100.0}, "a": {"images_per_s": 90.0, "step_s": 1.0, "exchange_s": None}},
              {"ref": {"images_per_s": 300.0}, "a": {"images_per_s": 150.0, "step_s": 3.0, "exchange_s": None}},
              {"ref": {"images_per_s": 200.0}, "a": {"images_per_s": 180.0, "step_s": 2.0, "exchange_s": None}}]
    ref, a = summarise(rounds, "ref")
    assert a["ratio"] == pytest.approx(0.9)        # the ratio of medians would be 150 / 200 = 0.75
    assert (a["ratio_min"], a["ratio_max"]) == (pytest.approx(0.5), pytest.approx(0.9))
    assert (a["images_per_s"], a["images_per_s_min"], a["images_per_s_max"]) == (150.0, 90.0, 180.0)
    assert a["step_s"] == 2.0 and a["exchange_s"] is None and a["rounds"] == 3
    assert ref["ratio"] == 1.0 and ref["name"] == "ref"
    assert "cpu_ratio" not in a  # nobody reported CPU time


def test_cpu_ratios_are_taken_within_a_round_too():
    ref = [10.0, 40.0, 20.0]   # images per CPU-second, by round
    a = [9.0, 8.0, 10.0]
    rounds = [{"ref": {"images_per_s": 1.0, "images_per_cpu_s": r}, "a": {"images_per_s": 1.0, "images_per_cpu_s": x}}
              for r, x in zip(ref, a, strict=True)]
    _, row = summarise(rounds, "ref")
    assert row["cpu_ratio"] == pytest.approx(0.5)   # 0.9, 0.2, 0.5; the ratio of medians would be 9 / 20
    assert row["images_per_cpu_s"] == 9.0


def test_contenders_share_a_launch_per_process_count_and_bad_batches_are_refused(alexnet_small):
    order = contenders(alexnet_small, 16, 2, 2, 4)
    assert [c.key for c in order][:2] == ["reference", "ddp"]
    assert [[c.world for c in group] for group in launches(order)] == [[1], [2] * 10, [4]]
    gpipe = next(c for c in order if c.key == "gpipe")
    assert gpipe.stages[0][0] == "conv1" and gpipe.stages[1][-1] == "fc8" and gpipe.microbatches == 4
    assert sum(len(s) for s in gpipe.stages) == len(alexnet_small.layers)
    assert next(c for c in order if c.key == "columns_chunked").plan["chunks"] == 2
    with pytest.raises(SplitnetError, match=r"batch_size=12 .*multiple of 16"):
        contenders(alexnet_small, 12, 2, 2, 4)
    with pytest.raises(SplitnetError, match=r"bench.contenders: unknown \['ddpp'\]"):
        contenders(alexnet_small, 16, 2, 2, 4, ["ddpp"])


def test_bench_needs_a_suite(capsys):
    assert main(["bench", "model=alexnet_small"]) == 2
    assert "name a suite first: throughput | bytes | data | all" in capsys.readouterr().err


# every kind of code path (one process, DDP, torch pipelining, splitnet with collectives, chunked
# on lanes, point to point and gradient buckets) in two launches; the other strategies are proven in test_runtime_*
SMOKE = ["reference", "ddp", "gpipe", "1f1b", "columns_gather", "columns_chunked", "pipeline", "pipeline_1f1b",
         "replicas"]


@pytest.mark.slow
@pytest.mark.timeout(600)  # about 40 s on an idle 2-core machine; the margin is for shared ones
def test_every_suite_runs_in_smoke_mode_and_moves_exactly_the_bytes_it_must(tmp_path, capsys):
    rc = main(["bench", "all", "bench.smoke=true", f"bench.contenders=[{','.join(SMOKE)}]", "format=json",
               f"out={tmp_path}"])
    assert rc == 0
    throughput, traffic, data, decode, decode_embedded = (json.loads(line)
                                                         for line in capsys.readouterr().out.splitlines())
    names = [r["name"] for r in throughput["rows"]]
    assert names[0] == "reference (1 process)" and len(names) == len(SMOKE)
    assert throughput["rows"][0]["ratio"] == 1.0
    assert all(r["images_per_s"] > 0 and r["ratio"] > 0 and r["cpu_s"] > 0 for r in throughput["rows"])
    assert throughput["machine"]["cores"] and len(throughput["machine"]["load_avg"]) == 3
    by_key = {r["key"]: r for r in traffic["rows"]}
    params = shipped_spec("alexnet_small").total_params
    assert by_key["reference"]["bytes_per_step"] == 0
    # DDP over 2 ranks all-reduces every gradient once: 2(k-1)/k x 4 bytes per parameter
    assert by_key["ddp"]["bytes_per_step"] == 4 * params
    assert by_key["replicas"]["bytes_per_step"] == 4 * params
    for key in ("columns_gather", "columns_chunked", "pipeline", "pipeline_1f1b", "replicas"):  # meter = plan
        assert by_key[key]["bytes_per_step"] == by_key[key]["planned_bytes_per_step"] > 0, key
    # torch pipelining on splitnet's stage split must move what splitnet's pipeline moves
    assert by_key["gpipe"]["bytes_per_step"] == by_key["1f1b"]["bytes_per_step"] == by_key["pipeline"]["bytes_per_step"]
    assert by_key["pipeline_1f1b"]["bytes_per_step"] == by_key["pipeline"]["bytes_per_step"]  # order, not traffic
    assert by_key["columns_gather"]["ratio"] == pytest.approx(by_key["columns_gather"]["bytes_per_step"] / (4 * params))
    assert len(data["rows"]) == 2 and all(r["images_per_s"] > 0 for r in data["rows"])
    # one replica's data path at D = 1, 2, 4: D=1, then every rank decoding and decode once per D
    for table in (decode, decode_embedded):
        assert [(r["devices"], r["mode"]) for r in table["rows"]] == [(1, "all"), (2, "all"), (2, "once"),
                                                                      (4, "all"), (4, "once")]
        assert all(r["images_per_cpu_s"] > 0 and r["decode_s"] > 0 for r in table["rows"])
        assert table["rows"][0]["ratio"] == 1.0
    for suite in ("throughput", "bytes", "data", "data-decode", "data-decode-embedded"):
        assert json.loads((tmp_path / f"{suite}.json").read_text())["suite"] == suite
        table = (tmp_path / f"{suite}.md").read_text()
        rows = {"throughput": names, "bytes": names, "data": data["rows"], "data-decode": decode["rows"],
                "data-decode-embedded": decode_embedded["rows"]}[suite]
        assert table.count("\n| ") == 2 + len(rows)  # the header, the rule, a line per row
        assert (tmp_path / f"{suite}.png").read_bytes()[:4] == b"\x89PNG"
    assert "images/s" not in (tmp_path / "bytes.md").read_text()  # a bytes table shows bytes, not rates
