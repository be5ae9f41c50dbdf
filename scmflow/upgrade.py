"""The upgrade as a whole: check the cluster, plan, then run it with a journal."""

from __future__ import annotations

import getpass
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scmflow import __version__
from scmflow.actions import RemoteLayout
from scmflow.availability import Guard, MaxUnavailable, stage_limit
from scmflow.catalog import Catalog
from scmflow.compatibility import Compatibility
from scmflow.config import ConfigFile
from scmflow.distribute import distribute
from scmflow.errors import ReleaseError, ScmflowError
from scmflow.events import (
    CheckStarted,
    CheckSucceeded,
    ConfigChecked,
    HostsChecked,
    PackageBytes,
    PackageSending,
    PairUpgrading,
    StatusFileCreated,
    UpgradeStarted,
)
from scmflow.fanout import DEFAULT_PARALLEL_SSH, map_hosts
from scmflow.hooks import Hooks, PairHooks
from scmflow.inventory import HostInventory, probe_host
from scmflow.journal import Journal
from scmflow.machine import Lifecycle
from scmflow.plan import Pair, Plan, group_stages, make_plan
from scmflow.records import note_record, run_record
from scmflow.release import Release, load_release
from scmflow.report import Reporter
from scmflow.runstate import (
    HostEntry,
    Progress,
    RunFailed,
    RunOutcome,
    finish_run,
    make_runs,
    pair_hooks,
)
from scmflow.scheduler import Scheduler
from scmflow.session.base import Session
from scmflow.statuskey import StatusKey

Connector = Callable[[Sequence[str]], dict[str, Session]]


STAMP_FORMAT = "%Y-%m-%d-%H:%M:%S"


@dataclass(frozen=True)
class Target:
    """What to upgrade: install, hosts in config order, selected services, remote bases."""

    install_path: str
    install_user: str
    hosts: tuple[HostEntry, ...]
    services: tuple[str, ...] | None
    upgrade_pack_path: str
    backup_path: str
    # Who creates the run's base directories and must be reachable by sudo; None means the
    # login user does it (the local demo, where everything belongs to one user).
    admin_user: str | None = "root"
    # The upgrade.cfg this target was read from, recorded so that a rollback or resume
    # without --upgrade-conf can take the passwords from it; None when there is none (demo).
    config: ConfigFile | None = None
    # The operator's hooks (upgrade.cfg [config]), recorded in the header for rollback and resume.
    hooks: Hooks = field(default_factory=Hooks)
    # Environment variables that hold passwords (Password env:NAME): never passed to a hook.
    secret_names: tuple[str, ...] = ()


@dataclass
class CheckedCluster:
    """The result of the check phase: everything the run needs, sessions still open."""

    target: Target
    release: Release
    inventories: dict[str, HostInventory]
    plan: Plan
    sessions: dict[str, Session]

    def close(self) -> None:
        """Close every session."""
        close_sessions(self.sessions)


def close_sessions(sessions: Mapping[str, Session]) -> None:
    """Close sessions, ignoring errors from dead peers."""
    for session in sessions.values():
        try:
            session.close()
        except Exception:  # noqa: BLE001, S110 - closing a dead connection may fail; nothing to do
            pass


def check_cluster(
    target: Target,
    *,
    release_dir: Path,
    catalog: Catalog,
    compatibility: Compatibility,
    connect: Connector,
    reporter: Reporter,
    work_dir: Path,
    parallel_ssh: int = DEFAULT_PARALLEL_SSH,
) -> CheckedCluster:
    """Connect to every host, read what is installed, load the release and plan; changes nothing.

    The hosts are read `parallel_ssh` at a time.
    """
    reporter.emit(CheckStarted())
    names = target.services or catalog.names()
    services = [catalog.get(n) for n in catalog.names()]
    sessions = connect([h.name for h in target.hosts])
    try:
        inventories = _probe_all(sessions, target, services, parallel_ssh)
        reporter.emit(HostsChecked())
        release = load_release(release_dir, catalog, names, work_dir=work_dir)
        plan = make_plan(
            catalog=catalog,
            compatibility=compatibility,
            hosts=[h.name for h in target.hosts],
            inventories=inventories,
            services=target.services,
            release_version=release.version,
            available=tuple(release.packages),
        )
        reporter.emit(ConfigChecked())
    except BaseException:
        close_sessions(sessions)
        raise
    reporter.emit(CheckSucceeded())
    return CheckedCluster(
        target=target, release=release, inventories=inventories, plan=plan, sessions=sessions
    )


