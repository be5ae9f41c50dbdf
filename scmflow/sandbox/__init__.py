"""A fake SequoiaCM: release, install and real node processes, for the demo and the tests."""

from scmflow.sandbox.build import build_release
from scmflow.sandbox.control import (
    RunFn,
    java_env,
    kill_nodes,
    local_run,
    local_run_as,
    start_topology,
    stop_all,
)
from scmflow.sandbox.errors import SandboxError
from scmflow.sandbox.faults import (
    FAULT_KINDS,
    clear_fault,
    clear_faults,
    fault_times_left,
    set_fault,
)
from scmflow.sandbox.install import install, release_version
from scmflow.sandbox.jdk import make_decoy_java, make_jdk
from scmflow.sandbox.probe import HEALTH_PATH, free_ports, health, tree_digest
from scmflow.sandbox.topology import NodeSpec, Topology

__all__ = [
    "FAULT_KINDS",
    "HEALTH_PATH",
    "NodeSpec",
    "RunFn",
    "SandboxError",
    "Topology",
    "build_release",
    "clear_fault",
    "clear_faults",
    "fault_times_left",
    "free_ports",
    "health",
    "install",
    "java_env",
    "kill_nodes",
    "local_run",
    "local_run_as",
    "make_decoy_java",
    "make_jdk",
    "release_version",
    "set_fault",
    "start_topology",
    "stop_all",
    "tree_digest",
]
