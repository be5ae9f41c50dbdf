"""Sessions: run commands and send files on one host, over SSH or locally.

The scheduler and actions only see the `Session` protocol; `SSHSession` and
`LocalSession` fill it in.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import logging
import os
import pwd
import re
import shlex
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import paramiko

from scmflow.errors import HostKeyError, RemoteError, RemoteTimeout, ScmflowError

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

    def close(self) -> None:
        """Release the connection."""
        ...


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class SSHTarget:
    """Where and as whom to log in; the password never shows in repr or logs."""

    host: str
    port: int = 22
    user: str = "root"
    password: str | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        hidden = "None" if self.password is None else "'******'"
        return f"SSHTarget(host={self.host!r}, port={self.port}, user={self.user!r}, password={hidden})"


def _default_known_hosts() -> tuple[Path, ...]:
    return (Path.home() / ".ssh" / "known_hosts", Path("/etc/ssh/ssh_known_hosts"))


@dataclass(frozen=True)
class SSHOptions:
    """How to connect: host-key files and policy, timeouts, keepalives, client keys.

    A host that stops answering (link cut, machine frozen) is noticed without waiting for
    a command's own timeout: paramiko sends a keepalive after `keepalive_interval` idle
    seconds, and the kernel drops a connection whose data stays unacknowledged for
    `keepalive_interval * keepalive_count_max` seconds (TCP_USER_TIMEOUT). A command in
    flight, or started after the host went silent, therefore fails with RemoteError
    within `dead_peer_bound` seconds. Connecting gives up after `connect_timeout`
    (each of TCP connect, SSH handshake and authentication is bounded by it).
    """

    known_hosts: tuple[Path, ...] = field(default_factory=_default_known_hosts)
    accept_new_host_keys: bool = False
    connect_timeout: float = 15.0
    keepalive_interval: float = 5.0
    keepalive_count_max: int = 3
    key_filenames: tuple[Path, ...] = ()
    use_agent: bool = True
    # None: hash a new known_hosts entry when the file already holds hashed ones
    hash_known_hosts: bool | None = None
    # below OpenSSH's default MaxSessions (10), leaving room for the SFTP channel
    max_channels: int = 8

    @property
    def dead_peer_bound(self) -> float:
        """Seconds within which a command on a silent host fails (see the class docstring)."""
        return self.keepalive_interval * (self.keepalive_count_max + 1) + 2.0


# --------------------------------------------------------------------------- host keys


@dataclass(frozen=True)
class KnownKey:
    """One known_hosts line that matches a host."""

    path: Path
    line: int
    key: paramiko.PKey
    revoked: bool = False


def known_host_name(host: str, port: int) -> str:
    """The name OpenSSH files a host under: `host`, or `[host]:port` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """The key's SHA256 fingerprint as OpenSSH prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _pattern_matches(patterns: str, name: str) -> bool:
    """OpenSSH host-pattern matching: hashed names, comma lists, wildcards, negation."""
    if patterns.startswith("|1|"):
        try:
            return paramiko.HostKeys.hash_host(name, patterns) == patterns
        except (ValueError, AssertionError, binascii.Error):
            return False
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        glob = pattern[1:] if negated else pattern
        regex = re.escape(glob).replace(r"\*", ".*").replace(r"\?", ".")
        if re.fullmatch(regex, name, flags=re.IGNORECASE):
            if negated:
                return False
            matched = True
    return matched


def _parse_known_line(text: str) -> tuple[str, str, paramiko.PKey] | None:
    """(marker, host patterns, key) of one known_hosts line, or None if it holds no usable key."""
    fields = text.split()
    marker = ""
    if fields and fields[0].startswith("@"):
        marker, fields = fields[0], fields[1:]
    if len(fields) < 3:
        return None
    try:
        key = paramiko.PKey.from_type_string(fields[1], base64.b64decode(fields[2]))
    except Exception:  # noqa: BLE001 - unknown key types and bad base64 are skipped, as ssh does
        return None
    return marker, fields[0], key


def find_known_keys(paths: Sequence[Path], name: str) -> list[KnownKey]:
    """Every key recorded for `name` in the given known_hosts files (missing files skipped)."""
    found = []
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for number, raw in enumerate(lines, 1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            parsed = _parse_known_line(text)
            if parsed is None:
                continue
            marker, patterns, key = parsed
            if marker not in ("", "@revoked") or not _pattern_matches(patterns, name):
                continue
            found.append(KnownKey(path, number, key, revoked=marker == "@revoked"))
    return found


def _wants_hashed(path: Path, preference: bool | None) -> bool:
    if preference is not None:
        return preference
    try:
        return any(line.startswith("|1|") for line in path.read_text(errors="replace").splitlines())
    except FileNotFoundError:
        return False


def record_host_key(path: Path, name: str, key: paramiko.PKey, *, hashed: bool | None = None) -> None:
    """Append `name key` to a known_hosts file, as OpenSSH writes it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shown = paramiko.HostKeys.hash_host(name) if _wants_hashed(path, hashed) else name
    line = f"{shown} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size > 0:
            with open(path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                if existing.read(1) != b"\n":
                    line = "\n" + line
        # one write() with O_APPEND, so parallel connects never interleave lines
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def check_host_key(host: str, port: int, key: paramiko.PKey, options: SSHOptions) -> bool:
    """Accept a known key; refuse a changed or unknown one; True when a new key was recorded."""
    name = known_host_name(host, port)
    offered = f"{key.get_name()} key {fingerprint(key)}"
    known = find_known_keys(options.known_hosts, name)
    for entry in known:
        if entry.revoked and entry.key.asbytes() == key.asbytes():
            where = f"{entry.path}:{entry.line}"
            raise HostKeyError(host, f"host key for {name} ({offered}) is marked revoked in {where}")
    valid = [entry for entry in known if not entry.revoked]
    if any(entry.key.asbytes() == key.asbytes() for entry in valid):
        return False
    if valid:
        old = valid[0]
        raise HostKeyError(
            host,
            f"host key for {name} has changed: the host now offers {offered}, but {old.path}:{old.line} "
            f"records {old.key.get_name()} key {fingerprint(old.key)}; refusing to connect (possible "
            f"man-in-the-middle); if the host was reinstalled, verify the new key, then remove the old "
            f"one with `ssh-keygen -R '{name}'`",
        )
    if not options.accept_new_host_keys:
        raise HostKeyError(
            host,
            f"unknown host key for {name}: {offered}; check the fingerprint, then run "
            f"`ssh-keyscan -p {port} {host} >> ~/.ssh/known_hosts` or use --accept-new-host-keys",
        )
    if not options.known_hosts:
        raise HostKeyError(host, f"cannot record the host key for {name}: no known_hosts file configured")
    record_host_key(options.known_hosts[0], name, key, hashed=options.hash_known_hosts)
    return True


def _host_key_types(known: Sequence[KnownKey]) -> list[str]:
    """Host-key algorithms to ask for first, so the server offers the key we know."""
    types: list[str] = []
    for entry in known:
        name = entry.key.get_name()
        wanted = ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if name == "ssh-rsa" else [name]
        types += [t for t in wanted if t not in types]
    return types


# --------------------------------------------------------------------------- shared helpers

_SECRET_ENV = re.compile(r"PASS|SECRET|TOKEN|CREDENTIAL", re.IGNORECASE)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LOG_CLIP = 2000
_MASK = "******"
_READ_CHUNK = 1024 * 1024


def _env_prefix(env: Mapping[str, str] | None) -> list[str]:
    if not env:
        return []
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"invalid environment variable name {name!r}")
    return ["env", *(f"{name}={value}" for name, value in env.items())]


