"""The demo's sandbox: a SequoiaCM on this machine to upgrade, what it runs, and its removal.

Everything lives under one root directory; the nodes are real processes reached through a
local session instead of SSH. What the sandbox shows goes to the operator as `Demo:` lines.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from scmflow import sandbox
from scmflow.catalog import Catalog, parse_version
from scmflow.cli.ui import Printer
from scmflow.errors import UsageError
from scmflow.runstate import HostEntry
from scmflow.sandbox import NodeSpec, Topology
from scmflow.sandbox.install import CUSTOMER_JARS
from scmflow.session.base import Session
from scmflow.session.local import LocalSession
from scmflow.upgrade import Connector, Target

OLD_VERSION = "3.1.2"
NEW_VERSION = "3.2.2"
HOST = "localhost"
# A small but telling host: cloud services, a stopped gateway node, customer jars, the daemon.
DEMO_SERVICES = ("service-center", "config-server", "gateway", "content-server", "daemon")
START_TIMEOUT = 30


@dataclass(frozen=True)
class DemoPaths:
    """Where everything of one demo lives: all under `root`."""

    root: Path
    created_root: bool

    def release(self, version: str) -> Path:
        """The unpacked release root of `version`."""
        return self.root / "releases" / version / "sequoiacm"

    @property
    def jdk(self) -> Path:
        """The fake JAVA_HOME."""
        return self.root / "jdk"

    @property
    def install(self) -> Path:
        """The sandbox install path (InstallPath)."""
        return self.root / "sequoiacm"

    @property
    def upgrade_pack(self) -> Path:
        """upgradePackPath."""
        return self.root / "upgrade"

    @property
    def backup(self) -> Path:
        """backupPath."""
        return self.root / "backup"

    @property
    def status_dir(self) -> Path:
        """Where the status file goes."""
        return self.root / "upgrade-status"

    @property
    def scratch(self) -> Path:
        """The control side's work directory for the release check."""
        return self.root / "work"


def make_root(workdir: Path | None) -> DemoPaths:
    """The demo's root: `workdir`, or a new temporary directory."""
    if workdir is None:
        root = Path(tempfile.mkdtemp(prefix="scmflow-demo-")).resolve()
        if " " in str(root):
            root.rmdir()
            raise UsageError(f"the temporary directory {root.parent} has a space in its path; give --workdir")
        return DemoPaths(root, created_root=True)
    root = workdir.resolve()
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--workdir {workdir}: {exc.strerror or exc}") from exc
    return DemoPaths(root, created_root=created)



def demo_topology(ports: Sequence[int]) -> Topology:
    """The demo host: four port services (one gateway node stopped) and the daemon."""
    sc, conf, gw, gw2, content = ports[:5]
    nodes = (
        NodeSpec("service-center", sc),
        NodeSpec("config-server", conf),
        NodeSpec("gateway", gw),
        NodeSpec("gateway", gw2, running=False),
        NodeSpec("content-server", content),
        NodeSpec("daemon", None),
    )
    return Topology(services=DEMO_SERVICES, nodes=nodes)


def build_sandbox(paths: DemoPaths, printer: Printer) -> Topology:
    where = paths.root / "releases"
    printer.info(f"Demo: building sandbox releases {OLD_VERSION} and {NEW_VERSION} in {where}")
    for version in (OLD_VERSION, NEW_VERSION):
        sandbox.build_release(paths.release(version).parent, version, services=DEMO_SERVICES)
    sandbox.make_jdk(paths.jdk)
    topology = demo_topology(sandbox.free_ports(5))
    printer.info(f"Demo: installing {OLD_VERSION} in {paths.install} and starting its nodes")
    sandbox.install(paths.release(OLD_VERSION), paths.install, topology, customer_jars=True)
    sandbox.start_topology(
        paths.install, topology, java_home=paths.jdk, run=sandbox.local_run, timeout=START_TIMEOUT
    )
    return topology


def node_states(paths: DemoPaths, topology: Topology, catalog: Catalog) -> dict[str, str]:
    """Each node as `label -> "running, version X"` or `"stopped"`, asked from outside."""
    out: dict[str, str] = {}
    for node in topology.nodes:
        printed = catalog.get(node.service).printed
        if node.port is None:
            out[f"{printed} node"] = _daemon_state(paths, catalog)
            continue
        try:
            version = sandbox.health("127.0.0.1", node.port, timeout=2.0)["version"]
        except sandbox.SandboxError:
            out[f"{printed} node,port={node.port}"] = "stopped"
            continue
        out[f"{printed} node,port={node.port}"] = f"running, version {version}"
    return out


def _daemon_state(paths: DemoPaths, catalog: Catalog) -> str:
    daemon = catalog.get("daemon")
    ctl = paths.install / daemon.dir / "bin" / str(daemon.ctl)
    try:
        sandbox.local_run([str(ctl), "status"], {"JAVA_HOME": str(paths.jdk)})
    except sandbox.SandboxError:
        return "stopped"
    jars = sorted((paths.install / daemon.dir).glob(daemon.version_file))
    version = parse_version(jars[0].name) if jars else "?"
    return f"running, version {version}"


