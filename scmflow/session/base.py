"""Sessions: the protocols the core sees, and the runner both transports build on.

The scheduler and actions only see `Session` and `Stream`; `scmflow.session.ssh` and
`scmflow.session.local` fill them in on top of `Runner` and `LineStream`, which hold what
does not depend on the transport: preparing and timing commands, building results,
logging command lines with their secrets masked, the errors of failed commands, and
reading a stream's output line by line.
"""

from __future__ import annotations

import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, Self, TypeVar

from scmflow.errors import RemoteError, RemoteTimeout
from scmflow.session.redact import clip, redact

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class CommandResult:
    """What one remote command did."""

    host: str
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    duration: float


@dataclass(frozen=True)
class Upload:
    """One file to send: from where, to where, and its sha256 to verify on the host (None: not checked)."""

    local: Path
    remote: str
    sha256: str | None = None


class Stream(Protocol):
    """A long-running command on a host: its stdin, its stdout read line by line."""

    host: str

    def send(self, data: bytes) -> None:
        """Write to the command's stdin."""
        ...

    def read_line(self, timeout: float) -> bytes:
        """The next stdout line; RemoteTimeout after `timeout` s, StreamEnded at its end."""
        ...

    def close(self) -> None:
        """End the command's stdin and let it go (idempotent)."""
        ...


class StreamEnded(RemoteError):
    """A stream's command closed its stdout; carries its exit code (None if unknown) and stderr."""


class Session(Protocol):
    """One host: run argv lists (optionally as another user via sudo) and send files."""

    host: str

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 600.0,
        check: bool = True,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run argv; `user` None = the login user, else via sudo as that user."""
        ...

    def open_stream(
        self, argv: Sequence[str], *, user: str | None = None, env: Mapping[str, str] | None = None
    ) -> Stream:
        """Start argv and keep it running: write to its stdin, read its stdout by lines."""
        ...

    def put(
        self,
        local: Path,
        remote: str,
        *,
        sha256: str | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        """Send a file; with `sha256`, verify it on the host and raise on mismatch."""
        ...

    def put_files(self, files: Sequence[Upload], *, progress: ProgressFn | None = None) -> None:
        """Send several files in one go, each as `put` does; `progress` counts bytes over all."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...



# --------------------------------------------------------------------------- the runner

# The logger a session writes to when given none. Its name shows in the run's log file,
# so it stays what it was before the sessions became a package.
LOG_NAME = "scmflow.remote"
# How much of a stream's stderr is kept for its StreamEnded (the tail).
_STREAM_ERR_KEEP = 65536
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_prefix(env: Mapping[str, str] | None) -> list[str]:
    """`env NAME=VALUE...` to put before a command, or nothing; ValueError on a bad name."""
    if not env:
        return []
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"invalid environment variable name {name!r}")
    return ["env", *(f"{name}={value}" for name, value in env.items())]


@dataclass(frozen=True)
class Command:
    """One command as a transport starts it: the argv asked for, the line it logs, what to mask."""

    argv: tuple[str, ...]
    line: str
    secrets: tuple[str, ...]

    @property
    def shown(self) -> str:
        """The command line with its secrets masked, for logs and errors."""
        return redact(self.line, self.secrets)


CommandT = TypeVar("CommandT", bound=Command)


