"""The repository speaks for itself: its code and docs cite only files it holds, and the pin of
the launcher plugin whose private code it copies is exact."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("analysis", "benchmarks", "conf", "docs", "hydra_plugins", "nondet", "scripts", "tests")
# Built from pieces, so that this file does not match itself.
OUTSIDE = re.compile("DESIGN" + r"\.md|\.\./" + "shared|[Ii]ssue" + r" \d+")


def text_files():
    yield from (ROOT / name for name in ("README.md", "launch.py", "pyproject.toml"))
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".md", ".yaml", ".toml", ".txt"} and "__pycache__" not in path.parts:
                yield path


def test_no_file_cites_a_document_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in text_files() for n, line in
            enumerate(p.read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits


def test_the_copied_launcher_is_pinned_to_the_version_it_copies():
    pin = re.search(r'"hydra-submitit-launcher([^"]*)"', (ROOT / "pyproject.toml").read_text()).group(1)
    constraint = re.search(r"^hydra-submitit-launcher(==\S+)", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    launcher = (ROOT / "hydra_plugins" / "nondet_launcher" / "launcher.py").read_text()
    assert pin == constraint == "==1.2.0" and "hydra-submitit-launcher 1.2.0" in launcher
