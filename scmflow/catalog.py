"""The service catalog (`states/services.toml`) and SequoiaCM version arithmetic."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scmflow.errors import CatalogError
from scmflow.resources import states_file

NODE_KINDS = ("port", "daemon", "none")
_VERSION_RE = re.compile(r"^\d+(\.\d+)*$")
_LISTED_RE = re.compile(r"[A-Z0-9][A-Z0-9-]*")
_REQUIRED = (
    "name",
    "printed",
    "priority",
    "dir",
    "version_file",
    "node_kind",
    "package",
    "replace",
)


@dataclass(frozen=True)
class Service:
    """One SequoiaCM service as the catalog declares it."""

    name: str
    printed: str
    priority: int
    index: int
    dir: str
    version_file: str
    ctl: str | None
    listed: str | None
    stop_args: tuple[str, ...]
    node_kind: str
    package: tuple[str, ...]
    replace: tuple[str, ...]
    preserve: tuple[str, ...]
    since: str | None

    @property
    def has_nodes(self) -> bool:
        """Whether the service runs processes that an upgrade must stop and restart."""
        return self.node_kind != "none"

    @property
    def order_key(self) -> tuple[int, int]:
        """Upgrade order: priority, then catalog order."""
        return (self.priority, self.index)

    def package_paths(self, version: str) -> tuple[str, ...]:
        """Release-relative paths of the new files for `version`."""
        return tuple(p.replace("{version}", version) for p in self.package)

    def to_spec(self) -> dict[str, Any]:
        """Plain-data form, as sent to the host agent and recorded in the status file."""
        return {
            "name": self.name,
            "printed": self.printed,
            "priority": self.priority,
            "dir": self.dir,
            "version_file": self.version_file,
            "ctl": self.ctl,
            "listed": self.listed,
            "stop_args": list(self.stop_args),
            "node_kind": self.node_kind,
            "replace": list(self.replace),
            "preserve": list(self.preserve),
        }


@dataclass(frozen=True)
class Catalog:
    """Every known service, in catalog order."""

    services: tuple[Service, ...]

    def get(self, name: str) -> Service:
        """The service called `name`; CatalogError when unknown."""
        for service in self.services:
            if service.name == name:
                return service
        raise CatalogError(f"unknown service '{name}'; known: {', '.join(self.names())}")

    def find(self, name: str) -> Service | None:
        """The service called `name`, or None."""
        return next((s for s in self.services if s.name == name), None)

    def lookup(self, spelling: str) -> Service | None:
        """The service an operator means by `spelling`, or None.

        Operators type names as they read them: `gateway` from the config, `GATEWAY` or
        `SERVICE_CENTER` from the tool's output, `SERVICE-CENTER` from a ctl listing. Any
        case of the name, the printed name or the listed name is accepted.
        """
        wanted = spelling.strip().lower()
        for service in self.services:
            spellings = {service.name, service.printed, service.listed or service.name}
            if wanted in {s.lower() for s in spellings}:
                return service
        return None

    def names(self) -> tuple[str, ...]:
        """Every service name in catalog order."""
        return tuple(s.name for s in self.services)

    def ordered(self) -> tuple[Service, ...]:
        """Services in upgrade order."""
        return tuple(sorted(self.services, key=lambda s: s.order_key))


def load_catalog(path: Path | None = None) -> Catalog:
    """Load and validate the catalog; CatalogError names the file and the bad entry."""
    path = path or states_file("services.toml")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read service catalog: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: invalid TOML: {exc}") from exc
    entries = data.get("service")
    if not isinstance(entries, list) or not entries:
        raise CatalogError(f"{path}: no [[service]] entries")
    services = tuple(_parse_service(path, i, e) for i, e in enumerate(entries))
    names = [s.name for s in services]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CatalogError(f"{path}: duplicate service names: {', '.join(dupes)}")
    return Catalog(services)


def _parse_service(path: Path, index: int, entry: Any) -> Service:
    where = f"{path}: service #{index + 1}"
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: not a table")
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise CatalogError(f"{where}: missing {', '.join(missing)}")
    where = f"{path}: service '{entry['name']}'"
    unknown = set(entry) - set(_REQUIRED) - {"ctl", "listed", "stop_args", "preserve", "since"}
    if unknown:
        raise CatalogError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    for key in ("name", "printed", "dir", "version_file", "node_kind"):
        if not isinstance(entry[key], str):
            raise CatalogError(f"{where}: '{key}' must be a string")
    if not isinstance(entry["priority"], int) or isinstance(entry["priority"], bool):
        raise CatalogError(f"{where}: 'priority' must be an integer")
    if entry["node_kind"] not in NODE_KINDS:
        raise CatalogError(f"{where}: 'node_kind' must be one of {', '.join(NODE_KINDS)}")
    ctl = entry.get("ctl")
    if ctl is not None and not isinstance(ctl, str):
        raise CatalogError(f"{where}: 'ctl' must be a string")
    if entry["node_kind"] != "none" and not ctl:
        raise CatalogError(f"{where}: a service with nodes needs a 'ctl' script")
    listed = entry.get("listed")
    if listed is not None and not (isinstance(listed, str) and _LISTED_RE.fullmatch(listed)):
        raise CatalogError(f"{where}: 'listed' must be an upper-case node name like SERVICE-CENTER")
    if entry["node_kind"] == "port" and not listed:
        raise CatalogError(f"{where}: a service with port nodes needs 'listed' (its name in `<ctl> list`)")
    lists = {k: _str_list(where, entry, k) for k in ("stop_args", "package", "replace", "preserve")}
    if not lists["package"] or not lists["replace"]:
        raise CatalogError(f"{where}: 'package' and 'replace' must not be empty")
    for rel in lists["replace"] + lists["preserve"] + (entry["version_file"],):
        if rel.startswith("/") or ".." in rel.split("/"):
            raise CatalogError(f"{where}: path '{rel}' must stay inside the service directory")
    since = entry.get("since")
    if since is not None and (not isinstance(since, str) or not _VERSION_RE.match(since)):
        raise CatalogError(f"{where}: 'since' must be a version like 3.2.0")
    return Service(
        name=entry["name"],
        printed=entry["printed"],
        priority=entry["priority"],
        index=index,
        dir=entry["dir"],
        version_file=entry["version_file"],
        ctl=ctl,
        listed=listed,
        stop_args=lists["stop_args"],
        node_kind=entry["node_kind"],
        package=lists["package"],
        replace=lists["replace"],
        preserve=lists["preserve"],
        since=since,
    )


def _str_list(where: str, entry: dict[str, Any], key: str) -> tuple[str, ...]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CatalogError(f"{where}: '{key}' must be a list of strings")
    return tuple(value)


def parse_version(filename: str) -> str:
    """Version carried by a jar or release tarball name.

    `sequoiacm-cloud-gateway-3.2.2.jar` -> `3.2.2`;
    `sequoiacm-cloud-3.2.2-release.tar.gz` -> `3.2.2`.
    """
    name = filename.rsplit("/", 1)[-1]
    for suffix in (".tar.gz", ".tgz", ".jar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.endswith("-release"):
        name = name[: -len("-release")]
    version = name.rsplit("-", 1)[-1]
    if "-" not in name or not version or not version[0].isdigit():
        raise ValueError(f"no version in file name '{filename}'")
    return version


def version_key(version: str) -> tuple[int, int, int]:
    """Numeric key on the first three dot-separated parts (`3.2` == `3.2.0`)."""
    parts: list[int] = []
    for raw in version.split(".")[:3]:
        digits = re.match(r"\d+", raw)
        if digits is None:
            raise ValueError(f"not a version: '{version}'")
        parts.append(int(digits.group()))
    while len(parts) < 3:
        parts.append(0)
    return (parts[0], parts[1], parts[2])


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as `a` is older than, equal to, or newer than `b`."""
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)
