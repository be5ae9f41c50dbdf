"""The remote steps of a pair (backup, replace, restart, verify, restore, abandon).

Each step is one request to the host's serving agent, which makes it idempotent on the
host; this module only builds the agent's spec from the plan and the run's remote layout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from scmflow.agentcall import AgentLink
from scmflow.catalog import Catalog
from scmflow.plan import Pair
from scmflow.session.base import Session

NodeStartFn = Callable[[Pair, int | None], None]


@dataclass(frozen=True)
class RemoteLayout:
    """Where one run keeps its files on every host."""

    install_path: str
    install_user: str
    upgrade_dir: str
    backup_dir: str
    start_timeout: int = 300
    admin_user: str | None = "root"

    def pair_backup_dir(self, service: str) -> str:
        """The backup directory of one pair."""
        return f"{self.backup_dir}/{service}"

    def package_path(self, name: str) -> str:
        """Remote path of a package file in the run's upgrade dir."""
        return f"{self.upgrade_dir}/{name}"

    @property
    def lock_path(self) -> str:
        """The per-host file the agent locks while it changes the install tree."""
        return f"{self.backup_dir}/.agent.lock"

    def to_record(self) -> dict[str, Any]:
        """Plain data for the status file header."""
        return {
            "install_path": self.install_path,
            "install_user": self.install_user,
            "upgrade_dir": self.upgrade_dir,
            "backup_dir": self.backup_dir,
            "start_timeout": self.start_timeout,
            "admin_user": self.admin_user,
        }


class HostActions:
    """Runs the lifecycle's actions for the pairs of one host."""

    def __init__(
        self,
        session: Session,
        *,
        layout: RemoteLayout,
        java_home: str,
        catalog: Catalog,
        packages: Mapping[str, str],
        on_node_start: NodeStartFn | None = None,
    ) -> None:
        self.session = session
        self.layout = layout
        self.java_home = java_home
        self.catalog = catalog
        self.packages = packages
        self.on_node_start = on_node_start
        self._link = AgentLink(session, user=layout.install_user, java_home=java_home or None)
        # Pairs whose last step in this process was a replace that stopped every node.
        self._stopped_by_replace: set[tuple[str, str]] = set()
        self._guard = threading.Lock()

    def __call__(self, action: str, pair: Pair) -> Mapping[str, Any]:
        """Perform `action` for `pair`; the agent's result, for the status file."""
        build: dict[str, Callable[[Pair], tuple[dict[str, Any], float]]] = {
            "backup": self._backup,
            "replace": self._replace,
            "restart": self._restart,
            "verify": self._verify,
            "restore": self._restore,
            "abandon": self._abandon,
        }
        if action not in build:
            raise ValueError(f"no such action '{action}'")
        spec, timeout = build[action](pair)
        spec["lock_path"] = self.layout.lock_path
        with self._guard:
            self._stopped_by_replace.discard(pair.key)
        reply = self._link.call(action, spec, timeout=timeout)
        if action == "replace":
            with self._guard:
                self._stopped_by_replace.add(pair.key)
        reply.pop("ok", None)
        return reply

    def close(self) -> None:
        """Let the host's serving agent end."""
        self._link.close()

    def _base(self, pair: Pair) -> dict[str, Any]:
        return {
            "install_path": self.layout.install_path,
            "service": self.catalog.get(pair.service).to_spec(),
            "backup_dir": self.layout.pair_backup_dir(pair.service),
        }

    def _start_timeout(self, pair: Pair) -> float:
        # The agent allows each node's start `start_timeout + 60` s (agent/nodes.py, start_service),
        # one node after another, plus a listing.
        count = len(pair.running_ports) + (1 if pair.daemon_running else 0)
        return float((self.layout.start_timeout + 60) * max(count, 1) + 120)

    def _backup(self, pair: Pair) -> tuple[dict[str, Any], float]:
        return self._base(pair), 3600.0

    def _replace(self, pair: Pair) -> tuple[dict[str, Any], float]:
        spec = self._base(pair)
        spec["package"] = self.layout.package_path(self.packages[pair.service])
        spec["new_version"] = pair.new_version
        return spec, 1800.0

    def _restart(self, pair: Pair) -> tuple[dict[str, Any], float]:
        if self.on_node_start is not None:
            for port in pair.running_ports:
                self.on_node_start(pair, port)
            if pair.daemon_running:
                self.on_node_start(pair, None)
        spec = self._base(pair)
        spec.update(
            ports=list(pair.running_ports),
            daemon=pair.daemon_running,
            timeout=self.layout.start_timeout,
        )
        with self._guard:
            if pair.key in self._stopped_by_replace:
                # The replace just confirmed every node down and the run lock keeps other
                # runs off, so the agent need not list the nodes again before starting them.
                spec["nodes_down"] = True
        return spec, self._start_timeout(pair)

    def _verify(self, pair: Pair) -> tuple[dict[str, Any], float]:
        # the health gate: every restarted node UP with the new version within the start timeout
        spec = self._base(pair)
        spec.update(
            version=pair.new_version,
            ports=list(pair.running_ports),
            daemon=pair.daemon_running,
            wait=self.layout.start_timeout,
        )
        return spec, float(max(300, self.layout.start_timeout + 120))

    def _restore(self, pair: Pair) -> tuple[dict[str, Any], float]:
        spec = self._base(pair)
        spec.update(
            ports=list(pair.running_ports),
            daemon=pair.daemon_running,
            old_version=pair.old_version,
            timeout=self.layout.start_timeout,
        )
        return spec, self._start_timeout(pair) + 1800.0

    def _abandon(self, pair: Pair) -> tuple[dict[str, Any], float]:
        return {"backup_dir": self.layout.pair_backup_dir(pair.service)}, 600.0
