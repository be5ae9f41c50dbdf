"""The agent and the file receiver run isolated from the directory sudo leaves them in."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from scmflow.agentcall import parse_agent_output, request_line
from scmflow.agentpayload import agent_argv, serve_argv
from scmflow.session.upload import RECEIVER as _RECEIVER

PLANT = "import pathlib; pathlib.Path({marker!r}).write_text('planted module ran')\n"


def plant(home: Path, marker: Path) -> None:
    """Modules the agent's first lines import, as the login user could leave them in ~."""
    for name in ("base64", "zlib", "zipfile", "json", "hashlib"):
        (home / f"{name}.py").write_text(PLANT.format(marker=str(marker)))


def test_a_module_planted_in_the_working_directory_does_not_run(tmp_path: Path) -> None:
    home, marker = tmp_path / "home", tmp_path / "marker"
    home.mkdir()
    plant(home, marker)
    argv = agent_argv("exists", {"paths": ["/"]})
    env = {**os.environ, "PYTHONPATH": str(home)}
    done = subprocess.run(argv, cwd=home, env=env, capture_output=True, text=True, timeout=60)
    assert parse_agent_output(done.stdout) == {"ok": True, "exists": ["/"]}
    assert not marker.exists(), "a module from the working directory ran inside the agent"


def test_the_serving_agent_is_isolated_too(tmp_path: Path) -> None:
    home, marker = tmp_path / "home", tmp_path / "marker"
    home.mkdir()
    plant(home, marker)
    done = subprocess.run(
        serve_argv(), cwd=home, input=request_line("exists", {"paths": ["/"]}),
        capture_output=True, timeout=60,
    )
    assert b'"ok": true' in done.stdout
    assert not marker.exists()


def test_the_agent_works_from_the_root_directory(tmp_path: Path) -> None:
    # A relative path in a spec would otherwise resolve in the login user's home.
    (tmp_path / "x").write_text("")
    done = subprocess.run(
        agent_argv("exists", {"paths": ["x", str(tmp_path / "x")]}),
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert parse_agent_output(done.stdout)["exists"] == [str(tmp_path / "x")]


def test_the_receiver_changes_to_the_root_directory_before_anything_else() -> None:
    first = [line for line in _RECEIVER.splitlines() if line.strip()][:2]
    assert first == ["import hashlib, os, sys", 'os.chdir("/")']
