"""A status file as the resume and rollback flows use it: opened (trusted or not), locked, described."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

from scmflow.cli.cluster_flow import ClusterFlow
from scmflow.cli.options import ClusterOptions
from scmflow.cli.ui import Printer, confirm
from scmflow.errors import ScmflowError, UntrustedStatusFile, UsageError
from scmflow.header import check_run_header
from scmflow.journalreader import JournalContents, read_journal
from scmflow.lifecycle import ROLLBACK, Lifecycle
from scmflow.locks import clear_dead_host_locks, run_locks
from scmflow.plan import Pair
from scmflow.runstate import ResumeState, StatusTrust, open_run, read_run, untrusted_message
from scmflow.session.base import Session
from scmflow.statusformat import FORMAT_VERSION
from scmflow.statuskey import key_path, load_key, load_or_create_key
from scmflow.trustview import authenticity_hint, trusted_values
from scmflow.upgrade import close_sessions


def open_status(options: ClusterOptions, printer: Printer) -> ResumeState | None:
    """The status file, opened to continue it; None when the operator chose not to trust it.

    Before any host is contacted: a file that this machine's status key did not write is
    refused (UntrustedStatusFile, exit 2) unless --trust-status-file, and then only after
    its hosts, users and paths were shown (and accepted, unless --unattended). Either way
    every header value passes upgrade.cfg's validators (open_run).
    """
    assert options.status_path is not None
    path = options.status_path
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise UsageError(f"upgrade status file {path} {what}")
    where = key_path(options.status_key)
    key = load_key(where)
    contents = read_journal(path, key=key)
    accepted: bytes | None = None
    if not contents.authenticity.ok:
        if not options.trust_status_file:
            hint = authenticity_hint(contents.authenticity, where)
            raise UntrustedStatusFile(
                f"{untrusted_message(path, contents.authenticity)}{hint}; nothing was done "
                "(to use it anyway, check it and pass --trust-status-file)"
            )
        if not _accept_untrusted(path, contents, options, printer):
            return None
        accepted = contents.digests[0]
        if key is None and contents.format_version >= FORMAT_VERSION:
            key = load_or_create_key(where)  # what is appended to a signed file is signed too
    trust = StatusTrust(key=key, accepted_header=accepted)
    # a dry run reads the file and changes no byte of it (not even a torn tail's repair)
    state = read_run(path, trust=trust) if options.dry_run else open_run(path, trust=trust)
    printer.info(f"Read the upgrade status file {path}: {len(state.pairs)} planned pairs")
    return _with_start_timeout(state, options, printer)


def _with_start_timeout(state: ResumeState, options: ClusterOptions, printer: Printer) -> ResumeState:
    """The state with --start-timeout in force when given, else the recorded value; says which."""
    recorded = state.layout.start_timeout
    if options.start_timeout is None or options.start_timeout == recorded:
        printer.info(f"Node start timeout: {recorded} s, as the run recorded it (--start-timeout changes it)")
        return state
    given = options.start_timeout
    printer.info(f"Node start timeout: {given} s (--start-timeout; the run recorded {recorded} s)")
    return replace(state, layout=replace(state.layout, start_timeout=options.start_timeout))


def _accept_untrusted(
    path: Path, contents: JournalContents, options: ClusterOptions, printer: Printer
) -> bool:
    """--trust-status-file: show what the file would have done, then ask (on stderr) unless unattended."""
    check_run_header(path, contents.header)  # nothing unvalidated reaches the terminal
    printer.warn(
        f"{untrusted_message(path, contents.authenticity)}; --trust-status-file uses it anyway. It names:",
        err=True,
    )
    for line in trusted_values(contents.header):
        printer.warn(f"    {line}", err=True)
    if options.unattended or confirm(printer, "Whether to use this status file?", err=True):
        return True
    printer.info("The status file was not used, nothing was changed", err=True)
    return False


def state_locks(
    flow: ClusterFlow, state: ResumeState, sessions: Mapping[str, Session]
) -> AbstractContextManager[None]:
    """The run locks for continuing or rolling back the run a status file records."""
    return run_locks(
        flow.options.status_dir,
        sessions,
        upgrade_pack_path=pack_base(state),
        admin_user=state.layout.admin_user,
        login_users={h.name: h.user for h in state.hosts},
        run_id=str(state.header.get("run_id", "")),
        force=flow.options.break_lock,
        install_path=state.layout.install_path,
        on_event=flow.printer.emit,
        parallel=flow.options.parallel_ssh,
    )


def clear_dead_locks(
    flow: ClusterFlow,
    state: ResumeState,
    hosts: Sequence[str],
    sessions: Mapping[str, Session] | None = None,
) -> None:
    """With nothing to do, still remove the host locks a dead run left (never in a dry run).

    Such a run takes no lock, so a dead run's would stay. No password is asked for this.
    """
    if flow.options.dry_run or not hosts:
        return
    opened: Mapping[str, Session] = sessions or {}
    try:
        if sessions is None:
            opened = flow.access.login(state, hosts, ask=False)()
        clear_dead_host_locks(
            opened,
            upgrade_pack_path=pack_base(state),
            run_id=str(state.header.get("run_id", "")),
            on_event=flow.printer.emit,
            admin_user=state.layout.admin_user,
            parallel=flow.options.parallel_ssh,
        )
    except ScmflowError as exc:
        flow.printer.warn(f"The hosts' run locks were not checked for dead runs: {exc.message}")
    finally:
        if sessions is None:
            close_sessions(opened)


def pack_base(state: ResumeState) -> str:
    """The upgrade pack base dir the run used (parent of its upgrade-<stamp> dir)."""
    return state.layout.upgrade_dir.rstrip("/").rsplit("/", 1)[0] or "/"


def recorded_packages(header: Mapping[str, Any]) -> dict[str, str]:
    """The package file name of each service, as the status file's header records it."""
    packages = header.get("release", {}).get("packages", {})
    return {service: str(info["name"]) for service, info in packages.items()}


def current_state(state: ResumeState, pair: Pair) -> str:
    """The state a resume or rollback acts from: failed for a pair caught mid-step."""
    return state.lifecycle.failed if pair.key in state.in_flight else state.state_of(pair)


def rollback_action(lifecycle: Lifecycle, state: str) -> str:
    """What rolling back from `state` does (abandon, restore), as the lifecycle says."""
    edge = lifecycle.edge(ROLLBACK, state)
    return edge.action if edge is not None and edge.action else "restore"


def state_word(state: ResumeState, pair: Pair) -> str:
    """Where a pair stands, as the resume plan shows it."""
    if pair.key in state.in_flight:
        return f"interrupted during {state.in_flight[pair.key]}"
    word = state.state_of(pair)
    if state.explicitly_rolled_back(pair):
        return "rolled_back by --rollback"
    return word


def status_plan_document(
    action: str, state: ResumeState, pairs: Sequence[Pair], steps: Mapping[str, list[str]]
) -> dict[str, Any]:
    """The JSON plan of a resume or rollback (`--output json`), like the upgrade's."""
    document: dict[str, Any] = {
        "action": action,
        "status_file": str(state.path),
        "release_version": state.header.get("release", {}).get("version"),
        "start_timeout": state.layout.start_timeout,
        "pairs": [{**p.to_record(), "state": state_word(state, p)} for p in pairs],
    }
    if steps:
        document["steps"] = dict(steps)
    return document
