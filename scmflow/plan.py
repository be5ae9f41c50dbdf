"""The upgrade plan: which (host, service) pairs change, in what order, and what is skipped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scmflow.catalog import Catalog, Service, compare_versions
from scmflow.errors import PlanError

if TYPE_CHECKING:
    from scmflow.compatibility import Compatibility
    from scmflow.inventory import HostInventory

# Upgraded on every selected host when named explicitly, even where absent (the original's rule).
ALWAYS_WHEN_NAMED = ("non-service", "scmsystools")


@dataclass(frozen=True)
class PlannedNode:
    """A node as it was before the upgrade; only running ones are started again."""

    port: int | None
    running: bool


@dataclass(frozen=True)
class Pair:
    """One host-service pair of the plan."""

    host: str
    service: str
    printed: str
    old_version: str | None
    new_version: str
    nodes: tuple[PlannedNode, ...]

    @property
    def key(self) -> tuple[str, str]:
        """(host, service): the pair's identity in the status file."""
        return (self.host, self.service)

    @property
    def running_ports(self) -> tuple[int, ...]:
        """Ports of the nodes that ran before the upgrade."""
        return tuple(n.port for n in self.nodes if n.running and n.port is not None)

    @property
    def daemon_running(self) -> bool:
        """Whether a port-less (daemon) node ran before the upgrade."""
        return any(n.running and n.port is None for n in self.nodes)

    def label(self, *, reverse: bool = False) -> str:
        """`[host]:SERVICE:old to new` as the original prints it (`new to old` for rollback)."""
        old = self.old_version or "none"
        a, b = (self.new_version, old) if reverse else (old, self.new_version)
        return f"[{self.host}]:{self.printed}:{a} to {b}"

    def to_record(self) -> dict[str, Any]:
        """Plain data for the status file header and JSON output."""
        return {
            "host": self.host,
            "service": self.service,
            "printed": self.printed,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "nodes": [{"port": n.port, "running": n.running} for n in self.nodes],
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Pair:
        """Inverse of `to_record`."""
        return cls(
            host=str(record["host"]),
            service=str(record["service"]),
            printed=str(record["printed"]),
            old_version=record.get("old_version"),
            new_version=str(record["new_version"]),
            nodes=tuple(
                PlannedNode(port=n.get("port"), running=bool(n.get("running")))
                for n in record.get("nodes") or ()
            ),
        )


@dataclass(frozen=True)
class Skipped:
    """A pair left out because its installed version is not older than the release's."""

    host: str
    printed: str
    version: str


@dataclass(frozen=True)
class Plan:
    """Ordered pairs plus what the operator is warned about."""

    release_version: str
    pairs: tuple[Pair, ...]
    not_newer: tuple[Skipped, ...]
    absent: tuple[str, ...]

    def stages(self) -> list[list[Pair]]:
        """Pairs grouped by service, in upgrade order; a stage finishes before the next starts."""
        return group_stages(self.pairs)

    def hosts(self) -> tuple[str, ...]:
        """Hosts that have at least one pair, in plan order."""
        return tuple(dict.fromkeys(p.host for p in self.pairs))

    def to_record(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return {
            "release_version": self.release_version,
            "pairs": [p.to_record() for p in self.pairs],
            "not_newer": [
                {"host": s.host, "service": s.printed, "version": s.version} for s in self.not_newer
            ],
            "absent": list(self.absent),
        }


def group_stages(pairs: Sequence[Pair]) -> list[list[Pair]]:
    """Consecutive pairs of the same service form one stage; order is kept."""
    stages: list[list[Pair]] = []
    for pair in pairs:
        if stages and stages[-1][0].service == pair.service:
            stages[-1].append(pair)
        else:
            stages.append([pair])
    return stages


def service_order(
    catalog: Catalog,
    names: Sequence[str],
    compatibility: Compatibility,
    old_versions: Sequence[str],
    new_version: str,
) -> list[Service]:
    """Services in upgrade order, with version-dependent `first` services moved ahead."""
    services = sorted((catalog.get(n) for n in names), key=lambda s: s.order_key)
    first = compatibility.first_services(old_versions, new_version)
    ahead = [s for name in first for s in services if s.name == name]
    return ahead + [s for s in services if s not in ahead]


def make_plan(
    *,
    catalog: Catalog,
    compatibility: Compatibility,
    hosts: Sequence[str],
    inventories: Mapping[str, HostInventory],
    services: Sequence[str] | None,
    release_version: str,
    available: Sequence[str],
) -> Plan:
    """Plan the upgrade of `services` (None = all) on `hosts` (config order) to the release.

    `available` names the services the release carries a package for.
    """
    explicit = services is not None
    names = list(services) if services is not None else list(catalog.names())
    old_versions = [
        v for h in hosts for n in names if (v := inventories[h].version_of(n)) is not None
    ]
    ordered = service_order(catalog, names, compatibility, old_versions, release_version)
    pairs: list[Pair] = []
    not_newer: list[Skipped] = []
    absent: list[str] = []
    for service in ordered:
        found = False
        for host in hosts:
            inventory = inventories[host]
            old = inventory.version_of(service.name)
            if old is None and not (explicit and service.name in ALWAYS_WHEN_NAMED):
                continue
            found = True
            if old is not None and compare_versions(old, release_version) >= 0:
                not_newer.append(Skipped(host, service.printed, old))
                continue
            if old is not None and not compatibility.allows(old, release_version):
                why = compatibility.why_not(old, release_version) or "not supported"
                raise PlanError(
                    f"[{host}]:{service.printed}: cannot upgrade {old} to {release_version}: {why}"
                )
            if service.name not in available:
                raise PlanError(
                    f"[{host}]:{service.printed}: the release {release_version} has no "
                    f"package for {service.name}"
                )
            pairs.append(_pair(inventory, service, old, release_version))
        if not found:
            absent.append(service.printed)
    return Plan(
        release_version=release_version,
        pairs=tuple(pairs),
        not_newer=tuple(not_newer),
        absent=tuple(absent),
    )


def _pair(inventory: HostInventory, service: Service, old: str | None, new: str) -> Pair:
    return Pair(
        host=inventory.host,
        service=service.name,
        printed=service.printed,
        old_version=old,
        new_version=new,
        nodes=planned_nodes(inventory, service.name),
    )


def planned_nodes(inventory: HostInventory, service: str) -> tuple[PlannedNode, ...]:
    """The nodes of `service` that a host check found, and whether each was running."""
    installed = inventory.services.get(service)
    return tuple(PlannedNode(port=n.port, running=n.running) for n in (installed.nodes if installed else ()))
