"""What a measurement is and how it is taken, recorded and printed: a figure's line, the
wall and CPU seconds of a block or a command, and process accounting when --profile asks."""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import acct, cgroups


@dataclass(frozen=True)
class Figure:
    """One printed line: ours / theirs, the raw values, and the target it must meet."""

    name: str
    ours: float
    theirs: float
    labels: tuple[str, str]
    target: float | None
    unit: str = "s"
    detail: str = ""

    @property
    def ratio(self) -> float:
        """ours / theirs."""
        return self.ours / self.theirs if self.theirs else float("inf")

    def line(self) -> str:
        """`name: ratio  (ours x, theirs y; target <= t: ok)`."""
        verdict = ""
        if self.target is not None:
            verdict = f"; target <= {self.target:g}: {'ok' if self.ratio <= self.target else 'MISSED'}"
        raw = f"{self.labels[0]} {self.ours:.3f} {self.unit}, {self.labels[1]} {self.theirs:.3f} {self.unit}"
        detail = f"; {self.detail}" if self.detail else ""
        return f"{self.name}: {self.ratio:.2f}  ({raw}{detail}{verdict})"


def note(message: str) -> None:
    """Progress on stderr; the figures go to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine_cpu_seconds() -> float:
    """CPU seconds all cores of this machine have spent busy since boot (/proc/stat).

    Test hosts, sshd and the sandbox nodes all run on this machine, so the change over a
    run is the whole cost of an upgrade on both sides, which the wall time alone hides.
    """
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_note(busy: float, seconds: float) -> str:
    """`machine CPU 5.1 s (85% of 2 cores)`."""
    cores = os.cpu_count() or 1
    return f"machine CPU {busy:.1f} s ({busy / (seconds * cores):.0%} of {cores} cores)"


def cpu_floor(busy: float) -> float:
    """Seconds that `busy` CPU seconds take at the least on this machine's cores."""
    return busy / (os.cpu_count() or 1)


@dataclass(frozen=True)
class Measured:
    """One command run to completion: its result, wall and machine CPU seconds, and profile."""

    done: subprocess.CompletedProcess[Any]
    seconds: float
    machine_cpu: float
    profile: acct.Profile | None
    command_cpu: float | None = None
    hosts_cpu: float | None = None


@dataclass
class Reading:
    """CPU seconds a block used, once it has ended (None: not measured)."""

    seconds: float | None = None


@dataclass(frozen=True)
class Meters:
    """What each timed run measures beyond its wall time: process accounting into the file
    `account` (--profile), and the CPU of the group `hosts` holding every host's sshd."""

    account: Path | None = None
    hosts: cgroups.CpuGroup | None = None

    def accounting(self) -> AbstractContextManager[acct.Recorder | None]:
        """Process accounting for the block, if asked for."""
        return acct.accounting(self.account) if self.account is not None else nullcontext()

    @contextmanager
    def hosts_cpu(self) -> Iterator[Reading]:
        """The hosts' CPU over the block."""
        reading = Reading()
        before = self.hosts.cpu_seconds() if self.hosts is not None else None
        yield reading
        if self.hosts is not None and before is not None:
            reading.seconds = self.hosts.cpu_seconds() - before


NO_METERS = Meters()


@dataclass
class Block:
    """What `measured` saw over its block; filled in when the block ends."""

    preexec: Callable[[], None]
    seconds: float = 0.0
    machine_cpu: float = 0.0
    command_cpu: float | None = None
    hosts_cpu: float | None = None
    profile: acct.Profile | None = None


@contextmanager
def measured(meters: Meters, name: str) -> Iterator[Block]:
    """Time the block, with the machine's CPU over it, the CPU of the command started with
    `preexec_fn=block.preexec` (and all it starts), the hosts' CPU, and process accounting
    when `meters` asks for it."""
    command = cgroups.make_group(name)
    block = Block(functools.partial(cgroups.join, command))
    try:
        with meters.accounting() as recorder, meters.hosts_cpu() as hosts:
            busy = machine_cpu_seconds()
            started = time.monotonic()
            yield block
            block.seconds = time.monotonic() - started
            block.machine_cpu = machine_cpu_seconds() - busy
        block.command_cpu = command.cpu_seconds() if command is not None else None
        block.hosts_cpu = hosts.seconds
        if recorder is not None:
            block.profile = dataclasses.replace(recorder.profile, machine_cpu=block.machine_cpu)
    finally:
        if command is not None:
            command.remove()


def run_measured(argv: Sequence[str], meters: Meters, **popen: Any) -> Measured:
    """subprocess.run(argv), measured (see `measured`)."""
    with measured(meters, "command") as block:
        done = subprocess.run(argv, preexec_fn=block.preexec, **popen)
    return Measured(done, block.seconds, block.machine_cpu, block.profile, block.command_cpu, block.hosts_cpu)


def note_profile(what: str, profile: acct.Profile | None) -> None:
    """One `profile` line on stderr, when there is a profile."""
    if profile is not None:
        note(f"  profile of {what}: {profile.line()}")


def median_time(action: Callable[[], None], repeat: int) -> float:
    """Median wall time of `repeat` calls."""
    times = []
    for _ in range(repeat):
        started = time.monotonic()
        action()
        times.append(time.monotonic() - started)
    return statistics.median(times)
