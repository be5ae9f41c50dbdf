"""The operator's upgrade.cfg, in SequoiaCM's own format, as frozen dataclasses.

The format: `[name]` section lines, `#` comment lines, blank lines ignored. A section
whose first line contains `=` holds `key=value` lines; any other section is a table: a
comma-separated header line, then one line per row. Table cells are trimmed; `'` quotes
a cell (a quoted cell keeps its spaces and may hold commas; `''` inside it is one quote)
and `\\` escapes `,`, `'` and `\\` anywhere (before any other character it is a plain
backslash, so Windows-style text survives). A `key=value` value is taken verbatim after
trimming, unless it starts with `'`: then it is one quoted cell. The hook keys
(`hookPreStop`, `hookPostVerify`, `hookPostRollback`) are the exception: their value is a
command line, split by shlex with a shell's quoting rules and never run through a shell.

Leniencies, all deliberate: section names, column names and keys match case-insensitively;
unknown columns (real configs carry InstallUserPassword and InstallUserGroup) and unknown
`[config]` keys are accepted and ignored, each reported in `UpgradeConfig.warnings` so the
CLI can show them; `[config]` may be absent (every key has a default). A `#` only starts
a comment at the start of a line, so passwords and paths may contain it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from scmflow.catalog import Catalog
from scmflow.errors import ConfigError
from scmflow.hooks import (
    DEFAULT_TIMEOUT,
    MAX_TIMEOUT,
    MIN_TIMEOUT,
    Hooks,
    check_timeout,
    parse_command,
)

PasswordSource = Literal["none", "literal", "prompt", "env"]

DEFAULT_SSH_PORT = 22
DEFAULT_INSTALL_USER = "scmadmin"
DEFAULT_UPGRADE_PACK_PATH = "/opt/upgrade/sequoiacm"
DEFAULT_BACKUP_PATH = "/opt/backup/sequoiacm"
INSTALL_DIR_NAME = "sequoiacm"
PROMPT_MARKER = "-"
ROOT_USER = "root"
ENV_PREFIX = "env:"

_QUOTE = "'"
_ESCAPE = "\\"
_DELIMITER = ","
_META = (_QUOTE, _ESCAPE, _DELIMITER)
_BLANK = " \t"

_INSTALL_SECTION = "installconfig"
_HOST_SECTION = "host"
_CONFIG_SECTION = "config"
_SECTIONS = (_INSTALL_SECTION, _HOST_SECTION, _CONFIG_SECTION)

# Canonical spellings; lookups are case-insensitive.
_INSTALL_COLUMNS = ("InstallPath", "InstallUser")
_INSTALL_REQUIRED = ("InstallPath",)
# Columns the vendor's own configs carry that this tool does not need.
_INSTALL_IGNORED = ("InstallUserPassword", "InstallUserGroup")
_HOST_COLUMNS = ("HostName", "SshPort", "User", "Password", "JavaHome")
_HOST_REQUIRED = ("HostName", "User")
_CONFIG_KEYS = (
    "service",
    "upgradePackPath",
    "backupPath",
    "hookPreStop",
    "hookPostVerify",
    "hookPostRollback",
    "hookTimeout",
)
# Hook command keys and the Hooks field each fills.
_HOOK_KEYS = (
    ("hookPreStop", "pre_stop"),
    ("hookPostVerify", "post_verify"),
    ("hookPostRollback", "post_rollback"),
)
_HOOK_KEYS_LOWER = frozenset(key.lower() for key, _ in _HOOK_KEYS)
_TIMEOUT_RE = re.compile(r"^\d{1,6}$")

_PORT_RE = re.compile(r"^\d{1,5}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9_.:%-]+$")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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


@dataclass(frozen=True)
class ConfigFile:
    """The upgrade.cfg a run was started with: its absolute path and the sha256 of its bytes.

    Recorded in the status file so that a rollback or resume without --upgrade-conf can
    read the passwords from the same file, and only if it is still byte for byte the same.
    """

    path: str
    sha256: str

    def to_record(self) -> dict[str, str]:
        """Plain data for the status file header: where and which bytes, never a password."""
        return {"path": self.path, "sha256": self.sha256}

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> ConfigFile:
        """Inverse of `to_record`; ValueError unless it holds an absolute path and a sha256."""
        path, digest = record.get("path"), record.get("sha256")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ValueError("the config record has no absolute path")
        if not isinstance(digest, str) or not _SHA256_RE.match(digest):
            raise ValueError("the config record has no sha256")
        return cls(path=path, sha256=digest)


class StaleConfigError(ConfigError):
    """The config a status file records cannot stand in for --upgrade-conf.

    `reason` completes "the config recorded in the status file, PATH, ...": it is missing,
    cannot be read, or has changed since the run.
    """

    def __init__(self, recorded: ConfigFile, reason: str) -> None:
        super().__init__(f"the config recorded in the status file, {recorded.path}, {reason}")
        self.recorded = recorded
        self.reason = reason


@dataclass(frozen=True)
class UpgradeConfig:
    """A parsed upgrade.cfg; `services` None means every service."""

    path: str
    install_path: str
    install_user: str
    hosts: tuple[HostConfig, ...]
    services: tuple[str, ...] | None
    upgrade_pack_path: str = DEFAULT_UPGRADE_PACK_PATH
    backup_path: str = DEFAULT_BACKUP_PATH
    # What was accepted but ignored (unknown columns or keys), one line each.
    warnings: tuple[str, ...] = ()
    # The file it was read from; None when parsed from text (parse_config).
    file: ConfigFile | None = None
    # Operator commands run around each pair's upgrade; by default none.
    hooks: Hooks = Hooks()

    def host_names(self) -> tuple[str, ...]:
        """Host names in config order."""
        return tuple(h.name for h in self.hosts)

    def host(self, name: str) -> HostConfig:
        """The host called `name` (case-insensitive); ConfigError when absent."""
        found = _find_host(self.hosts, name)
        if found is None:
            raise ConfigError(
                f"host '{name}' is not in the configuration; "
                f"configured hosts: {', '.join(self.host_names())}",
                path=self.path,
                field="--host",
            )
        return found


@dataclass(frozen=True)
class _Line:
    number: int
    text: str


@dataclass(frozen=True)
class _Section:
    name: str
    line: int
    body: tuple[_Line, ...]


@dataclass(frozen=True)
class _Cell:
    text: str
    quoted: bool


@dataclass(frozen=True)
class _Row:
    line: int
    cells: dict[str, _Cell]

    def get(self, column: str) -> _Cell:
        """The cell under `column`; an empty cell when the header lacks that column."""
        return self.cells.get(column.lower(), _Cell("", False))


@dataclass(frozen=True)
class _Value:
    line: int
    key: str
    text: str
    # The trimmed text before any unquoting: hook command lines are split by shlex,
    # whose own quoting rules apply to the whole line.
    raw: str = ""


class _CellError(ValueError):
    """A tokenising problem in cell number `index` of a line."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.message = message
        self.index = index


