"""Rollback from a status file: select pairs, check them on their hosts, undo in reverse order."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from scmflow.agentcall import call_agent
from scmflow.catalog import Catalog
from scmflow.errors import PlanError
from scmflow.events import PairRollingBack, RollbackStarted
from scmflow.fanout import DEFAULT_PARALLEL_SSH, map_hosts
from scmflow.inventory import probe_host
from scmflow.lifecycle import Lifecycle
from scmflow.plan import Pair, group_stages
from scmflow.records import run_record
from scmflow.report import Reporter
from scmflow.runstate import Progress, ResumeState, RunOutcome, finish_run, make_runs, state_hooks
from scmflow.scheduler import Scheduler
from scmflow.session.base import Session


@dataclass
class RollbackSelection:
    """Pairs to roll back (in rollback order) and what was left out, with why."""

    pairs: list[Pair]
    warnings: list[str] = field(default_factory=list)


def select_pairs(
    state: ResumeState,
    *,
    hosts: Sequence[str] | None,
    services: Sequence[str] | None,
    catalog: Catalog,
) -> tuple[list[Pair], list[str]]:
    """Pairs of the status file matching the filters, in rollback order, plus warnings.

    Names match as the operator types them (any case; a service also by its printed
    name). A host the file does not name or a service the catalog does not know is a
    PlanError (exit 2); a known service without a record is only warned about.
    """
    wanted_hosts = match_hosts(state, hosts)
    wanted_services = match_services(catalog, services)
    warnings = []
    if wanted_services is not None:
        recorded = {p.service for p in state.pairs}
        missing = [catalog.get(s).printed for s in wanted_services if s not in recorded]
        if missing:
            warnings.append(f"The following specified service have no upgrade record:[{', '.join(missing)}]")
    chosen = [
        p
        for p in state.pairs
        if (wanted_hosts is None or p.host in wanted_hosts)
        and (wanted_services is None or p.service in wanted_services)
    ]
    return list(reversed(chosen)), warnings


def match_hosts(state: ResumeState, hosts: Sequence[str] | None) -> tuple[str, ...] | None:
    """The status file's names of `hosts` (matched case-insensitively); PlanError for one it lacks."""
    if hosts is None:
        return None
    known = {h.name.lower(): h.name for h in state.hosts}
    unknown = [h for h in hosts if h.lower() not in known]
    if unknown:
        raise PlanError(
            f"host {', '.join(unknown)} is not in the upgrade status file "
            f"(hosts there: {', '.join(h.name for h in state.hosts)})"
        )
    return tuple(dict.fromkeys(known[h.lower()] for h in hosts))


def match_services(catalog: Catalog, services: Sequence[str] | None) -> tuple[str, ...] | None:
    """The catalog names of `services` as typed (any case, printed names too); PlanError if unknown."""
    if services is None:
        return None
    found = {typed: catalog.lookup(typed) for typed in services}
    unknown = [typed for typed, service in found.items() if service is None]
    if unknown:
        valid = ", ".join(catalog.names())
        raise PlanError(f"unknown service(s) {', '.join(unknown)}; valid services: {valid}")
    return tuple(dict.fromkeys(s.name for s in found.values() if s is not None))


def needs_rollback(state: ResumeState, pair: Pair) -> bool:
    """Whether the status file says the pair changed anything that rollback must undo."""
    if pair.key in state.in_flight:
        return True
    return state.state_of(pair) not in state.lifecycle.clean()


