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
import secrets as secrets_module
import selectors
import shlex
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

import paramiko

from scmflow.errors import ConnectError, HostKeyError, RemoteError, RemoteTimeout, ScmflowError

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


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class SSHTarget:
    """Where and as whom to log in; the password never shows in repr or logs.

    `host` is the operator's name for the host, shown in every message. The rest is the
    route, usually filled from ssh_config by `scmflow.sshconfig.resolve_target`: `address`
    (HostName) is what to connect to, `via` the bastion whose direct-tcpip channel carries
    the connection (ProxyJump; it may have its own `via`).
    """

    host: str
    port: int = 22
    user: str = "root"
    password: str | None = field(default=None, compare=False)
    address: str | None = None
    host_key_alias: str | None = None
    identity_files: tuple[Path, ...] = ()
    identities_only: bool = False
    via: SSHTarget | None = None

    @property
    def connect_address(self) -> str:
        """The name or address the TCP connection (or the bastion's channel) goes to."""
        return self.address or self.host

    @property
    def known_names(self) -> tuple[str, ...]:
        """known_hosts names, as OpenSSH uses them: HostKeyAlias, else HostName (`[..]:port` off 22).

        The first is where a new key is recorded. Off port 22 the bare HostName follows: like
        OpenSSH ("checking without port identifier"), a matching key there is trusted too.
        """
        if self.host_key_alias:
            return (self.host_key_alias,)
        address = self.connect_address
        return (known_host_name(address, self.port),) + ((address,) if self.port != 22 else ())

    @property
    def known_name(self) -> str:
        """The name a new host key is recorded under."""
        return self.known_names[0]

    @property
    def route(self) -> str:
        """`host` plus the bastions in front of it, for messages."""
        hops = []
        hop = self.via
        while hop is not None:
            hops.append(hop.host)
            hop = hop.via
        return self.host + "".join(f" via {name}" for name in hops)

    def __repr__(self) -> str:
        hidden = "None" if self.password is None else "'******'"
        extra = "".join(
            f", {name}={value!r}"
            for name, value in (
                ("address", self.address if self.address != self.host else None),
                ("host_key_alias", self.host_key_alias),
                ("via", self.via),
            )
            if value is not None
        )
        return (
            f"SSHTarget(host={self.host!r}, port={self.port}, user={self.user!r}, password={hidden}{extra})"
        )


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
    # below OpenSSH's default MaxSessions (10)
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


def check_host_key(
    host: str,
    port: int,
    key: paramiko.PKey,
    options: SSHOptions,
    *,
    names: Sequence[str] = (),
    accept_hint: str | None = None,
) -> bool:
    """Accept a known key; refuse a changed or unknown one; True when a new key was recorded.

    `names` are the known_hosts names (default: SSHTarget(host, port).known_names): a key is
    recorded and reported under the first; the others can only vouch for a matching key.
    `accept_hint` tells an operator how to accept an unknown key (default: ssh-keyscan).
    """
    names = tuple(names) or SSHTarget(host, port).known_names
    name = names[0]
    accept_hint = accept_hint or f"run `ssh-keyscan -p {port} {host} >> ~/.ssh/known_hosts`"
    offered = f"{key.get_name()} key {fingerprint(key)}"
    known = find_known_keys(options.known_hosts, name)
    for entry in known:
        if entry.revoked and entry.key.asbytes() == key.asbytes():
            where = f"{entry.path}:{entry.line}"
            raise HostKeyError(host, f"host key for {name} ({offered}) is marked revoked in {where}")
    valid = [entry for entry in known if not entry.revoked]
    if any(entry.key.asbytes() == key.asbytes() for entry in valid):
        return False
    if not valid and _vouched_for(names[1:], key, options):
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
            f"unknown host key for {name}: {offered}; check the fingerprint, then {accept_hint} "
            "or use --accept-new-host-keys",
        )
    if not options.known_hosts:
        raise HostKeyError(host, f"cannot record the host key for {name}: no known_hosts file configured")
    record_host_key(options.known_hosts[0], name, key, hashed=options.hash_known_hosts)
    return True


def _vouched_for(names: Sequence[str], key: paramiko.PKey, options: SSHOptions) -> bool:
    """Whether a fallback name holds this key, and does not mark it revoked."""
    for name in names:
        known = find_known_keys(options.known_hosts, name)
        matching = [entry for entry in known if entry.key.asbytes() == key.asbytes()]
        if matching and not any(entry.revoked for entry in matching):
            return True
    return False


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


