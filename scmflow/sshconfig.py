"""The operator's OpenSSH client configuration: where a host name really leads, and through what.

`resolve_target` turns the name an operator uses (upgrade.cfg's HostName cell) into an
`SSHTarget`, filling what the caller leaves open from ssh_config, as `ssh NAME` would:

- `HostName` is the address to connect to; the target keeps the operator's name for
  everything shown (messages, status file, plan).
- `Port` and `User` apply only when the caller gives none (like `ssh -p`/`-l`, an
  upgrade.cfg cell wins); then 22 and the local login name.
- `IdentityFile` (all of them, in order) and `IdentitiesOnly`.
- `ProxyJump a,b`: reach b through a, then the target through b; as in OpenSSH, the first
  hop follows its own ProxyJump, later hops are reached through the hop before them, and
  each hop takes its HostName/Port/User/IdentityFile from its own Host blocks.
- `HostKeyAlias`. Host keys are looked up as OpenSSH files them: under the alias, else
  under HostName (`[HostName]:port` off port 22, where a matching key filed under the
  bare HostName is trusted too), never under the name the operator typed; see
  SSHTarget.known_names. So `ssh NAME` once with the same config records what we check.

Files: ~/.ssh/config, then /etc/ssh/ssh_config; the first value found wins, `Include` is
followed. Not honoured: ProxyCommand (refused with a clear error rather than bypassed)
and options that weaken host-key checking (StrictHostKeyChecking, UserKnownHostsFile):
keys are always checked against ~/.ssh/known_hosts.

No command from ssh_config is ever run. A `Match exec` line anywhere in the files makes
the whole configuration an error (ConfigError naming file and line), found when the files
are loaded, before any lookup: paramiko would otherwise run its command, through a shell,
for every lookup that reaches it, with the host name (from upgrade.cfg or a status file)
pasted into `%h`/`%n`. Host names are also checked to be names or addresses before they
are looked up, as upgrade.cfg's HostName is.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import paramiko

from scmflow.configrules import check_host_name
from scmflow.errors import ConfigError
from scmflow.session.targets import SSHTarget

MAX_HOPS = 8
_MAX_INCLUDE_DEPTH = 16  # OpenSSH's READCONF_MAX_DEPTH
_KEYWORD = re.compile(r"^\s*(\w+)(?:\s*=\s*|\s+)(.*?)\s*$")
# Match criteria that take no argument (OpenSSH's readconf.c, paramiko's SSHConfig).
_BARE_CRITERIA = frozenset({"all", "canonical", "final"})
_BRACKETED = re.compile(r"^\[([^\]]+)\](?::(\d+))?$")


def default_config_files() -> tuple[Path, ...]:
    """The files OpenSSH reads, in its order: the user's, then the system-wide one."""
    return (Path.home() / ".ssh" / "config", Path("/etc/ssh/ssh_config"))


@dataclass(frozen=True)
class JumpSpec:
    """One hop of a ProxyJump list: `[user@]host[:port]` or `ssh://[user@]host[:port]`."""

    host: str
    user: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class HostSettings:
    """What ssh_config says about one host name (None: not set)."""

    hostname: str
    port: int | None = None
    user: str | None = None
    identity_files: tuple[Path, ...] = ()
    identities_only: bool = False
    jumps: tuple[JumpSpec, ...] | None = None
    host_key_alias: str | None = None
    proxy_command: str | None = None