class Runner(ABC, Generic[CommandT]):
    """The shared half of a Session: `run` and `open_stream` on top of a transport's primitives.

    A subclass says how to turn argv into its own Command (`_command`), how to run one to
    the end (`_execute`) and how to start one that stays open (`_start_stream`); it may
    recognise a refusal that the exit code alone does not explain (`_refusal`).
    """

    host: str
    _log: logging.Logger

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 600.0,
        check: bool = True,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run argv as the login user or as `user`; RemoteError if it fails and `check` is set."""
        command = self._prepare(argv, user, env)
        result = self._result(command, stdin or b"", timeout)
        self._log_result(result, command)
        refusal = self._refusal(command, result)
        if refusal is not None:
            raise refusal
        if check and result.exit_code != 0:
            raise RemoteError(
                result.host,
                f"command failed with exit code {result.exit_code}: {command.shown}",
                argv=result.argv,
                exit_code=result.exit_code,
                stderr=redact(result.stderr, command.secrets),
            )
        return result

    def open_stream(
        self, argv: Sequence[str], *, user: str | None = None, env: Mapping[str, str] | None = None
    ) -> Stream:
        """Start argv and keep it running: write to its stdin, read its stdout by lines."""
        return self._start_stream(self._prepare(argv, user, env))

    def put(
        self, local: Path, remote: str, *, sha256: str | None = None, progress: ProgressFn | None = None
    ) -> None:
        """Send one file (see put_files)."""
        self.put_files([Upload(Path(local), remote, sha256)], progress=progress)

    @abstractmethod
    def put_files(self, files: Sequence[Upload], *, progress: ProgressFn | None = None) -> None:
        """Send several files in one go, each verified on the host when it has a sha256."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    # -- what a transport provides

    @abstractmethod
    def _command(self, argv: tuple[str, ...], user: str | None, env: Mapping[str, str] | None) -> CommandT:
        """argv (not empty) as this transport runs it as `user` with `env`."""

    @abstractmethod
    def _execute(self, command: CommandT, stdin: bytes, timeout: float) -> tuple[int, bytes, bytes]:
        """Run the command to its end: exit code, stdout, stderr; RemoteTimeout past `timeout`."""

    @abstractmethod
    def _start_stream(self, command: CommandT) -> Stream:
        """Start the command and leave it running (calling `_log_kept_open` once it is)."""

    def _refusal(self, command: CommandT, result: CommandResult) -> RemoteError | None:
        """An error that explains the result better than its exit code (none by default)."""
        return None

    # -- helpers for both

    def _prepare(self, argv: Sequence[str], user: str | None, env: Mapping[str, str] | None) -> CommandT:
        words = tuple(argv)
        if not words:
            raise ValueError("empty argv")
        return self._command(words, user, env)

    def _result(self, command: CommandT, stdin: bytes, timeout: float) -> CommandResult:
        started = time.monotonic()
        code, out, err = self._execute(command, stdin, timeout)
        return self._result_of(command, started, code, out, err)

    def _result_of(
        self, command: Command, started: float, code: int, out: bytes, err: bytes
    ) -> CommandResult:
        return CommandResult(
            host=self.host,
            argv=command.argv,
            exit_code=code,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            duration=time.monotonic() - started,
        )

    def _timed_out(self, command: Command, timeout: float) -> RemoteTimeout:
        return RemoteTimeout(
            self.host, f"command did not finish within {timeout:g} s: {command.shown}", argv=command.argv
        )

    def _log_result(self, result: CommandResult, command: Command) -> None:
        if not self._log.isEnabledFor(logging.DEBUG):
            return
        self._log.debug(
            "[%s] $ %s -> exit %d in %.3fs | stdout: %s | stderr: %s",
            result.host,
            command.shown,
            result.exit_code,
            result.duration,
            redact(clip(result.stdout), command.secrets),
            redact(clip(result.stderr), command.secrets),
        )

    def _log_kept_open(self, command: Command) -> None:
        self._log.debug("[%s] $ %s (kept open)", self.host, command.shown)


# --------------------------------------------------------------------------- streams


def _pop_line(buffer: bytearray) -> bytes | None:
    """Take the first complete line (with its newline) off `buffer`, if there is one."""
    cut = buffer.find(b"\n")
    if cut < 0:
        return None
    line = bytes(buffer[: cut + 1])
    del buffer[: cut + 1]
    return line


class LineStream(ABC):
    """The shared half of a Stream: buffering its output and cutting it into lines.

    A subclass takes in what its command printed (`_receive`), writes to it (`send`),
    explains its end (`_ended`) and lets it go (`_release`).
    """

    def __init__(self, host: str, argv: tuple[str, ...]) -> None:
        self.host = host
        self.closed = False
        self._argv = argv
        self._out = bytearray()
        self._err = bytearray()
        self._stdout_done = False

    @abstractmethod
    def send(self, data: bytes) -> None:
        """Write to the command's stdin."""

    def read_line(self, timeout: float) -> bytes:
        """The next stdout line; RemoteTimeout after `timeout` s, StreamEnded at its end."""
        deadline = time.monotonic() + timeout
        while True:
            line = _pop_line(self._out)
            if line is not None:
                return line
            if self._stdout_done:
                raise self._ended()
            left = deadline - time.monotonic()
            if left <= 0:
                raise RemoteTimeout(self.host, f"no answer within {timeout:g} s", argv=self._argv)
            self._receive(min(left, 1.0))

    def close(self) -> None:
        """End the command's stdin and let it go (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._release()

    @abstractmethod
    def _receive(self, wait: float) -> None:
        """Take in output arriving within about `wait` s; set `_stdout_done` at stdout's end."""

    @abstractmethod
    def _ended(self) -> RemoteError:
        """Why the stream ended: StreamEnded, or a more telling error."""

    @abstractmethod
    def _release(self) -> None:
        """End the command's stdin and free what the stream holds."""

    def _keep_stderr(self, data: bytes) -> None:
        """Add to the stderr kept for StreamEnded, keeping only its tail."""
        self._err += data
        del self._err[:-_STREAM_ERR_KEEP]

    def _end(self, code: int | None) -> StreamEnded:
        return StreamEnded(
            self.host, "the command ended", argv=self._argv, exit_code=code,
            stderr=self._err.decode(errors="replace"),
        )
