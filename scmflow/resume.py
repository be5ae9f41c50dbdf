"""Resume: carry an interrupted, failed, paused or narrowed upgrade forward in its own
status file, after checking the hosts again.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from scmflow.catalog import Catalog
from scmflow.errors import PlanError, ScmflowError
from scmflow.events import PairRollingBackToRedo
from scmflow.fanout import DEFAULT_PARALLEL_SSH, map_hosts
from scmflow.inventory import HostInventory, probe_host
from scmflow.lifecycle import RETRY, ROLLBACK, Lifecycle
from scmflow.plan import Pair, planned_nodes
from scmflow.records import probe_record, run_record
from scmflow.release import Release
from scmflow.report import Reporter
from scmflow.rollback import match_hosts, match_services
from scmflow.runstate import (
    ResumeState,
    RunFailed,
    RunInterrupted,
    RunOutcome,
    close_run,
    make_runs,
    state_hooks,
)
from scmflow.session.base import Session
from scmflow.upgrade import RunSettings, drive_upgrade


def fresh_pairs(state: ResumeState, pairs: Sequence[Pair]) -> list[Pair]:
    """Pairs that a resume starts from a clean state: pending, or rolled back, nothing in flight."""
    clean = state.lifecycle.clean()
    return [p for p in pairs if p.key not in state.in_flight and state.state_of(p) in clean]


def reprobe_pairs(
    state: ResumeState,
    pairs: Sequence[Pair],
    *,
    sessions: Mapping[str, Session],
    catalog: Catalog,
    parallel: int = DEFAULT_PARALLEL_SSH,
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
            "the cluster changed since this run started: "
            + "; ".join(changed)
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
    journal.append(run_record("resume", "started", **settings.to_record()))
    for pair in fresh_pairs(state, pairs):
        journal.append(probe_record(pair))
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
            if run.state not in (*lifecycle.clean(), lifecycle.done):
                reporter.emit(PairRollingBackToRedo(run.pair))
                run.fire(ROLLBACK)
                if hooks is not None:
                    hooks.run("post_rollback", run.pair)
            if run.state == lifecycle.rolled_back:
                run.fire(RETRY)
            states[key] = run.state
    except ScmflowError as exc:
        close_run(journal, "resume", "failed", f"rolling back a pair before redoing it failed: {exc.message}")
        raise RunFailed(f"rolling back a pair before redoing it failed: {exc.message}", journal.path) from exc
    except KeyboardInterrupt:
        close_run(journal, "resume", "interrupted")
        raise RunInterrupted(journal.path) from None
    return drive_upgrade(
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


@dataclass(frozen=True)
class ResumeSelection:
    """The pairs a resume advances, in plan order, and the rolled-back ones it keeps as they are."""

    pairs: list[Pair]
    kept: list[Pair]
    named: bool


def select_resume(
    state: ResumeState, *, hosts: Sequence[str] | None, services: Sequence[str] | None, catalog: Catalog
) -> ResumeSelection:
    """What a resume does: pairs not yet verified, but never an operator's rollback unless named.

    With --host/--service only the named pairs are advanced (retried after a failure,
    upgraded again after a --rollback); the others stay as they are. Without them, pairs
    that a failure rolled back are retried, while pairs rolled back by --rollback are kept;
    so are the never-started pairs of a run that --rollback undid entirely (it reads
    "rolled back").
    """
    wanted_hosts = match_hosts(state, hosts)
    wanted_services = match_services(catalog, services)
    named = wanted_hosts is not None or wanted_services is not None
    undone = _undone_by_rollback(state)
    pairs: list[Pair] = []
    kept: list[Pair] = []
    for pair in state.pairs:
        if (wanted_hosts is not None and pair.host not in wanted_hosts) or (
            wanted_services is not None and pair.service not in wanted_services
        ):
            continue
        if state.states.get(pair.key) == state.lifecycle.done and pair.key not in state.in_flight:
            continue
        if not named and (state.explicitly_rolled_back(pair) or (undone and _never_started(state, pair))):
            kept.append(pair)
            continue
        pairs.append(pair)
    return ResumeSelection(pairs=pairs, kept=kept, named=named)


def _never_started(state: ResumeState, pair: Pair) -> bool:
    return state.state_of(pair) == state.lifecycle.initial and pair.key not in state.in_flight


def _undone_by_rollback(state: ResumeState) -> bool:
    """Whether --rollback undid every pair that had started: the run as a whole was rolled back."""
    started = [p for p in state.pairs if not _never_started(state, p)]
    return bool(started) and all(state.explicitly_rolled_back(p) for p in started)