@dataclass(frozen=True)
class ClientConfig:
    """Parsed ssh_config files; `files` are those that existed."""

    files: tuple[Path, ...] = ()
    parsed: paramiko.SSHConfig = field(default_factory=paramiko.SSHConfig, compare=False, repr=False)

    @property
    def source(self) -> str:
        """The files, for messages."""
        return ", ".join(str(path) for path in self.files) or "ssh_config"

    def lookup(self, name: str) -> HostSettings:
        """The settings for `name`; ConfigError when a value is malformed."""
        try:
            found = self.parsed.lookup(name)
        except (paramiko.ConfigParseError, ImportError, ValueError) as exc:
            raise ConfigError(f"cannot look up host {name}: {exc}", path=self.source) from None
        raw = cast(dict[str, object], found)
        proxy_command = raw.get("proxycommand")
        jump_text = _text(raw, "proxyjump")
        return HostSettings(
            hostname=_text(raw, "hostname") or name,
            port=_port(_text(raw, "port"), f"Port of host {name}", self.source),
            user=_text(raw, "user"),
            identity_files=tuple(_identity(p) for p in _texts(raw, "identityfile")),
            identities_only=(_text(raw, "identitiesonly") or "no").lower() == "yes",
            jumps=None if jump_text is None else parse_proxy_jump(jump_text, source=self.source),
            host_key_alias=_text(raw, "hostkeyalias"),
            proxy_command=proxy_command if isinstance(proxy_command, str) else None,
        )


def _text(raw: dict[str, object], key: str) -> str | None:
    value = raw.get(key)
    return value if isinstance(value, str) and value else None


def _texts(raw: dict[str, object], key: str) -> list[str]:
    value = raw.get(key)
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _identity(text: str) -> Path:
    return Path(os.path.expanduser(text))


def _port(text: str | None, what: str, source: str) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"{what} is '{text}', not a port number (1-65535)", path=source)
    return int(text)


def parse_proxy_jump(text: str, *, source: str = "ssh_config") -> tuple[JumpSpec, ...]:
    """The hops of a ProxyJump value, first hop first; `none` means no hop."""
    if text.strip().lower() == "none":
        return ()
    return tuple(_parse_hop(part.strip(), source) for part in text.split(","))


def _parse_hop(part: str, source: str) -> JumpSpec:
    rest = part[len("ssh://"):] if part.startswith("ssh://") else part
    user: str | None = None
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
    port_text: str | None = None
    bracketed = _BRACKETED.match(rest)
    if bracketed:
        rest, port_text = bracketed.group(1), bracketed.group(2)
    elif rest.count(":") == 1:
        rest, port_text = rest.split(":")
    if not rest or user == "" or any(c.isspace() for c in part) or port_text == "":
        raise ConfigError(f"ProxyJump hop '{part}' is not [user@]host[:port]", path=source)
    port = _port(port_text, f"the port of ProxyJump hop '{part}'", source)
    return JumpSpec(host=rest, user=user, port=port)


# --------------------------------------------------------------------------- files


def load_client_config(files: Sequence[Path] | None = None) -> ClientConfig:
    """Parse the ssh_config files that exist (default: the user's, then the system's)."""
    paths = tuple(default_config_files() if files is None else files)
    lines: list[str] = []
    found: list[Path] = []
    for path in paths:
        if not path.is_file():
            continue
        found.append(path)
        # each file starts global, whatever Host block the previous one ended in
        lines.append("Host *")
        lines += _expand(path, path.parent, 0)
    parsed = paramiko.SSHConfig()
    source = ", ".join(str(p) for p in found)
    try:
        parsed.parse(lines)
    except (paramiko.ConfigParseError, ValueError) as exc:
        raise ConfigError(f"cannot parse: {exc}", path=source) from None
    return ClientConfig(files=tuple(found), parsed=parsed)


def _expand(path: Path, base: Path, depth: int, header: str = "Host *") -> list[str]:
    """The file's lines with each `Include` replaced by the included files' lines.

    `header` is the Host/Match line the file is included under; it is repeated after each
    Include, so the included files' own Host lines end there, as in OpenSSH.
    """
    if depth > _MAX_INCLUDE_DEPTH:
        raise ConfigError(f"Include nested deeper than {_MAX_INCLUDE_DEPTH} levels", path=str(path))
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=str(path)) from None
    out: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        match = _KEYWORD.match(line)
        keyword = match.group(1).lower() if match else ""
        if keyword == "match" and match is not None and _runs_a_command(match.group(2)):
            raise ConfigError(
                "Match exec runs a command, and scmflow never runs commands from ssh_config; "
                "remove the line (a ProxyJump or a Host block does the same without a command)",
                path=str(path),
                line=number,
            )
        if keyword in ("host", "match"):
            header = line.strip()
        if keyword != "include" or match is None:
            out.append(line)
            continue
        for included in _include_paths(match.group(2), base, path, number):
            out += _expand(included, base, depth + 1, header)
        out.append(header)
    return out


