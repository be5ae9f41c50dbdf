"""The upgrade as a whole: check the cluster, plan, then run it (or resume a run) with a journal."""

from __future__ import annotations

import getpass
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from scmflow import __version__
from scmflow.actions import HostActions, RemoteLayout
from scmflow.availability import Guard, MaxUnavailable, stage_limit
from scmflow.catalog import Catalog
from scmflow.compatibility import Compatibility
from scmflow.config import (
    ConfigFile,
    check_host_name,
    check_install_user,
    check_normalised_path,
    check_outside_install,
    check_run_base,
    check_user_name,
    normalise_install_path,
)
from scmflow.distribute import distribute
from scmflow.errors import JournalError, PlanError, ReleaseError, ScmflowError, UntrustedStatusFile
from scmflow.fanout import map_hosts
from scmflow.hooks import Hooks, PairHooks
from scmflow.inventory import HostInventory, probe_host
from scmflow.journal import Authenticity, Journal, JournalContents, PairReplay, read_journal, replay
from scmflow.machine import Lifecycle, PairRun
from scmflow.plan import Pair, Plan, group_stages, make_plan, planned_nodes
from scmflow.release import Release, load_release
from scmflow.remote import Session
from scmflow.report import Reporter
from scmflow.scheduler import Scheduler, StageResult, describe_failure
from scmflow.statuskey import StatusKey

Connector = Callable[[Sequence[str]], dict[str, Session]]
STAMP_FORMAT = "%Y-%m-%d-%H:%M:%S"
MAX_START_TIMEOUT = 86400
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class HostEntry:
    """A host as the run knows it; never holds a password."""

    name: str
    # None: the SshPort cell was empty, so ~/.ssh/config (or 22) decides, now and on rollback.
    port: int | None
    user: str
    java_home: str | None
    password_auth: bool

    def to_record(self) -> dict[str, Any]:
        """Plain data for the status file header."""
        return {
            "name": self.name,
            "port": self.port,
            "user": self.user,
            "java_home": self.java_home,
            "auth": "password" if self.password_auth else "key",
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> HostEntry:
        """Inverse of `to_record`."""
        return cls(
            name=str(record["name"]),
            port=None if record.get("port") is None else int(record["port"]),
            user=str(record["user"]),
            java_home=record.get("java_home"),
            password_auth=record.get("auth") == "password",
        )


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


@dataclass
class RunOutcome:
    """How a run ended."""

    status_path: Path
    result: StageResult
    pairs: int = 0
    messages: list[str] = field(default_factory=list)
    # stopped on purpose after --pause-after pairs; resume carries on
    paused: bool = False


class RunFailed(ScmflowError):
    """A pair failed; its own rollback was attempted; the status file says everything."""

    def __init__(self, message: str, status_path: Path, exit_code: int = 1) -> None:
        super().__init__(message)
        self.status_path = status_path
        # 2 when the run stopped before any pair changed a host (see distribute)
        self.exit_code = exit_code


class RunInterrupted(ScmflowError):
    """The operator interrupted the run."""

    exit_code = 130

    def __init__(self, status_path: Path) -> None:
        super().__init__(f"interrupted; the status file records where every pair stopped: {status_path}")
        self.status_path = status_path


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
    parallel_ssh: int = 16,
) -> CheckedCluster:
    """Connect to every host, read what is installed, load the release and plan; changes nothing.

    The hosts are read `parallel_ssh` at a time.
    """
    reporter.info("Checking the upgrade configuration... (0/2)")
    names = target.services or catalog.names()
    services = [catalog.get(n) for n in catalog.names()]
    sessions = connect([h.name for h in target.hosts])
    try:
        inventories = _probe_all(sessions, target, services, parallel_ssh)
        reporter.info("Checking the upgrade configuration: Host (1/2)")
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
        reporter.info("Checking the upgrade configuration: Config (2/2)")
    except BaseException:
        close_sessions(sessions)
        raise
    reporter.info("Check the upgrade configuration success")
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
    return map_hosts(
        [h.name for h in target.hosts], probe, parallel=parallel, what="host check", exit_code=2
    )


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


