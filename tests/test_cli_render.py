"""The core's events as operator lines (scmflow/cli/render.py): the vendor tool's exact text."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from scmflow import events
from scmflow.cli.render import CollectingReporter, render
from scmflow.cli.ui import Printer
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
from scmflow.plan import Pair, PlannedNode

PAIR = Pair("h1", "gateway", "GATEWAY", "3.1.2", "3.2.2", (PlannedNode(8080, True),))
HOLDER = {"run_id": "old.7", "control_host": "ctl1", "pid": 42, "time": "2026-01-02T03:04:05Z"}

LINES: list[tuple[Event, str]] = [
    (CheckStarted(), "[INFO ] Checking the upgrade configuration... (0/2)"),
    (HostsChecked(), "[INFO ] Checking the upgrade configuration: Host (1/2)"),
    (ConfigChecked(), "[INFO ] Checking the upgrade configuration: Config (2/2)"),
    (CheckSucceeded(), "[INFO ] Check the upgrade configuration success"),
    (
        StatusFileCreated(Path("/s/upgrade_status_x")),
        "[INFO ] Created upgrade status file, file location:/s/upgrade_status_x",
    ),
    (UpgradeStarted(6), "[INFO ] Upgrading service...(0/6)"),
    (PackageSending("h1", Step(1, 6)), "[INFO ] Upgrading Service: sending upgrade package to h1 (1/6)"),
    (PairUpgrading(PAIR, Step(2, 6)), "[INFO ] Upgrading Service: upgrading GATEWAY on h1 (2/6)"),
    (NodeRestarting(PAIR, 8080), "[INFO ] Restarting GATEWAY node,port=8080"),
    (NodeRestarting(PAIR, None), "[INFO ] Restarting GATEWAY node"),
    (PairRollingBackToRedo(PAIR), "[INFO ] Rolling back GATEWAY on h1 before redoing it"),
    (RollbackStarted(5), "[INFO ] Rolling back service...(0/5)"),
    (PairRollingBack(PAIR, Step(1, 5)), "[INFO ] Rolling back Service: rolling back GATEWAY on h1 (1/5)"),
    (
        HookRunning("pre_stop", PAIR, ("/x/drain.sh", "a b")),
        "[INFO ] Running the pre_stop hook for GATEWAY on h1: /x/drain.sh 'a b'",
    ),
    (
        RollbackHookFailed(PAIR, "post_rollback hook /x/n.sh exited 3 after 0.4 s"),
        "[WARN ] [h1]:GATEWAY: post_rollback hook /x/n.sh exited 3 after 0.4 s; the rollback goes on",
    ),
    (
        LocksTakenOver(("h1", "h2"), HOLDER, dead=True, why="no process has pid 42", cleared=False),
        "[WARN ] Took over the run lock on h1, h2 from run old.7 from ctl1 (pid 42) since "
        "2026-01-02T03:04:05Z: that run is dead (no process has pid 42)",
    ),
    (
        LocksTakenOver(("h1",), HOLDER, dead=True, why="no process has pid 42", cleared=True),
        "[WARN ] Removed the run lock on h1 left by run old.7 from ctl1 (pid 42) since "
        "2026-01-02T03:04:05Z: that run is dead (no process has pid 42)",
    ),
    (
        LocksTakenOver(("h1",), HOLDER, dead=False, why="another control machine", cleared=False),
        "[WARN ] --break-lock: took over the run lock on h1 from run old.7 from ctl1 (pid 42) since "
        "2026-01-02T03:04:05Z (another control machine)",
    ),
    (
        LockUnchecked("h3", "[h3] connection lost"),
        "[WARN ] Could not check the run lock on h3: [h3] connection lost",
    ),
]


@pytest.mark.parametrize(("event", "printed"), LINES, ids=lambda v: type(v).__name__)
def test_each_event_prints_the_vendor_tools_line(event: Event, printed: str) -> None:
    line = render(event)
    assert line is not None and line.printed == printed


def test_every_event_type_is_rendered_here() -> None:
    declared = {
        cls
        for _, cls in inspect.getmembers(events, inspect.isclass)
        if dataclasses.is_dataclass(cls) and cls.__module__ == events.__name__ and cls is not Step
    }
    assert declared == {type(event) for event, _ in LINES} | {PackageBytes}


def test_transfer_progress_is_drawn_not_printed() -> None:
    assert render(PackageBytes("h1", 10, 100)) is None


def test_collecting_reporter_keeps_events_and_their_lines() -> None:
    reporter = CollectingReporter()
    reporter.emit(UpgradeStarted(3))
    reporter.emit(PackageBytes("h1", 10, 100))
    reporter.emit(LockUnchecked("h1", "down"))
    assert reporter.events == [UpgradeStarted(3), PackageBytes("h1", 10, 100), LockUnchecked("h1", "down")]
    assert reporter.lines == [
        "[INFO ] Upgrading service...(0/3)",
        "[WARN ] Could not check the run lock on h1: down",
    ]


def test_the_printer_prints_what_the_collector_keeps(capsys: pytest.CaptureFixture[str]) -> None:
    printer, reporter = Printer(tty=False), CollectingReporter()
    for event, _ in LINES:
        printer.emit(event)
        reporter.emit(event)
    assert capsys.readouterr().out.splitlines() == reporter.lines == [printed for _, printed in LINES]
