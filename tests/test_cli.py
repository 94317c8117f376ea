from __future__ import annotations

import json
import textwrap

from splitnet.cli import main


def test_describe_json(capsys):
    assert main(["describe", "model=alexnet", "format=json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total_params"] == 60_965_224
    conv1 = out["layers"][0]
    # a multiply-add is 2 FLOPs, the bias 1 per output element (docs/spec.md, "The layer spec")
    outputs = 96 * 55 * 55
    assert conv1 == {"name": "conv1", "op": "conv", "groups": 2, "connect": "full",
                     "out_shape": [96, 55, 55], "params": 34_944, "flops": outputs * (2 * 3 * 11 * 11 + 1)}


def test_describe_table_has_totals(capsys):
    assert main(["describe"]) == 0
    out = capsys.readouterr().out
    assert "alexnet_small" in out and "368,842" in out


def test_user_model_through_config_dir(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text(textwrap.dedent("""
        name: mine
        input: {channels: 1, size: 8}
        layers:
          - {name: c, op: conv, out: 4, kernel: 3}
          - {name: f, op: flatten}
          - {name: fc, op: linear, out: 3}
    """))
    assert main(["describe", "--config-dir", str(tmp_path), "model=mine", "format=json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_params"] == 4 * 9 + 4 + 3 * 144 + 3


def test_bad_spec_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "bad.yaml").write_text(
        "name: bad\ninput: {channels: 1, size: 8}\nlayers:\n  - {name: c, op: conv, out: 4}\n")
    assert main(["describe", "--config-dir", str(tmp_path), "model=bad"]) == 2
    assert "layer 'c' (#0): op 'conv' needs kernel" in capsys.readouterr().err


def test_the_paper_experiment_config_carries_the_papers_values():
    from tests.training import config

    cfg = config("+experiment=alexnet_imagenet")
    assert cfg["model"]["name"] == "alexnet" and cfg["data"]["name"] == "imagenet"
    assert (cfg["optim"]["lr"], cfg["optim"]["momentum"], cfg["optim"]["weight_decay"]) == (0.01, 0.9, 0.0005)
    assert (cfg["optim"]["schedule"], cfg["optim"]["factor"], cfg["optim"]["max_cuts"]) == ("plateau", 0.1, 3)
    assert cfg["batch_size"] == 128 and cfg["eval"]["crops"] == 10 and cfg["train"]["epochs"] == 90
    assert cfg["partition"] == {"strategy": "columns", "exchange": "gather", "chunks": 1}
    assert cfg["mesh"]["devices"] == 2
