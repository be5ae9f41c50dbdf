"""`scmsysctl.sh`: the sys-tools' version, and every node of every pack on the host."""

from __future__ import annotations

import sys

from .files import jar_version, pack_roots
from .nodes import Node, all_nodes, list_nodes
from .pack import Pack
from .tool import INVALID_ARG, SUCCESS, CtlError


def ctl_systools(pack: Pack, ctl: str, args: list[str]) -> int:
    """`-v` prints the tools' version; `list` lists every node of every pack on the host."""
    if args in (["-v"], ["--version"]):
        version = jar_version(pack.jar(pack.services[0]))
        sys.stdout.write(f"SequoiaCM version: {version}\n")
        return SUCCESS
    if args != ["list"]:
        raise CtlError(f"{ctl}: give -v or list", INVALID_ARG)
    nodes: list[Node] = []
    for root in pack_roots(pack.install_path):
        other = Pack(root)
        if other.role == "nodes":
            nodes.extend(all_nodes(other))
    return list_nodes(nodes, running_only=False, long=False)
