#!/usr/bin/env python3
"""Set-up-free entry point: ``python3 run.py train [overrides]`` or ``python3 run.py test``.

Creates (or reuses) a virtual environment in ``.venv/``, installs splitnet with the
CPU build of torch and the test tools, then runs the command inside it. Needs only
Python 3.11. Any other first word runs ``splitnet <word> ...`` (plan, verify, ...).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".splitnet-install"


def ensure_env() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()
                            + (ROOT / "constraints-cpu.txt").read_bytes()).hexdigest()
    if not PYTHON.exists():
        print("run.py: creating .venv", flush=True)
        venv.create(VENV, with_pip=True)
    if not STAMP.exists() or STAMP.read_text() != wanted:
        print("run.py: installing splitnet and its dependencies into .venv (about a minute)", flush=True)
        subprocess.check_call([str(PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                               "-c", str(ROOT / "constraints-cpu.txt"), "-e", f"{ROOT}[dev]"])
        STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    ensure_env()
    os.chdir(ROOT)
    if argv[0] == "test":
        lint = subprocess.call([str(VENV / "bin" / "ruff"), "check", "."])
        tests = subprocess.call([str(PYTHON), "-m", "pytest", *argv[1:]])
        return tests or lint
    return subprocess.call([str(PYTHON), "-m", "splitnet", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