def _probe_all(
    sessions: Mapping[str, Session], target: Target, services: Sequence[Any], parallel: int
) -> dict[str, HostInventory]:
    def probe(name: str) -> HostInventory:
        host = next(h for h in target.hosts if h.name == name)
        return probe_host(
            sessions[name],
            admin_user=target.admin_user,
            install_path=target.install_path,
            install_user=target.install_user,
            java_home=host.java_home,
            services=services,
        )

    # The check changes nothing: whatever stops it (a host that cannot be read, reached or
    # trusted) is a refusal.
    return map_hosts([h.name for h in target.hosts], probe, parallel=parallel, what="host check", exit_code=2)


def make_layout(target: Target, stamp: str, start_timeout: int) -> RemoteLayout:
    """The run's remote directories, named after its timestamp."""
    return RemoteLayout(
        install_path=target.install_path,
        install_user=target.install_user,
        admin_user=target.admin_user,
        upgrade_dir=f"{target.upgrade_pack_path.rstrip('/')}/upgrade-{stamp}",
        backup_dir=f"{target.backup_path.rstrip('/')}/backup-{stamp}",
        start_timeout=start_timeout,
    )


def build_header(
    checked: CheckedCluster,
    layout: RemoteLayout,
    *,
    argv: Sequence[str],
    stamp: str,
    parallel: int,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Record 0 of the status file: enough to roll back without the config; no secrets."""
    java_homes = {h: inv.java_home for h, inv in checked.inventories.items()}
    hosts = [
        {**h.to_record(), "java_home": java_homes.get(h.name, h.java_home)}
        for h in checked.target.hosts
        if h.name in checked.plan.hosts()
    ]
    release = checked.release
    # Where the config is and a digest of it, never its content: the passwords stay in it.
    config = {"config": checked.target.config.to_record()} if checked.target.config else {}
    return {
        "run_id": run_id or uuid.uuid4().hex,
        "stamp": stamp,
        "started": time.time(),
        "tool": "scmflow",
        "tool_version": __version__,
        "operator": getpass.getuser(),
        "control_host": socket.gethostname(),
        "argv": list(argv),
        "parallel": parallel,
        "layout": layout.to_record(),
        "hosts": hosts,
        "release": {
            "root": str(release.root),
            "version": release.version,
            "packages": {
                service: {"name": p.name, "sha256": p.sha256, "size": p.size}
                for service, p in release.packages.items()
                if any(pair.service == service for pair in checked.plan.pairs)
            },
        },
        "plan": [p.to_record() for p in checked.plan.pairs],
        "hooks": checked.target.hooks.to_record(),
        # names (never values) of the environment variables that hold SSH passwords
        "hook_env_exclude": list(checked.target.secret_names),
        **config,
    }


@dataclass(frozen=True)
class RunSettings:
    """Knobs of a run, from the command line."""

    parallel: int = 1
    parallel_ssh: int = DEFAULT_PARALLEL_SSH
    start_timeout: int = 300
    max_unavailable: MaxUnavailable | None = None
    allow_outage: bool = False
    # stop cleanly once this many pairs were verified in this run (a canary); None: never
    pause_after: int | None = None

    @property
    def guard(self) -> Guard:
        """The availability guard these settings ask for."""
        return Guard(
            parallel=self.parallel, max_unavailable=self.max_unavailable, allow_outage=self.allow_outage
        )

    def to_record(self) -> dict[str, Any]:
        """What a `run` record keeps of them, for auditors."""
        guard = self.guard.to_record()
        return {**guard, "pause_after": self.pause_after, "start_timeout": self.start_timeout}


def execute_upgrade(
    checked: CheckedCluster,
    *,
    status_dir: Path,
    argv: Sequence[str],
    catalog: Catalog,
    lifecycle: Lifecycle,
    settings: RunSettings,
    reporter: Reporter,
    stop: threading.Event,
    on_status_file: Callable[[Path], None] | None = None,
    run_id: str | None = None,
    status_key: StatusKey | None = None,
) -> RunOutcome:
    """Create the status file, send packages, then upgrade every planned pair.

    `status_key` signs every record (the cluster command always has one); without it the
    file is unauthenticated (the local demo).
    """
    stamp = time.strftime(STAMP_FORMAT)
    layout = make_layout(checked.target, stamp, settings.start_timeout)
    header = build_header(checked, layout, argv=argv, stamp=stamp, parallel=settings.parallel, run_id=run_id)
    journal = Journal.create(status_dir, header, key=status_key)
    reporter.emit(StatusFileCreated(journal.path))
    if on_status_file is not None:
        on_status_file(journal.path)
    journal.append(run_record("upgrade", "started", **settings.to_record()))
    pairs = list(checked.plan.pairs)
    java_homes = {h: inv.java_home for h, inv in checked.inventories.items()}
    hooks = pair_hooks(
        checked.target.hooks,
        journal,
        reporter,
        run_id=str(header["run_id"]),
        hosts=checked.target.hosts,
        secret_names=checked.target.secret_names,
    )
    return drive_upgrade(
        journal,
        pairs=pairs,
        states={},
        sessions=checked.sessions,
        release=checked.release,
        layout=layout,
        java_homes=java_homes,
        login_users={h.name: h.user for h in checked.target.hosts},
        catalog=catalog,
        lifecycle=lifecycle,
        settings=settings,
        reporter=reporter,
        stop=stop,
        fresh=True,
        action="upgrade",
        hooks=hooks,
    )


def drive_upgrade(
    journal: Journal,
    *,
    pairs: Sequence[Pair],
    states: Mapping[tuple[str, str], str],
    sessions: Mapping[str, Session],
    release: Release,
    layout: RemoteLayout,
    java_homes: Mapping[str, str],
    login_users: Mapping[str, str],
    catalog: Catalog,
    lifecycle: Lifecycle,
    settings: RunSettings,
    reporter: Reporter,
    stop: threading.Event,
    fresh: bool,
    action: str,
    hooks: PairHooks | None = None,
) -> RunOutcome:
    todo = [p for p in pairs if states.get(p.key) != lifecycle.done]
    pairs_by_host: dict[str, list[Pair]] = {}
    for pair in todo:
        pairs_by_host.setdefault(pair.host, []).append(pair)
    progress = Progress(len(pairs_by_host) + len(todo))
    reporter.emit(UpgradeStarted(progress.total))

    def on_host_start(host: str) -> None:
        reporter.emit(PackageSending(host, progress.next()))

    def on_bytes(host: str, sent: int, total: int) -> None:
        reporter.emit(PackageBytes(host, sent, total))

    try:
        distribute(
            sessions,
            pairs_by_host,
            release,
            layout,
            login_users=login_users,
            fresh=fresh,
            parallel=settings.parallel_ssh,
            on_host_start=on_host_start,
            on_bytes=on_bytes,
        )
    except ScmflowError as exc:
        with journal:
            journal.append(run_record(action, "failed", error=exc.message))
        raise RunFailed(exc.message, journal.path, exc.exit_code) from exc
    journal.append(note_record(packages_sent=sorted(pairs_by_host)))
    runs = make_runs(
        pairs,
        states,
        journal=journal,
        sessions=sessions,
        layout=layout,
        java_homes=java_homes,
        release_packages={s: p.name for s, p in release.packages.items()},
        catalog=catalog,
        lifecycle=lifecycle,
        reporter=reporter,
    )

    def on_pair_start(pair: Pair) -> None:
        reporter.emit(PairUpgrading(pair, progress.next()))

    guard = settings.guard
    scheduler = Scheduler(
        runs,
        parallel=settings.parallel,
        stop=stop,
        on_pair_start=on_pair_start,
        stage_cap=lambda stage: stage_limit(stage, guard).at_once,
        pause_after=settings.pause_after,
        hooks=hooks,
    )
    stages = group_stages(todo)
    result = scheduler.upgrade(stages)
    return finish_run(journal, result, action=action, pairs=len(pairs))


def reload_release(
    header: Mapping[str, Any], release_dir: Path | None, catalog: Catalog, work_dir: Path
) -> Release:
    """The release the status file was made with, checked against its recorded sha256."""
    recorded = header["release"]
    root = release_dir or Path(recorded["root"])
    release = load_release(root, catalog, list(recorded["packages"]), work_dir=work_dir)
    for service, info in recorded["packages"].items():
        package = release.package_for(service)
        if package.sha256 != info["sha256"]:
            raise ReleaseError(
                f"package {package.path} differs from the one this run started with "
                f"(sha256 {package.sha256[:12]}... != {str(info['sha256'])[:12]}...)"
            )
    return release
