"""What every step of the `cluster` flow shares: its context, the run settings, the closing lines.

The flow (cluster_upgrade, cluster_resume, cluster_rollback) is driven by the `cluster`
command over SSH and by the demo through a local session; a ClusterFlow says which.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from scmflow.availability import StageLimit, single_host_warnings
from scmflow.availability import describe as describe_limit
from scmflow.catalog import Catalog
from scmflow.cli.options import ClusterOptions
from scmflow.cli.ui import Printer
from scmflow.errors import EXIT_OK
from scmflow.journalreader import read_journal
from scmflow.lifecycle import load_lifecycle
from scmflow.replay import replay
from scmflow.runstate import ResumeState, RunFailed, RunInterrupted, RunOutcome
from scmflow.session.base import Session
from scmflow.upgrade import RunSettings

# Opens the sessions a login was settled for (passwords are known by then).
SessionOpener = Callable[[], dict[str, Session]]
ROLLBACK_HINT = (
    "If you want to rollback successfully upgraded services, you need to specify the upgrade "
    "status file, file location:{path}"
)


class HostAccess(Protocol):
    """How the flow logs in to the hosts a status file records: SSH, or a local session."""

    def login(self, state: ResumeState, hosts: Sequence[str], *, ask: bool = True) -> SessionOpener:
        """Settle how to reach `hosts` (asking passwords now, unless not `ask`); no host is contacted."""
        ...


@dataclass(frozen=True)
class ClusterFlow:
    """What the flow works with besides the status file: options, terminal, hosts, Ctrl-C."""

    options: ClusterOptions
    printer: Printer
    catalog: Catalog
    access: HostAccess
    # entered around the part of a run that changes hosts; the event asks it to stop
    interrupts: Callable[[], AbstractContextManager[threading.Event]]
    # whether a run that changes hosts writes its own debug log file (the demo leaves none)
    run_log: bool = True
    # whether the plan shows a line per stage (the demo's single host makes them say nothing)
    stage_lines: bool = True


def run_settings(options: ClusterOptions, start_timeout: int) -> RunSettings:
    """The run's knobs from the options, with the node start timeout in force."""
    return RunSettings(
        parallel=options.parallel,
        parallel_ssh=options.parallel_ssh,
        start_timeout=start_timeout,
        max_unavailable=options.max_unavailable,
        allow_outage=options.allow_outage,
        pause_after=options.pause_after,
    )


def print_limits(flow: ClusterFlow, limits: Sequence[StageLimit]) -> None:
    """One line per stage: hosts, how many at once, whether a node keeps serving; and the pause."""
    if flow.stage_lines:
        for limit in limits:
            flow.printer.info(describe_limit(limit))
    pause_after = flow.options.pause_after
    if pause_after is not None:
        flow.printer.info(f"The run pauses once {pause_after} pairs are verified (--pause-after)")


def stage_warnings(flow: ClusterFlow, limits: Sequence[StageLimit]) -> list[str]:
    """A warning per stage whose service runs on one host only (with the stage lines)."""
    return single_host_warnings(limits) if flow.stage_lines else []


def print_steps(printer: Printer, steps: Mapping[str, Sequence[str]]) -> None:
    """A dry run's remote steps, pair by pair."""
    for label, lines in steps.items():
        printer.info(f"Dry run: {label}")
        for line in lines:
            printer.info(f"    {line}")


def report_outcome(printer: Printer, outcome: RunOutcome) -> int:
    """The closing line of an upgrade or resume that did not fail: success or a pause."""
    path = outcome.status_path
    if outcome.paused:
        lifecycle = load_lifecycle()
        planned = [p for p in replay(read_journal(path), lifecycle).values() if p.in_plan]
        verified = sum(1 for p in planned if p.state == lifecycle.done)
        printer.info(
            f"Paused after {verified} of {len(planned)} pairs; resume with: "
            f"scm.py cluster --upgrade --upgrade-status-path {path}"
        )
        return EXIT_OK
    printer.info(f"Upgrade service success, generate upgrade status file success, file location:{path}")
    return EXIT_OK


def report_rollback(printer: Printer, outcome: RunOutcome) -> int:
    """The closing line of a rollback that did not fail."""
    printer.info(f"Rollback service success, upgrade status file location:{outcome.status_path}")
    return EXIT_OK


def report_run_error(printer: Printer, exc: RunFailed | RunInterrupted) -> int:
    """A failed or interrupted upgrade: the error, and how to roll back; the exit code."""
    printer.error(exc.message)
    printer.info(ROLLBACK_HINT.format(path=exc.status_path))
    return exc.exit_code