class Progress:
    """The `(i/N)` counter of the operator's progress lines, shared by worker threads."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._done = 0
        self._lock = threading.Lock()

    def next(self) -> str:
        """`(i/N)` for the next step."""
        with self._lock:
            self._done += 1
            return f"({self._done}/{self.total})"


@dataclass(frozen=True)
class RunSettings:
    """Knobs of a run, from the command line."""

    parallel: int = 1
    parallel_ssh: int = 16
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
    reporter.info(f"Created upgrade status file, file location:{journal.path}")
    if on_status_file is not None:
        on_status_file(journal.path)
    started = {"action": "upgrade", "result": "started", **settings.to_record()}
    journal.append({"kind": "run", "detail": started})
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
    return _drive_upgrade(
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


def _drive_upgrade(
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
    todo = [p for p in pairs if states.get(p.key) != "verified"]
    pairs_by_host: dict[str, list[Pair]] = {}
    for pair in todo:
        pairs_by_host.setdefault(pair.host, []).append(pair)
    progress = Progress(len(pairs_by_host) + len(todo))
    reporter.info(f"Upgrading service...(0/{progress.total})")

    def on_host_start(host: str) -> None:
        reporter.info(f"Upgrading Service: sending upgrade package to {host} {progress.next()}")

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
            on_bytes=reporter.transfer,
        )
    except ScmflowError as exc:
        with journal:
            journal.append(
                {"kind": "run", "detail": {"action": action, "result": "failed", "error": exc.message}}
            )
        raise RunFailed(exc.message, journal.path, exc.exit_code) from exc
    journal.append({"kind": "note", "detail": {"packages_sent": sorted(pairs_by_host)}})
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
        reporter.info(f"Upgrading Service: upgrading {pair.printed} on {pair.host} {progress.next()}")

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
    return _finish(journal, result, action=action, pairs=len(pairs))


def pair_hooks(
    hooks: Hooks,
    journal: Journal,
    reporter: Reporter,
    *,
    run_id: str,
    hosts: Sequence[HostEntry],
    secret_names: Sequence[str] = (),
) -> PairHooks | None:
    """The run's hooks, recording into `journal`; None when none is configured."""
    if not hooks.configured:
        return None
    return PairHooks(
        hooks,
        record=journal.append,
        report=reporter.info,
        warn=reporter.warn,
        run_id=run_id,
        status_file=journal.path,
        ssh_ports={h.name: h.port or 22 for h in hosts},
        base_env=os.environ,
        secret_names=secret_names,
    )


def make_runs(
    pairs: Sequence[Pair],
    states: Mapping[tuple[str, str], str],
    *,
    journal: Journal,
    sessions: Mapping[str, Session],
    layout: RemoteLayout,
    java_homes: Mapping[str, str],
    release_packages: Mapping[str, str],
    catalog: Catalog,
    lifecycle: Lifecycle,
    reporter: Reporter,
) -> dict[tuple[str, str], PairRun]:
    """One PairRun per pair, starting from `states` (default: the lifecycle's initial state)."""

    def on_node_start(pair: Pair, port: int | None) -> None:
        where = f",port={port}" if port is not None else ""
        reporter.info(f"Restarting {pair.printed} node{where}")

    actions = {
        host: HostActions(
            session,
            layout=layout,
            java_home=java_homes.get(host, ""),
            catalog=catalog,
            packages=release_packages,
            on_node_start=on_node_start,
        )
        for host, session in sessions.items()
    }
    runs: dict[tuple[str, str], PairRun] = {}
    for pair in pairs:
        runs[pair.key] = PairRun(
            pair,
            lifecycle,
            run_action=actions[pair.host],
            record=journal.append,
            initial=states.get(pair.key),
        )
    return runs


def _finish(journal: Journal, result: StageResult, *, action: str, pairs: int) -> RunOutcome:
    """Record how the run ended and release the status file (a later step may reopen it)."""
    with journal:
        if result.failures:
            message = "; ".join(describe_failure(f) for f in result.failures)
            journal.append(
                {"kind": "run", "detail": {"action": action, "result": "failed", "error": message}}
            )
            raise RunFailed(message, journal.path)
        if result.interrupted:
            journal.append({"kind": "run", "detail": {"action": action, "result": "interrupted"}})
            raise RunInterrupted(journal.path)
        if result.paused:
            journal.append({"kind": "run", "detail": {"action": action, "result": "paused"}})
            return RunOutcome(status_path=journal.path, result=result, pairs=pairs, paused=True)
        journal.append({"kind": "run", "detail": {"action": action, "result": "success"}})
        return RunOutcome(status_path=journal.path, result=result, pairs=pairs)


