"""SSHSession: the Session protocol over one SSH connection per host, and connect_all."""

from __future__ import annotations

import errno
import logging
import shlex
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from scmflow.errors import ConnectError, RemoteError, RemoteTimeout, ScmflowError
from scmflow.fanout import DEFAULT_PARALLEL_SSH, each_host
from scmflow.session.base import (
    LOG_NAME,
    Command,
    CommandResult,
    LineStream,
    ProgressFn,
    Runner,
    Session,
    Stream,
    Upload,
    env_prefix,
)
from scmflow.session.redact import secrets_of
from scmflow.session.sudo import SudoPrompt, sudo_refusal
from scmflow.session.targets import SSHOptions, SSHTarget
from scmflow.session.transport import BastionPool, WatchedSocket, handshake
from scmflow.session.upload import SEND_STALL, LocalReadError, receiver_argv, stream_files, verdict_error

_POLL = 0.05
# How often stderr is looked at while waiting for sudo's prompt.
_PROMPT_POLL = 0.005
# After a stream's stdout ends, how long its exit status may take to arrive.
_EXIT_WAIT = 5.0
# What a broken channel or connection raises.
_CHANNEL_ERRORS = (paramiko.SSHException, EOFError, OSError)


@dataclass(frozen=True)
class SSHCommand(Command):
    """A command line for the host: the sudo prompt to answer (if any) and the sudo user."""

    prompt: SudoPrompt | None
    sudo_user: str | None


def _answer_sudo_prompt(channel: paramiko.Channel, prompt: SudoPrompt, deadline: float) -> bytes:
    """Send the password if, and only if, sudo prompts before the command starts.

    sudo prints the prompt only when it wants a password; when it runs the command
    straight away (a NOPASSWD rule) the `started` marker comes first, and the password
    must not reach the command's stdin. Returns the stderr read meanwhile, markers cut.
    """
    asked, started = prompt.marker.encode(), prompt.started.encode()
    seen = b""
    sent = False
    while started not in seen:
        if not sent and asked in seen:
            channel.sendall(prompt.password.encode() + b"\n")
            sent, seen = True, seen.replace(asked, b"", 1)
            continue
        if sent and asked in seen:
            break  # asked again: the password was wrong, and is not sent twice
        if channel.recv_stderr_ready():
            seen += channel.recv_stderr(4096)
        elif channel.recv_ready() or channel.exit_status_ready() or time.monotonic() > deadline:
            break
        else:
            time.sleep(_PROMPT_POLL)
    return prompt.clean(seen)