def load_config(path: Path, catalog: Catalog) -> UpgradeConfig:
    """Read and parse the upgrade.cfg at `path`; every problem is a ConfigError.

    The result's `file` names the file by its absolute path and the sha256 of the very
    bytes parsed, so what a run records is exactly what it used.
    """
    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ConfigError(f"cannot read the upgrade configuration: {reason}", path=where) from exc
    config = parse_config(_decode(raw, where), where, catalog)
    return replace(config, file=ConfigFile(path=os.path.abspath(path), sha256=_sha256(raw)))


def load_recorded_config(recorded: ConfigFile, catalog: Catalog) -> UpgradeConfig:
    """The config a status file records, if its file still holds the bytes the run used.

    StaleConfigError when the file is missing, unreadable or changed; the bytes compared
    are the bytes parsed, so a file replaced in between cannot slip through.
    """
    try:
        raw = Path(recorded.path).read_bytes()
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise StaleConfigError(recorded, "is missing") from exc
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise StaleConfigError(recorded, f"cannot be read ({reason})") from exc
    if _sha256(raw) != recorded.sha256:
        raise StaleConfigError(recorded, "has changed since the run")
    config = parse_config(_decode(raw, recorded.path), recorded.path, catalog)
    return replace(config, file=recorded)


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x})", path=where, line=line
        ) from exc


