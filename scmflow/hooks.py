"""Operator hooks: commands run on the control machine around a pair's upgrade.

upgrade.cfg names up to three command lines (`hookPreStop`, `hookPostVerify`,
`hookPostRollback`); each is split like a shell would split it but never run through a
shell. A hook runs in a session of its own with stdin closed, the run's facts in `SCM_*`
environment variables and every password-like variable removed; on timeout its whole
process group is killed. Only the last `OUTPUT_TAIL_BYTES` of its output are kept.

Nothing here prints or decides what a failure means: `run_hook` returns a `HookResult`
and the caller records it and chooses whether to stop.
"""

from __future__ import annotations

import os
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scmflow.errors import ScmflowError
from scmflow.events import HookEvent, HookRunning, RollbackHookFailed
from scmflow.plan import Pair
from scmflow.records import hook_record

PHASES = ("pre_stop", "post_verify", "post_rollback")
DEFAULT_TIMEOUT = 300
MIN_TIMEOUT = 1
MAX_TIMEOUT = 86400
OUTPUT_TAIL_BYTES = 2048

# Substrings (upper case) of environment variable names never handed to a hook.
SECRET_MARKERS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN")

_READ_CHUNK = 65536
# How often the output loop looks whether the hook has exited while something else (a
# background grandchild) still holds the pipe open; bounds the extra wait in that case.
_POLL_INTERVAL = 0.05
_LAST_LINE_MAX = 200


# --- the configured commands ----------------------------------------------------------


def parse_command(text: str) -> tuple[str, ...] | None:
    """The argv of a hook command line; None for an empty line.

    ValueError when shlex cannot split it (an unterminated quote, a trailing backslash)
    or when its program is empty or an argument holds a NUL byte.
    """
    if not text.strip():
        return None
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot split the command line like a shell: {str(exc).lower()}") from exc
    argv = tuple(words)
    check_argv(argv)
    return argv


def check_argv(argv: Sequence[object]) -> None:
    """ValueError unless `argv` is a non-empty sequence of strings with a program name."""
    if not argv:
        raise ValueError("the command line is empty")
    if not all(isinstance(word, str) for word in argv):
        raise ValueError("the command line holds a word that is not a string")
    if not argv[0]:
        raise ValueError("the command line names no program")
    if any("\0" in str(word) for word in argv):
        raise ValueError("the command line contains a NUL byte")


