"""A run's state in its status file: reopening it (or reading it for a dry run), the pair
machines built from it, and how a run is closed; shared by upgrade, resume and rollback.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scmflow.actions import HostActions, RemoteLayout
from scmflow.authenticity import Authenticity
from scmflow.catalog import Catalog
from scmflow.config import ConfigFile
from scmflow.errors import JournalError, ScmflowError, UntrustedStatusFile
from scmflow.events import NodeRestarting, Step
from scmflow.header import check_header_shape, check_header_values
from scmflow.hooks import Hooks, PairHooks
from scmflow.journal import Journal
from scmflow.journalreader import JournalContents, read_journal
from scmflow.lifecycle import Lifecycle, load_lifecycle
from scmflow.machine import PairRun
from scmflow.plan import Pair
from scmflow.records import run_record
from scmflow.replay import PairReplay, replay
from scmflow.report import Reporter
from scmflow.scheduler import StageResult, describe_failure
from scmflow.session.base import Session
from scmflow.statuskey import StatusKey


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


class Progress:
    """The `(i/N)` counter of the operator's progress lines, shared by worker threads."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._done = 0
        self._lock = threading.Lock()

    def next(self) -> Step:
        """The next step (the operator reads `(i/N)`)."""
        with self._lock:
            self._done += 1
            return Step(self._done, self.total)


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
        emit=reporter.emit,
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
        reporter.emit(NodeRestarting(pair, port))

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


def finish_run(journal: Journal, result: StageResult, *, action: str, pairs: int) -> RunOutcome:
    """Record how the run ended and release the status file (a later step may reopen it)."""
    with journal:
        if result.failures:
            message = "; ".join(describe_failure(f) for f in result.failures)
            journal.append(run_record(action, "failed", error=message))
            raise RunFailed(message, journal.path)
        if result.interrupted:
            journal.append(run_record(action, "interrupted"))
            raise RunInterrupted(journal.path)
        if result.paused:
            journal.append(run_record(action, "paused"))
            return RunOutcome(status_path=journal.path, result=result, pairs=pairs, paused=True)
        journal.append(run_record(action, "success"))
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
    # The pair lifecycle (states/pair.toml) the states above were replayed with
    lifecycle: Lifecycle = field(default_factory=load_lifecycle)

    def writer(self) -> Journal:
        """The journal to append to; JournalError for a file opened read-only."""
        if self.journal is None:
            raise JournalError(f"{self.path} was opened read-only (a dry run): nothing may be written")
        return self.journal

    def explicitly_rolled_back(self, pair: Pair) -> bool:
        """Whether an operator's --rollback, not a failure, left this pair rolled back."""
        rolled_back = self.states.get(pair.key) == self.lifecycle.rolled_back
        return rolled_back and self.rolled_back_by.get(pair.key) == "rollback"

    def state_of(self, pair: Pair) -> str:
        """The pair's last committed state; the lifecycle's initial state if nothing was recorded."""
        return self.states.get(pair.key, self.lifecycle.initial)


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
    check_header_shape(path, contents.header)
    if trust is not None:
        check_header_values(path, contents.header)


def _state_of(contents: JournalContents, journal: Journal | None) -> ResumeState:
    header = contents.header
    lifecycle = load_lifecycle()
    replayed = replay(contents, lifecycle)
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
        lifecycle=lifecycle,
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


def close_run(journal: Journal, action: str, result: str, error: str | None = None) -> None:
    """Append a run's closing record and release the file."""
    extra = {} if error is None else {"error": error}
    with journal:
        journal.append(run_record(action, result, **extra))