@dataclass(frozen=True)
class SudoPrompt:
    """sudo's prompt for this one command (`-p MARKER`), the line the command prints on stderr
    when it starts (`started`), and the password that answers the prompt."""

    marker: str
    started: str
    password: str = field(repr=False)

    @classmethod
    def new(cls, password: str) -> SudoPrompt:
        """Markers of their own for one command."""
        tag = secrets_module.token_hex(8)
        return cls(f"[scmflow-sudo-{tag}]", f"[scmflow-run-{tag}]", password)

    def wrap(self, user: str, inner: Sequence[str]) -> list[str]:
        """sudo that prompts with `marker`, running a shell that says `started`, then execs inner."""
        return ["sudo", "-S", "-k", "-p", self.marker, "-u", user, "-H", "--",
                "sh", "-c", _STARTED_SCRIPT, self.started, *inner]

    def clean(self, stderr: bytes) -> bytes:
        """stderr without the markers (a wrong password makes sudo prompt again)."""
        return stderr.replace(self.marker.encode(), b"").replace(self.started.encode(), b"")


# Prints its $0 (the `started` marker) on stderr, then becomes the command.
_STARTED_SCRIPT = 'printf %s "$0" >&2; exec "$@"'


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
# AES-GCM needs no separate MAC pass: with paramiko 5.1 against OpenSSH 9.2 it sent 200 MB
# in ~0.5 s where aes128-ctr + hmac-sha2-256 took ~0.9 s; the others stay as fallbacks.
_FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
# A transfer tells its progress callback about every this many bytes (and the last one).
_PROGRESS_STEP = 1024 * 1024
# A transfer whose host accepts no data for this long fails (the connection may be alive).
_SEND_STALL = 300.0
# Runs on the host as `python3 -c _RECEIVER` + `PART FINAL MODE SIZE SHA256|-` per file, the
# files one after the other on stdin. Each is written to PART while hashed (no second read),
# its size checked (a dropped connection also ends stdin) and its digest, then it is chmod'ed
# and renamed to FINAL. One line per file: `ok HEX`, or `mismatch HEX` / `error WHY`, which
# ends the run. One round trip for all of a host's files; Python 3.6 compatible, like the
# agent (which needs python3 on the host anyway).
_RECEIVER = """\
import hashlib, os, sys
os.chdir("/")
buf = bytearray(1 << 20)
view = memoryview(buf)
source = sys.stdin.buffer.raw
try:
    # a 1 MiB stdin pipe (F_SETPIPE_SZ) instead of 64 KiB: sshd and this process wake each
    # other 16x less often (200 MB in 0.49 s instead of 0.64 s on a busy 2-core host)
    import fcntl
    fcntl.fcntl(0, 1031, 1 << 20)
except Exception:
    pass


def receive(part, final, mode, size, want):
    digest = hashlib.sha256()
    left = size
    try:
        with open(part, "wb") as out:
            while left:
                n = source.readinto(view[:min(left, len(buf))])
                if not n:
                    break
                left -= n
                digest.update(view[:n])
                out.write(view[:n])
            os.fchmod(out.fileno(), int(mode, 8))
        got = digest.hexdigest()
        if left:
            os.unlink(part)
            return "error only %d of %d bytes arrived" % (size - left, size)
        if want != "-" and got != want:
            os.unlink(part)
            return "mismatch " + got
        os.rename(part, final)
    except OSError as exc:
        try:
            os.unlink(part)
        except OSError:
            pass
        return "error " + (exc.strerror or str(exc))
    return "ok " + got


args = sys.argv[1:]
for i in range(0, len(args), 5):
    part, final, mode, size, want = args[i:i + 5]
    verdict = receive(part, final, mode, int(size), want)
    print(verdict)
    sys.stdout.flush()
    if not verdict.startswith("ok "):
        sys.exit(2)
"""
_POLL = 0.05
# How often stderr is looked at while waiting for sudo's prompt.
_PROMPT_POLL = 0.005
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
    address = target.connect_address
    where = f"port {target.port}" if address == target.host else f"{address} port {target.port}"
    try:
        return socket.create_connection((address, target.port), timeout=options.connect_timeout)
    except socket.gaierror as exc:
        raise RemoteError(target.host, f"cannot resolve host name {address!r}: {exc.strerror}") from None
    except ConnectionRefusedError:
        raise RemoteError(target.host, f"connection refused on {where} (is sshd running there?)") from None
    except TimeoutError:
        raise RemoteTimeout(
            target.host, f"no answer on {where} within {options.connect_timeout:g} s"
        ) from None
    except OSError as exc:
        raise RemoteError(target.host, f"cannot connect to {where}: {exc.strerror or exc}") from None


