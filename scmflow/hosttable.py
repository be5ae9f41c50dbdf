"""upgrade.cfg's `[host]` table: one row per host, its SSH login and where its password comes from.

A Password cell is a literal password, `-` (ask the operator) or `env:NAME` (read the
environment variable); a quoted cell is always literal, so `'-'` and `'env:X'` are real
passwords. An empty cell means key or agent login.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from scmflow.cfgsyntax import Cell, Row, Section, read_table
from scmflow.configrules import check_host_name, check_user_name, normalise_path
from scmflow.errors import ConfigError

PasswordSource = Literal["none", "literal", "prompt", "env"]

DEFAULT_SSH_PORT = 22
PROMPT_MARKER = "-"
ENV_PREFIX = "env:"

# Canonical spellings; lookups are case-insensitive.
_HOST_COLUMNS = ("HostName", "SshPort", "User", "Password", "JavaHome")
_HOST_REQUIRED = ("HostName", "User")
_PORT_RE = re.compile(r"^\d{1,5}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class HostConfig:
    """One `[host]` row; `password` is None unless given literally or resolved later."""

    name: str
    port: int
    user: str
    password: str | None = field(default=None, repr=False)
    java_home: str | None = None
    line: int = 0
    # Where the password comes from: "none" (key/agent login), "literal" (the cell),
    # "prompt" (cell `-`: ask the operator) or "env" (cell `env:NAME`).
    password_source: PasswordSource = "none"  # noqa: S105 (a source kind, not a secret)
    password_env: str | None = None
    # False when the SshPort cell was empty or absent: then ~/.ssh/config's Port applies
    port_given: bool = True

    @property
    def needs_password(self) -> bool:
        """Whether the CLI still has to resolve a prompt or environment password."""
        return self.password_source in ("prompt", "env") and self.password is None

    def with_password(self, password: str) -> HostConfig:
        """A copy carrying the resolved password."""
        return replace(self, password=password)

    def to_record(self) -> dict[str, object]:
        """Plain data for the status file and JSON output; never the password."""
        return {
            "name": self.name,
            "port": self.port,
            "user": self.user,
            "java_home": self.java_home,
            "password_source": self.password_source,
        }


def parse_hosts(section: Section, path: str, warnings: list[str]) -> tuple[HostConfig, ...]:
    """The hosts of a `[host]` table, in file order; a host named twice is an error."""
    rows = read_table(section, path, _HOST_COLUMNS, _HOST_REQUIRED, (), warnings)
    if not rows:
        raise ConfigError(
            f"section [{section.name}] lists no host", path=path, line=section.line
        )
    hosts: list[HostConfig] = []
    for row in rows:
        host = _parse_host(row, path)
        earlier = find_host(hosts, host.name)
        if earlier is not None:
            raise ConfigError(
                f"duplicate host '{host.name}' (first at line {earlier.line})",
                path=path,
                line=row.line,
                field="HostName",
            )
        hosts.append(host)
    return tuple(hosts)


def _parse_host(row: Row, path: str) -> HostConfig:
    name = row.get("HostName").text
    if not name:
        raise ConfigError("HostName is empty", path=path, line=row.line, field="HostName")
    try:
        check_host_name(name)
    except ValueError as exc:
        raise ConfigError(str(exc), path=path, line=row.line, field="HostName") from exc
    user = row.get("User").text
    check_user_cell(user, path, row.line, "User")
    source, password, env = _password(row.get("Password"), path, row.line)
    return HostConfig(
        name=name,
        port=_port(row.get("SshPort").text, path, row.line),
        user=user,
        password=password,
        java_home=_java_home(row.get("JavaHome").text, path, row.line),
        line=row.line,
        password_source=source,
        password_env=env,
        port_given=bool(row.get("SshPort").text),
    )


def _port(raw: str, path: str, line: int) -> int:
    if not raw:
        return DEFAULT_SSH_PORT
    if not _PORT_RE.match(raw) or not 1 <= int(raw) <= 65535:
        raise ConfigError(
            f"'{raw}' is not a port number (1-65535)", path=path, line=line, field="SshPort"
        )
    return int(raw)


def check_user_cell(user: str, path: str, line: int, column: str) -> None:
    """ConfigError unless the cell under `column` holds a user name."""
    if not user:
        raise ConfigError(f"{column} is empty", path=path, line=line, field=column)
    try:
        check_user_name(user)
    except ValueError as exc:
        raise ConfigError(str(exc), path=path, line=line, field=column) from exc


def _password(cell: Cell, path: str, line: int) -> tuple[PasswordSource, str | None, str | None]:
    # Quoting a cell makes it literal, so `'-'` and `'env:X'` are real passwords.
    if cell.quoted:
        return "literal", cell.text, None
    if not cell.text:
        return "none", None, None
    if cell.text == PROMPT_MARKER:
        return "prompt", None, None
    if cell.text.startswith(ENV_PREFIX):
        name = cell.text[len(ENV_PREFIX) :].strip()
        if not _ENV_RE.match(name):
            raise ConfigError(
                f"'{name}' is not an environment variable name (use env:NAME)",
                path=path,
                line=line,
                field="Password",
            )
        return "env", None, name
    return "literal", cell.text, None


def _java_home(raw: str, path: str, line: int) -> str | None:
    if not raw:
        return None
    try:
        return normalise_path(raw)
    except ValueError as exc:
        raise ConfigError(str(exc), path=path, line=line, field="JavaHome") from exc


def find_host(hosts: Iterable[HostConfig], name: str) -> HostConfig | None:
    """The host called `name`, whatever its case; None when absent."""
    # Host names are case-insensitive in DNS; treat them so everywhere.
    return next((h for h in hosts if h.name.lower() == name.lower()), None)