def parse_config(text: str, path: str, catalog: Catalog) -> UpgradeConfig:
    """Parse upgrade.cfg text; `path` only names the file in messages."""
    sections = _split_sections(text, path)
    warnings: list[str] = []
    install = _require(sections, _INSTALL_SECTION, path)
    install_path, install_user = _parse_install(install, path, warnings)
    hosts = _parse_hosts(_require(sections, _HOST_SECTION, path), path, warnings)
    values = _parse_config_section(sections.get(_CONFIG_SECTION), path, warnings)
    services = _config_services(values.get("service"), path, catalog)
    pack = _config_dir(values.get("upgradepackpath"), DEFAULT_UPGRADE_PACK_PATH, path)
    backup = _config_dir(values.get("backuppath"), DEFAULT_BACKUP_PATH, path)
    _check_outside_install("upgradePackPath", pack, install_path, values, path)
    _check_outside_install("backupPath", backup, install_path, values, path)
    hooks = _config_hooks(values, path)
    return UpgradeConfig(
        path=path,
        install_path=install_path,
        install_user=install_user,
        hosts=hosts,
        services=services,
        upgrade_pack_path=pack,
        backup_path=backup,
        warnings=tuple(warnings),
        hooks=hooks,
    )


def select_services(names_csv: str, catalog: Catalog) -> tuple[str, ...]:
    """Service names from `--service a,b`, validated against the catalog, duplicates dropped."""
    try:
        return _service_list(names_csv, catalog)
    except ValueError as exc:
        raise ConfigError(str(exc), field="--service") from exc


def select_hosts(csv: str, config: UpgradeConfig) -> tuple[HostConfig, ...]:
    """Hosts named by `--host a,b`, in config order; a name not in the config is an error."""
    names = _split_list(csv)
    if not names:
        raise ConfigError("no host named", field="--host")
    chosen = [config.host(name) for name in names]
    return tuple(h for h in config.hosts if h in chosen)


def normalise_install_path(raw: str) -> str:
    """InstallPath as the original reads it, ending in `/sequoiacm`; ValueError if relative."""
    parts = _path_parts(raw)
    if not parts or parts[-1] != INSTALL_DIR_NAME:
        parts.append(INSTALL_DIR_NAME)
    return "/" + "/".join(parts)


# --- validators -----------------------------------------------------------------------
# What the parser holds every value to, public so that values from elsewhere (a status
# file's header) meet the very same rules. Each raises ValueError with the reason.


def normalise_path(raw: str) -> str:
    """An absolute path without repeated or trailing slashes and `.`; ValueError if relative,
    with `..` or with a control character."""
    return "/" + "/".join(_path_parts(raw))


def check_normalised_path(value: str) -> None:
    """ValueError unless `value` is already what `normalise_path` makes of it."""
    if normalise_path(value) != value:
        raise ValueError(f"'{value}' is not a normalised absolute path")


def check_host_name(name: str) -> None:
    """ValueError unless `name` is a host name or an IP address (what HostName accepts)."""
    if not name:
        raise ValueError("the host name is empty")
    if not _HOST_RE.match(name) or name.startswith("-"):
        raise ValueError(f"'{name}' is not a host name or address")


def check_user_name(user: str) -> None:
    """ValueError unless `user` is a user name (empty is not)."""
    if not user:
        raise ValueError("the user name is empty")
    if not _USER_RE.match(user):
        raise ValueError(f"'{user}' is not a user name")


def check_install_user(user: str) -> None:
    """ValueError unless `user` may own the install: a user name, and not root.

    The services, their ctl scripts and java run as this user; as root, a file under the
    install would be code run as root.
    """
    check_user_name(user)
    if user == ROOT_USER:
        raise ValueError(f"'{user}' cannot be the install user: the services and their scripts run as it")