class _Tunnel:
    """A direct-tcpip channel through a bastion, standing in for the target's TCP socket.

    Socket options (TCP_INFO) are read from the TCP connection to the first bastion, so a
    dead link there is told apart from a target that closed the connection.
    """

    def __init__(self, channel: paramiko.Channel, link: socket.socket, release: Callable[[], None]) -> None:
        self._channel = channel
        self._link = link
        self._release = release
        self._lock = threading.Lock()
        self._released = False

    def recv(self, size: int) -> bytes:
        """Channel.recv."""
        return self._channel.recv(size)

    def send(self, data: bytes) -> int:
        """Channel.send."""
        return self._channel.send(data)

    def settimeout(self, timeout: float | None) -> None:
        """Channel.settimeout."""
        self._channel.settimeout(timeout)

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        """The option of the TCP connection to the first bastion."""
        return self._link.getsockopt(level, option, size)

    def close(self) -> None:
        """Close the channel and let go of the bastion (idempotent)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._channel.close()
        self._release()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


@dataclass
class _Bastion:
    """One bastion connection and how many tunnels use it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    transport: paramiko.Transport | None = None
    link: socket.socket | None = None
    error: RemoteError | None = None
    users: int = 0


class BastionPool:
    """Connections to jump hosts, shared by every target tunnelled through them.

    One bastion connection carries the channels of all its targets: a handshake per target
    would cost time and could trip the bastion's MaxStartups throttle when many hosts
    connect at once. A bastion connection closes with the last tunnel through it; a bastion
    that cannot be reached fails every target behind it with the same error, tried once.
    """

    def __init__(self, options: SSHOptions, log: logging.Logger) -> None:
        self._options = options
        self._log = log
        self._lock = threading.Lock()
        self._bastions: dict[SSHTarget, _Bastion] = {}

    def tunnel(self, target: SSHTarget) -> _Tunnel:
        """A channel from `target.via` to the target's address and port."""
        hop = target.via
        assert hop is not None
        try:
            bastion = self._acquire(hop)
        except RemoteError as exc:
            # same class, so an unknown or changed bastion key stays a HostKeyError
            raise type(exc)(target.host, f"through bastion {hop.host}: {exc.message}") from None
        try:
            assert bastion.transport is not None and bastion.link is not None
            channel = self._open_channel(bastion.transport, target, hop)
        except BaseException:
            self._release(hop, bastion)
            raise
        return _Tunnel(channel, bastion.link, lambda: self._release(hop, bastion))

    def _open_channel(
        self, transport: paramiko.Transport, target: SSHTarget, hop: SSHTarget
    ) -> paramiko.Channel:
        destination = f"{target.connect_address} port {target.port}"
        if not transport.is_active():
            raise RemoteError(target.host, f"connection to bastion {hop.host} was lost")
        try:
            channel = transport.open_channel(
                "direct-tcpip",
                dest_addr=(target.connect_address, target.port),
                src_addr=("127.0.0.1", 0),
                timeout=self._options.connect_timeout,
            )
        except paramiko.ChannelException as exc:
            # RFC 4254 5.1: 1 = administratively prohibited, 2 = connect failed
            why = (
                "it does not allow TCP forwarding (AllowTcpForwarding)" if exc.code == 1
                else f"it cannot connect there: {exc.text}"
            )
            raise RemoteError(target.host, f"bastion {hop.host} cannot open {destination}: {why}") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise RemoteError(target.host, f"bastion {hop.host} cannot open {destination}: {exc}") from None
        return channel

    def _acquire(self, hop: SSHTarget) -> _Bastion:
        with self._lock:
            bastion = self._bastions.setdefault(hop, _Bastion())
            bastion.users += 1
        with bastion.lock:
            if bastion.transport is None and bastion.error is None:
                try:
                    bastion.transport, watched = _handshake(hop, self._options, self._log, self)
                    # its getsockopt reaches the first bastion's TCP socket through any tunnels
                    bastion.link = cast(socket.socket, watched)
                    self._log.debug("[%s] connected to bastion %s", hop.host, hop.route)
                except RemoteError as exc:
                    bastion.error = exc
                except BaseException:
                    self._release(hop, bastion)
                    raise
        if bastion.error is not None:
            self._release(hop, bastion)
            raise bastion.error
        return bastion

    def _release(self, hop: SSHTarget, bastion: _Bastion) -> None:
        with self._lock:
            bastion.users -= 1
            if bastion.users > 0:
                return
            if self._bastions.get(hop) is bastion:
                del self._bastions[hop]
        if bastion.transport is not None:
            bastion.transport.close()