def _runs_a_command(criteria: str) -> bool:
    """Whether a Match line's criteria hold `exec` (or `!exec`), read as paramiko reads them."""
    try:
        tokens = shlex.split(criteria)
    except ValueError:
        return "exec" in criteria.lower()  # unparseable: refuse rather than guess it harmless
    while tokens:
        kind = tokens.pop(0).lstrip("!").lower()
        if kind == "exec":
            return True
        if kind not in _BARE_CRITERIA and tokens:
            tokens.pop(0)  # the criterion's argument, which may itself say "exec"
    return False


def _include_paths(value: str, base: Path, path: Path, line: int) -> list[Path]:
    try:
        patterns = shlex.split(value)
    except ValueError as exc:
        raise ConfigError(f"bad Include: {exc}", path=str(path), line=line) from None
    found: list[Path] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        full = expanded if os.path.isabs(expanded) else str(base / expanded)
        found += sorted(Path(p) for p in glob.glob(full) if Path(p).is_file())
    return found


# --------------------------------------------------------------------------- targets


def local_user() -> str:
    """The login name OpenSSH uses when nothing names a user."""
    return pwd.getpwuid(os.getuid()).pw_name


def resolve_target(
    config: ClientConfig,
    name: str,
    *,
    port: int | None = None,
    user: str | None = None,
    password: str | None = None,
) -> SSHTarget:
    """The connection `ssh [-p port] [-l user] name` would make; given values win over ssh_config.

    ConfigError unless `name` is a host name or address: it reaches ssh_config's tokens.
    """
    try:
        check_host_name(name)
    except ValueError as exc:
        raise ConfigError(str(exc), path=config.source, field="HostName") from None
    target = _resolve(config, name, port=port, user=user, own_jumps=True, path=())
    return replace(target, password=password)


def _resolve(
    config: ClientConfig,
    name: str,
    *,
    port: int | None,
    user: str | None,
    own_jumps: bool,
    path: tuple[str, ...],
) -> SSHTarget:
    route = (*path, name)
    if name in path:
        raise ConfigError(
            f"ProxyJump loop for {path[0]}: {' -> '.join(route)} (give the jump host "
            "`ProxyJump none` in its own Host block)",
            path=config.source,
        )
    if len(path) > MAX_HOPS:
        raise ConfigError(f"ProxyJump chain for {path[0]} is longer than {MAX_HOPS} hops", path=config.source)
    settings = config.lookup(name)
    # a later hop of a ProxyJump list is reached through the hop before it, like `ssh -J`
    jumps = (settings.jumps or ()) if own_jumps else ()
    if own_jumps and settings.proxy_command and not jumps:
        raise ConfigError(
            f"host {name} uses ProxyCommand, which scmflow does not run; use ProxyJump instead",
            path=config.source,
        )
    return SSHTarget(
        host=name,
        port=port or settings.port or 22,
        user=user or settings.user or local_user(),
        address=settings.hostname,
        host_key_alias=settings.host_key_alias,
        identity_files=settings.identity_files,
        identities_only=settings.identities_only,
        via=_chain(config, jumps, route) if jumps else None,
    )


def _chain(config: ClientConfig, jumps: Sequence[JumpSpec], path: tuple[str, ...]) -> SSHTarget:
    """The last hop, carrying the hops before it in `via`."""
    via: SSHTarget | None = None
    for index, spec in enumerate(jumps):
        hop = _resolve(config, spec.host, port=spec.port, user=spec.user, own_jumps=index == 0, path=path)
        via = hop if index == 0 else replace(hop, via=via)
    assert via is not None
    return via