def _secrets_of(password: str | None, env: Mapping[str, str] | None) -> tuple[str, ...]:
    found = [password] if password else []
    found += [value for name, value in (env or {}).items() if _SECRET_ENV.search(name) and value]
    return tuple(found)


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, _MASK)
    return text


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _LOG_CLIP else text[:_LOG_CLIP] + f"... ({len(text)} chars)"


def _log_command(
    log: logging.Logger, result: CommandResult, shown: str, secrets: Sequence[str]
) -> None:
    if not log.isEnabledFor(logging.DEBUG):
        return
    log.debug(
        "[%s] $ %s -> exit %d in %.3fs | stdout: %s | stderr: %s",
        result.host,
        _redact(shown, secrets),
        result.exit_code,
        result.duration,
        _redact(_clip(result.stdout), secrets),
        _redact(_clip(result.stderr), secrets),
    )


def _failed(result: CommandResult, shown: str, secrets: Sequence[str]) -> RemoteError:
    return RemoteError(
        result.host,
        f"command failed with exit code {result.exit_code}: {_redact(shown, secrets)}",
        argv=result.argv,
        exit_code=result.exit_code,
        stderr=_redact(result.stderr, secrets),
    )


# --------------------------------------------------------------------------- SSH

_SUDO_REFUSALS = (
    (re.compile(r"incorrect password attempt|^Sorry, try again", re.MULTILINE), "wrong password for {login}"),
    (
        re.compile(r"is not in the sudoers file|is not allowed to execute|may not run sudo"),
        "{login} may not run commands as {user} (sudoers)",
    ),
    (
        re.compile(r"^sudo: (a password is required|no password was provided|a terminal is required)",
                   re.MULTILINE),
        "{login} needs a password for sudo and none is configured",
    ),
)
_SFTP_WINDOW = 64 * 1024 * 1024
_SFTP_PACKET = 64 * 1024
_POLL = 0.05
_TCP_CLOSE = 7  # tcpi_state of a connection the kernel has torn down (linux/tcp_states.h)