@dataclass
class ResumeState:
    """A status file opened to continue its upgrade, or read for a dry run."""

    # None when the file was only read (a dry run): nothing may be appended
    journal: Journal | None
    header: dict[str, Any]
    pairs: list[Pair]
    states: dict[tuple[str, str], str]
    in_flight: dict[tuple[str, str], str]
    hosts: list[HostEntry]
    layout: RemoteLayout
    # The upgrade.cfg the run recorded; None in status files written before it was recorded.
    config: ConfigFile | None = None
    # Each rolled-back pair's rolling-back run: "rollback" (the operator's) or an upgrade's.
    rolled_back_by: dict[tuple[str, str], str] = field(default_factory=dict)
    # The path it was read from
    path: Path = Path()
    # The run's hooks, and the variables a hook must never see (from the header)
    hooks: Hooks = field(default_factory=Hooks)
    hook_env_exclude: tuple[str, ...] = ()

    def writer(self) -> Journal:
        """The journal to append to; JournalError for a file opened read-only."""
        if self.journal is None:
            raise JournalError(f"{self.path} was opened read-only (a dry run): nothing may be written")
        return self.journal

    def explicitly_rolled_back(self, pair: Pair) -> bool:
        """Whether an operator's --rollback, not a failure, left this pair rolled back."""
        return self.states.get(pair.key) == "rolled_back" and self.rolled_back_by.get(pair.key) == "rollback"


@dataclass(frozen=True)
class StatusTrust:
    """Why rollback and resume may use a status file, and the key that signs what they append.

    The file must be authentic under `key`, or start with the header the operator was
    shown and accepted (`accepted_header`, the digest of record 0: --trust-status-file).
    """

    key: StatusKey | None
    accepted_header: bytes | None = None


def open_run(
    status_path: Path, *, trust: StatusTrust | None = None, key: StatusKey | None = None
) -> ResumeState:
    """Read a status file and open it for appending; replay gives each pair's state.

    With `trust` (the cluster command), a file that is neither authentic nor accepted is
    refused (UntrustedStatusFile), and every header value must pass upgrade.cfg's
    validators. Both are checked on what was read under the file's lock, before anything
    is written to it. Without `trust` the caller vouches for the file: the local demo,
    reading back the file it has just written (and signing what it appends with `key`).
    """
    opened: list[JournalContents] = []

    def check(contents: JournalContents) -> None:
        _check_contents(status_path, contents, trust)
        opened.append(contents)

    journal = Journal.open_for_append(status_path, key=trust.key if trust else key, check=check)
    return _state_of(opened[0], journal)


def read_run(status_path: Path, *, trust: StatusTrust) -> ResumeState:
    """The state a status file records, read only: a dry run changes no byte of the file.

    The same checks as `open_run`; a torn last record is ignored, not cut off.
    """
    contents = read_journal(status_path, key=trust.key)
    _check_contents(status_path, contents, trust)
    return _state_of(contents, None)


def _check_contents(path: Path, contents: JournalContents, trust: StatusTrust | None) -> None:
    if trust is not None:
        require_trusted(path, contents, trust)
    _check_run_header(path, contents.header)
    if trust is not None:
        check_header_values(path, contents.header)


def _state_of(contents: JournalContents, journal: Journal | None) -> ResumeState:
    header = contents.header
    replayed = replay(contents)
    pairs = [
        _replayed_pair(Pair.from_record(r), replayed.get((r["host"], r["service"]))) for r in header["plan"]
    ]
    lay = header["layout"]
    layout = RemoteLayout(
        install_path=lay["install_path"],
        install_user=lay["install_user"],
        admin_user=lay.get("admin_user", "root"),
        upgrade_dir=lay["upgrade_dir"],
        backup_dir=lay["backup_dir"],
        start_timeout=int(lay.get("start_timeout", 300)),
    )
    recorded = header.get("config")
    return ResumeState(
        journal=journal,
        header=header,
        pairs=pairs,
        states={key: r.state for key, r in replayed.items()},
        in_flight={key: r.in_flight for key, r in replayed.items() if r.in_flight},
        hosts=[HostEntry.from_record(h) for h in header["hosts"]],
        layout=layout,
        config=None if recorded is None else ConfigFile.from_record(recorded),
        rolled_back_by={key: r.rolled_back_by for key, r in replayed.items() if r.rolled_back_by},
        path=contents.path,
        hooks=Hooks() if header.get("hooks") is None else Hooks.from_record(header["hooks"]),
        hook_env_exclude=tuple(str(n) for n in header.get("hook_env_exclude") or ()),
    )