def check_timeout(value: object) -> None:
    """ValueError unless `value` is an int (not a bool) from MIN_TIMEOUT to MAX_TIMEOUT."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"the hook timeout {value!r} is not an integer")
    if not MIN_TIMEOUT <= value <= MAX_TIMEOUT:
        raise ValueError(f"the hook timeout {value} is not {MIN_TIMEOUT}-{MAX_TIMEOUT} seconds")


def _check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise ValueError(f"unknown hook phase '{phase}' (expected one of {', '.join(PHASES)})")


@dataclass(frozen=True)
class Hooks:
    """The hook commands of a run (argv tuples, None for no hook) and their timeout."""

    pre_stop: tuple[str, ...] | None = None
    post_verify: tuple[str, ...] | None = None
    post_rollback: tuple[str, ...] | None = None
    timeout: int = DEFAULT_TIMEOUT

    def argv(self, phase: str) -> tuple[str, ...] | None:
        """The command for `phase` (one of PHASES), None when none is configured."""
        _check_phase(phase)
        value: tuple[str, ...] | None = getattr(self, phase)
        return value

    @property
    def configured(self) -> bool:
        """Whether any hook command is set."""
        return any(self.argv(phase) is not None for phase in PHASES)

    def to_record(self) -> dict[str, object]:
        """Plain data for the status file header: lists of strings (or None) and an int."""
        record: dict[str, object] = {
            phase: None if (argv := self.argv(phase)) is None else list(argv) for phase in PHASES
        }
        record["timeout"] = self.timeout
        return record

    @classmethod
    def from_record(cls, record: object) -> Hooks:
        """Inverse of `to_record`; ValueError on a missing key or a malformed value."""
        if not isinstance(record, Mapping):
            raise ValueError("the hooks record is not a map")
        commands: dict[str, tuple[str, ...] | None] = {}
        for phase in PHASES:
            if phase not in record:
                raise ValueError(f"the hooks record lacks '{phase}'")
            commands[phase] = _argv_from_record(phase, record[phase])
        if "timeout" not in record:
            raise ValueError("the hooks record lacks 'timeout'")
        timeout = record["timeout"]
        check_timeout(timeout)
        return cls(
            pre_stop=commands["pre_stop"],
            post_verify=commands["post_verify"],
            post_rollback=commands["post_rollback"],
            timeout=timeout,
        )


def _argv_from_record(phase: str, value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    # msgpack may hand arrays back as tuples or lists, depending on how it is called.
    if not isinstance(value, list | tuple):
        raise ValueError(f"the {phase} hook in the record is not a list")
    try:
        check_argv(value)
    except ValueError as exc:
        raise ValueError(f"the {phase} hook in the record is malformed: {exc}") from exc
    return tuple(str(word) for word in value)


# --- the environment ------------------------------------------------------------------


@dataclass(frozen=True)
class HookContext:
    """The facts of the (host, service) pair a hook runs for, handed over as SCM_* vars."""

    host: str
    ssh_port: int
    service: str
    old_version: str | None
    new_version: str
    ports: tuple[int, ...]
    status_file: Path
    run_id: str


def is_secret_name(name: str) -> bool:
    """Whether an environment variable name looks like it holds a password or token."""
    upper = name.upper()
    return any(marker in upper for marker in SECRET_MARKERS)


def hook_env(
    phase: str,
    ctx: HookContext,
    base_env: Mapping[str, str],
    secret_names: Iterable[str] = (),
) -> dict[str, str]:
    """The environment of a hook: `base_env` without secrets, plus the SCM_* variables.

    Dropped: every variable whose name contains PASSWORD, PASSWD, SECRET or TOKEN (any
    case) and every name in `secret_names` (the `Password env:NAME` cells of the config),
    so that no password reaches an operator's script.
    """
    _check_phase(phase)
    named = set(secret_names)
    env = {
        name: value
        for name, value in base_env.items()
        if name not in named and not is_secret_name(name)
    }
    env.update(
        {
            "SCM_HOST": ctx.host,
            "SCM_SSH_PORT": str(ctx.ssh_port),
            "SCM_SERVICE": ctx.service,
            "SCM_OLD_VERSION": ctx.old_version or "",
            "SCM_NEW_VERSION": ctx.new_version,
            "SCM_PORTS": ",".join(str(port) for port in ctx.ports),
            "SCM_PHASE": phase,
            "SCM_STATUS_FILE": str(ctx.status_file),
            "SCM_RUN_ID": ctx.run_id,
        }
    )
    return env


# --- running --------------------------------------------------------------------------


@dataclass(frozen=True)
class HookResult:
    """What one hook run came to; `exit_code` None when it could not start or timed out."""

    phase: str
    argv: tuple[str, ...]
    exit_code: int | None
    duration: float
    output_tail: str
    timed_out: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the hook started, finished in time and exited 0."""
        return self.error is None and not self.timed_out and self.exit_code == 0

    def to_record(self) -> dict[str, object]:
        """The detail of a status-file record: plain strings, numbers, a list and bools."""
        return {
            "phase": self.phase,
            "argv": list(self.argv),
            "exit_code": self.exit_code,
            "duration": self.duration,
            "output_tail": self.output_tail,
            "timed_out": self.timed_out,
            "error": self.error,
        }


class _Tail:
    """The last `limit` bytes written to it, however much that is."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._data = bytearray()

    def add(self, chunk: bytes) -> None:
        self._data += chunk
        if len(self._data) > self._limit:
            del self._data[: -self._limit]

    def text(self) -> str:
        return self._data.decode("utf-8", errors="replace")


def run_hook(
    phase: str,
    argv: Sequence[str],
    ctx: HookContext,
    *,
    timeout: float,
    base_env: Mapping[str, str],
    secret_names: Iterable[str] = (),
) -> HookResult:
    """Run one hook on the control machine and wait up to `timeout` seconds for it.

    No shell, stdin from /dev/null, stdout and stderr into one pipe of which only the last
    OUTPUT_TAIL_BYTES are kept. The hook leads a session of its own, so on timeout (or
    if this call is interrupted) its whole process group is killed. A program that is
    missing, fails or times out is a result, never an exception.
    """
    command = tuple(argv)
    env = hook_env(phase, ctx, base_env, secret_names)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return HookResult(phase, command, None, time.monotonic() - started, "", error=reason)
    tail = _Tail(OUTPUT_TAIL_BYTES)
    try:
        timed_out = _collect(proc, tail, started + timeout)
    finally:
        if proc.returncode is None:
            _kill_group(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    duration = time.monotonic() - started
    exit_code = None if timed_out else proc.returncode
    return HookResult(phase, command, exit_code, duration, tail.text(), timed_out=timed_out)


def _collect(proc: subprocess.Popen[bytes], tail: _Tail, deadline: float) -> bool:
    """Read the hook's output into `tail` until it exits; True when the deadline passed.

    The hook exiting ends the wait even if a background child of it still holds the
    pipe open: the run must not hang on a grandchild the hook chose to leave behind.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            if selector.select(min(remaining, _POLL_INTERVAL)):
                chunk = os.read(fd, _READ_CHUNK)
                if chunk:
                    tail.add(chunk)
                    continue
                return _wait(proc, deadline)  # EOF: only the exit status is left
            if proc.poll() is not None:
                # It may have written its last words between the select and the poll.
                _drain(selector, fd, tail)
                return False