def _accept_hint(target: SSHTarget) -> str:
    """How an operator records this target's key the way we look it up."""
    if target.via is None and target.host_key_alias is None:
        return f"run `ssh-keyscan -p {target.port} {target.connect_address} >> ~/.ssh/known_hosts`"
    # ssh with the same ssh_config takes the same route and files the key under the same name
    return f"run `ssh -p {target.port} {target.host}` once and accept the key"


def _identity_paths(target: SSHTarget, options: SSHOptions) -> list[Path]:
    """Key files to try: explicit ones and ssh_config's IdentityFile, else OpenSSH's defaults."""
    given = list(dict.fromkeys((*options.key_filenames, *target.identity_files)))
    if given:
        return given
    ssh_dir = Path.home() / ".ssh"
    return [ssh_dir / name for name in ("id_ed25519", "id_ecdsa", "id_rsa")]


def _public_blob(path: Path) -> bytes | None:
    """The public key beside a key file (`path.pub`), for matching agent keys to it."""
    try:
        fields = Path(f"{path}.pub").read_text().split()
        return base64.b64decode(fields[1]) if len(fields) > 1 else None
    except (OSError, ValueError, binascii.Error):
        return None


def _client_keys(
    target: SSHTarget, options: SSHOptions, log: logging.Logger
) -> Generator[paramiko.PKey, None, None]:
    """Key files, then the agent's other keys (with IdentitiesOnly, only those of the key files)."""
    tried: set[bytes] = set()
    listed: set[bytes] = set()
    for path in _identity_paths(target, options):
        if not path.is_file():
            continue
        try:
            key = paramiko.PKey.from_path(path)
        except (paramiko.SSHException, OSError, ValueError, TypeError) as exc:
            # (cryptography raises TypeError for a passphrase-protected OpenSSH-format key.)
            # Such a key may still be in the agent: IdentitiesOnly allows its agent copy.
            log.debug("skipping key %s: %s", path, exc)
            blob = _public_blob(path)
            if blob is not None:
                listed.add(blob)
            continue
        tried.add(key.asbytes())
        listed.add(key.asbytes())
        yield key
    if not options.use_agent or not os.environ.get("SSH_AUTH_SOCK"):
        return
    agent = paramiko.Agent()
    try:
        for agent_key in agent.get_keys():
            blob = agent_key.asbytes()
            if blob in tried or (target.identities_only and blob not in listed):
                continue
            yield agent_key
    finally:
        agent.close()


def _authenticate(
    transport: paramiko.Transport, target: SSHTarget, options: SSHOptions, log: logging.Logger
) -> None:
    """Public keys first, then the password; RemoteError naming the user if nothing works."""
    tried: list[str] = []
    allowed: list[str] | None = None
    with closing(_client_keys(target, options, log)) as keys:
        for key in keys:
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


def _open_link(target: SSHTarget, options: SSHOptions, bastions: BastionPool) -> socket.socket:
    """A TCP connection to the target, or a tunnel through its bastion."""
    if target.via is not None:
        return cast(socket.socket, bastions.tunnel(target))
    sock = _open_socket(target, options)
    _tune_socket(sock, options)
    return sock


def _watch_silence(
    transport: paramiko.Transport, sock: _WatchedSocket, options: SSHOptions, host: str, log: logging.Logger
) -> None:
    """Drop a tunnelled connection whose host stops answering, within SSHOptions.dead_peer_bound.

    TCP_USER_TIMEOUT guards only the TCP link to the first bastion; a target (or hop) that
    goes silent behind it would leave commands waiting for their own timeouts. So, like
    OpenSSH's ServerAliveInterval, ask for a reply every keepalive_interval and close the
    connection when none comes for keepalive_interval * keepalive_count_max seconds.
    """
    interval = max(1.0, options.keepalive_interval)
    limit = interval * max(1, options.keepalive_count_max)

    def ask(answered: threading.Event) -> None:
        try:
            # any reply counts; sshd refuses this request, as OpenSSH's own client expects
            transport.global_request("keepalive@openssh.com", wait=True)
        except (paramiko.SSHException, EOFError, OSError):
            pass
        answered.set()

    def watch() -> None:
        while transport.is_active():
            answered = threading.Event()
            # the request itself may block on a stalled channel, so it gets its own thread
            threading.Thread(target=ask, args=(answered,), name=f"scmflow-ask-{host}", daemon=True).start()
            if not answered.wait(limit):
                if transport.is_active():
                    log.debug("[%s] no answer through the tunnel for %g s; closing", host, limit)
                    sock.error = sock.error or OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
                    transport.close()
                return
            time.sleep(interval)

    threading.Thread(target=watch, name=f"scmflow-alive-{host}", daemon=True).start()