def _replayed_pair(planned: Pair, replayed: PairReplay | None) -> Pair:
    """The plan's pair with the nodes a resume last found on its host, if one re-read them."""
    if replayed is None or replayed.probed_nodes is None:
        return planned
    probed = Pair.from_record({**planned.to_record(), "nodes": list(replayed.probed_nodes)})
    return replace(planned, nodes=probed.nodes)


def require_trusted(path: Path, contents: JournalContents, trust: StatusTrust) -> None:
    """UntrustedStatusFile unless the file is authentic or its header is the one accepted."""
    if contents.authenticity.ok:
        return
    if trust.accepted_header is not None and contents.digests[0] == trust.accepted_header:
        return
    raise UntrustedStatusFile(untrusted_message(path, contents.authenticity))


def untrusted_message(path: Path, authenticity: Authenticity) -> str:
    """Why a status file is not used, as one line."""
    return f"status file {path} is not authentic: {authenticity.reason}"


def check_run_header(path: Path, header: Mapping[str, Any]) -> None:
    """JournalError unless the header holds what rollback and resume need, every value valid."""
    _check_run_header(path, header)
    check_header_values(path, header)


def check_header_values(path: Path, header: Mapping[str, Any]) -> None:
    """JournalError naming the first header value that upgrade.cfg's own validators refuse.

    The header says which hosts to log in to, which paths to touch and as whom. Its MAC
    says who wrote it; these checks bound what even an authentic file may say. Expects a
    header that passed `_check_run_header`.
    """
    for name, check in _value_checks(header):
        try:
            check()
        except ValueError as exc:
            # the reason quotes the value: escape what a terminal would act on, newlines included
            raise JournalError(f"{path} names an unsafe {name}: {_printable(str(exc))}") from None


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _value_checks(header: Mapping[str, Any]) -> list[tuple[str, Callable[[], None]]]:
    """(header field, its check) for every value rollback and resume use."""
    layout = header["layout"]
    install = layout["install_path"]
    checks: list[tuple[str, Callable[[], None]]] = [
        ("layout.install_path", partial(_check_install_path, install)),
        ("layout.install_user", partial(check_install_user, layout["install_user"])),
        ("layout.admin_user", partial(_check_optional, layout.get("admin_user"), check_user_name)),
        ("layout.start_timeout", partial(_check_start_timeout, layout.get("start_timeout", 300))),
        ("layout.upgrade_dir", partial(_check_run_dir, layout["upgrade_dir"], "upgrade-", install)),
        ("layout.backup_dir", partial(_check_run_dir, layout["backup_dir"], "backup-", install)),
    ]
    for index, host in enumerate(header["hosts"]):
        where = f"hosts[{index}]"
        checks += [
            (f"{where}.name", partial(check_host_name, host["name"])),
            (f"{where}.user", partial(check_user_name, host["user"])),
            (f"{where}.port", partial(_check_port, host.get("port"))),
            (f"{where}.java_home", partial(_check_optional, host.get("java_home"), check_normalised_path)),
        ]
    checks += [(f"plan[{i}].host", partial(check_host_name, p["host"])) for i, p in enumerate(header["plan"])]
    release = header["release"]
    checks.append(("release.root", partial(_check_optional, release.get("root"), check_normalised_path)))
    for service, info in release["packages"].items():
        checks.append((f"release.packages.{service}", partial(_check_package, info)))
    config = header.get("config")
    if isinstance(config, Mapping):
        checks.append(("config.path", partial(check_normalised_path, config["path"])))
    return checks


def _check_optional(value: object, check: Callable[[str], None]) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    check(value)


def _check_install_path(value: str) -> None:
    if normalise_install_path(value) != value:
        raise ValueError(f"'{value}' is not a normalised InstallPath (an absolute path ending in /sequoiacm)")