def _drain(selector: selectors.BaseSelector, fd: int, tail: _Tail) -> None:
    while selector.select(0):
        chunk = os.read(fd, _READ_CHUNK)
        if not chunk:
            return
        tail.add(chunk)


def _wait(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        return True
    return False


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # start_new_session made the hook a process group leader: its pid is the group id,
    # and the group is still ours to kill because the leader has not been reaped yet.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# --- messages -------------------------------------------------------------------------


def describe(result: HookResult) -> str:
    """One line for the operator, e.g. `pre_stop hook /x/drain.sh exited 3 after 0.4 s: why`."""
    program = result.argv[0] if result.argv else "?"
    head = f"{result.phase} hook {_printable(program)}"
    if result.error is not None:
        return f"{head} could not start: {_printable(result.error)}"
    took = _seconds(result.duration)
    if result.timed_out:
        return f"{head} timed out after {took} s"
    code = result.exit_code
    if code is not None and code < 0:
        outcome = f"was killed by signal {_signal_name(-code)}"
    else:
        outcome = f"exited {code}"
    last = _last_line(result.output_tail)
    return f"{head} {outcome} after {took} s" + (f": {last}" if last else "")


def _seconds(duration: float) -> str:
    return f"{duration:.1f}" if duration < 10 else f"{duration:.0f}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        return ""
    last = _printable(lines[-1])
    return last if len(last) <= _LAST_LINE_MAX else last[: _LAST_LINE_MAX - 3] + "..."


def _printable(text: str) -> str:
    # The message goes to a terminal and a log line: no escape sequences, no line breaks.
    return "".join(ch if ch.isprintable() else "?" for ch in text)


class PairHooks:
    """A run's hooks bound to its pairs: each run is recorded, and a failure is said once.

    `record` appends a status-file record; `emit` gets an event per hook run, and one for a
    failed post_rollback hook (a failed pre_stop or post_verify fails its pair).
    """

    def __init__(
        self,
        hooks: Hooks,
        *,
        record: Callable[[dict[str, Any]], object],
        emit: Callable[[HookEvent], None],
        run_id: str,
        status_file: Path,
        ssh_ports: Mapping[str, int],
        base_env: Mapping[str, str],
        secret_names: Iterable[str] = (),
    ) -> None:
        self.hooks = hooks
        self._record = record
        self._emit = emit
        self._run_id = run_id
        self._status_file = status_file
        self._ssh_ports = dict(ssh_ports)
        self._base_env = dict(base_env)
        self._secret_names = tuple(secret_names)

    def run(self, phase: str, pair: Pair) -> HookResult | None:
        """Run `phase`'s hook for `pair` (None when none is configured) and record the result."""
        argv = self.hooks.argv(phase)
        if argv is None:
            return None
        context = HookContext(
            host=pair.host,
            ssh_port=self._ssh_ports.get(pair.host, 22),
            service=pair.service,
            old_version=pair.old_version,
            new_version=pair.new_version,
            ports=pair.running_ports,
            status_file=self._status_file,
            run_id=self._run_id,
        )
        self._emit(HookRunning(phase, pair, tuple(argv)))
        result = run_hook(
            phase,
            argv,
            context,
            timeout=self.hooks.timeout,
            base_env=self._base_env,
            secret_names=self._secret_names,
        )
        detail = result.to_record()
        self._record(hook_record(pair, detail))
        if not result.ok and phase == "post_rollback":
            # nothing else says it: the pair is rolled back, and the run goes on
            self._emit(RollbackHookFailed(pair, describe(result)))
        return result


class HookFailed(ScmflowError):
    """A pre_stop or post_verify hook failed: the pair fails as if one of its steps had."""


def dry_run_hook_lines(hooks: Hooks, phase: str) -> list[str]:
    """The line a dry run prints for `phase`'s hook, if one is configured."""
    argv = hooks.argv(phase)
    return [] if argv is None else [f"hook:    {phase}: {shlex.join(argv)} (on the control machine)"]
