"""Fixtures shared by unit and end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scmflow import sandbox
from scmflow.statuskey import ENV_VAR

RELEASE_VERSIONS = ("3.1.2", "3.2.2")


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Unpacked sandbox releases 3.1.2 and 3.2.2 (release roots), built once per session."""
    base = tmp_path_factory.mktemp("releases")
    base.chmod(0o755)
    out = {v: sandbox.build_release(base / v, v) for v in RELEASE_VERSIONS}
    yield out


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each command from an empty directory, so nothing lands in the checkout.

    HOME is a fresh directory beside it: the operator's status key is looked for there.
    """
    monkeypatch.chdir(tmp_path)
    home = tmp_path.parent / f"{tmp_path.name}-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(ENV_VAR, raising=False)
    return tmp_path
