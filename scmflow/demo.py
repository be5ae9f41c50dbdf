"""`scm.py demo`: the real upgrade and rollback flow on a sandbox SequoiaCM on this machine.

No SSH server, root or cluster is needed: a sandbox 3.1.2 with real node processes is
installed under a temporary directory and reached through a `LocalSession`, and the same
check, plan, state machines, scheduler, locks and status file as `scm.py cluster` upgrade
it to 3.2.2 and roll it back. Every line goes through the reporter; nothing is printed here.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Protocol

from scmflow import sandbox
from scmflow.catalog import Catalog, load_catalog, parse_version
from scmflow.compatibility import load_compatibility
from scmflow.errors import EXIT_FAILED, EXIT_OK, Interrupted, ScmflowError, UsageError
from scmflow.journalreader import read_journal
from scmflow.locks import run_locks
from scmflow.machine import load_lifecycle
from scmflow.plan import Pair
from scmflow.report import Reporter, plan_lines, plan_warnings
from scmflow.rollback import check_pairs, execute_rollback, needs_rollback, select_pairs
from scmflow.runstate import HostEntry, ResumeState, RunFailed, RunInterrupted, open_run
from scmflow.sandbox import NodeSpec, Topology
from scmflow.sandbox.install import CUSTOMER_JARS
from scmflow.session.base import Session
from scmflow.session.local import LocalSession
from scmflow.statuskey import StatusKey
from scmflow.statusview import render_show
from scmflow.upgrade import (
    CheckedCluster,
    Connector,
    RunSettings,
    Target,
    check_cluster,
    close_sessions,
    execute_upgrade,
)

OLD_VERSION = "3.1.2"
NEW_VERSION = "3.2.2"
HOST = "localhost"
# A small but telling host: cloud services, a stopped gateway node, customer jars, the daemon.
DEMO_SERVICES = ("service-center", "config-server", "gateway", "content-server", "daemon")
START_TIMEOUT = 30


class DemoPrinter(Reporter, Protocol):
    """The reporter the demo talks to: the CLI's Printer, which also shows errors."""

    def error(self, message: str) -> None:
        """An `[ERROR]` line."""
        ...


@dataclass(frozen=True)
class DemoOptions:
    """The `demo` command's options."""

    keep: bool = False
    fail_service: str | None = None
    workdir: Path | None = None


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


@dataclass(frozen=True)
class Interrupts:
    """The demo's view of Ctrl-C: `stop` asks the run to finish its step and end."""

    stop: threading.Event
    cleaning: threading.Event


def run_demo(options: DemoOptions, printer: DemoPrinter) -> int:
    """Install, upgrade, show, roll back and check a sandbox; the exit code."""
    catalog = load_catalog()
    _check_options(options)
    paths = _make_root(options.workdir)
    with _interrupts(printer) as interrupts:
        try:
            return _run(paths, options, catalog, printer, interrupts.stop)
        except (RunInterrupted, KeyboardInterrupt):
            where = f"; the sandbox is kept in {paths.root}" if options.keep else ""
            raise Interrupted(f"demo interrupted{where}") from None
        finally:
            interrupts.cleaning.set()
            if options.keep:
                _say_kept(paths, catalog, printer)
            else:
                _clean(paths, printer)


def _check_options(options: DemoOptions) -> None:
    if options.fail_service is not None and options.fail_service not in DEMO_SERVICES:
        raise UsageError(f"--fail {options.fail_service}: the demo runs only {', '.join(DEMO_SERVICES)}")
    workdir = options.workdir
    if workdir is not None and workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise UsageError(f"--workdir {workdir} must be an empty directory or not exist yet")
    if workdir is not None and " " in str(workdir.resolve()):
        raise UsageError(f"--workdir {workdir}: the sandbox daemon cannot run under a path with spaces")


def _make_root(workdir: Path | None) -> DemoPaths:
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


