"""`scm.py cluster --rollback --upgrade-status-path FILE`: undo what the status file records."""

from __future__ import annotations

from collections.abc import Sequence

from scmflow.cli.cluster_flow import ClusterFlow, print_steps, report_rollback, report_run_error
from scmflow.cli.cluster_state import (
    clear_dead_locks,
    current_state,
    open_status,
    recorded_packages,
    rollback_action,
    state_locks,
    status_plan_document,
)
from scmflow.cli.plan_text import plan_lines, rollback_steps
from scmflow.cli.ui import confirm, echo_json, open_run_log
from scmflow.errors import EXIT_OK
from scmflow.hooks import dry_run_hook_lines
from scmflow.lifecycle import load_lifecycle
from scmflow.plan import Pair
from scmflow.rollback import check_pairs, execute_rollback, needs_rollback, select_pairs
from scmflow.runstate import ResumeState, RunFailed, RunInterrupted, RunOutcome
from scmflow.upgrade import close_sessions


def rollback(flow: ClusterFlow) -> int:
    """Roll back the pairs the options select from the status file: the exit code."""
    printer = flow.printer
    state = open_status(flow.options, printer)
    if state is None:
        return EXIT_OK
    try:
        outcome = roll_back_state(state, flow)
    except RunInterrupted as exc:
        return report_run_error(printer, exc)
    except RunFailed as exc:
        printer.error(exc.message)
        printer.info(f"Rerun the rollback with the same status file to finish it:{exc.status_path}")
        return exc.exit_code
    return EXIT_OK if outcome is None else report_rollback(printer, outcome)


def roll_back_state(state: ResumeState, flow: ClusterFlow) -> RunOutcome | None:
    """Select, check, show and confirm the pairs to roll back, then roll them back.

    None when nothing was run (nothing to do, a dry run, or the operator said no);
    RunFailed or RunInterrupted when the rollback did not end well.
    """
    options, printer, catalog = flow.options, flow.printer, flow.catalog
    candidates, warnings = select_pairs(
        state, hosts=options.hosts, services=options.services, catalog=catalog
    )
    for warning in warnings:
        printer.warn(warning)
    chosen_hosts = list(dict.fromkeys(p.host for p in candidates))
    candidates = [p for p in candidates if needs_rollback(state, p)]
    if not candidates:
        if options.output == "json":
            echo_json(status_plan_document("rollback", state, [], {}))
        printer.info("No service need to rollback")
        clear_dead_locks(flow, state, chosen_hosts)
        return None
    hosts = list(dict.fromkeys(p.host for p in candidates))
    sessions = flow.access.login(state, hosts)()
    try:
        selection = check_pairs(
            state, candidates, sessions=sessions, catalog=catalog, parallel=options.parallel_ssh
        )
        for warning in selection.warnings:
            printer.warn(warning)
        steps = _rollback_steps(state, selection.pairs, flow) if options.dry_run else {}
        if options.output == "json":
            echo_json(status_plan_document("rollback", state, selection.pairs, steps))
        if not selection.pairs:
            printer.info("No service need to rollback")
            clear_dead_locks(flow, state, hosts, sessions)
            return None
        printer.info("prepare to rollback services in this order")
        for line in plan_lines(selection.pairs, reverse=True):
            printer.info(line)
        if options.dry_run:
            if options.output == "text":
                print_steps(printer, steps)
            printer.info("Dry run: nothing was changed")
            return None
        if not options.unattended and not confirm(printer, "Whether to rollback?"):
            printer.info("Rollback cancelled, nothing was changed")
            return None
        if flow.run_log:
            open_run_log(options.status_dir, printer)
        with state_locks(flow, state, sessions), flow.interrupts() as stop:
            return execute_rollback(
                state,
                selection.pairs,
                sessions=sessions,
                release_packages=recorded_packages(state.header),
                catalog=catalog,
                lifecycle=load_lifecycle(),
                parallel=options.parallel,
                reporter=printer,
                stop=stop,
            )
    finally:
        close_sessions(sessions)


def _rollback_steps(state: ResumeState, pairs: Sequence[Pair], flow: ClusterFlow) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for pair in pairs:
        action = rollback_action(state.lifecycle, current_state(state, pair))
        steps = rollback_steps(pair, flow.catalog, state.layout, action)
        out[pair.label(reverse=True)] = steps + dry_run_hook_lines(state.hooks, "post_rollback")
    return out
