"""What is on each host: Java, the install path, installed services, their versions and nodes."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scmflow.agentcall import AgentError, call_agent
from scmflow.catalog import Service
from scmflow.errors import RemoteError, ScmflowError
from scmflow.session.base import Session

MIN_JAVA = (1, 8)
PROBE_TIMEOUT = 120.0


@dataclass(frozen=True)
class Node:
    """One node of a service on a host; `port` is None for the daemon."""

    port: int | None
    pid: int | None
    running: bool


@dataclass(frozen=True)
class InstalledService:
    """A service as found on a host: version None when it is not installed."""

    name: str
    version: str | None
    nodes: tuple[Node, ...]


@dataclass(frozen=True)
class HostInventory:
    """Everything the check learned about one host."""

    host: str
    java_home: str
    java_version: str
    services: dict[str, InstalledService]
    free: dict[str, int]
    java: str = ""

    def version_of(self, service: str) -> str | None:
        """Installed version of `service`, or None."""
        found = self.services.get(service)
        return found.version if found else None


class HostCheckError(ScmflowError):
    """A host failed the pre-upgrade check."""

    exit_code = 2


def probe_host(
    session: Session,
    *,
    admin_user: str | None = "root",
    install_path: str,
    install_user: str,
    java_home: str | None,
    services: Sequence[Service],
    df_paths: Sequence[str] = (),
) -> HostInventory:
    """Check one host (sudo, install path, Java) and read its services; changes nothing."""
    if admin_user is not None:
        _check_sudo(session, admin_user)
    spec = {
        "install_path": install_path,
        "services": [s.to_spec() for s in services],
        "java_home": java_home,
        "df_paths": list(df_paths),
    }
    try:
        reply = call_agent(
            session, "probe", spec, user=install_user, java_home=java_home, timeout=PROBE_TIMEOUT
        )
    except AgentError as exc:
        # Nothing was changed: a host whose services cannot be read fails the check.
        raise HostCheckError(str(exc)) from exc
    return _inventory_from_reply(session.host, install_path, reply)


def _check_sudo(session: Session, admin_user: str) -> None:
    try:
        session.run(["true"], user=admin_user, timeout=60.0)
    except RemoteError as exc:
        raise HostCheckError(f"[{session.host}] the SSH user cannot sudo: {exc.message}") from exc


def _inventory_from_reply(host: str, install_path: str, reply: dict[str, Any]) -> HostInventory:
    if not reply.get("install_path_exists"):
        raise HostCheckError(f"[{host}] install path {install_path} does not exist")
    java_home = reply.get("java_home") or ""
    if not java_home:
        raise HostCheckError(
            f"[{host}] JAVA_HOME is not set: give JavaHome in the config "
            "or export it in /etc/profile"
        )
    # The ctl tools run $JAVA_HOME/bin/java and start nodes with the first java on
    # PATH=$JAVA_HOME/bin:$PATH; both must be the JDK of JAVA_HOME.
    expected = posixpath.join(java_home, "bin", "java")
    java = str(reply.get("java") or "")
    if java != expected:
        found = f"the first java on PATH is {java}" if java else "no java is on PATH"
        raise HostCheckError(f"[{host}] {expected} is missing or not executable ({found})")
    java_version = str(reply.get("java_version") or "")
    if not java_version:
        raise HostCheckError(f"[{host}] cannot run {java} -version")
    if java_key(java_version) < MIN_JAVA:
        raise HostCheckError(
            f"[{host}] Java {java_version} ({java}, first on PATH) is too old; "
            "SequoiaCM needs 1.8 or newer"
        )
    services: dict[str, InstalledService] = {}
    for name, info in (reply.get("services") or {}).items():
        nodes = tuple(
            Node(port=n.get("port"), pid=n.get("pid"), running=bool(n.get("running")))
            for n in info.get("nodes") or ()
        )
        services[name] = InstalledService(name=name, version=info.get("version"), nodes=nodes)
    free = {str(k): int(v) for k, v in (reply.get("free") or {}).items()}
    return HostInventory(
        host=host,
        java_home=java_home,
        java_version=java_version,
        java=java,
        services=services,
        free=free,
    )


def java_key(version: str) -> tuple[int, int]:
    """(major, minor) of a Java version string: `1.8.0_221` -> (1, 8), `17.0.2` -> (17, 0)."""
    numbers = [int(n) for n in re.findall(r"\d+", version)[:2]]
    if not numbers:
        return (0, 0)
    if numbers[0] >= 9:
        # From Java 9 on the major version comes first; it is newer than any 1.x.
        return (numbers[0], 0)
    return (numbers[0], numbers[1] if len(numbers) > 1 else 0)
