"""`scm.py cluster --upgrade --upgrade-status-path FILE`: continue the run a status file records."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from scmflow.availability import stage_limits
from scmflow.cli.cluster_flow import (
    ClusterFlow,
    print_limits,
    print_steps,
    report_outcome,
    report_run_error,
    run_settings,
    stage_warnings,
)
from scmflow.cli.cluster_state import (
    clear_dead_locks,
    current_state,
    open_status,
    recorded_packages,
    rollback_action,
    state_locks,
    state_word,
    status_plan_document,
)
from scmflow.cli.plan_text import dry_run_steps, rollback_steps
from scmflow.cli.ui import confirm, echo_json, open_run_log
from scmflow.config import UpgradeConfig, load_config
from scmflow.errors import EXIT_OK, UsageError
from scmflow.hooks import dry_run_hook_lines
from scmflow.journalreader import read_journal
from scmflow.lifecycle import load_lifecycle
from scmflow.outcome import run_records
from scmflow.plan import Pair
from scmflow.records import run_record
from scmflow.resume import ResumeSelection, fresh_pairs, reprobe_pairs, resume_upgrade, select_resume
from scmflow.runstate import ResumeState, RunFailed, RunInterrupted
from scmflow.upgrade import close_sessions, reload_release


def resume(flow: ClusterFlow) -> int:
    """Continue an interrupted, failed or paused upgrade: the exit code."""
    options, printer, catalog = flow.options, flow.printer, flow.catalog
    if options.upgrade_conf is not None:
        printer.info(
            f"Resuming the run recorded in {options.status_path}; {options.upgrade_conf} only "
            "supplies the SSH passwords (the run's hosts and services come from the status file)"
        )
    state = open_status(options, printer)
    if state is None:
        return EXIT_OK
    if options.upgrade_conf is not None:
        _check_same_cluster(state, load_config(options.upgrade_conf, catalog))
    selection = select_resume(state, hosts=options.hosts, services=options.services, catalog=catalog)
    for pair in selection.kept:
        printer.info(
            f"Kept rolled back by --rollback (name it with --host/--service to redo it): {pair.label()}"
        )
    if not selection.pairs:
        return _nothing_to_resume(flow, state, selection)
    steps = _resume_steps(state, selection.pairs, flow) if options.dry_run else {}
    limits = stage_limits(selection.pairs, run_settings(options, 0).guard)
    for warning in stage_warnings(flow, limits):
        printer.warn(warning)
    if options.output == "json":
        document = status_plan_document("resume", state, selection.pairs, steps)
        document["stages"] = [limit.to_record() for limit in limits]
        document["pause_after"] = options.pause_after
        echo_json(document)
    print_limits(flow, limits)
    printer.info("Prepare to resume the upgrade of these services in this order")
    for pair in selection.pairs:
        printer.info(f"{pair.label()} ({state_word(state, pair)})")
    if options.dry_run:
        if options.output == "text":
            print_steps(printer, steps)
        printer.info("Dry run: nothing was changed")
        return EXIT_OK
    # passwords first: a run that cannot log in stops here, before the question and any change
    hosts = list(dict.fromkeys(p.host for p in selection.pairs))
    opener = flow.access.login(state, hosts)
    if not options.unattended and not confirm(printer, "Whether to resume the upgrade?"):
        printer.info("Resume cancelled, nothing was changed")
        return EXIT_OK
    open_run_log(options.status_dir, printer)
    with tempfile.TemporaryDirectory(prefix="scmflow-") as work:
        release_dir = options.release_dir if options.release_dir_given else None
        release = reload_release(state.header, release_dir, catalog, Path(work))
        sessions = opener()
        try:
            with state_locks(flow, state, sessions), flow.interrupts() as stop:
                # what the hosts run now, not what the original check found (exit 2 if changed)
                probed = reprobe_pairs(
                    state,
                    fresh_pairs(state, selection.pairs),
                    sessions=sessions,
                    catalog=catalog,
                    parallel=options.parallel_ssh,
                )
                outcome = resume_upgrade(
                    state,
                    [probed.get(p.key, p) for p in selection.pairs],
                    sessions=sessions,
                    release=release,
                    catalog=catalog,
                    lifecycle=load_lifecycle(),
                    settings=run_settings(options, state.layout.start_timeout),
                    reporter=printer,
                    stop=stop,
                )
        except (RunFailed, RunInterrupted) as exc:
            return report_run_error(printer, exc)
        finally:
            close_sessions(sessions)
    return report_outcome(printer, outcome)


def _nothing_to_resume(flow: ClusterFlow, state: ResumeState, selection: ResumeSelection) -> int:
    options, printer = flow.options, flow.printer
    if options.output == "json":
        echo_json(status_plan_document("resume", state, [], {}))
    if selection.kept:
        printer.info(f"No pair to resume in {options.status_path}")
        return EXIT_OK
    if selection.named:
        printer.info(f"Every named pair of {options.status_path} is already upgraded; nothing to resume")
        return EXIT_OK
    if not options.dry_run:
        _close_finished_run(state)
    printer.info(f"Every pair of {options.status_path} is already upgraded; nothing to resume")
    clear_dead_locks(flow, state, [h.name for h in state.hosts])
    return EXIT_OK


def _check_same_cluster(state: ResumeState, config: UpgradeConfig) -> None:
    """UsageError unless --upgrade-conf describes the cluster the status file records."""
    configured = {h.name.lower() for h in config.hosts}
    missing = [h.name for h in state.hosts if h.name.lower() not in configured]
    if config.install_path != state.layout.install_path or missing:
        what = (
            f"hosts {', '.join(missing)} are not in it"
            if missing
            else f"its InstallPath {config.install_path} is not {state.layout.install_path}"
        )
        raise UsageError(
            f"{config.path} is not the config of the run in {state.path}: {what}; resume takes the "
            "run from the status file, so give that run's config or none"
        )


def _resume_steps(state: ResumeState, pairs: Sequence[Pair], flow: ClusterFlow) -> dict[str, list[str]]:
    """Per pair, the rollback it needs first (if any) and the upgrade steps it will take."""
    lifecycle = state.lifecycle
    packages = recorded_packages(state.header)
    out: dict[str, list[str]] = {}
    for pair in pairs:
        steps: list[str] = []
        current = current_state(state, pair)
        if current not in (*lifecycle.clean(), lifecycle.done):
            steps += rollback_steps(pair, flow.catalog, state.layout, rollback_action(lifecycle, current))
            steps += dry_run_hook_lines(state.hooks, "post_rollback")
        package = packages.get(pair.service, "(no package recorded)")
        steps += dry_run_hook_lines(state.hooks, "pre_stop")
        steps += dry_run_steps(pair, flow.catalog, state.layout, package)
        steps += dry_run_hook_lines(state.hooks, "post_verify")
        out[pair.label()] = steps
    return out


def _close_finished_run(state: ResumeState) -> None:
    """Record success for a run that was killed or interrupted after its last pair was verified.

    Otherwise the file would read "interrupted" for good although every pair is upgraded.
    """
    journal = state.writer()
    runs = run_records(read_journal(journal.path))
    if not runs or runs[-1].get("detail", {}).get("result") != "success":
        journal.append(run_record("resume", "success"))