def show_nodes(printer: Printer, states: Mapping[str, str]) -> None:
    for label, state in states.items():
        printer.info(f"Demo:   [{HOST}]:{label}: {state}")


def show_customer_jars(paths: DemoPaths, catalog: Catalog, printer: Printer) -> None:
    content = paths.install / catalog.get("content-server").dir
    kept = [rel for rel, data in CUSTOMER_JARS.items() if _read(content / rel) == data]
    lost = [rel for rel in CUSTOMER_JARS if rel not in kept]
    if kept:
        printer.info(f"Demo:   customer jars kept in {content}: {', '.join(kept)}")
    if lost:
        printer.warn(f"Demo:   customer jars missing or changed in {content}: {', '.join(lost)}")


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _me() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def demo_target(paths: DemoPaths) -> Target:
    """The Target the cluster command would build: one host, the current user for everything."""
    me = _me()
    return Target(
        install_path=str(paths.install),
        install_user=me,
        hosts=(HostEntry(name=HOST, port=None, user=me, java_home=str(paths.jdk), password_auth=False),),
        services=DEMO_SERVICES,
        upgrade_pack_path=str(paths.upgrade_pack),
        backup_path=str(paths.backup),
        admin_user=None,
    )


def local_connector() -> Connector:
    """A Connector that reaches `localhost` through a LocalSession (no SSH)."""

    def connect(names: Sequence[str]) -> dict[str, Session]:
        return {name: LocalSession(host=name, install_user=_me()) for name in names}

    return connect


def check_back(
    paths: DemoPaths,
    topology: Topology,
    catalog: Catalog,
    printer: Printer,
    *,
    before_digest: str,
    before: Mapping[str, str],
) -> bool:
    """Compare files and nodes with what they were before the upgrade; say so line by line."""
    printer.info(f"Demo: checking that everything is back to {OLD_VERSION}:")
    ok = True
    digest = sandbox.tree_digest(paths.install)
    if digest == before_digest:
        printer.info(
            f"Demo:   files: every file under {paths.install} is as before the upgrade "
            f"(tree sha256 {digest[:16]}...)"
        )
    else:
        ok = False
        printer.error(f"files under {paths.install} differ from before the upgrade")
    now = node_states(paths, topology, catalog)
    for label, state in now.items():
        if state == before.get(label):
            printer.info(f"Demo:   [{HOST}]:{label}: {state}, as before")
        else:
            ok = False
            printer.error(f"[{HOST}]:{label}: {state}, but before the upgrade: {before.get(label)}")
    if ok:
        printer.info(
            f"Demo: everything is back: every file and every node is as it was before the upgrade, "
            f"on {OLD_VERSION}"
        )
    return ok


def clean_sandbox(paths: DemoPaths, printer: Printer) -> None:
    """Stop every node the demo started and remove every file it made."""
    printer.info(f"Demo: stopping the sandbox nodes and removing {paths.root}")
    if paths.jdk.is_dir():
        try:
            sandbox.stop_all(paths.install, paths.jdk, sandbox.local_run)
        except sandbox.SandboxError as exc:
            printer.warn(f"Demo: stopping nodes: {exc.message}")
    # Nodes a ctl script could not stop (or that a half-done step left) go the hard way.
    killed = sandbox.kill_nodes(paths.install)
    if killed:
        printer.warn(f"Demo: killed {len(killed)} sandbox processes that did not stop: {killed}")
    if paths.created_root:
        shutil.rmtree(paths.root, ignore_errors=True)
    else:
        for child in list(paths.root.iterdir()) if paths.root.is_dir() else []:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    printer.info("Demo: done; no sandbox process or file is left")


def say_kept(paths: DemoPaths, catalog: Catalog, printer: Printer) -> None:
    """--keep: where everything is, and how to stop and remove it."""
    printer.info(f"Demo: kept the sandbox in {paths.root} (--keep):")
    printer.info(f"Demo:   install path {paths.install}, JAVA_HOME {paths.jdk}")
    status = sorted(paths.status_dir.glob("upgrade_status_*")) if paths.status_dir.is_dir() else []
    for path in status:
        printer.info(f"Demo:   status file: scm.py status show {path}")
    printer.info("Demo:   its nodes still run; stop them with:")
    for command in stop_commands(paths, catalog):
        printer.info(f"Demo:     {command}")
    printer.info(f"Demo:   then remove it: rm -rf {shlex.quote(str(paths.root))}")


def stop_commands(paths: DemoPaths, catalog: Catalog) -> list[str]:
    """The ctl commands that stop every installed demo service, as shell lines."""
    lines: list[str] = []
    for service in reversed(catalog.ordered()):
        if service.name not in DEMO_SERVICES or service.ctl is None:
            continue
        ctl = paths.install / service.dir / "bin" / service.ctl
        line = f"JAVA_HOME={shlex.quote(str(paths.jdk))} {shlex.join([str(ctl), *service.stop_args])}"
        if ctl.is_file() and line not in lines:
            lines.append(line)
    return lines