def check_pairs(
    state: ResumeState,
    candidates: Sequence[Pair],
    *,
    sessions: Mapping[str, Session],
    catalog: Catalog,
    parallel: int = DEFAULT_PARALLEL_SSH,
) -> RollbackSelection:
    """The original's per-pair checks on the hosts (`parallel` at a time), for pairs cleanly upgraded."""
    selection = RollbackSelection(pairs=[])
    # cleanly upgraded: the files are the new version's and nothing was in flight
    upgraded = state.lifecycle.after_stop()
    clean = [p for p in candidates if p.key not in state.in_flight and state.states.get(p.key) in upgraded]
    found = map_hosts(
        list(dict.fromkeys(p.host for p in clean)),
        lambda host: _check_host(state, host, [p for p in clean if p.host == host], sessions[host], catalog),
        parallel=parallel,
        what="rollback check",
        exit_code=2,
    )
    versions = {key: version for host in found.values() for key, (version, _) in host.items()}
    complete = {key: done for host in found.values() for key, (_, done) in host.items()}
    for pair in candidates:
        if pair in clean:
            current = versions.get(pair.key)
            if current is None:
                selection.warnings.append(
                    f"[{pair.host}]:{pair.printed} is not installed any more, skip rollback"
                )
                continue
            if current != pair.new_version:
                selection.warnings.append(
                    f"[{pair.host}]:{pair.printed}: current version {current} is not the upgraded "
                    f"version {pair.new_version}, skip rollback"
                )
                continue
            if not complete.get(pair.key, False):
                selection.warnings.append(
                    f"[{pair.host}]:{pair.printed}: backup {state.layout.pair_backup_dir(pair.service)} "
                    "is missing or incomplete, skip rollback"
                )
                continue
        selection.pairs.append(pair)
    return selection


def _check_host(
    state: ResumeState, host: str, pairs: Sequence[Pair], session: Session, catalog: Catalog
) -> dict[tuple[str, str], tuple[str | None, bool]]:
    """(current version, backup complete) of each pair of one host."""
    services = [catalog.get(p.service) for p in pairs]
    java = {h.name: h.java_home for h in state.hosts}
    inventory = probe_host(
        session,
        admin_user=None,
        install_path=state.layout.install_path,
        install_user=state.layout.install_user,
        java_home=java.get(host),
        services=services,
    )
    markers = [f"{state.layout.pair_backup_dir(p.service)}/.complete" for p in pairs]
    reply = call_agent(
        session,
        "exists",
        {"paths": markers},
        user=state.layout.install_user,
        java_home=None,
        timeout=60.0,
    )
    present = set(reply.get("exists") or ())
    return {
        pair.key: (inventory.version_of(pair.service), marker in present)
        for pair, marker in zip(pairs, markers, strict=True)
    }


def execute_rollback(
    state: ResumeState,
    pairs: Sequence[Pair],
    *,
    sessions: Mapping[str, Session],
    release_packages: Mapping[str, str],
    catalog: Catalog,
    lifecycle: Lifecycle,
    parallel: int,
    reporter: Reporter,
    stop: threading.Event,
) -> RunOutcome:
    """Drive each selected pair along its rollback edge, appending to the same status file."""
    journal = state.writer()
    journal.append(run_record("rollback", "started", start_timeout=state.layout.start_timeout))
    runs = make_runs(
        pairs,
        state.states,
        journal=journal,
        sessions=sessions,
        layout=state.layout,
        java_homes={h.name: h.java_home or "" for h in state.hosts},
        release_packages=release_packages,
        catalog=catalog,
        lifecycle=lifecycle,
        reporter=reporter,
    )
    for key, trigger in state.in_flight.items():
        if key in runs:
            runs[key].mark_failed(trigger, "interrupted: the step had begun but its outcome was not recorded")
    progress = Progress(len(pairs))
    reporter.emit(RollbackStarted(progress.total))

    def on_pair_start(pair: Pair) -> None:
        reporter.emit(PairRollingBack(pair, progress.next()))

    hooks = state_hooks(state, journal, reporter)
    scheduler = Scheduler(runs, parallel=parallel, stop=stop, on_pair_start=on_pair_start, hooks=hooks)
    result = scheduler.rollback(group_stages(pairs))
    return finish_run(journal, result, action="rollback", pairs=len(pairs))