def _check_run_dir(value: str, prefix: str, install_path: str) -> None:
    """A run's own directory: `<base>/<prefix><time>`, its base as upgrade.cfg allows it."""
    check_normalised_path(value)
    base, name = value.rsplit("/", 1)
    if not name.startswith(prefix):
        raise ValueError(f"'{value}' is not a run's directory ({prefix}<time>)")
    check_run_base(base or "/")
    check_outside_install(base or "/", install_path)


def _check_port(value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{value!r} is not a port number (1-65535)")


def _check_start_timeout(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_START_TIMEOUT:
        raise ValueError(f"{value!r} is not a number of seconds (1-{MAX_START_TIMEOUT})")


def _check_package(info: object) -> None:
    """A package as the release recorded it: a plain file name in the run's pack dir, and its sha256."""
    if not isinstance(info, Mapping):
        raise ValueError(f"{info!r} is not a package record")
    name, digest = info.get("name"), info.get("sha256")
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or any(ord(c) < 32 for c in name):
        raise ValueError(f"{name!r} is not a package file name")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ValueError(f"{digest!r} is not a sha256")


def _check_run_header(path: Path, header: Mapping[str, Any]) -> None:
    """JournalError unless the header holds what rollback and resume need."""
    problems = []
    layout = header.get("layout")
    if not isinstance(layout, Mapping) or not all(
        isinstance(layout.get(k), str) for k in ("install_path", "install_user", "upgrade_dir", "backup_dir")
    ):
        problems.append("layout")
    hosts = header.get("hosts")
    if not isinstance(hosts, list) or not all(
        isinstance(h, Mapping) and isinstance(h.get("name"), str) and isinstance(h.get("user"), str)
        for h in hosts
    ):
        problems.append("hosts")
    plan = header.get("plan")
    if not isinstance(plan, list) or not all(
        isinstance(p, Mapping)
        and all(isinstance(p.get(k), str) for k in ("host", "service", "printed", "new_version"))
        for p in plan
    ):
        problems.append("plan")
    release = header.get("release")
    if not isinstance(release, Mapping) or not isinstance(release.get("packages"), Mapping):
        problems.append("release")
    if not _valid_config_record(header.get("config")):
        problems.append("config")
    if not _valid_hooks_record(header.get("hooks")) or not _valid_names(header.get("hook_env_exclude")):
        problems.append("hooks")
    if problems:
        raise JournalError(
            f"{path} is not the status file of an upgrade run: its header lacks a valid {', '.join(problems)}"
        )


def _valid_hooks_record(record: object) -> bool:
    """Whether a header's `hooks` is absent (an older file) or a proper Hooks record."""
    if record is None:
        return True
    try:
        Hooks.from_record(record)
    except ValueError:
        return False
    return True


def _valid_names(names: object) -> bool:
    return names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names))


def _valid_config_record(record: object) -> bool:
    """Whether a header's `config` is absent (an older file) or a proper ConfigFile record."""
    if record is None:
        return True
    if not isinstance(record, Mapping):
        return False
    try:
        ConfigFile.from_record(record)
    except ValueError:
        return False
    return True


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


def fresh_pairs(state: ResumeState, pairs: Sequence[Pair]) -> list[Pair]:
    """Pairs that a resume starts from a clean state: pending, or rolled back, nothing in flight."""
    clean = ("pending", "rolled_back")
    return [p for p in pairs if p.key not in state.in_flight and state.states.get(p.key, "pending") in clean]


def reprobe_pairs(
    state: ResumeState,
    pairs: Sequence[Pair],
    *,
    sessions: Mapping[str, Session],
    catalog: Catalog,
    parallel: int = 16,
) -> dict[tuple[str, str], Pair]:
    """Check the hosts again and read what `pairs` (clean pairs a resume redoes) run now.

    The nodes recorded at the original check may be stale (a node stopped or started
    since); restart must start the ones that run now. A host that fails its check, or a
    pair whose version is no longer the one the run started from, refuses the resume
    (exit 2) before anything changes. Returns each pair with its current nodes.
    """
    by_host: dict[str, list[Pair]] = {}
    for pair in pairs:
        by_host.setdefault(pair.host, []).append(pair)
    java = {h.name: h.java_home for h in state.hosts}

    def probe(host: str) -> HostInventory:
        return probe_host(
            sessions[host],
            admin_user=state.layout.admin_user,
            install_path=state.layout.install_path,
            install_user=state.layout.install_user,
            java_home=java.get(host),
            services=[catalog.get(p.service) for p in by_host[host]],
        )

    found = map_hosts(list(by_host), probe, parallel=parallel, what="host check", exit_code=2)
    changed = [
        f"[{p.host}]:{p.printed} is at {found[p.host].version_of(p.service) or 'no version'}, "
        f"not {p.old_version or 'absent'}"
        for p in pairs
        if found[p.host].version_of(p.service) != p.old_version
    ]
    if changed:
        raise PlanError(
            "the cluster changed since this run started: " + "; ".join(changed)
            + "; start a new upgrade with --upgrade-conf FILE instead"
        )
    return {p.key: replace(p, nodes=planned_nodes(found[p.host], p.service)) for p in pairs}


