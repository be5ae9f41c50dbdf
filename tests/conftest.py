"""Fixtures shared by unit and end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scmflow import sandbox
from scmflow.statuskey import ENV_VAR

RELEASE_VERSIONS = ("3.1.2", "3.2.2")
# The README's test command runs the suite on several workers (pytest-xdist, whole modules
# per worker), which take modules in collection order: the longest end-to-end modules go
# first, so that none of them starts last and runs on alone, and the short unit modules
# come last to fill the gaps.
LONGEST_MODULES = (
    "test_crash.py", "test_rollback.py", "test_agent.py", "test_locks.py",
    "test_status_e2e.py", "test_upgrade.py", "test_contract.py", "test_serving.py",
    "test_hooks_e2e.py", "test_secrets.py", "test_demo.py", "test_ctl_failures.py",
    "test_faults.py", "test_root_safety.py", "test_status_trust.py", "test_fidelity.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest end-to-end modules first, then the other end-to-end ones, then unit tests."""

    def rank(item: pytest.Item) -> int:
        if "e2e" not in item.path.parts:
            return len(LONGEST_MODULES) + 1
        name = item.path.name
        return LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=rank)


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
