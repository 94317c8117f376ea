"""The README and docs/ name files, links and tests that exist: a page that outlives a
rename is caught here, not by a reader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "bench" / "RESULTS.md",
                ROOT / "bench" / "results" / "README.md"])
# a repository path: a top-level folder, then path characters; out=... names what a command writes
PATH = re.compile(r"(?<![\w/.=-])((?:splitnet|tests|conf|bench|launch|docker|docs)/[\w./<>*{}$-]*)")
LINK = re.compile(r"\]\(([^)#]+)(?:#[^)]*)?\)")


def _named_paths(text: str) -> set[str]:
    found = {m.rstrip(".") for m in PATH.findall(text)}
    # placeholders (<case>, *, {a,b}, $VAR, NAME) stand for a file; they name none
    return {p for p in found if not set(p) & set("<>*{}$") and not re.search(r"/[A-Z]{2,}\b", p)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_and_link_a_page_names_exists(page):
    text = page.read_text()
    missing = sorted(p for p in _named_paths(text) if not (ROOT / p).exists())
    missing += sorted(link for link in LINK.findall(text)
                      if "://" not in link and not (page.parent / link).exists())
    assert not missing, f"{page.relative_to(ROOT)} names what the repository lacks: {missing}"


def test_the_architecture_names_tests_that_exist():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = {name for name in re.findall(r"`(test_\w+)(?:\[[^\]]*\])?`", text)}
    defined = {m for f in (ROOT / "tests").glob("test_*.py") for m in re.findall(r"def (test_\w+)", f.read_text())}
    assert named and not named - defined, sorted(named - defined)


def test_the_readme_fits_in_250_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_module_the_architecture_names_exists():
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = [row for row in text.splitlines() if row.startswith("| `splitnet/")]
    missing = []
    for row in rows:
        package = ROOT / re.match(r"\| `(splitnet/[\w/.]*)`", row).group(1)
        folder = package if package.is_dir() else package.parent
        missing += [f"{folder.relative_to(ROOT)}/{m}" for m in re.findall(r"`(\w+\.py)`", row)
                    if not (folder / m).exists() and not (ROOT / "splitnet" / m).exists()]
    picture = text.split("```")[1]
    missing += [m for m in re.findall(r"\b(\w+\.py)\b", picture) if not list((ROOT / "splitnet").rglob(m))]
    assert rows and not missing, missing