def _handshake(
    target: SSHTarget, options: SSHOptions, log: logging.Logger, bastions: BastionPool
) -> tuple[paramiko.Transport, _WatchedSocket]:
    """Connect, verify the host key and log in; the transport is closed on any failure."""
    watched = _WatchedSocket(_open_link(target, options, bastions))
    transport = paramiko.Transport(cast(socket.socket, watched))
    try:
        transport.banner_timeout = options.connect_timeout
        transport.handshake_timeout = options.connect_timeout
        transport.auth_timeout = options.connect_timeout
        names = target.known_names
        preferred = _host_key_types([k for n in names for k in find_known_keys(options.known_hosts, n)])
        security = transport.get_security_options()
        available = list(security.key_types)
        first = [t for t in preferred if t in available]
        security.key_types = first + [t for t in available if t not in first]
        _prefer_fast_ciphers(transport)
        try:
            transport.start_client(timeout=options.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            where = f"port {target.port}"
            if target.via is not None:
                where = f"{target.connect_address} port {target.port} through {target.via.host}"
            raise RemoteError(target.host, f"SSH handshake on {where} failed: {exc}") from None
        key = transport.get_remote_server_key()
        hint = _accept_hint(target)
        if check_host_key(target.host, target.port, key, options, names=names, accept_hint=hint):
            log.info("[%s] recorded new host key for %s in %s", target.host, names[0], options.known_hosts[0])
        _authenticate(transport, target, options, log)
        transport.set_keepalive(max(1, int(options.keepalive_interval)))
        if target.via is not None:
            _watch_silence(transport, watched, options, target.host, log)
        return transport, watched
    except BaseException:
        transport.close()
        raise


def _prefer_fast_ciphers(transport: paramiko.Transport) -> None:
    """Offer AES-GCM first (see _FAST_CIPHERS); the server's list still decides."""
    security = transport.get_security_options()
    available = list(security.ciphers)
    first = [c for c in _FAST_CIPHERS if c in available]
    security.ciphers = first + [c for c in available if c not in first]


class _LocalReadError(Exception):
    """A file being sent could not be read here; the message says which and why."""


def _read_block(source: BinaryIO, size: int, path: Path) -> bytes:
    try:
        data = source.read(size)
    except OSError as exc:
        raise _LocalReadError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise _LocalReadError(f"{path} shrank while it was being sent")
    return data


def _stream_files(
    channel: paramiko.Channel, files: Sequence[tuple[Path, int]], progress: ProgressFn | None
) -> None:
    """Send the files, exactly `size` bytes of each, one after the other as stdin; then EOF.

    Raises _LocalReadError when a file cannot be read, OSError or SSHException when the
    channel stops taking data, TimeoutError when it takes none for _SEND_STALL seconds.
    Each block fills one SSH packet: a larger one would be re-sliced (and copied) by
    paramiko's sendall for every packet it sends.
    """
    block = max(4096, channel.out_max_packet_size - 64)
    total = sum(size for _, size in files)
    sent = reported = 0
    if progress is not None:
        progress(0, total)
    channel.settimeout(_SEND_STALL)
    for path, size in files:
        try:
            source = path.open("rb", buffering=0)
        except OSError as exc:
            raise _LocalReadError(f"cannot read {path}: {exc.strerror or exc}") from None
        with source:
            left = size
            while left:
                data = _read_block(source, min(block, left), path)
                channel.sendall(data)
                left -= len(data)
                sent += len(data)
                if progress is not None and sent - reported >= _PROGRESS_STEP:
                    progress(sent, total)
                    reported = sent
    channel.shutdown_write()
    if progress is not None and reported != sent:
        progress(sent, total)


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
        log = log or logging.getLogger(__name__)
        bastions = bastions or BastionPool(options, log)
        started = time.monotonic()
        transport, sock = _handshake(target, options, log, bastions)
        log.debug(
            "[%s] connected to %s@%s:%d%s in %.3fs",
            target.host, target.user, target.connect_address, target.port,
            target.route[len(target.host):], time.monotonic() - started,
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
        command, prompt, sudo_user = self._command(argv, user, env)
        secrets = _secrets_of(self.target.password, env)
        try:
            result = self._execute(argv, command, stdin or b"", timeout, secrets, prompt)
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

    def open_stream(
        self, argv: Sequence[str], *, user: str | None = None, env: Mapping[str, str] | None = None
    ) -> Stream:
        """Start argv on a channel of its own that stays open until the stream is closed."""
        argv = tuple(argv)
        command, prompt, sudo_user = self._command(argv, user, env)
        secrets = _secrets_of(self.target.password, env)
        if prompt is not None:
            # A wrong password would leave sudo waiting for another try on the open stdin:
            # try it once on a command of its own, which explains a refusal.
            self.run(["true"], user=user, timeout=self.options.connect_timeout)
        self._channels.acquire()
        try:
            channel = self._open_channel(argv)
            try:
                channel.exec_command(command)
                if prompt is not None:
                    _answer_sudo_prompt(channel, prompt, time.monotonic() + self.options.connect_timeout)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                channel.close()
                raise self._connection_error(argv, exc) from None
        except BaseException:
            self._channels.release()
            raise
        self._log.debug("[%s] $ %s (kept open)", self.host, _redact(command, secrets))
        return _ChannelStream(self, channel, argv, sudo_user)

    def _command(
        self, argv: tuple[str, ...], user: str | None, env: Mapping[str, str] | None
    ) -> tuple[str, SudoPrompt | None, str | None]:
        """The command line for argv as `user`, the sudo prompt to answer (if any), the sudo user."""
        if not argv:
            raise ValueError("empty argv")
        inner = [*_env_prefix(env), *argv]
        prompt = None
        sudo_user = user if user is not None and user != self.target.user else None
        password = self.target.password
        if sudo_user is not None and password and self._sudo_with_password(sudo_user):
            prompt = SudoPrompt.new(password)
            inner = prompt.wrap(sudo_user, inner)
        elif sudo_user is not None:
            inner = ["sudo", "-n", "-u", sudo_user, "-H", "--", *inner]
        return shlex.join(inner), prompt, sudo_user

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
        prompt: SudoPrompt | None = None,
    ) -> CommandResult:
        """Run one command string on its own channel, feeding stdin and reading both streams.

        With `prompt`, sudo's password goes in only once sudo has asked for it.
        """
        started = time.monotonic()
        deadline = started + timeout
        with self._channels:
            channel = self._open_channel(argv)
            try:
                try:
                    channel.exec_command(command)
                    asked = _answer_sudo_prompt(channel, prompt, deadline) if prompt else b""
                    code, out, err = self._pump(channel, stdin, deadline)
                    if prompt is not None:
                        err = prompt.clean(asked + err)
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
        """Send one file (see put_files)."""
        self.put_files([Upload(Path(local), remote, sha256)], progress=progress)

    def put_files(self, files: Sequence[Upload], *, progress: ProgressFn | None = None) -> None:
        """Stream files to side names, each hashed on the host as it lands, verified, renamed in place.

        One exec channel and one round trip for all of them (see _RECEIVER); each file keeps
        its mode. The first file that fails ends the transfer with a RemoteError.
        """
        if not files:
            return
        # -I and `/`: see agent._PYTHON; the receiver writes files as root.
        argv = ["python3", "-I", "-c", _RECEIVER]
        sizes: list[tuple[Path, int]] = []
        for upload in files:
            local = Path(upload.local)
            try:
                info = local.stat()
            except OSError:
                info = None
            if info is None or not stat.S_ISREG(info.st_mode):
                raise RemoteError(self.host, f"cannot send {local}: no such local file")
            sizes.append((local, info.st_size))
            argv += [
                f"{upload.remote}.scmflow-part", upload.remote, f"{stat.S_IMODE(info.st_mode):o}",
                str(info.st_size), (upload.sha256 or "-").lower(),
            ]
        started = time.monotonic()
        code, out, err = self._send_through(tuple(argv), sizes, progress)
        self._check_received(tuple(argv), files, code, out, err)
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
                    _stream_files(channel, files, progress)
                except TimeoutError:
                    raise RemoteTimeout(
                        self.host, f"the host took no data for {_SEND_STALL:g} s", argv=argv
                    ) from None
                except _LocalReadError as exc:
                    raise RemoteError(self.host, str(exc)) from None
                except (paramiko.SSHException, EOFError, OSError):
                    # the receiver stopped reading (its output says why) or the connection dropped
                    if not self._transport.is_active():
                        raise self._connection_error(argv, None) from None
                try:
                    return self._pump(channel, b"", time.monotonic() + _SEND_STALL)
                except (paramiko.SSHException, EOFError, OSError) as exc:
                    raise self._connection_error(argv, exc) from None
            finally:
                channel.close()

    def _check_received(
        self, argv: tuple[str, ...], files: Sequence[Upload], code: int | None, out: bytes, err: bytes
    ) -> None:
        """Turn the receiver's verdicts into nothing (all stored) or one RemoteError."""
        if code is None:
            raise RemoteTimeout(self.host, f"no answer within {_SEND_STALL:g} s after sending", argv=argv)
        if code == -1 and not self._transport.is_active():
            raise self._connection_error(argv, None)
        verdicts = [
            line.split(" ", 1)
            for line in out.decode(errors="replace").splitlines()
            if line.startswith(("ok ", "mismatch ", "error "))
        ]
        stored = 0
        while stored < len(verdicts) and verdicts[stored][0] == "ok":
            stored += 1
        if code == 0 and stored == len(files):
            return
        failed = files[min(stored, len(files) - 1)]
        if stored < len(verdicts):
            kind, detail = verdicts[stored]
            if kind == "mismatch":
                expected = f"expected sha256 {failed.sha256}, got {detail}"
                raise RemoteError(self.host, f"checksum mismatch for {failed.remote}: {expected}")
            raise RemoteError(self.host, f"cannot write {failed.remote}: {detail}")
        if code == 127:
            why = "python3 is not installed on the host"
        else:
            why = f"the receiver exited with {code}: {_clip(err.decode(errors='replace')) or 'no output'}"
        raise RemoteError(self.host, f"cannot write {failed.remote}: {why}")

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._closed = True
        self._transport.close()


_STREAM_ERR_KEEP = 65536
# After a stream's stdout ends, how long its exit status may take to arrive.
_EXIT_WAIT = 5.0


def _pop_line(buffer: bytearray) -> bytes | None:
    """Take the first complete line (with its newline) off `buffer`, if there is one."""
    cut = buffer.find(b"\n")
    if cut < 0:
        return None
    line = bytes(buffer[: cut + 1])
    del buffer[: cut + 1]
    return line


class _ChannelStream:
    """A Stream over one SSH channel of a session; holds one of its channel slots."""

    def __init__(
        self, session: SSHSession, channel: paramiko.Channel, argv: tuple[str, ...], sudo_user: str | None
    ) -> None:
        self.host = session.host
        self._session = session
        self._channel = channel
        self._argv = argv
        self._sudo_user = sudo_user
        self._out = bytearray()
        self._err = bytearray()
        self._closed = False

    def send(self, data: bytes) -> None:
        """Write to the command's stdin."""
        try:
            self._channel.sendall(data)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._session._connection_error(self._argv, exc) from None

    def read_line(self, timeout: float) -> bytes:
        """The next stdout line; RemoteTimeout after `timeout` s, StreamEnded at its end."""
        deadline = time.monotonic() + timeout
        self._channel.settimeout(_POLL)
        while True:
            line = _pop_line(self._out)
            if line is not None:
                return line
            try:
                data: bytes | None = self._channel.recv(65536)
            except TimeoutError:
                data = None
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise self._session._connection_error(self._argv, exc) from None
            self._drain_stderr()
            if data == b"":
                raise self._ended()
            if data:
                self._out += data
            elif time.monotonic() > deadline:
                raise RemoteTimeout(self.host, f"no answer within {timeout:g} s", argv=self._argv)

    def _drain_stderr(self) -> None:
        while self._channel.recv_stderr_ready():
            self._err += self._channel.recv_stderr(65536)
        del self._err[:-_STREAM_ERR_KEEP]

    def _ended(self) -> RemoteError:
        self._channel.status_event.wait(_EXIT_WAIT)
        if not self._channel.exit_status_ready() and not self._session._transport.is_active():
            return self._session._connection_error(self._argv, None)
        code = self._channel.recv_exit_status() if self._channel.exit_status_ready() else None
        self._drain_stderr()
        stderr = self._err.decode(errors="replace")
        if self._sudo_user is not None and code == 1:
            refusal = _sudo_refusal(stderr, self._session.target.user, self._sudo_user)
            if refusal is not None:
                return RemoteError(self.host, refusal, argv=self._argv, exit_code=1)
        return StreamEnded(self.host, "the command ended", argv=self._argv, exit_code=code, stderr=stderr)

    def close(self) -> None:
        """Close the channel: the command sees the end of its stdin (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._channel.close()
        finally:
            self._session._channels.release()


def connect_all(
    targets: Sequence[SSHTarget],
    options: SSHOptions | None = None,
    *,
    parallel: int = 16,
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
    log = log or logging.getLogger(__name__)
    bastions = BastionPool(options, log)
    sessions: dict[str, Session] = {}
    failures: list[tuple[str, ScmflowError]] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(targets) or 1))) as pool:
            futures = [
                (t, pool.submit(SSHSession.connect, t, options, log=log, bastions=bastions)) for t in targets
            ]
            for target, future in futures:
                try:
                    sessions[target.host] = future.result()
                except ScmflowError as exc:
                    failures.append((target.host, exc))
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


class _ProcessStream:
    """A Stream over a local child process."""

    def __init__(self, host: str, process: subprocess.Popen[bytes], argv: tuple[str, ...]) -> None:
        self.host = host
        self.closed = False
        self._process = process
        self._argv = argv
        self._out = bytearray()
        self._err = bytearray()
        self._stdout_done = False
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
            self._pump(min(left, 1.0))

    def _pump(self, wait: float) -> bool:
        """Take in what the pipes hold, waiting up to `wait` s for some; whether any was ready."""
        ready = self._selector.select(wait)
        for key, _ in ready:
            data = os.read(key.fd, 65536)
            if key.fileobj is self._process.stderr:
                self._err += data
                del self._err[:-_STREAM_ERR_KEEP]
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
        return StreamEnded(
            self.host, "the command ended", argv=self._argv, exit_code=code,
            stderr=self._err.decode(errors="replace"),
        )

    def close(self) -> None:
        """End stdin; a process still busy after a moment is killed with its process group."""
        if self.closed:
            return
        self.closed = True
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
        self._lock = threading.Lock()
        self._streams: list[_ProcessStream] = []

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
        command = self._as_user(argv, user)
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

    def open_stream(
        self, argv: Sequence[str], *, user: str | None = None, env: Mapping[str, str] | None = None
    ) -> Stream:
        """Start argv as a child process that runs until the stream is closed."""
        argv = tuple(argv)
        command = self._as_user(argv, user)
        shown = _redact(shlex.join([*_env_prefix(env), *command]), _secrets_of(None, env))
        self._log.debug("[%s] $ %s (kept open)", self.host, shown)
        process = self._popen(command, {**os.environ, **env} if env else None, argv)
        stream = _ProcessStream(self.host, process, argv)
        with self._lock:
            self._streams = [s for s in self._streams if not s.closed] + [stream]
        return stream

    def _as_user(self, argv: tuple[str, ...], user: str | None) -> list[str]:
        if not argv:
            raise ValueError("empty argv")
        if user is None or user in self._aliases:
            return list(argv)
        if os.geteuid() != 0:
            raise RemoteError(
                self.host, f"cannot run commands as {user}: only root can switch users locally",
                argv=argv,
            )
        return ["runuser", "-u", user, "--", *argv]

    def _popen(
        self, command: list[str], environment: dict[str, str] | None, argv: tuple[str, ...]
    ) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(
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
        process = self._popen(command, environment, argv)
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

    def put_files(self, files: Sequence[Upload], *, progress: ProgressFn | None = None) -> None:
        """Copy each file as `put` does; `progress` counts bytes over all of them."""
        total = sum(Path(f.local).stat().st_size for f in files if Path(f.local).is_file())
        done = 0
        for upload in files:

            def step(sent: int, _size: int, base: int = done) -> None:
                if progress is not None:
                    progress(base + sent, total)

            self.put(upload.local, upload.remote, sha256=upload.sha256, progress=step)
            done += Path(upload.local).stat().st_size

    def close(self) -> None:
        """End the streams still open."""
        with self._lock:
            streams, self._streams = self._streams, []
        for stream in streams:
            stream.close()