class SSHSession(Runner[SSHCommand]):
    """One authenticated SSH connection per host, reused for every command and transfer.

    Commands are quoted with shlex.join and run as the login user or, via sudo, as `user`.
    """

    def __init__(
        self,
        target: SSHTarget,
        options: SSHOptions,
        transport: paramiko.Transport,
        sock: WatchedSocket,
        log: logging.Logger,
    ) -> None:
        self.host = target.host
        self.target = target
        self.options = options
        self._transport = transport
        self._sock = sock
        self._log = log
        self._channels = threading.BoundedSemaphore(max(1, options.max_channels))
        self._lock = threading.Lock()
        self._sudo_needs_password: dict[str, bool] = {}
        self._lost: str | None = None
        self._closed = False

    @classmethod
    def connect(
        cls,
        target: SSHTarget,
        options: SSHOptions | None = None,
        *,
        log: logging.Logger | None = None,
        bastions: BastionPool | None = None,
    ) -> SSHSession:
        """Open, verify and authenticate one connection; RemoteError/HostKeyError on failure.

        The target is taken as given (see `scmflow.sshconfig.resolve_target` for ssh_config);
        a target with `via` is reached through its bastions, shared through `bastions`.
        """
        options = options or SSHOptions()
        log = log or logging.getLogger(LOG_NAME)
        bastions = bastions or BastionPool(options, log)
        started = time.monotonic()
        transport, sock = handshake(target, options, log, bastions)
        log.debug(
            "[%s] connected to %s@%s:%d%s in %.3fs",
            target.host, target.user, target.connect_address, target.port,
            target.route[len(target.host):], time.monotonic() - started,
        )
        return cls(target, options, transport, sock, log)


    # -- commands

    def _command(
        self, argv: tuple[str, ...], user: str | None, env: Mapping[str, str] | None
    ) -> SSHCommand:
        """The command line for argv as `user`, the sudo prompt to answer (if any), the sudo user."""
        inner = [*env_prefix(env), *argv]
        prompt = None
        sudo_user = user if user is not None and user != self.target.user else None
        password = self.target.password
        if sudo_user is not None and password and self._sudo_with_password(sudo_user):
            prompt = SudoPrompt.new(password)
            inner = prompt.wrap(sudo_user, inner)
        elif sudo_user is not None:
            inner = ["sudo", "-n", "-u", sudo_user, "-H", "--", *inner]
        return SSHCommand(argv, shlex.join(inner), secrets_of(password, env), prompt, sudo_user)

    def _sudo_with_password(self, user: str) -> bool:
        """Whether sudo to `user` must be fed the password (probed once per user)."""
        if self.target.user == "root" or not self.target.password:
            return False
        with self._lock:
            cached = self._sudo_needs_password.get(user)
        if cached is not None:
            return cached
        # -k ignores cached credentials, so a zero exit means a NOPASSWD rule: then the
        # password must not be sent, or it would land on the command's stdin.
        line = shlex.join(["sudo", "-n", "-k", "-u", user, "-H", "--", "true"])
        probe = SSHCommand(("sudo", "-n", "true"), line, secrets_of(self.target.password, None), None, None)
        started = time.monotonic()
        code, out, err = self._exchange(probe, b"", self.options.connect_timeout)
        result = self._result_of(probe, started, code, out, err)
        self._log_result(result, probe)
        needed = result.exit_code != 0
        with self._lock:
            self._sudo_needs_password[user] = needed
        return needed

    def _execute(self, command: SSHCommand, stdin: bytes, timeout: float) -> tuple[int, bytes, bytes]:
        try:
            return self._exchange(command, stdin, timeout)
        except RemoteError as exc:
            self._log.debug("[%s] $ %s -> %s", self.host, command.shown, exc.message)
            raise

    def _exchange(self, command: SSHCommand, stdin: bytes, timeout: float) -> tuple[int, bytes, bytes]:
        """Run one command on its own channel, feeding stdin and reading both streams.

        With a sudo prompt, the password goes in only once sudo has asked for it.
        """
        argv, prompt = command.argv, command.prompt
        deadline = time.monotonic() + timeout
        with self._channels:
            channel = self._open_channel(argv)
            try:
                try:
                    channel.exec_command(command.line)
                    asked = _answer_sudo_prompt(channel, prompt, deadline) if prompt else b""
                    code, out, err = self._pump(channel, stdin, deadline)
                    if prompt is not None:
                        err = prompt.clean(asked + err)
                except _CHANNEL_ERRORS as exc:
                    raise self._connection_error(argv, exc) from None
                if code is None:
                    raise self._timed_out(command, timeout)
            finally:
                channel.close()
        if code == -1 and not self._transport.is_active():
            raise self._connection_error(argv, None)
        return code, out, err

    def _refusal(self, command: SSHCommand, result: CommandResult) -> RemoteError | None:
        """sudo's refusal to run the command, which exits 1 like many a command."""
        if command.sudo_user is None or result.exit_code != 1:
            return None
        refusal = sudo_refusal(result.stderr, self.target.user, command.sudo_user)
        return None if refusal is None else RemoteError(self.host, refusal, argv=command.argv, exit_code=1)

    def _start_stream(self, command: SSHCommand) -> Stream:
        """Start the command on a channel of its own that stays open until the stream is closed."""
        if command.prompt is not None:
            # A wrong password would leave sudo waiting for another try on the open stdin:
            # try it once on a command of its own, which explains a refusal.
            self.run(["true"], user=command.sudo_user, timeout=self.options.connect_timeout)
        self._channels.acquire()
        try:
            channel = self._open_channel(command.argv)
            try:
                channel.exec_command(command.line)
                if command.prompt is not None:
                    deadline = time.monotonic() + self.options.connect_timeout
                    _answer_sudo_prompt(channel, command.prompt, deadline)
            except _CHANNEL_ERRORS as exc:
                channel.close()
                raise self._connection_error(command.argv, exc) from None
        except BaseException:
            self._channels.release()
            raise
        self._log_kept_open(command)
        return _ChannelStream(self, channel, command.argv, command.sudo_user)

    def _open_channel(self, argv: tuple[str, ...]) -> paramiko.Channel:
        if not self._transport.is_active():
            raise self._connection_error(argv, None)
        try:
            return self._transport.open_session(timeout=self.options.connect_timeout)
        except _CHANNEL_ERRORS as exc:
            raise self._connection_error(argv, exc) from None

    @staticmethod
    def _pump(
        channel: paramiko.Channel, stdin: bytes, deadline: float
    ) -> tuple[int | None, bytes, bytes]:
        """Feed stdin and collect output until exit; exit code None means the deadline passed."""
        channel.settimeout(_POLL)
        pending = stdin
        if not pending:
            channel.shutdown_write()
        out: list[bytes] = []
        err: list[bytes] = []
        stdout_open = True
        while True:
            if pending and channel.send_ready():
                sent = channel.send(pending[:65536])
                pending = pending[sent:]
                if not pending:
                    channel.shutdown_write()
            if stdout_open:
                try:
                    data = channel.recv(65536)
                except TimeoutError:
                    data = None
                if data == b"":
                    stdout_open = False
                elif data:
                    out.append(data)
            else:
                channel.status_event.wait(_POLL)
            while channel.recv_stderr_ready():
                err.append(channel.recv_stderr(65536))
            if not stdout_open and channel.exit_status_ready():
                while channel.recv_stderr_ready():
                    err.append(channel.recv_stderr(65536))
                return channel.recv_exit_status(), b"".join(out), b"".join(err)
            if time.monotonic() > deadline:
                return None, b"".join(out), b"".join(err)

    def _connection_error(self, argv: tuple[str, ...], exc: BaseException | None) -> RemoteError:
        """Explain a lost connection: silent peer, closed by the host, or something else."""
        with self._lock:
            if self._lost is None and not self._transport.is_active():
                self._lost = self._why_lost()
            reason = self._lost or f"SSH channel failed: {exc}"
        return RemoteError(self.host, reason, argv=argv)

    def _why_lost(self) -> str:
        """One line on why the transport died, from what the socket saw."""
        error = self._sock.error
        if self._closed:
            return "connection already closed"
        if error is not None and error.errno == errno.ECONNRESET:
            return "connection reset by the host"
        if self._sock.peer_closed and error is None:
            return "connection closed by the host"
        cause = self._transport.get_exception()
        if error is None and isinstance(cause, paramiko.SSHException):
            return f"SSH connection failed: {cause}"
        # the kernel gave up on unacknowledged data (TCP_USER_TIMEOUT), or the route vanished
        limit = self.options.keepalive_interval * self.options.keepalive_count_max
        detail = f": {error.strerror}" if error is not None and error.strerror else ""
        return f"host stopped answering (nothing acknowledged for {limit:g} s){detail}; connection dropped"

    # -- files

    # -- files

    def put_files(self, files: Sequence[Upload], *, progress: ProgressFn | None = None) -> None:
        """Stream files to side names, each hashed on the host as it lands, verified, renamed in place.

        One exec channel and one round trip for all of them (see upload.RECEIVER); each file
        keeps its mode. The first file that fails ends the transfer with a RemoteError.
        """
        if not files:
            return
        argv, sizes = receiver_argv(self.host, files)
        started = time.monotonic()
        code, out, err = self._send_through(argv, sizes, progress)
        if code is None:
            raise RemoteTimeout(self.host, f"no answer within {SEND_STALL:g} s after sending", argv=argv)
        if code == -1 and not self._transport.is_active():
            raise self._connection_error(argv, None)
        failure = verdict_error(self.host, files, code, out, err)
        if failure is not None:
            raise failure
        self._log.debug(
            "[%s] sent %d files (%d bytes) in %.3fs",
            self.host, len(files), sum(size for _, size in sizes), time.monotonic() - started,
        )

    def _send_through(
        self, argv: tuple[str, ...], files: Sequence[tuple[Path, int]], progress: ProgressFn | None
    ) -> tuple[int | None, bytes, bytes]:
        """Run argv with the files as its stdin: its exit code (None: no answer in time) and output."""
        with self._channels:
            channel = self._open_channel(argv)
            try:
                try:
                    channel.exec_command(shlex.join(argv))
                    stream_files(channel, files, progress)
                except TimeoutError:
                    raise RemoteTimeout(
                        self.host, f"the host took no data for {SEND_STALL:g} s", argv=argv
                    ) from None
                except LocalReadError as exc:
                    raise RemoteError(self.host, str(exc)) from None
                except _CHANNEL_ERRORS:
                    # the receiver stopped reading (its output says why) or the connection dropped
                    if not self._transport.is_active():
                        raise self._connection_error(argv, None) from None
                try:
                    return self._pump(channel, b"", time.monotonic() + SEND_STALL)
                except _CHANNEL_ERRORS as exc:
                    raise self._connection_error(argv, exc) from None
            finally:
                channel.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._closed = True
        self._transport.close()