def _sudo_refusal(stderr: str, login: str, user: str) -> str | None:
    """Why sudo refused to run the command, judged from its stderr, or None."""
    head = "\n".join(stderr.splitlines()[:6])
    for pattern, reason in _SUDO_REFUSALS:
        if pattern.search(head):
            return f"sudo as {user} refused: " + reason.format(login=login, user=user)
    return None


def _tune_socket(sock: socket.socket, options: SSHOptions) -> None:
    """Latency and dead-peer settings (see SSHOptions for the bound they give)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    interval = max(1, int(options.keepalive_interval))
    for name, value in (
        ("TCP_KEEPIDLE", interval),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", max(1, options.keepalive_count_max)),
        ("TCP_USER_TIMEOUT", int(options.keepalive_interval * options.keepalive_count_max * 1000)),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class _WatchedSocket:
    """The transport's socket, remembering whether the peer closed it or the network failed."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.peer_closed = False
        self.error: OSError | None = None

    def recv(self, size: int) -> bytes:
        """socket.recv, noting an orderly close by the peer."""
        try:
            data = self._sock.recv(size)
        except TimeoutError:
            raise
        except OSError as exc:
            self.error = self.error or exc
            raise
        if not data:
            # A connection the kernel gave up on (TCP_USER_TIMEOUT) also reads as
            # end-of-file, but it is in state CLOSE, while a peer's FIN leaves CLOSE_WAIT.
            if self._tcp_state() == _TCP_CLOSE:
                self.error = self.error or OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
            else:
                self.peer_closed = True
        return data

    def _tcp_state(self) -> int | None:
        option = getattr(socket, "TCP_INFO", None)
        if option is None:
            return None
        try:
            return self._sock.getsockopt(socket.IPPROTO_TCP, option, 8)[0]
        except OSError:
            return None

    def send(self, data: bytes) -> int:
        """socket.send, noting a network failure."""
        try:
            return self._sock.send(data)
        except TimeoutError:
            raise
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _open_socket(target: SSHTarget, options: SSHOptions) -> socket.socket:
    """A TCP connection to the target, with each failure turned into a one-line RemoteError."""
    where = f"port {target.port}"
    try:
        return socket.create_connection((target.host, target.port), timeout=options.connect_timeout)
    except socket.gaierror as exc:
        raise RemoteError(target.host, f"cannot resolve host name {target.host!r}: {exc.strerror}") from None
    except ConnectionRefusedError:
        raise RemoteError(target.host, f"connection refused on {where} (is sshd running there?)") from None
    except TimeoutError:
        raise RemoteTimeout(
            target.host, f"no answer on {where} within {options.connect_timeout:g} s"
        ) from None
    except OSError as exc:
        raise RemoteError(target.host, f"cannot connect to {where}: {exc.strerror or exc}") from None


def _client_keys(options: SSHOptions, log: logging.Logger) -> Iterator[paramiko.PKey]:
    """Explicit key files (or the default identities), then the agent's keys."""
    ssh_dir = Path.home() / ".ssh"
    paths = options.key_filenames or tuple(
        ssh_dir / name for name in ("id_ed25519", "id_ecdsa", "id_rsa")
    )
    for path in paths:
        if not path.is_file():
            continue
        try:
            yield paramiko.PKey.from_path(path)
        except (paramiko.SSHException, OSError, ValueError) as exc:
            log.debug("skipping key %s: %s", path, exc)
    if options.use_agent and os.environ.get("SSH_AUTH_SOCK"):
        agent = paramiko.Agent()
        try:
            yield from agent.get_keys()
        finally:
            agent.close()


