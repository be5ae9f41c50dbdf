"""Operator hooks: the command line, the environment, and running real processes."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from scmflow.hooks import (
    DEFAULT_TIMEOUT,
    OUTPUT_TAIL_BYTES,
    PHASES,
    HookContext,
    HookResult,
    Hooks,
    describe,
    hook_env,
    parse_command,
    run_hook,
)

CTX = HookContext(
    host="h1.example",
    ssh_port=2222,
    service="gateway",
    old_version="3.2.1",
    new_version="3.6.0",
    ports=(8080, 8081),
    status_file=Path("/var/lib/scm/run.status"),
    run_id="20240501-abc",
)
BASE = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C"}


def script(tmp_path: Path, name: str, body: str) -> Path:
    """An executable Python script in tmp_path."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


def run(argv: list[str] | tuple[str, ...], timeout: float = 5, **kwargs: object) -> HookResult:
    return run_hook("pre_stop", argv, CTX, timeout=timeout, base_env=BASE, **kwargs)  # type: ignore[arg-type]


def gone(pid: int, within: float = 3.0) -> bool:
    """Whether `pid` has ended (absent, or a zombie waiting for a reaper) within `within` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.02)
    return False


# --- command lines --------------------------------------------------------------------


def test_command_lines_split_like_a_shell() -> None:
    line = """/opt/my\\ hooks/drain.sh --pool 'web front' "x y" a"b"c"""
    assert parse_command(line) == ("/opt/my hooks/drain.sh", "--pool", "web front", "x y", "abc")
    assert parse_command("drain") == ("drain",)
    # Shell syntax is only quoting: no expansion, no operators.
    assert parse_command("echo $HOME; rm *") == ("echo", "$HOME;", "rm", "*")


@pytest.mark.parametrize("line", ["", "   ", "\t"])
def test_an_empty_command_line_means_no_hook(line: str) -> None:
    assert parse_command(line) is None


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("/bin/drain 'web", "no closing quotation"),
        ('/bin/drain "web', "no closing quotation"),
        ("/bin/drain web\\", "no escaped character"),
        ("'' --pool web", "names no program"),
        ("/bin/drain a\0b", "NUL byte"),
    ],
)
def test_bad_command_lines(line: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_command(line)


# --- the Hooks record -----------------------------------------------------------------


def test_hooks_default_to_none_and_300_seconds() -> None:
    hooks = Hooks()
    assert hooks.timeout == DEFAULT_TIMEOUT == 300
    assert all(hooks.argv(phase) is None for phase in PHASES)
    assert not hooks.configured


def test_hooks_argv_by_phase() -> None:
    hooks = Hooks(pre_stop=("/a",), post_verify=("/b", "x"), post_rollback=None, timeout=9)
    assert hooks.argv("pre_stop") == ("/a",)
    assert hooks.argv("post_verify") == ("/b", "x")
    assert hooks.argv("post_rollback") is None
    assert hooks.configured
    with pytest.raises(ValueError, match="unknown hook phase"):
        hooks.argv("timeout")


def test_hooks_record_round_trip() -> None:
    hooks = Hooks(pre_stop=("/a", "b c"), post_verify=None, post_rollback=("z",), timeout=42)
    record = hooks.to_record()
    assert record == {
        "pre_stop": ["/a", "b c"],
        "post_verify": None,
        "post_rollback": ["z"],
        "timeout": 42,
    }
    assert Hooks.from_record(record) == hooks
    # msgpack may give arrays back as tuples
    assert Hooks.from_record({**record, "pre_stop": ("/a", "b c")}) == hooks
    assert Hooks.from_record(Hooks().to_record()) == Hooks()


GOOD = {"pre_stop": ["/a"], "post_verify": None, "post_rollback": None, "timeout": 300}


@pytest.mark.parametrize(
    "record",
    [
        None,
        ["/a"],
        {k: v for k, v in GOOD.items() if k != "timeout"},
        {k: v for k, v in GOOD.items() if k != "post_verify"},
        {**GOOD, "timeout": "300"},
        {**GOOD, "timeout": True},
        {**GOOD, "timeout": 0},
        {**GOOD, "timeout": 86401},
        {**GOOD, "timeout": 3.5},
        {**GOOD, "pre_stop": "/a"},
        {**GOOD, "pre_stop": []},
        {**GOOD, "pre_stop": [""]},
        {**GOOD, "pre_stop": ["/a", 3]},
        {**GOOD, "post_rollback": {"argv": ["/a"]}},
    ],
)
def test_malformed_hooks_records_are_refused(record: object) -> None:
    with pytest.raises(ValueError):
        Hooks.from_record(record)


# --- the environment ------------------------------------------------------------------


def test_hook_env_carries_every_scm_variable() -> None:
    env = hook_env("post_verify", CTX, BASE)
    assert env == {
        **BASE,
        "SCM_HOST": "h1.example",
        "SCM_SSH_PORT": "2222",
        "SCM_SERVICE": "gateway",
        "SCM_OLD_VERSION": "3.2.1",
        "SCM_NEW_VERSION": "3.6.0",
        "SCM_PORTS": "8080,8081",
        "SCM_PHASE": "post_verify",
        "SCM_STATUS_FILE": "/var/lib/scm/run.status",
        "SCM_RUN_ID": "20240501-abc",
    }


def test_hook_env_without_old_version_or_ports() -> None:
    ctx = HookContext("h", 22, "daemon", None, "3.6.0", (), Path("/s"), "r")
    env = hook_env("pre_stop", ctx, {})
    assert env["SCM_OLD_VERSION"] == ""
    assert env["SCM_PORTS"] == ""


def test_hook_env_drops_password_like_and_named_variables() -> None:
    base = {
        **BASE,
        "SCM_SSH_PWD": "s3cret",  # named by a `Password env:SCM_SSH_PWD` cell
        "DB_PASSWORD": "x",
        "my_passwd": "x",
        "ApiSecretKey": "x",
        "GITHUB_TOKEN": "x",
        "HOME": "/home/op",
    }
    env = hook_env("pre_stop", CTX, base, secret_names=["SCM_SSH_PWD"])
    for name in ("SCM_SSH_PWD", "DB_PASSWORD", "my_passwd", "ApiSecretKey", "GITHUB_TOKEN"):
        assert name not in env
    assert env["HOME"] == "/home/op"
    assert "s3cret" not in env.values()


def test_hook_env_refuses_an_unknown_phase() -> None:
    with pytest.raises(ValueError, match="unknown hook phase"):
        hook_env("pre_start", CTX, BASE)


def test_a_running_hook_sees_the_environment_and_its_arguments(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    hook = script(
        tmp_path,
        "dump.py",
        "import json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'env': dict(os.environ)}}, open({str(out)!r}, 'w'))\n",
    )
    base = {**BASE, "SCM_SSH_PWD": "s3cret", "LDAP_PASSWORD": "x", "KEEP": "1"}
    argv = parse_command(f"{hook} 'web front' \"a b\" plain")
    assert argv is not None
    result = run_hook("post_rollback", argv, CTX, timeout=5, base_env=base, secret_names=("SCM_SSH_PWD",))
    assert result.ok, describe(result)
    seen = json.loads(out.read_text())
    assert seen["argv"] == ["web front", "a b", "plain"]
    env = seen["env"]
    assert env["SCM_PHASE"] == "post_rollback"
    assert env["SCM_HOST"] == "h1.example"
    assert env["SCM_PORTS"] == "8080,8081"
    assert env["KEEP"] == "1"
    assert "SCM_SSH_PWD" not in env
    assert "LDAP_PASSWORD" not in env


# --- running --------------------------------------------------------------------------


def test_exit_code_output_and_duration() -> None:
    result = run(["sh", "-c", "echo starting; sleep 0.2; echo 'pool busy' >&2; exit 3"])
    assert result.exit_code == 3
    assert not result.ok
    assert not result.timed_out
    assert result.error is None
    assert 0.2 <= result.duration < 3
    assert result.output_tail == "starting\npool busy\n"
    assert describe(result).startswith("pre_stop hook sh exited 3 after 0.")
    assert describe(result).endswith(" s: pool busy")


def test_a_successful_hook() -> None:
    result = run(["true"])
    assert result.ok
    assert result.exit_code == 0
    assert result.output_tail == ""
    assert describe(result).startswith("pre_stop hook true exited 0 after ")


def test_stdin_is_closed() -> None:
    # cat would wait forever on an inherited terminal; from /dev/null it ends at once
    result = run(["cat"], timeout=3)
    assert result.ok
    assert result.duration < 2


def test_a_loud_hook_keeps_only_the_last_2_kib(tmp_path: Path) -> None:
    hook = script(
        tmp_path,
        "loud.py",
        "import sys\nsys.stdout.write('x' * (1024 * 1024))\nsys.stdout.write('\\nTHE END\\n')\n",
    )
    result = run([str(hook)])
    assert result.ok, describe(result)
    assert len(result.output_tail.encode()) == OUTPUT_TAIL_BYTES
    assert result.output_tail.endswith("x\nTHE END\n")
    assert describe(result).endswith(": THE END")


def test_a_timeout_kills_the_hook_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    result = run(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; echo waiting; wait"], timeout=0.5)
    assert time.monotonic() - started < 3
    assert result.timed_out
    assert result.exit_code is None
    assert not result.ok
    assert result.output_tail == "waiting\n"
    assert 0.5 <= result.duration < 3
    assert gone(int(pidfile.read_text())), "the grandchild sleep survived the timeout"
    assert describe(result) == "pre_stop hook sh timed out after 0.5 s"


def test_a_hook_that_leaves_a_child_holding_the_pipe_does_not_hang(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    result = run(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; echo bye"], timeout=10)
    pid = int(pidfile.read_text())
    try:
        assert result.ok
        assert result.duration < 2
        assert result.output_tail == "bye\n"
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_missing_program_is_a_result_not_an_exception(tmp_path: Path) -> None:
    result = run([str(tmp_path / "no-such-hook"), "x"])
    assert result.error == "No such file or directory"
    assert result.exit_code is None
    assert not result.ok
    assert describe(result) == (
        f"pre_stop hook {tmp_path / 'no-such-hook'} could not start: No such file or directory"
    )


def test_a_program_not_on_path(tmp_path: Path) -> None:
    result = run_hook("pre_stop", ["scmflow-no-such-hook"], CTX, timeout=5, base_env={"PATH": str(tmp_path)})
    assert result.error == "No such file or directory"


def test_a_file_that_is_not_executable(tmp_path: Path) -> None:
    hook = tmp_path / "drain.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    result = run([str(hook)])
    assert result.error == "Permission denied"
    assert "could not start: Permission denied" in describe(result)


def test_a_hook_killed_by_a_signal() -> None:
    result = run(["sh", "-c", "echo dying; kill -9 $$"])
    assert result.exit_code == -signal.SIGKILL
    assert not result.ok
    assert " was killed by signal SIGKILL after " in describe(result)


def test_describe_keeps_to_one_printable_line() -> None:
    result = HookResult(
        "post_verify",
        ("/x/check",),
        1,
        12.34,
        "first\n\x1b[31mred\x1b[0m\ttab\n\n",
    )
    assert describe(result) == "post_verify hook /x/check exited 1 after 12 s: ?[31mred?[0m?tab"


def test_result_record() -> None:
    result = HookResult("pre_stop", ("/a", "b"), None, 1.5, "out", timed_out=True)
    assert result.to_record() == {
        "phase": "pre_stop",
        "argv": ["/a", "b"],
        "exit_code": None,
        "duration": 1.5,
        "output_tail": "out",
        "timed_out": True,
        "error": None,
    }


# --- a run's hooks bound to its pairs ------------------------------------------------------


def test_pair_hooks_run_the_configured_phase_record_it_and_say_so(tmp_path: Path) -> None:
    from scmflow.cli.render import render
    from scmflow.hooks import PairHooks, dry_run_hook_lines
    from scmflow.plan import Pair, PlannedNode

    seen = tmp_path / "seen"
    body = (
        "import os, pathlib\n"
        f"pathlib.Path({str(seen)!r}).write_text("
        "'{SCM_PHASE} {SCM_HOST}:{SCM_SSH_PORT} {SCM_PORTS}\\n'.format(**os.environ))\n"
    )
    hook = script(tmp_path, "hook.py", body)
    hooks = Hooks(pre_stop=(str(hook),), timeout=5)
    records: list[dict[str, object]] = []
    lines: list[str] = []
    bound = PairHooks(
        hooks,
        record=records.append,
        emit=lambda event: lines.append(render(event).text),
        run_id="run-1",
        status_file=tmp_path / "status",
        ssh_ports={"h1": 2201},
        base_env=BASE,
    )
    pair = Pair(
        "h1", "gateway", "GATEWAY", "3.1.2", "3.2.2", (PlannedNode(8080, True), PlannedNode(8081, False))
    )

    assert bound.run("post_verify", pair) is None  # not configured
    result = bound.run("pre_stop", pair)

    assert result is not None and result.ok
    assert seen.read_text() == "pre_stop h1:2201 8080\n"
    assert records == [{"kind": "hook", "host": "h1", "service": "gateway", "detail": result.to_record()}]
    assert lines == [f"Running the pre_stop hook for GATEWAY on h1: {hook}"]
    assert dry_run_hook_lines(hooks, "pre_stop") == [f"hook:    pre_stop: {hook} (on the control machine)"]
    assert dry_run_hook_lines(hooks, "post_rollback") == []