class _ChannelStream(LineStream):
    """A Stream over one SSH channel of a session; holds one of its channel slots."""

    def __init__(
        self, session: SSHSession, channel: paramiko.Channel, argv: tuple[str, ...], sudo_user: str | None
    ) -> None:
        super().__init__(session.host, argv)
        self._session = session
        self._channel = channel
        self._sudo_user = sudo_user

    def send(self, data: bytes) -> None:
        """Write to the command's stdin."""
        try:
            self._channel.sendall(data)
        except _CHANNEL_ERRORS as exc:
            raise self._session._connection_error(self._argv, exc) from None

    def _receive(self, wait: float) -> None:
        self._channel.settimeout(min(wait, _POLL))
        try:
            data: bytes | None = self._channel.recv(65536)
        except TimeoutError:
            data = None
        except _CHANNEL_ERRORS as exc:
            raise self._session._connection_error(self._argv, exc) from None
        self._drain_stderr()
        if data == b"":
            self._stdout_done = True
        elif data:
            self._out += data

    def _drain_stderr(self) -> None:
        while self._channel.recv_stderr_ready():
            self._keep_stderr(self._channel.recv_stderr(65536))

    def _ended(self) -> RemoteError:
        self._channel.status_event.wait(_EXIT_WAIT)
        if not self._channel.exit_status_ready() and not self._session._transport.is_active():
            return self._session._connection_error(self._argv, None)
        code = self._channel.recv_exit_status() if self._channel.exit_status_ready() else None
        self._drain_stderr()
        if self._sudo_user is not None and code == 1:
            stderr = self._err.decode(errors="replace")
            refusal = sudo_refusal(stderr, self._session.target.user, self._sudo_user)
            if refusal is not None:
                return RemoteError(self.host, refusal, argv=self._argv, exit_code=1)
        return self._end(code)

    def _release(self) -> None:
        """Close the channel: the command sees the end of its stdin."""
        try:
            self._channel.close()
        finally:
            self._session._channels.release()