def _authenticate(
    transport: paramiko.Transport, target: SSHTarget, options: SSHOptions, log: logging.Logger
) -> None:
    """Public keys first, then the password; RemoteError naming the user if nothing works."""
    tried: list[str] = []
    allowed: list[str] | None = None
    for key in _client_keys(options, log):
        if allowed is not None and "publickey" not in allowed:
            break
        if "publickey" not in tried:
            tried.append("publickey")
        try:
            transport.auth_publickey(target.user, key)
        except paramiko.BadAuthenticationType as exc:
            allowed = list(exc.allowed_types)
        except paramiko.AuthenticationException:
            continue
        except paramiko.SSHException as exc:
            raise RemoteError(target.host, f"authentication as {target.user} failed: {exc}") from None
        if transport.is_authenticated():
            return
    if target.password and (allowed is None or "password" in allowed):
        tried.append("password")
        try:
            transport.auth_password(target.user, target.password, fallback=True)
        except paramiko.AuthenticationException:
            pass
        except paramiko.SSHException as exc:
            raise RemoteError(target.host, f"authentication as {target.user} failed: {exc}") from None
        if transport.is_authenticated():
            return
    methods = ", ".join(tried) or "no method: no key file, agent key or password available"
    raise RemoteError(
        target.host,
        f"authentication failed for user {target.user} (tried {methods}); check the key, "
        "the password and the user name",
    )