def resume_upgrade(
    state: ResumeState,
    pairs: Sequence[Pair],
    *,
    sessions: Mapping[str, Session],
    release: Release,
    catalog: Catalog,
    lifecycle: Lifecycle,
    settings: RunSettings,
    reporter: Reporter,
    stop: threading.Event,
) -> RunOutcome:
    """Continue an interrupted or failed upgrade in the same status file, for `pairs`.

    Pairs caught mid-step or failed are rolled back to a clean state and redone; clean
    ones (given with the nodes `reprobe_pairs` found, recorded first) run; verified ones
    and pairs not in `pairs` stay as they are. Every run ends with a closing `run` record,
    also when a rollback before the redo fails.
    """
    journal = state.writer()
    started = {"action": "resume", "result": "started", **settings.to_record()}
    journal.append({"kind": "run", "detail": started})
    for pair in fresh_pairs(state, pairs):
        nodes = [{"port": n.port, "running": n.running} for n in pair.nodes]
        journal.append(
            {"kind": "probe", "host": pair.host, "service": pair.service,
             "detail": {"version": pair.old_version, "nodes": nodes}}
        )
    java_homes = {h.name: h.java_home or "" for h in state.hosts}
    hooks = state_hooks(state, journal, reporter)
    runs = make_runs(
        pairs,
        state.states,
        journal=journal,
        sessions=sessions,
        layout=state.layout,
        java_homes=java_homes,
        release_packages={s: p.name for s, p in release.packages.items()},
        catalog=catalog,
        lifecycle=lifecycle,
        reporter=reporter,
    )
    states = dict(state.states)
    try:
        for key, run in runs.items():
            if key in state.in_flight:
                run.mark_failed(
                    state.in_flight[key], "interrupted: the step had begun but its outcome was not recorded"
                )
            if run.state not in ("pending", "verified", "rolled_back"):
                reporter.info(f"Rolling back {run.pair.printed} on {run.pair.host} before redoing it")
                run.fire("rollback")
                if hooks is not None:
                    hooks.run("post_rollback", run.pair)
            if run.state == "rolled_back":
                run.fire("retry")
            states[key] = run.state
    except ScmflowError as exc:
        _close(journal, "resume", "failed", f"rolling back a pair before redoing it failed: {exc.message}")
        raise RunFailed(f"rolling back a pair before redoing it failed: {exc.message}", journal.path) from exc
    except KeyboardInterrupt:
        _close(journal, "resume", "interrupted")
        raise RunInterrupted(journal.path) from None
    return _drive_upgrade(
        journal,
        pairs=list(pairs),
        states=states,
        sessions=sessions,
        release=release,
        layout=state.layout,
        java_homes=java_homes,
        login_users={h.name: h.user for h in state.hosts},
        catalog=catalog,
        lifecycle=lifecycle,
        settings=settings,
        reporter=reporter,
        stop=stop,
        fresh=False,
        action="resume",
        hooks=hooks,
    )


def state_hooks(state: ResumeState, journal: Journal, reporter: Reporter) -> PairHooks | None:
    """The hooks a status file's run recorded, bound to its journal (resume and rollback)."""
    return pair_hooks(
        state.hooks,
        journal,
        reporter,
        run_id=str(state.header.get("run_id", "")),
        hosts=state.hosts,
        secret_names=state.hook_env_exclude,
    )


def _close(journal: Journal, action: str, result: str, error: str | None = None) -> None:
    """Append a run's closing record and release the file."""
    detail: dict[str, Any] = {"action": action, "result": result}
    if error is not None:
        detail["error"] = error
    with journal:
        journal.append({"kind": "run", "detail": detail})