def check_run_base(directory: str) -> None:
    """ValueError when `directory` may not hold a run's dated directories: `/` or a system directory."""
    if directory == "/" or directory in SYSTEM_DIRS:
        raise ValueError(f"'{directory}' is a system directory")


def check_outside_install(directory: str, install_path: str) -> None:
    """ValueError when `directory` lies inside `install_path`, which an upgrade replaces parts of."""
    if directory == install_path or directory.startswith(install_path + "/"):
        raise ValueError(f"'{directory}' must not lie inside InstallPath {install_path}")


# --- sections -------------------------------------------------------------------------


def _split_sections(text: str, path: str) -> dict[str, _Section]:
    sections: dict[str, _Section] = {}
    current: tuple[str, int] | None = None
    body: list[_Line] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            if current is not None:
                _add_section(sections, current, body, path)
            current, body = (_section_name(stripped, number, path), number), []
            continue
        if current is None:
            raise ConfigError(
                "text before the first [section] line", path=path, line=number
            )
        body.append(_Line(number, raw))
    if current is not None:
        _add_section(sections, current, body, path)
    return sections


def _section_name(stripped: str, number: int, path: str) -> str:
    if not stripped.endswith("]"):
        raise ConfigError("malformed section line (expected [name])", path=path, line=number)
    name = stripped[1:-1].strip().lower()
    if name not in _SECTIONS:
        raise ConfigError(
            f"unknown section [{stripped[1:-1].strip()}]; expected one of "
            + ", ".join(f"[{s}]" for s in _SECTIONS),
            path=path,
            line=number,
        )
    return name


def _add_section(
    sections: dict[str, _Section], current: tuple[str, int], body: list[_Line], path: str
) -> None:
    name, line = current
    if name in sections:
        raise ConfigError(
            f"duplicate section [{name}] (first at line {sections[name].line})",
            path=path,
            line=line,
        )
    sections[name] = _Section(name, line, tuple(body))


def _require(sections: dict[str, _Section], name: str, path: str) -> _Section:
    if name not in sections:
        raise ConfigError(f"missing section [{name}]", path=path)
    return sections[name]


# --- tables ---------------------------------------------------------------------------


def _read_table(
    section: _Section,
    path: str,
    known: tuple[str, ...],
    required: tuple[str, ...],
    quietly_ignored: tuple[str, ...],
    warnings: list[str],
) -> list[_Row]:
    if not section.body:
        raise ConfigError(
            f"section [{section.name}] is empty (expected a header line: {', '.join(known)})",
            path=path,
            line=section.line,
        )
    header_line = section.body[0]
    if "=" in header_line.text:
        raise ConfigError(
            f"section [{section.name}] must be a table, not key=value lines "
            f"(expected a header line: {', '.join(known)})",
            path=path,
            line=header_line.number,
        )
    spelled = _read_header(header_line, path, section.name)
    columns = [c.lower() for c in spelled]
    missing = [c for c in required if c.lower() not in columns]
    if missing:
        raise ConfigError(
            f"header of [{section.name}] lacks the required column(s) {', '.join(missing)}",
            path=path,
            line=header_line.number,
            field=missing[0],
        )
    lowered = {k.lower() for k in known + quietly_ignored}
    for column in spelled:
        if column.lower() not in lowered:
            warnings.append(
                f"{path}:{header_line.number}: unknown column '{column}' in "
                f"[{section.name}] ignored"
            )
    return [_read_row(line, spelled, path) for line in section.body[1:]]


def _read_header(line: _Line, path: str, section: str) -> list[str]:
    try:
        cells = _split_cells(line.text)
    except _CellError as exc:
        raise ConfigError(exc.message, path=path, line=line.number, field="header") from exc
    columns: list[str] = []
    for index, cell in enumerate(cells):
        name = cell.text.strip()
        if not name:
            raise ConfigError(
                f"empty column name in the header of [{section}] (column {index + 1})",
                path=path,
                line=line.number,
                field="header",
            )
        if name.lower() in (c.lower() for c in columns):
            raise ConfigError(
                f"duplicate column in the header of [{section}]",
                path=path,
                line=line.number,
                field=name,
            )
        columns.append(name)
    return columns


