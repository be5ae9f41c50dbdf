"""What the core tells the operator while it works, as typed events; the CLI renders them.

Each event is a frozen fact with the data to say it, never the sentence: the command line
(scmflow/cli/render.py) turns it into the vendor tool's `[INFO ] ...` line, tests collect
it, and a future front end may draw it otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scmflow.plan import Pair


@dataclass(frozen=True)
class Step:
    """The `done`-th of `total` steps of a phase (the operator reads `(done/total)`)."""

    done: int
    total: int


@dataclass(frozen=True)
class CheckStarted:
    """The check of the cluster (hosts, then release and plan) begins."""


@dataclass(frozen=True)
class HostsChecked:
    """Every host was read: what is installed, which nodes run."""


@dataclass(frozen=True)
class ConfigChecked:
    """The release is loaded and the plan made."""


@dataclass(frozen=True)
class CheckSucceeded:
    """The check found nothing that stops the upgrade."""


@dataclass(frozen=True)
class StatusFileCreated:
    """The run's status file exists; everything from now on is recorded in it."""

    path: Path


@dataclass(frozen=True)
class UpgradeStarted:
    """An upgrade (or resume) begins: `steps` package transfers and pair upgrades to come."""

    steps: int


@dataclass(frozen=True)
class PackageSending:
    """The release packages start going to `host`."""

    host: str
    step: Step


@dataclass(frozen=True)
class PackageBytes:
    """`sent` of `total` package bytes reached `host` (a progress bar, not a line)."""

    host: str
    sent: int
    total: int


@dataclass(frozen=True)
class PairUpgrading:
    """A pair's upgrade begins."""

    pair: Pair
    step: Step


@dataclass(frozen=True)
class NodeRestarting:
    """A node of a pair is being started again (None: the daemon, which has no port)."""

    pair: Pair
    port: int | None


@dataclass(frozen=True)
class PairRollingBackToRedo:
    """A resume rolls back a pair caught mid-step or failed, before upgrading it again."""

    pair: Pair


@dataclass(frozen=True)
class RollbackStarted:
    """A rollback begins: `steps` pairs to roll back."""

    steps: int


@dataclass(frozen=True)
class PairRollingBack:
    """A pair's rollback begins."""

    pair: Pair
    step: Step


@dataclass(frozen=True)
class HookRunning:
    """The operator's `phase` hook runs on the control machine for a pair."""

    phase: str
    pair: Pair
    argv: tuple[str, ...]


@dataclass(frozen=True)
class RollbackHookFailed:
    """A post_rollback hook failed; the pair stays rolled back and the run goes on.

    `outcome` is the hook's result in the words its errors use (hooks.describe).
    """

    pair: Pair
    outcome: str


@dataclass(frozen=True)
class LocksTakenOver:
    """This run took over (or, `cleared`, removed) the host locks of one former holder.

    `dead` tells whether the holder is provably dead (else --break-lock took it); `why`
    is how that was judged.
    """

    hosts: tuple[str, ...]
    holder: Mapping[str, Any]
    dead: bool
    why: str
    cleared: bool


@dataclass(frozen=True)
class LockUnchecked:
    """The run lock on `host` could not be checked for a dead run."""

    host: str
    error: str


LockEvent = LocksTakenOver | LockUnchecked
HookEvent = HookRunning | RollbackHookFailed
Event = (
    CheckStarted
    | HostsChecked
    | ConfigChecked
    | CheckSucceeded
    | StatusFileCreated
    | UpgradeStarted
    | PackageSending
    | PackageBytes
    | PairUpgrading
    | NodeRestarting
    | PairRollingBackToRedo
    | RollbackStarted
    | PairRollingBack
    | HookEvent
    | LockEvent
)
