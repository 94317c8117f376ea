"""The wheel carries the configs, so `pip install .` works outside a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_the_wheel_holds_every_config_and_the_cli_finds_them(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("splitnet-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"splitnet/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert shipped and shipped <= names
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "splitnet").rglob("*.py")}
    assert modules and modules <= names, f"left out of the wheel: {sorted(modules - names)}"
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    out = subprocess.run([sys.executable, "-c", "import splitnet.cli as c; print(c.CONF_DIR); "
                          "raise SystemExit(c.main(['describe', 'model=alexnet', 'format=json']))"],
                         cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
                         check=True, capture_output=True, text=True).stdout
    assert out.splitlines()[0] == str(tmp_path / "site" / "splitnet" / "conf")
    assert '"total_params": 60965224' in out
