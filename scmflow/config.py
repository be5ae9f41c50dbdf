"""The operator's upgrade.cfg, in SequoiaCM's own format, as frozen dataclasses.

Three sections: `[installconfig]` (one row: InstallPath, InstallUser), `[host]` (a row per
host, scmflow/hosttable.py) and `[config]` (`key=value` lines). The text format itself is
scmflow/cfgsyntax.py, and the rules each value is held to scmflow/configrules.py. The hook
keys (`hookPreStop`, `hookPostVerify`, `hookPostRollback`) are taken verbatim: their value
is a command line, split by shlex with a shell's quoting rules and never run through a shell.

Leniencies, all deliberate: section names, column names and keys match case-insensitively;
unknown columns (real configs carry InstallUserPassword and InstallUserGroup) and unknown
`[config]` keys are accepted and ignored, each reported in `UpgradeConfig.warnings` so the
CLI can show them; `[config]` may be absent (every key has a default).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from scmflow.catalog import Catalog
from scmflow.cfgsyntax import Section, Value, read_table, read_values, require_section, split_sections
from scmflow.configrules import (
    check_install_user,
    check_outside_install,
    check_run_base,
    normalise_install_path,
    normalise_path,
)
from scmflow.errors import ConfigError
from scmflow.hooks import (
    DEFAULT_TIMEOUT,
    MAX_TIMEOUT,
    MIN_TIMEOUT,
    Hooks,
    check_timeout,
    parse_command,
)
from scmflow.hosttable import HostConfig, check_user_cell, find_host, parse_hosts

DEFAULT_INSTALL_USER = "scmadmin"
DEFAULT_UPGRADE_PACK_PATH = "/opt/upgrade/sequoiacm"
DEFAULT_BACKUP_PATH = "/opt/backup/sequoiacm"

_INSTALL_SECTION = "installconfig"
_HOST_SECTION = "host"
_CONFIG_SECTION = "config"
_SECTIONS = (_INSTALL_SECTION, _HOST_SECTION, _CONFIG_SECTION)

# Canonical spellings; lookups are case-insensitive.
_INSTALL_COLUMNS = ("InstallPath", "InstallUser")
_INSTALL_REQUIRED = ("InstallPath",)
# Columns the vendor's own configs carry that this tool does not need.
_INSTALL_IGNORED = ("InstallUserPassword", "InstallUserGroup")
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
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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
        found = find_host(self.hosts, name)
        if found is None:
            raise ConfigError(
                f"host '{name}' is not in the configuration; "
                f"configured hosts: {', '.join(self.host_names())}",
                path=self.path,
                field="--host",
            )
        return found


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
    sections = split_sections(text, path, _SECTIONS)
    warnings: list[str] = []
    install = require_section(sections, _INSTALL_SECTION, path)
    install_path, install_user = _parse_install(install, path, warnings)
    hosts = parse_hosts(require_section(sections, _HOST_SECTION, path), path, warnings)
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


# --- [installconfig] ------------------------------------------------------------------


def _parse_install(section: Section, path: str, warnings: list[str]) -> tuple[str, str]:
    rows = read_table(
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
    check_user_cell(user, path, row.line, "InstallUser")
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


# --- [config] -------------------------------------------------------------------------


def _parse_config_section(
    section: Section | None, path: str, warnings: list[str]
) -> dict[str, Value]:
    if section is None:
        return {}
    return read_values(section, path, _CONFIG_KEYS, _HOOK_KEYS_LOWER, warnings)


def _config_services(
    value: Value | None, path: str, catalog: Catalog
) -> tuple[str, ...] | None:
    if value is None or not _split_list(value.text):
        return None
    try:
        return _service_list(value.text, catalog)
    except ValueError as exc:
        raise ConfigError(str(exc), path=path, line=value.line, field=value.key) from exc


def _config_dir(value: Value | None, default: str, path: str) -> str:
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


def _config_hooks(values: dict[str, Value], path: str) -> Hooks:
    commands = {
        name: _hook_command(values.get(key.lower()), path) for key, name in _HOOK_KEYS
    }
    return Hooks(
        pre_stop=commands["pre_stop"],
        post_verify=commands["post_verify"],
        post_rollback=commands["post_rollback"],
        timeout=_hook_timeout(values.get("hooktimeout"), path),
    )


def _hook_command(value: Value | None, path: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    try:
        return parse_command(value.raw)
    except ValueError as exc:
        raise ConfigError(str(exc), path=path, line=value.line, field=value.key) from exc


def _hook_timeout(value: Value | None, path: str) -> int:
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
    key: str, directory: str, install_path: str, values: dict[str, Value], path: str
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