def _handshake(
    target: SSHTarget, options: SSHOptions, log: logging.Logger
) -> tuple[paramiko.Transport, _WatchedSocket]:
    """Connect, verify the host key and log in; the transport is closed on any failure."""
    sock = _open_socket(target, options)
    _tune_socket(sock, options)
    watched = _WatchedSocket(sock)
    transport = paramiko.Transport(cast(socket.socket, watched))
    try:
        transport.banner_timeout = options.connect_timeout
        transport.handshake_timeout = options.connect_timeout
        transport.auth_timeout = options.connect_timeout
        name = known_host_name(target.host, target.port)
        preferred = _host_key_types(find_known_keys(options.known_hosts, name))
        security = transport.get_security_options()
        available = list(security.key_types)
        first = [t for t in preferred if t in available]
        security.key_types = first + [t for t in available if t not in first]
        try:
            transport.start_client(timeout=options.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise RemoteError(target.host, f"SSH handshake on port {target.port} failed: {exc}") from None
        if check_host_key(target.host, target.port, transport.get_remote_server_key(), options):
            log.info("[%s] recorded new host key in %s", target.host, options.known_hosts[0])
        _authenticate(transport, target, options, log)
        transport.set_keepalive(max(1, int(options.keepalive_interval)))
        return transport, watched
    except BaseException:
        transport.close()
        raise


def _send_file(sftp: paramiko.SFTPClient, local: Path, remote: str, progress: ProgressFn | None) -> None:
    """Write local to remote with pipelined SFTP writes (no round trip per block), keeping its mode."""
    total = local.stat().st_size
    with local.open("rb") as source, sftp.open(remote, "wb") as target:
        target.set_pipelined(True)
        sent = 0
        if progress is not None:
            progress(0, total)
        while chunk := source.read(_READ_CHUNK):
            target.write(chunk)
            sent += len(chunk)
            if progress is not None:
                progress(sent, total)
    sftp.chmod(remote, stat.S_IMODE(local.stat().st_mode))


class SSHSession:
    """One authenticated SSH connection per host, reused for every command and transfer."""

    def __init__(
        self,
        target: SSHTarget,
        options: SSHOptions,
        transport: paramiko.Transport,
        sock: _WatchedSocket,
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
        self._transfer_lock = threading.Lock()
        self._sftp: paramiko.SFTPClient | None = None
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
    ) -> SSHSession:
        """Open, verify and authenticate one connection; RemoteError/HostKeyError on failure."""
        options = options or SSHOptions()
        log = log or logging.getLogger(__name__)
        started = time.monotonic()
        transport, sock = _handshake(target, options, log)
        log.debug(
            "[%s] connected to %s@%s:%d in %.3fs",
            target.host, target.user, target.host, target.port, time.monotonic() - started,
        )
        return cls(target, options, transport, sock, log)

    def __enter__(self) -> SSHSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands

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
        """Run argv (quoted with shlex.join) as the login user or, via sudo, as `user`."""
        argv = tuple(argv)
        if not argv:
            raise ValueError("empty argv")
        inner = [*_env_prefix(env), *argv]
        prefix = b""
        sudo_user = user if user is not None and user != self.target.user else None
        password = self.target.password
        if sudo_user is not None and password and self._sudo_with_password(sudo_user):
            inner = ["sudo", "-S", "-k", "-p", "", "-u", sudo_user, "-H", "--", *inner]
            prefix = password.encode() + b"\n"
        elif sudo_user is not None:
            inner = ["sudo", "-n", "-u", sudo_user, "-H", "--", *inner]
        command = shlex.join(inner)
        secrets = _secrets_of(self.target.password, env)
        try:
            result = self._execute(argv, command, prefix + (stdin or b""), timeout, secrets)
        except RemoteError as exc:
            self._log.debug("[%s] $ %s -> %s", self.host, _redact(command, secrets), exc.message)
            raise
        _log_command(self._log, result, command, secrets)
        if sudo_user is not None and result.exit_code == 1:
            refusal = _sudo_refusal(result.stderr, self.target.user, sudo_user)
            if refusal is not None:
                raise RemoteError(self.host, refusal, argv=argv, exit_code=1)
        if check and result.exit_code != 0:
            raise _failed(result, command, secrets)
        return result

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
        probe = shlex.join(["sudo", "-n", "-k", "-u", user, "-H", "--", "true"])
        secrets = _secrets_of(self.target.password, None)
        result = self._execute(("sudo", "-n", "true"), probe, b"", self.options.connect_timeout, secrets)
        _log_command(self._log, result, probe, secrets)
        needed = result.exit_code != 0
        with self._lock:
            self._sudo_needs_password[user] = needed
        return needed

    def _execute(
        self,
        argv: tuple[str, ...],
        command: str,
        stdin: bytes,
        timeout: float,
        secrets: Sequence[str],
    ) -> CommandResult:
        """Run one command string on its own channel, feeding stdin and reading both streams."""
        started = time.monotonic()
        deadline = started + timeout
        with self._channels:
            channel = self._open_channel(argv)
            try:
                try:
                    channel.exec_command(command)
                    code, out, err = self._pump(channel, stdin, deadline)
                except (paramiko.SSHException, EOFError, OSError) as exc:
                    raise self._connection_error(argv, exc) from None
                if code is None:
                    raise RemoteTimeout(
                        self.host,
                        f"command did not finish within {timeout:g} s: {_redact(command, secrets)}",
                        argv=argv,
                    )
            finally:
                channel.close()
        if code == -1 and not self._transport.is_active():
            raise self._connection_error(argv, None)
        return CommandResult(
            host=self.host,
            argv=argv,
            exit_code=code,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            duration=time.monotonic() - started,
        )

    def _open_channel(self, argv: tuple[str, ...]) -> paramiko.Channel:
        if not self._transport.is_active():
            raise self._connection_error(argv, None)
        try:
            return self._transport.open_session(timeout=self.options.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
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

    def put(
        self,
        local: Path,
        remote: str,
        *,
        sha256: str | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        """Send a file over SFTP (pipelined) to a side name, verify it, then rename it in place."""
        local = Path(local)
        if not local.is_file():
            raise RemoteError(self.host, f"cannot send {local}: no such local file")
        partial = f"{remote}.scmflow-part"
        started = time.monotonic()
        # one SFTP client per connection, and paramiko's is not safe for concurrent requests
        with self._transfer_lock:
            sftp = self._sftp_client()
            try:
                _send_file(sftp, local, partial, progress)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if not self._transport.is_active():
                    raise self._connection_error(("put", str(local), remote), exc) from None
                raise RemoteError(self.host, f"cannot write {remote}: {exc}") from None
            if sha256 is not None:
                self._verify(partial, remote, sha256)
            try:
                sftp.posix_rename(partial, remote)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise RemoteError(self.host, f"cannot move {partial} to {remote}: {exc}") from None
        self._log.debug(
            "[%s] put %s -> %s (%d bytes) in %.3fs",
            self.host, local, remote, local.stat().st_size, time.monotonic() - started,
        )

    def _verify(self, partial: str, remote: str, sha256: str) -> None:
        result = self.run(["sha256sum", "--", partial], timeout=600.0)
        actual = result.stdout.split()[0].lower() if result.stdout.split() else ""
        if actual != sha256.lower():
            self.run(["rm", "-f", "--", partial], check=False, timeout=60.0)
            raise RemoteError(
                self.host, f"checksum mismatch for {remote}: expected sha256 {sha256}, got {actual}"
            )

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            if not self._transport.is_active():
                raise self._connection_error(("sftp",), None)
            try:
                client = paramiko.SFTPClient.from_transport(
                    self._transport, window_size=_SFTP_WINDOW, max_packet_size=_SFTP_PACKET
                )
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise RemoteError(self.host, f"cannot start SFTP: {exc}") from None
            if client is None:
                raise RemoteError(self.host, "cannot start SFTP: the host refused the subsystem")
            self._sftp = client
        return self._sftp

    def close(self) -> None:
        """Close SFTP and the connection (idempotent)."""
        self._closed = True
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        self._transport.close()


def connect_all(
    targets: Sequence[SSHTarget],
    options: SSHOptions | None = None,
    *,
    parallel: int = 16,
    log: logging.Logger | None = None,
) -> dict[str, Session]:
    """Connect to every target at once; one ScmflowError naming each host that failed."""
    names = [target.host for target in targets]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ScmflowError(f"hosts listed more than once: {', '.join(twice)}")
    sessions: dict[str, Session] = {}
    failures: list[str] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(targets) or 1))) as pool:
            futures = [(t, pool.submit(SSHSession.connect, t, options, log=log)) for t in targets]
            for target, future in futures:
                try:
                    sessions[target.host] = future.result()
                except ScmflowError as exc:
                    failures.append(exc.message)
        if failures:
            raise ScmflowError(
                f"cannot connect to {len(failures)} of {len(targets)} hosts: " + "; ".join(failures)
            )
    except BaseException:
        for session in sessions.values():
            session.close()
        raise
    return sessions


