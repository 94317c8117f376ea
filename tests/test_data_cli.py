"""``splitnet shards ...``: writes a set, refuses to clobber one, prints a set's summary."""

from __future__ import annotations

import json

import numpy as np

from splitnet.data.cli import main
from splitnet.data.meta import read_meta


def test_npz_to_shards_and_info(tmp_path, capsys) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(20, 10, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images, labels=np.arange(20) % 2)
    out = tmp_path / "out"
    argv = ["npz", str(tmp_path / "a.npz"), str(out), "--per-shard", "4", "--val-fraction",
            "0.2", "--resize", "8", "--format", "jpeg", "--quality", "80", "--no-progress"]
    assert main(argv) == 0
    assert "train 16 in 4 shards, val 4 in 1 shards" in capsys.readouterr().out
    meta = read_meta(out)
    assert (meta.image_size, meta.encoding) == (8, "jpeg")
    assert main(argv) == 2
    assert "already holds a shard set; pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": {"samples": 16, "shards": 4},
                                 "val": {"samples": 4, "shards": 1}}


def test_missing_source_is_an_error(tmp_path, capsys) -> None:
    assert main(["cifar", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "no CIFAR binary files" in capsys.readouterr().err
