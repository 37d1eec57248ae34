"""The documentation against the code: generated pages current, the README short, every command in the
docs accepted by the real parser (nothing runs), every cited script, test and docs path present.

``make docs`` (``mkdocs build --strict``, broken links and anchors included) is run by ``.ci/run``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "scripts" / "gen_reference.py"
# The history page keeps old entries verbatim, old flag names included; every other page is current.
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if p.name != "history.md")]


def test_generated_pages_are_current():
    """The CLI reference, the HTTP API and the tables generated from records match what the code makes now."""
    done = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]


def test_check_fails_on_drift(tmp_path, monkeypatch):
    """--check exits 1 when a committed page differs (here: the CLI reference with a line removed)."""
    sys.path.insert(0, str(GENERATOR.parent))
    try:
        import gen_reference
    finally:
        sys.path.remove(str(GENERATOR.parent))
    pages = gen_reference.pages()
    cli = ROOT / "docs" / "reference" / "cli.md"
    stale = {path: text for path, text in pages.items()}
    stale[cli] = pages[cli].replace("## train\n", "", 1)
    written = {}
    for path, text in stale.items():
        copy = tmp_path / path.relative_to(ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(text)
        written[path] = copy
    monkeypatch.setattr(gen_reference, "ROOT", tmp_path)
    monkeypatch.setattr(gen_reference, "pages", lambda: {written[p]: t for p, t in pages.items()})
    assert gen_reference.main(["--check"]) == 1


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def _commands(text: str):
    """``bertsent ...`` command lines of a page: in fenced shell blocks (continuations joined) and inline code."""
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("bertsent "):
                yield line
    for span in re.findall(r"`(bertsent [^`]+)`", text):
        if " --" in span:  # a whole command, not a command's name in a sentence
            yield span


def _parseable(line: str) -> bool:
    # Placeholders and elisions: ``bertsent train ...``, ``bertsent X --help``, ``[--backend keras]``.
    return not any(mark in line for mark in ("...", " X ", "COMMAND", "[", "FOLDER", "DIR", "|"))


def _doc_commands():
    for page in PAGES:
        for line in _commands(page.read_text()):
            if _parseable(line) and page.name != "cli.md":  # the CLI page is the parser's own output
                yield pytest.param(line, id=f"{page.relative_to(ROOT)}: {line[:60]}")


@pytest.mark.parametrize("line", list(_doc_commands()))
def test_documented_command_parses(line):
    """Every concrete ``bertsent`` command in the README and docs is accepted by the real parser."""
    from bertsent.cli import build_parser

    argv = shlex.split(line)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:
        if e.code != 0:
            pytest.fail(f"the parser refuses: {line}")


def test_cited_paths_exist():
    """Every ``benchmarks/*.py``, ``tests/*.py``, ``scripts/*.py`` and ``docs/...`` path the docs cite exists."""
    cited = re.compile(r"(?<![\w/.~-])((?:benchmarks|tests|scripts)/[\w/]+\.py|docs/[\w./-]+\.(?:md|json|svg))")
    missing = []
    for page in PAGES:
        for path in set(cited.findall(page.read_text())):
            if not (ROOT / path).exists():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, missing
