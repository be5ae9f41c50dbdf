"""The core's events as the operator reads them: the vendor tool's `[INFO ] ...` lines.

The one place an event becomes text: the Printer prints these lines, CollectingReporter
keeps them (tests), so both say exactly the same.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import assert_never

from scmflow.events import (
    CheckStarted,
    CheckSucceeded,
    ConfigChecked,
    Event,
    HookRunning,
    HostsChecked,
    LocksTakenOver,
    LockUnchecked,
    NodeRestarting,
    PackageBytes,
    PackageSending,
    PairRollingBack,
    PairRollingBackToRedo,
    PairUpgrading,
    RollbackHookFailed,
    RollbackStarted,
    StatusFileCreated,
    Step,
    UpgradeStarted,
)
from scmflow.locks import holder_text


@dataclass(frozen=True)
class Line:
    """One operator line: its text, and whether it is a warning."""

    text: str
    warning: bool = False

    @property
    def printed(self) -> str:
        """The line as it appears on the terminal."""
        return ("[WARN ] " if self.warning else "[INFO ] ") + self.text


def render(event: Event) -> Line | None:
    """The line `event` prints; None for one that is drawn, not printed (transfer progress)."""
    match event:
        case PackageBytes():
            return None
        case CheckStarted():
            return Line("Checking the upgrade configuration... (0/2)")
        case HostsChecked():
            return Line("Checking the upgrade configuration: Host (1/2)")
        case ConfigChecked():
            return Line("Checking the upgrade configuration: Config (2/2)")
        case CheckSucceeded():
            return Line("Check the upgrade configuration success")
        case StatusFileCreated(path=path):
            return Line(f"Created upgrade status file, file location:{path}")
        case UpgradeStarted(steps=steps):
            return Line(f"Upgrading service...(0/{steps})")
        case PackageSending(host=host, step=step):
            return Line(f"Upgrading Service: sending upgrade package to {host} {_step(step)}")
        case PairUpgrading(pair=pair, step=step):
            return Line(f"Upgrading Service: upgrading {pair.printed} on {pair.host} {_step(step)}")
        case NodeRestarting(pair=pair, port=port):
            where = f",port={port}" if port is not None else ""
            return Line(f"Restarting {pair.printed} node{where}")
        case PairRollingBackToRedo(pair=pair):
            return Line(f"Rolling back {pair.printed} on {pair.host} before redoing it")
        case RollbackStarted(steps=steps):
            return Line(f"Rolling back service...(0/{steps})")
        case PairRollingBack(pair=pair, step=step):
            return Line(f"Rolling back Service: rolling back {pair.printed} on {pair.host} {_step(step)}")
        case HookRunning(phase=phase, pair=pair, argv=argv):
            return Line(f"Running the {phase} hook for {pair.printed} on {pair.host}: {shlex.join(argv)}")
        case RollbackHookFailed(pair=pair, outcome=outcome):
            return Line(f"[{pair.host}]:{pair.printed}: {outcome}; the rollback goes on", warning=True)
        case LocksTakenOver():
            return Line(_takeover_text(event), warning=True)
        case LockUnchecked(host=host, error=error):
            return Line(f"Could not check the run lock on {host}: {error}", warning=True)
        case _:
            assert_never(event)


def _step(step: Step) -> str:
    return f"({step.done}/{step.total})"


def _takeover_text(event: LocksTakenOver) -> str:
    hosts = ", ".join(event.hosts)
    who = holder_text(event.holder)
    dead = f"that run is dead ({event.why})"
    if event.cleared:
        return f"Removed the run lock on {hosts} left by {who}: {dead}"
    if event.dead:
        return f"Took over the run lock on {hosts} from {who}: {dead}"
    return f"--break-lock: took over the run lock on {hosts} from {who} ({event.why})"


class CollectingReporter:
    """A Reporter that keeps the events, and the lines they print, in memory (tests)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lines: list[str] = []

    def emit(self, event: Event) -> None:
        """Keep the event and its printed line, if it has one."""
        self.events.append(event)
        line = render(event)
        if line is not None:
            self.lines.append(line.printed)
