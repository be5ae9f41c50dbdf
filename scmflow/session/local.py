"""LocalSession: the Session protocol on this machine via subprocess (for the demo and tests)."""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import selectors
import shlex
import signal
import stat
import subprocess
import threading
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from scmflow.errors import RemoteError
from scmflow.session.base import (
    LOG_NAME,
    Command,
    LineStream,
    ProgressFn,
    Runner,
    Stream,
    StreamEnded,
    Upload,
    env_prefix,
)
from scmflow.session.redact import secrets_of

_READ_CHUNK = 1024 * 1024
# How long a stream's process may take to exit once its stdout ended or its stdin closed.
_EXIT_WAIT = 5.0


@dataclass(frozen=True)
class LocalCommand(Command):
    """A command to exec here: its words (runuser'd for another user) and environment."""

    words: tuple[str, ...]
    # the environment goes through exec, not argv, so no value shows in the process list
    environment: dict[str, str] | None


class _ProcessStream(LineStream):
    """A Stream over a local child process."""

    def __init__(self, host: str, process: subprocess.Popen[bytes], argv: tuple[str, ...]) -> None:
        super().__init__(host, argv)
        self._process = process
        self._selector = selectors.DefaultSelector()
        assert process.stdout is not None and process.stderr is not None
        self._selector.register(process.stdout, selectors.EVENT_READ)
        self._selector.register(process.stderr, selectors.EVENT_READ)

    def send(self, data: bytes) -> None:
        """Write to the process's stdin."""
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(data)
            self._process.stdin.flush()
        except OSError:
            raise self._ended() from None

    def _receive(self, wait: float) -> None:
        self._pump(wait)

    def _pump(self, wait: float) -> bool:
        """Take in what the pipes hold, waiting up to `wait` s for some; whether any was ready."""
        ready = self._selector.select(wait)
        for key, _ in ready:
            data = os.read(key.fd, 65536)
            if key.fileobj is self._process.stderr:
                self._keep_stderr(data)
            else:
                self._out += data
            if not data:
                self._selector.unregister(key.fileobj)
                self._stdout_done = self._stdout_done or key.fileobj is self._process.stdout
        return bool(ready)

    def _ended(self) -> StreamEnded:
        try:
            code: int | None = self._process.wait(timeout=_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            code = None
        # what is already in the stderr pipe, without waiting on a child that may hold it open
        while self._selector.get_map() and self._pump(0):
            pass
        return self._end(code)

    def _release(self) -> None:
        """End stdin; a process still busy after a moment is killed with its process group."""
        with suppress(OSError):
            assert self._process.stdin is not None
            self._process.stdin.close()
        try:
            self._process.wait(timeout=_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            with suppress(OSError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._selector.close()
        for pipe in (self._process.stdout, self._process.stderr):
            if pipe is not None:
                pipe.close()


class LocalSession(Runner[LocalCommand]):
    """The Session protocol on this machine via subprocess (for the demo and tests).

    Commands run directly, or via `runuser -u` for another user (root only).
    `install_user` names an account that stands for the current user: the demo's
    configuration names an install user, but installs under the operator's own account.
    """

    def __init__(
        self,
        host: str = "localhost",
        install_user: str | None = None,
        *,
        log: logging.Logger | None = None,
    ) -> None:
        self.host = host
        self._me = pwd.getpwuid(os.geteuid()).pw_name
        self._aliases = {self._me} | ({install_user} if install_user else set())
        self._log = log or logging.getLogger(LOG_NAME)
        self._lock = threading.Lock()
        self._streams: list[_ProcessStream] = []

    def _command(
        self, argv: tuple[str, ...], user: str | None, env: Mapping[str, str] | None
    ) -> LocalCommand:
        words = self._as_user(argv, user)
        line = shlex.join([*env_prefix(env), *words])
        environment = {**os.environ, **env} if env else None
        return LocalCommand(argv, line, secrets_of(None, env), tuple(words), environment)

    def _as_user(self, argv: tuple[str, ...], user: str | None) -> list[str]:
        if user is None or user in self._aliases:
            return list(argv)
        if os.geteuid() != 0:
            raise RemoteError(
                self.host, f"cannot run commands as {user}: only root can switch users locally",
                argv=argv,
            )
        return ["runuser", "-u", user, "--", *argv]

    def _execute(self, command: LocalCommand, stdin: bytes, timeout: float) -> tuple[int, bytes, bytes]:
        process = self._popen(command)
        try:
            out, err = process.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            # the whole process group, so a runuser'd command does not outlive its runuser
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise self._timed_out(command, timeout) from None
        return process.returncode, out, err

    def _start_stream(self, command: LocalCommand) -> Stream:
        self._log_kept_open(command)
        stream = _ProcessStream(self.host, self._popen(command), command.argv)
        with self._lock:
            self._streams = [s for s in self._streams if not s.closed] + [stream]
        return stream

    def _popen(self, command: LocalCommand) -> subprocess.Popen[bytes]:
        program = command.words[0]
        try:
            return subprocess.Popen(
                command.words,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=command.environment,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise RemoteError(
                self.host, f"command not found: {program}", argv=command.argv, exit_code=127
            ) from None
        except PermissionError:
            raise RemoteError(
                self.host, f"permission denied: {program}", argv=command.argv, exit_code=126
            ) from None

    def put_files(self, files: Sequence[Upload], *, progress: ProgressFn | None = None) -> None:
        """Copy each file (see _copy); `progress` counts bytes over all of them."""
        total = sum(Path(f.local).stat().st_size for f in files if Path(f.local).is_file())
        done = 0
        for upload in files:

            def step(sent: int, _size: int, base: int = done) -> None:
                if progress is not None:
                    progress(base + sent, total)

            self._copy(upload, step)
            done += Path(upload.local).stat().st_size

    def _copy(self, upload: Upload, progress: ProgressFn) -> None:
        """Copy a file to a side name, verify it, then rename it in place."""
        local, remote, sha256 = Path(upload.local), upload.remote, upload.sha256
        partial = Path(f"{remote}.scmflow-part")
        try:
            total = local.stat().st_size
            with local.open("rb") as source, partial.open("wb") as target:
                sent = 0
                progress(0, total)
                while chunk := source.read(_READ_CHUNK):
                    target.write(chunk)
                    sent += len(chunk)
                    progress(sent, total)
            partial.chmod(stat.S_IMODE(local.stat().st_mode))
        except OSError as exc:
            raise RemoteError(self.host, f"cannot copy {local} to {remote}: {exc.strerror or exc}") from None
        if sha256 is not None:
            actual = _file_sha256(partial)
            if actual != sha256.lower():
                partial.unlink(missing_ok=True)
                raise RemoteError(
                    self.host, f"checksum mismatch for {remote}: expected sha256 {sha256}, got {actual}"
                )
        partial.replace(remote)

    def close(self) -> None:
        """End the streams still open."""
        with self._lock:
            streams, self._streams = self._streams, []
        for stream in streams:
            stream.close()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