def _read_row(line: _Line, columns: list[str], path: str) -> _Row:
    try:
        cells = _split_cells(line.text)
    except _CellError as exc:
        where = columns[exc.index] if exc.index < len(columns) else f"cell {exc.index + 1}"
        raise ConfigError(exc.message, path=path, line=line.number, field=where) from exc
    if len(cells) > len(columns):
        raise ConfigError(
            f"row has {len(cells)} cells but the header has {len(columns)} columns",
            path=path,
            line=line.number,
            field=f"cell {len(columns) + 1}",
        )
    if len(cells) < len(columns):
        raise ConfigError(
            f"row has {len(cells)} cells but the header has {len(columns)} columns "
            "(leave a cell empty, but keep its comma)",
            path=path,
            line=line.number,
            field=columns[len(cells)],
        )
    return _Row(line.number, {c.lower(): cell for c, cell in zip(columns, cells, strict=True)})


def _split_cells(text: str) -> list[_Cell]:
    """Split one table line into cells (see the module docstring for the rules)."""
    cells: list[_Cell] = []
    i, end = 0, len(text)
    while True:
        while i < end and text[i] in _BLANK:
            i += 1
        if i < end and text[i] == _QUOTE:
            value, i = _read_quoted(text, i + 1, len(cells))
            while i < end and text[i] in _BLANK:
                i += 1
            if i < end and text[i] != _DELIMITER:
                raise _CellError("text after the closing quote", len(cells))
            cells.append(_Cell(value, True))
        else:
            value, i = _read_plain(text, i, len(cells))
            cells.append(_Cell(value.strip(), False))
        if i >= end:
            return cells
        i += 1  # past the delimiter


def _read_plain(text: str, i: int, index: int) -> tuple[str, int]:
    out: list[str] = []
    while i < len(text) and text[i] != _DELIMITER:
        if text[i] == _ESCAPE:
            if i + 1 >= len(text):
                raise _CellError("line ends with the escape character \\", index)
            if text[i + 1] in _META:
                out.append(text[i + 1])
                i += 2
                continue
        out.append(text[i])
        i += 1
    return "".join(out), i


def _read_quoted(text: str, i: int, index: int) -> tuple[str, int]:
    out: list[str] = []
    while i < len(text):
        ch = text[i]
        if ch == _ESCAPE and i + 1 < len(text) and text[i + 1] in _META:
            out.append(text[i + 1])
            i += 2
        elif ch == _QUOTE and text[i + 1 : i + 2] == _QUOTE:
            out.append(_QUOTE)
            i += 2
        elif ch == _QUOTE:
            return "".join(out), i + 1
        else:
            out.append(ch)
            i += 1
    raise _CellError("unterminated quote (a quoted cell must close on the same line)", index)


# --- [installconfig] ------------------------------------------------------------------


def _parse_install(section: _Section, path: str, warnings: list[str]) -> tuple[str, str]:
    rows = _read_table(
        section, path, _INSTALL_COLUMNS, _INSTALL_REQUIRED, _INSTALL_IGNORED, warnings
    )
    if not rows:
        raise ConfigError(
            f"section [{_INSTALL_SECTION}] has no row (it needs exactly one)",
            path=path,
            line=section.line,
        )
    if len(rows) > 1:
        raise ConfigError(
            f"section [{_INSTALL_SECTION}] has {len(rows)} rows (it needs exactly one)",
            path=path,
            line=rows[1].line,
        )
    row = rows[0]
    install_path = _install_path(row.get("InstallPath").text, path, row.line)
    user = row.get("InstallUser").text or DEFAULT_INSTALL_USER
    _check_user(user, path, row.line, "InstallUser")
    try:
        check_install_user(user)
    except ValueError as exc:
        raise ConfigError(str(exc), path=path, line=row.line, field="InstallUser") from exc
    return install_path, user