def connect_all(
    targets: Sequence[SSHTarget],
    options: SSHOptions | None = None,
    *,
    parallel: int = DEFAULT_PARALLEL_SSH,
    log: logging.Logger | None = None,
) -> dict[str, Session]:
    """Connect to every target at once; one ScmflowError naming each host that failed.

    Targets behind the same bastion share one connection to it (see BastionPool).
    """
    names = [target.host for target in targets]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConnectError(f"hosts listed more than once: {', '.join(twice)}")
    options = options or SSHOptions()
    log = log or logging.getLogger(LOG_NAME)
    bastions = BastionPool(options, log)
    sessions: dict[str, Session] = {}
    failures: list[tuple[str, ScmflowError]] = []
    by_host = {target.host: target for target in targets}
    try:
        outcomes = each_host(
            names, lambda host: SSHSession.connect(by_host[host], options, log=log, bastions=bastions),
            parallel=parallel,
        )
        for host, outcome in outcomes.items():
            if outcome.result is not None:
                sessions[host] = outcome.result
        for host, outcome in outcomes.items():
            if isinstance(outcome.error, ScmflowError):
                failures.append((host, outcome.error))
            elif outcome.error is not None:
                raise outcome.error
        if failures:
            raise ConnectError(
                f"cannot connect to {len(failures)} of {len(targets)} hosts: " + _group_failures(failures)
            )
    except BaseException:
        for session in sessions.values():
            session.close()
        raise
    return sessions


def _group_failures(failures: Sequence[tuple[str, ScmflowError]]) -> str:
    """`[h1] why; [h2, h3] why`: hosts failing for the same reason (a bastion) share one entry."""
    groups: dict[str, list[str]] = {}
    for host, exc in failures:
        prefix = f"[{host}] "
        reason = exc.message[len(prefix):] if exc.message.startswith(prefix) else exc.message
        groups.setdefault(reason, []).append(host)
    return "; ".join(f"[{', '.join(hosts)}] {reason}" for reason, hosts in groups.items())


# --------------------------------------------------------------------------- local
