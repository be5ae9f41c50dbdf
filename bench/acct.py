"""Where a benchmark run's CPU goes: BSD process accounting (acct(2)) around a block.

The test hosts, their sshd, sudo, the sandbox's ctl scripts and nodes all run on this
machine, so "which commands used the CPU" is the profile that says what bounds a figure.
The kernel appends one record per process that ends while accounting is on, with its CPU
in 10 ms ticks rounded down. What the records leave out is "unattributed": processes still
running when accounting stops (nodes the run started), the kernel's own work, and the CPU
of short processes under a tick each (thousands of ssh, sudo and sh for the baseline).
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# struct acct_v3 (linux/acct.h): flag, version, tty, exitcode, uid, gid, pid, ppid, btime,
# etime (float), utime, stime, mem, io, rw, minflt, majflt, swaps (comp_t), comm[16]
_V3 = struct.Struct("<BBHIIIIIIf8H16s")
_AHZ = 100  # comp_t times are in these ticks per second


@dataclass(frozen=True)
class Command:
    """CPU of every ended process with one command name."""

    name: str
    processes: int
    cpu_seconds: float


@dataclass(frozen=True)
class Profile:
    """Ended processes' CPU by command, and the machine's CPU over the same time."""

    commands: tuple[Command, ...]
    machine_cpu: float = 0.0
    unreadable: int = 0

    @property
    def accounted(self) -> float:
        """CPU seconds of the processes that ended during the block."""
        return sum(c.cpu_seconds for c in self.commands)

    def line(self, top: int = 6) -> str:
        """`python3 584 x 27 ms = 15.9 s, sudo ..., unattributed 3.1 s`."""
        parts = [
            f"{c.name} {c.processes} x {1000 * c.cpu_seconds / c.processes:.0f} ms = {c.cpu_seconds:.1f} s"
            for c in self.commands[:top]
            if c.processes
        ]
        rest = sum(c.cpu_seconds for c in self.commands[top:])
        if rest:
            parts.append(f"others {rest:.1f} s")
        if self.machine_cpu:
            parts.append(f"unattributed {max(self.machine_cpu - self.accounted, 0.0):.1f} s")
        return ", ".join(parts)


@dataclass
class Recorder:
    """Holds the profile of the block once it has ended."""

    profile: Profile = field(default_factory=lambda: Profile(()))


def comp_t(value: int) -> int:
    """Decode a comp_t: 13-bit mantissa, 3-bit base-8 exponent."""
    return (value & 0x1FFF) << (3 * (value >> 13))


def parse(data: bytes, *, exclude_pid: int | None = None) -> Profile:
    """CPU by command from the bytes of a v3 accounting file (without process `exclude_pid`)."""
    cpu: dict[str, float] = {}
    count: dict[str, int] = {}
    unreadable = 0
    for offset in range(0, len(data) - _V3.size + 1, _V3.size):
        fields = _V3.unpack_from(data, offset)
        if fields[1] & 0x0F != 3:
            unreadable += 1
            continue
        if fields[6] == exclude_pid:
            continue
        utime, stime = fields[10], fields[11]
        name = fields[18].split(b"\0", 1)[0].decode(errors="replace") or "?"
        cpu[name] = cpu.get(name, 0.0) + (comp_t(utime) + comp_t(stime)) / _AHZ
        count[name] = count.get(name, 0) + 1
    commands = sorted(
        (Command(n, count[n], cpu[n]) for n in cpu), key=lambda c: (-c.cpu_seconds, c.name)
    )
    return Profile(tuple(commands), unreadable=unreadable)


def _acct(path: Path | None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.acct(os.fsencode(path) if path is not None else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"acct({path}): {os.strerror(err)}")


@contextmanager
def accounting(path: Path) -> Iterator[Recorder]:
    """Account every process that ends in the block (needs root); the Recorder gets the profile."""
    path.write_bytes(b"")
    recorder = Recorder()
    _acct(path)
    try:
        yield recorder
    finally:
        _acct(None)
        # Switching accounting off writes a record for the caller (its CPU since it started).
        recorder.profile = parse(path.read_bytes(), exclude_pid=os.getpid())
        path.unlink(missing_ok=True)
