"""What every command of a step runs with: JAVA_HOME, and its bin/ first on PATH."""

from __future__ import annotations

from pathlib import Path

import pytest

from scmflow.agent.commands import run_command
from scmflow.agent.context import Ctx, use_java


def test_java_home_bin_comes_first_on_path() -> None:
    env = {"PATH": "/usr/local/bin:/usr/bin:/opt/jdk8/bin:/bin"}
    use_java(env, "/opt/jdk8")
    assert env["JAVA_HOME"] == "/opt/jdk8"
    assert env["PATH"] == "/opt/jdk8/bin:/usr/local/bin:/usr/bin:/bin"


def test_every_ctl_call_gets_java_home_first_on_path(tmp_path: Path) -> None:
    ctx = Ctx({"java_home": "/opt/jdk8"})
    done = run_command(ctx, ["sh", "-c", 'command -v java || true; echo "$PATH"'])
    assert done.out.splitlines()[-1].split(":")[0] == "/opt/jdk8/bin"


def test_a_step_given_java_home_in_its_environment_puts_it_first_on_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Steps get JAVA_HOME as an environment variable (agentcall), not in their spec.
    monkeypatch.setenv("JAVA_HOME", "/opt/jdk8")
    monkeypatch.setenv("PATH", "/usr/local/sbin:/usr/bin")
    done = run_command(Ctx({}), ["sh", "-c", 'echo "$PATH"'])
    assert done.out.strip() == "/opt/jdk8/bin:/usr/local/sbin:/usr/bin"
