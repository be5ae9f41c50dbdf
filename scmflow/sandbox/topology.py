"""What a sandbox install holds: the selected services and their nodes."""

from __future__ import annotations

from dataclasses import dataclass

from scmflow.catalog import Catalog, Service
from scmflow.sandbox.errors import SandboxError


@dataclass(frozen=True)
class NodeSpec:
    """One node: `port` is None for the daemon; `running` = started by start_topology."""

    service: str
    port: int | None
    running: bool = True


@dataclass(frozen=True)
class Topology:
    """The services installed on one host and the nodes configured for them."""

    services: tuple[str, ...]
    nodes: tuple[NodeSpec, ...] = ()

    def nodes_of(self, service: str) -> tuple[NodeSpec, ...]:
        """The nodes of `service`, in declaration order."""
        return tuple(n for n in self.nodes if n.service == service)


def check_topology(topology: Topology, catalog: Catalog) -> tuple[Service, ...]:
    """The selected services in upgrade order; SandboxError when the topology is inconsistent."""
    unknown = [s for s in topology.services if catalog.find(s) is None]
    if unknown:
        raise SandboxError(f"unknown services in topology: {', '.join(unknown)}")
    ports: set[int] = set()
    for node in topology.nodes:
        _check_node(node, topology, catalog, ports)
    selected = {catalog.get(s) for s in topology.services}
    return tuple(s for s in catalog.ordered() if s in selected)


def _check_node(node: NodeSpec, topology: Topology, catalog: Catalog, ports: set[int]) -> None:
    if node.service not in topology.services:
        raise SandboxError(f"node {node} belongs to a service that is not installed")
    kind = catalog.get(node.service).node_kind
    if kind == "none":
        raise SandboxError(f"service '{node.service}' has no nodes")
    if kind == "daemon":
        if node.port is not None or len(topology.nodes_of(node.service)) > 1:
            raise SandboxError("the daemon is one node without a port")
        return
    if node.port is None or not 0 < node.port < 65536:
        raise SandboxError(f"node of '{node.service}' needs a port in 1..65535")
    if node.port in ports:
        raise SandboxError(f"port {node.port} is used by two nodes")
    ports.add(node.port)