def _install_path(raw: str, path: str, line: int) -> str:
    try:
        return normalise_install_path(raw)
    except ValueError as exc:
        raise ConfigError(str(exc), path=path, line=line, field="InstallPath") from exc


# --- [host] ---------------------------------------------------------------------------


def _parse_hosts(section: _Section, path: str, warnings: list[str]) -> tuple[HostConfig, ...]:
    rows = _read_table(section, path, _HOST_COLUMNS, _HOST_REQUIRED, (), warnings)
    if not rows:
        raise ConfigError(
            f"section [{_HOST_SECTION}] lists no host", path=path, line=section.line
        )
    hosts: list[HostConfig] = []
    for row in rows:
        host = _parse_host(row, path)
        earlier = _find_host(hosts, host.name)
        if earlier is not None:
            raise ConfigError(
                f"duplicate host '{host.name}' (first at line {earlier.line})",
                path=path,
                line=row.line,
                field="HostName",
            )
        hosts.append(host)
    return tuple(hosts)


def _parse_host(row: _Row, path: str) -> HostConfig:
    name = row.get("HostName").text
    if not name:
        raise ConfigError("HostName is empty", path=path, line=row.line, field="HostName")
    try:
        check_host_name(name)
    except ValueError as exc:
        raise ConfigError(str(exc), path=path, line=row.line, field="HostName") from exc
    user = row.get("User").text
    _check_user(user, path, row.line, "User")
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


def _check_user(user: str, path: str, line: int, column: str) -> None:
    if not user:
        raise ConfigError(f"{column} is empty", path=path, line=line, field=column)
    try:
        check_user_name(user)
    except ValueError as exc:
        raise ConfigError(str(exc), path=path, line=line, field=column) from exc


def _password(cell: _Cell, path: str, line: int) -> tuple[PasswordSource, str | None, str | None]:
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


def _find_host(hosts: Iterable[HostConfig], name: str) -> HostConfig | None:
    # Host names are case-insensitive in DNS; treat them so everywhere.
    return next((h for h in hosts if h.name.lower() == name.lower()), None)


# --- [config] -------------------------------------------------------------------------


def _parse_config_section(
    section: _Section | None, path: str, warnings: list[str]
) -> dict[str, _Value]:
    if section is None:
        return {}
    values: dict[str, _Value] = {}
    known = {k.lower() for k in _CONFIG_KEYS}
    for line in section.body:
        value = _read_value(line, path, section.name)
        lowered = value.key.lower()
        if lowered in values:
            raise ConfigError(
                f"duplicate key (first at line {values[lowered].line})",
                path=path,
                line=line.number,
                field=value.key,
            )
        if lowered not in known:
            warnings.append(
                f"{path}:{line.number}: unknown key '{value.key}' in [{section.name}] ignored"
            )
        values[lowered] = value
    return values


def _read_value(line: _Line, path: str, section: str) -> _Value:
    key, sep, rest = line.text.partition("=")
    if not sep:
        raise ConfigError(
            f"section [{section}] holds key=value lines; this line has no '='",
            path=path,
            line=line.number,
        )
    key = key.strip()
    if not key:
        raise ConfigError("empty key before '='", path=path, line=line.number)
    raw = text = rest.strip()
    if text.startswith(_QUOTE) and key.lower() not in _HOOK_KEYS_LOWER:
        text = _unquote_value(text, path, line.number, key)
    return _Value(line.number, key, text, raw)


def _unquote_value(text: str, path: str, line: int, key: str) -> str:
    try:
        cells = _split_cells(text)
    except _CellError as exc:
        raise ConfigError(exc.message, path=path, line=line, field=key) from exc
    if len(cells) != 1:
        raise ConfigError(
            "text after the closing quote", path=path, line=line, field=key
        )
    return cells[0].text