@contextmanager
def _interrupts(printer: DemoPrinter) -> Iterator[Interrupts]:
    """First Ctrl-C: finish the step in flight, then clean up; second (or SIGTERM): at once.

    Signal handlers can only be set from the main thread; elsewhere Ctrl-C is left alone.
    """
    state = Interrupts(stop=threading.Event(), cleaning=threading.Event())

    def warn(message: str) -> None:
        # From another thread: the handler may run while this thread holds the printer's lock.
        threading.Thread(target=printer.warn, args=(message,), daemon=True).start()

    def handle(signum: int, frame: FrameType | None) -> None:
        if state.cleaning.is_set():
            warn("Interrupted: cleaning up the sandbox first, please wait")
            return
        if signum == signal.SIGINT and not state.stop.is_set():
            state.stop.set()
            warn("Interrupted: finishing the step in flight, then cleaning up (Ctrl-C again: now)")
            return
        state.stop.set()
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(
    paths: DemoPaths, options: DemoOptions, catalog: Catalog, printer: DemoPrinter, stop: threading.Event
) -> int:
    printer.info(
        f"Demo: a sandbox SequoiaCM {OLD_VERSION} on this machine, upgraded to {NEW_VERSION} and rolled "
        "back by the same flow as `scm.py cluster` (a local session stands in for SSH)"
    )
    topology = _build(paths, printer)
    _check_stop(stop)
    before_digest = sandbox.tree_digest(paths.install)
    before_nodes = node_states(paths, topology, catalog)
    _show_nodes(printer, before_nodes)
    if options.fail_service is not None:
        sandbox.set_fault(paths.install, options.fail_service, "start-fail", version=NEW_VERSION)
        printer.info(
            f"Demo: {catalog.get(options.fail_service).printed} {NEW_VERSION} will fail to start "
            "(--fail): watch that pair being rolled back on the spot"
        )
    _check_stop(stop)
    # The demo signs its status file as the cluster command does, with a key that lives in
    # memory only: the demo leaves no file behind.
    key = StatusKey.generate()
    status_path, upgraded = _upgrade(paths, options, catalog, printer, stop, key)
    printer.info("Demo: after the upgrade:" if upgraded else "Demo: after the failed upgrade:")
    _show_nodes(printer, node_states(paths, topology, catalog))
    _show_customer_jars(paths, catalog, printer)
    _show_status(status_path, printer, key)
    _check_stop(stop)
    rolled_back = _rollback(status_path, paths, catalog, printer, stop, key)
    _show_status(status_path, printer, key)
    back = _check_back(paths, topology, catalog, printer, before_digest=before_digest, before=before_nodes)
    expected_failure = options.fail_service is not None
    return EXIT_OK if back and rolled_back and upgraded != expected_failure else EXIT_FAILED


def _check_stop(stop: threading.Event) -> None:
    if stop.is_set():
        raise KeyboardInterrupt


# -- the sandbox -------------------------------------------------------------------------------


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


def _build(paths: DemoPaths, printer: DemoPrinter) -> Topology:
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


def _show_nodes(printer: DemoPrinter, states: Mapping[str, str]) -> None:
    for label, state in states.items():
        printer.info(f"Demo:   [{HOST}]:{label}: {state}")


def _show_customer_jars(paths: DemoPaths, catalog: Catalog, printer: DemoPrinter) -> None:
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


# -- the real flow -----------------------------------------------------------------------------


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


def _run_locks(
    paths: DemoPaths, sessions: Mapping[str, Session], run_id: str
) -> AbstractContextManager[None]:
    """The cluster command's locks: the status directory's, and the host's run lock."""
    return run_locks(
        paths.status_dir,
        sessions,
        upgrade_pack_path=str(paths.upgrade_pack),
        admin_user=None,
        login_users={name: _me() for name in sessions},
        run_id=run_id,
    )


def _upgrade(
    paths: DemoPaths,
    options: DemoOptions,
    catalog: Catalog,
    printer: DemoPrinter,
    stop: threading.Event,
    key: StatusKey,
) -> tuple[Path, bool]:
    """Check, show the plan, upgrade unattended: (status file, whether every pair upgraded)."""
    printer.info(f"Demo: upgrading to {NEW_VERSION}, as `scm.py cluster --upgrade --unattended` does")
    compatibility = load_compatibility(catalog=catalog)
    paths.scratch.mkdir(exist_ok=True)
    checked = check_cluster(
        demo_target(paths),
        release_dir=paths.release(NEW_VERSION),
        catalog=catalog,
        compatibility=compatibility,
        connect=local_connector(),
        reporter=printer,
        work_dir=paths.scratch,
    )
    status: list[Path] = []
    try:
        olds = [p.old_version for p in checked.plan.pairs if p.old_version]
        for notice in compatibility.notices_for(olds, checked.plan.release_version):
            printer.warn(f"Upgrade note: {notice}")
        _show_plan(checked, printer)
        run_id = uuid.uuid4().hex
        with _run_locks(paths, checked.sessions, run_id):
            outcome = execute_upgrade(
                checked,
                run_id=run_id,
                status_dir=paths.status_dir,
                argv=_demo_argv(options),
                catalog=catalog,
                lifecycle=load_lifecycle(),
                settings=RunSettings(parallel=1, parallel_ssh=1, start_timeout=START_TIMEOUT),
                reporter=printer,
                stop=stop,
                on_status_file=status.append,
                status_key=key,
            )
    except RunFailed as exc:
        printer.error(exc.message)
        printer.info(
            "Demo: the failed pair was rolled back on the spot and no further pair was started; "
            "the status file records it all"
        )
        return exc.status_path, False
    finally:
        checked.close()
    printer.info(
        f"Upgrade service success, generate upgrade status file success, file location:{outcome.status_path}"
    )
    return outcome.status_path, True