# --------------------------------------------------------------------------- local


class LocalSession:
    """The Session protocol on this machine via subprocess (for the demo and tests).

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
        self._log = log or logging.getLogger(__name__)

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
        """Run argv directly, or via `runuser -u` for another user (root only)."""
        argv = tuple(argv)
        if not argv:
            raise ValueError("empty argv")
        command = list(argv)
        if user is not None and user not in self._aliases:
            if os.geteuid() != 0:
                raise RemoteError(
                    self.host, f"cannot run commands as {user}: only root can switch users locally",
                    argv=argv,
                )
            command = ["runuser", "-u", user, "--", *command]
        shown = shlex.join([*_env_prefix(env), *command])
        secrets = _secrets_of(None, env)
        # the environment goes through exec, not argv, so no value shows in the process list
        environment = {**os.environ, **env} if env else None
        started = time.monotonic()
        code, out, err = self._spawn(command, environment, stdin or b"", timeout, argv, shown, secrets)
        result = CommandResult(
            host=self.host,
            argv=argv,
            exit_code=code,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            duration=time.monotonic() - started,
        )
        _log_command(self._log, result, shown, secrets)
        if check and code != 0:
            raise _failed(result, shown, secrets)
        return result

    def _spawn(
        self,
        command: list[str],
        environment: dict[str, str] | None,
        stdin: bytes,
        timeout: float,
        argv: tuple[str, ...],
        shown: str,
        secrets: Sequence[str],
    ) -> tuple[int, bytes, bytes]:
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environment,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise RemoteError(
                self.host, f"command not found: {command[0]}", argv=argv, exit_code=127
            ) from None
        except PermissionError:
            raise RemoteError(
                self.host, f"permission denied: {command[0]}", argv=argv, exit_code=126
            ) from None
        try:
            out, err = process.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            # the whole process group, so a runuser'd command does not outlive its runuser
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise RemoteTimeout(
                self.host,
                f"command did not finish within {timeout:g} s: {_redact(shown, secrets)}",
                argv=argv,
            ) from None
        return process.returncode, out, err

    def put(
        self,
        local: Path,
        remote: str,
        *,
        sha256: str | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        """Copy a file to a side name, verify it, then rename it in place."""
        local = Path(local)
        partial = Path(f"{remote}.scmflow-part")
        try:
            total = local.stat().st_size
            with local.open("rb") as source, partial.open("wb") as target:
                sent = 0
                if progress is not None:
                    progress(0, total)
                while chunk := source.read(_READ_CHUNK):
                    target.write(chunk)
                    sent += len(chunk)
                    if progress is not None:
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
        """Nothing to release."""