def _config_services(
    value: _Value | None, path: str, catalog: Catalog
) -> tuple[str, ...] | None:
    if value is None or not _split_list(value.text):
        return None
    try:
        return _service_list(value.text, catalog)
    except ValueError as exc:
        raise ConfigError(str(exc), path=path, line=value.line, field=value.key) from exc


# Directories the run creates dated subdirectories in: never the system's own.
SYSTEM_DIRS = frozenset(
    "/bin /boot /dev /etc /home /lib /lib32 /lib64 /opt /proc /root /run /sbin /srv /sys "
    "/tmp /usr /usr/bin /usr/lib /usr/local /usr/sbin /var /var/lib /var/log".split()
)


def _config_dir(value: _Value | None, default: str, path: str) -> str:
    if value is None:
        return default
    try:
        directory = normalise_path(value.text)
    except ValueError as exc:
        raise ConfigError(str(exc), path=path, line=value.line, field=value.key) from exc
    if directory == "/":
        return default  # empty or `/`, as the original reads them
    try:
        check_run_base(directory)
    except ValueError as exc:
        raise ConfigError(
            f"{exc}; give a directory of its own, e.g. {default}",
            path=path,
            line=value.line,
            field=value.key,
        ) from exc
    return directory


def _config_hooks(values: dict[str, _Value], path: str) -> Hooks:
    commands = {
        name: _hook_command(values.get(key.lower()), path) for key, name in _HOOK_KEYS
    }
    return Hooks(
        pre_stop=commands["pre_stop"],
        post_verify=commands["post_verify"],
        post_rollback=commands["post_rollback"],
        timeout=_hook_timeout(values.get("hooktimeout"), path),
    )


def _hook_command(value: _Value | None, path: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    try:
        return parse_command(value.raw)
    except ValueError as exc:
        raise ConfigError(str(exc), path=path, line=value.line, field=value.key) from exc


def _hook_timeout(value: _Value | None, path: str) -> int:
    if value is None or not value.text:
        return DEFAULT_TIMEOUT
    problem = f"'{value.text}' is not a whole number of seconds ({MIN_TIMEOUT}-{MAX_TIMEOUT})"
    if not _TIMEOUT_RE.match(value.text):
        raise ConfigError(problem, path=path, line=value.line, field=value.key)
    try:
        check_timeout(int(value.text))
    except ValueError as exc:
        raise ConfigError(problem, path=path, line=value.line, field=value.key) from exc
    return int(value.text)


def _check_outside_install(
    key: str, directory: str, install_path: str, values: dict[str, _Value], path: str
) -> None:
    # The upgrade replaces doc/, driver/ and tools/ right under InstallPath: a pack or
    # backup directory in there could be destroyed by the very upgrade that needs it.
    try:
        check_outside_install(directory, install_path)
    except ValueError as exc:
        value = values.get(key.lower())
        raise ConfigError(
            f"{key} {exc}",
            path=path,
            line=value.line if value else None,
            field=value.key if value else key,
        ) from exc


# --- shared helpers -------------------------------------------------------------------


def _split_list(csv: str) -> list[str]:
    return [item.strip() for item in csv.split(",") if item.strip()]


def _service_list(csv: str, catalog: Catalog) -> tuple[str, ...]:
    typed = _split_list(csv)
    if not typed:
        raise ValueError("no service named")
    found = {name: catalog.lookup(name) for name in typed}
    unknown = [name for name, service in found.items() if service is None]
    if unknown:
        raise ValueError(
            f"unknown service(s) {', '.join(unknown)}; valid services: "
            + ", ".join(catalog.names())
        )
    return tuple(dict.fromkeys(s.name for s in found.values() if s is not None))


def _path_parts(raw: str) -> list[str]:
    """Components of an absolute path with repeated and trailing slashes dropped."""
    if any(ord(ch) < 32 for ch in raw):
        raise ValueError("path contains a control character")
    if raw and not raw.startswith("/"):
        raise ValueError(f"'{raw}' is not an absolute path")
    parts = [p for p in raw.split("/") if p and p != "."]
    if ".." in parts:
        raise ValueError(f"'{raw}' must not contain '..'")
    return parts