def _show_plan(checked: CheckedCluster, printer: DemoPrinter) -> None:
    for warning in plan_warnings(checked.plan):
        printer.warn(warning)
    if not checked.plan.pairs:
        raise ScmflowError("the demo found nothing to upgrade in its sandbox")
    printer.info("Prepare to upgrade services in this order")
    for line in plan_lines(checked.plan.pairs):
        printer.info(line)


def _demo_argv(options: DemoOptions) -> list[str]:
    argv = ["scm.py", "demo"]
    if options.fail_service:
        argv += ["--fail", options.fail_service]
    if options.keep:
        argv.append("--keep")
    return argv


def _show_status(status_path: Path, printer: DemoPrinter, key: StatusKey) -> None:
    printer.info(f"Demo: scm.py status show {status_path}")
    for line in render_show(read_journal(status_path, key=key)).rstrip("\n").splitlines():
        printer.info(f"    {line}".rstrip())


def _rollback(
    status_path: Path,
    paths: DemoPaths,
    catalog: Catalog,
    printer: DemoPrinter,
    stop: threading.Event,
    key: StatusKey,
) -> bool:
    """Roll back every pair the status file says changed, as `cluster --rollback` does."""
    printer.info(
        f"Demo: rolling back, as `scm.py cluster --rollback --upgrade-status-path {status_path}` does"
    )
    # No trust check: the demo wrote this file a moment ago, and as root its install user
    # is root, which a cluster's status file may never name.
    state = open_run(status_path, key=key)
    try:
        printer.info(f"Read the upgrade status file {status_path}: {len(state.pairs)} planned pairs")
        candidates, warnings = select_pairs(state, hosts=None, services=None, catalog=catalog)
        for warning in warnings:
            printer.warn(warning)
        candidates = [p for p in candidates if needs_rollback(state, p)]
        if not candidates:
            printer.info("No service need to rollback")
            return True
        sessions = local_connector()([HOST])
        try:
            return _roll_back_pairs(state, candidates, sessions, paths, catalog, printer, stop)
        finally:
            close_sessions(sessions)
    finally:
        state.writer().close()


def _roll_back_pairs(
    state: ResumeState,
    candidates: Sequence[Pair],
    sessions: Mapping[str, Session],
    paths: DemoPaths,
    catalog: Catalog,
    printer: DemoPrinter,
    stop: threading.Event,
) -> bool:
    selection = check_pairs(state, candidates, sessions=sessions, catalog=catalog)
    for warning in selection.warnings:
        printer.warn(warning)
    if not selection.pairs:
        printer.info("No service need to rollback")
        return True
    printer.info("prepare to rollback services in this order")
    for line in plan_lines(selection.pairs, reverse=True):
        printer.info(line)
    packages = {s: str(info["name"]) for s, info in state.header["release"]["packages"].items()}
    try:
        with _run_locks(paths, sessions, str(state.header.get("run_id", ""))):
            outcome = execute_rollback(
                state,
                selection.pairs,
                sessions=sessions,
                release_packages=packages,
                catalog=catalog,
                lifecycle=load_lifecycle(),
                parallel=1,
                reporter=printer,
                stop=stop,
            )
    except RunFailed as exc:
        printer.error(exc.message)
        return False
    printer.info(f"Rollback service success, upgrade status file location:{outcome.status_path}")
    return True


# -- the proof, and the cleanup -----------------------------------------------------------------


def _check_back(
    paths: DemoPaths,
    topology: Topology,
    catalog: Catalog,
    printer: DemoPrinter,
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


def _clean(paths: DemoPaths, printer: DemoPrinter) -> None:
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


def _say_kept(paths: DemoPaths, catalog: Catalog, printer: DemoPrinter) -> None:
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
