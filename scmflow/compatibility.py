"""The vendor's upgrade matrix and version-dependent order rules (`states/compatibility.toml`)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scmflow.catalog import Catalog, compare_versions, version_key
from scmflow.errors import CatalogError, PlanError
from scmflow.resources import states_file

_SERIES_RE = re.compile(r"^\d+(\.\d+)?$")
_VERSION_RE = re.compile(r"^\d+(\.\d+){0,2}$")
_TOP_KEYS = {"series", "order_rule", "notice"}


@dataclass(frozen=True)
class SeriesPath:
    """The target series a release series may be upgraded to."""

    series: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class OrderRule:
    """Services that go first when an upgrade crosses `crossing`."""

    crossing: str
    first: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Notice:
    """A line for the operator when an upgrade crosses `crossing`."""

    crossing: str
    text: str


@dataclass(frozen=True)
class Compatibility:
    """Which upgrades the vendor supports, and what they require."""

    paths: tuple[SeriesPath, ...]
    order_rules: tuple[OrderRule, ...] = ()
    notices: tuple[Notice, ...] = ()

    def series_of(self, version: str) -> str | None:
        """The most specific declared series holding `version`, or None."""
        matches = [p.series for p in self.paths if _in_series(version, p.series)]
        return max(matches, key=lambda s: s.count("."), default=None)

    def allows(self, old: str, new: str) -> bool:
        """Whether `old` may be upgraded to `new`."""
        return self.why_not(old, new) is None

    def why_not(self, old: str, new: str) -> str | None:
        """Why `old` may not be upgraded to `new`, in one line; None when it may."""
        for version in (old, new):
            try:
                version_key(version)
            except ValueError:
                return f"'{version}' is not a version"
        if compare_versions(new, old) < 0:
            return f"SequoiaCM does not support downgrades ({old} to {new})"
        series = self.series_of(old)
        if series is None:
            return f"no upgrade path is known from SequoiaCM {old}"
        targets = next(p.targets for p in self.paths if p.series == series)
        if not any(_in_series(new, t) for t in targets):
            allowed = ", ".join(f"{t}.x" for t in targets)
            return f"SequoiaCM {series}.x can only be upgraded to {allowed}"
        return None

    def first_services(self, old_versions: Iterable[str], new: str) -> tuple[str, ...]:
        """Services upgraded before all others when the cluster goes from `old_versions` to `new`."""
        olds = tuple(old_versions)
        first: list[str] = []
        for rule in self.order_rules:
            if _crosses(olds, new, rule.crossing):
                first.extend(s for s in rule.first if s not in first)
        return tuple(first)

    def rules_for(self, old_versions: Iterable[str], new: str) -> tuple[OrderRule, ...]:
        """The order rules that apply to this upgrade (to explain the order to operators)."""
        olds = tuple(old_versions)
        return tuple(r for r in self.order_rules if _crosses(olds, new, r.crossing))

    def notices_for(self, old_versions: Iterable[str], new: str) -> tuple[str, ...]:
        """Operator notices for this upgrade, in file order."""
        olds = tuple(old_versions)
        return tuple(n.text for n in self.notices if _crosses(olds, new, n.crossing))


def load_compatibility(path: Path | None = None, *, catalog: Catalog | None = None) -> Compatibility:
    """Load and validate the matrix; with `catalog`, rule service names are checked too."""
    path = path or states_file("compatibility.toml")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read compatibility matrix: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: invalid TOML: {exc}") from exc
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise CatalogError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    compatibility = Compatibility(
        paths=_parse_series(path, data.get("series")),
        order_rules=tuple(
            _parse_rule(path, i, e) for i, e in enumerate(_tables(path, data, "order_rule"))
        ),
        notices=tuple(
            _parse_notice(path, i, e) for i, e in enumerate(_tables(path, data, "notice"))
        ),
    )
    if catalog is not None:
        _check_services(path, compatibility, catalog)
    return compatibility


def _parse_series(path: Path, table: Any) -> tuple[SeriesPath, ...]:
    if not isinstance(table, dict) or not table:
        raise CatalogError(f"{path}: missing or empty [series] table")
    paths: list[SeriesPath] = []
    for series, targets in table.items():
        where = f"{path}: [series] \"{series}\""
        if not _SERIES_RE.match(series):
            raise CatalogError(f"{where}: a series is MAJOR or MAJOR.MINOR, like 3 or 3.2")
        if not isinstance(targets, list) or not targets:
            raise CatalogError(f"{where}: targets must be a non-empty list of series")
        for target in targets:
            if not isinstance(target, str) or not _SERIES_RE.match(target):
                raise CatalogError(f"{where}: target {target!r} is not a series like 3.2")
            if _series_key(target) < _series_key(series):
                raise CatalogError(f"{where}: target {target} is older (downgrades never apply)")
        paths.append(SeriesPath(series, tuple(targets)))
    return tuple(paths)


def _tables(path: Path, data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    entries = data.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CatalogError(f"{path}: '{key}' must be an array of tables ([[{key}]])")
    return entries


def _parse_rule(path: Path, index: int, entry: dict[str, Any]) -> OrderRule:
    where = f"{path}: order_rule #{index + 1}"
    _check_keys(where, entry, required={"crossing", "first"}, optional={"reason"})
    first = entry["first"]
    if not isinstance(first, list) or not first or not all(isinstance(s, str) for s in first):
        raise CatalogError(f"{where}: 'first' must be a non-empty list of service names")
    reason = entry.get("reason", "")
    if not isinstance(reason, str):
        raise CatalogError(f"{where}: 'reason' must be a string")
    return OrderRule(_crossing(where, entry), tuple(first), reason)


def _parse_notice(path: Path, index: int, entry: dict[str, Any]) -> Notice:
    where = f"{path}: notice #{index + 1}"
    _check_keys(where, entry, required={"crossing", "text"}, optional=set())
    if not isinstance(entry["text"], str) or not entry["text"].strip():
        raise CatalogError(f"{where}: 'text' must be a non-empty string")
    return Notice(_crossing(where, entry), entry["text"])


def _check_keys(where: str, entry: dict[str, Any], *, required: set[str], optional: set[str]) -> None:
    missing = required - set(entry)
    if missing:
        raise CatalogError(f"{where}: missing {', '.join(sorted(missing))}")
    unknown = set(entry) - required - optional
    if unknown:
        raise CatalogError(f"{where}: unknown keys {', '.join(sorted(unknown))}")


def _crossing(where: str, entry: dict[str, Any]) -> str:
    crossing = entry["crossing"]
    if not isinstance(crossing, str) or not _VERSION_RE.match(crossing):
        raise CatalogError(f"{where}: 'crossing' must be a version like 3.6.1")
    return crossing


def _check_services(path: Path, compatibility: Compatibility, catalog: Catalog) -> None:
    for index, rule in enumerate(compatibility.order_rules):
        unknown = [s for s in rule.first if catalog.find(s) is None]
        if unknown:
            raise CatalogError(
                f"{path}: order_rule #{index + 1}: unknown service(s) {', '.join(unknown)}"
            )


def _in_series(version: str, series: str) -> bool:
    prefix = _series_key(series)
    return version_key(version)[: len(prefix)] == prefix


def _series_key(series: str) -> tuple[int, ...]:
    return tuple(int(p) for p in series.split("."))


def _crosses(olds: tuple[str, ...], new: str, crossing: str) -> bool:
    """Whether some old version is below `crossing` and `new` is at or above it."""
    try:
        below = any(compare_versions(old, crossing) < 0 for old in olds)
        return below and compare_versions(new, crossing) >= 0
    except ValueError as exc:
        raise PlanError(f"cannot compare versions: {exc}") from exc
