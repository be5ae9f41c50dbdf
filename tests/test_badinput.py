"""The bad-input corpus (tests/badinput/cases.toml): scm.py refuses every case cleanly.

A refusal is: exactly one `[ERROR]` line, on stderr and last there, containing the case's
text; the case's exit code; no traceback anywhere; and nothing changed: the case's own
directory (inputs, status dir) byte for byte. The cases that reach the test hosts are in
tests/e2e/test_badinput_hosts.py; the corpus, its recipes and these checks are in
tests/badinput_corpus.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.badinput_corpus import (
    CASES,
    CORPUS,
    Case,
    RecipeContext,
    assert_refused,
    expand,
    params,
    run_scm,
    snapshot,
)


def test_corpus_is_big_and_covers_every_area() -> None:
    prefixes = {c.name.split("-")[0] for c in CASES}
    assert {"cfg", "opt", "status", "release", "plan"} <= prefixes
    assert len(CASES) >= 30
    assert sum(c.hosts for c in CASES) >= 5
    referenced = {arg.split("/configs/")[1] for c in CASES for arg in c.argv if "/configs/" in arg}
    on_disk = {p.name for p in (CORPUS / "configs").glob("*.cfg")}
    assert on_disk == referenced, "every config file is used by a case, and every case's file exists"


@pytest.mark.parametrize("case", params(hosts=False))
def test_refused_before_any_host(case: Case, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    ctx = RecipeContext(tmp=tmp_path)
    argv = expand(case, ctx, {})
    before = snapshot(tmp_path)
    done = run_scm(argv, cwd=tmp_path, home=home, env=case.env)
    assert_refused(case, argv, done)
    assert snapshot(tmp_path) == before, "a refused run must not create or change any file"


def _first_case_of_each_area() -> list[Case]:
    firsts: dict[str, Case] = {}
    for case in CASES:
        if not case.hosts and not case.bug:
            firsts.setdefault(case.name.split("-")[0], case)
    return list(firsts.values())


def _unstamped(text: str) -> str:
    return re.sub(r"\d{4}-\d{2}-\d{2}-\d{2}:\d{2}:\d{2}", "<stamp>", text)


@pytest.mark.parametrize("case", _first_case_of_each_area(), ids=lambda c: c.name)
def test_a_forked_run_is_a_fresh_python_run(case: Case, tmp_path: Path) -> None:
    """The cases above run forked from a server that imported scm.py's libraries already
    (run_scm); a fresh `python scm.py` must answer each area's first case identically."""
    home = tmp_path / "home"
    home.mkdir()
    argv = expand(case, RecipeContext(tmp=tmp_path), {})
    fresh = run_scm(argv, cwd=tmp_path, home=home, env=case.env, forked=False)
    forked = run_scm(argv, cwd=tmp_path, home=home, env=case.env)
    assert forked.returncode == fresh.returncode
    assert _unstamped(forked.stderr) == _unstamped(fresh.stderr)
    assert _unstamped(forked.stdout) == _unstamped(fresh.stdout)
