"""CPU of a group of processes and all their descendants, exactly: a cpuacct control group.

The test hosts' sshd go into one group, so every command run on a host (sudo, the agents,
ctl scripts, the nodes they start) is counted there; the command being timed (scm.py, or
the baseline's bash with its ssh and scp clients) goes into another. Unlike the machine's
CPU (/proc/stat), neither counts anything else this machine happens to be doing.
Needs root; cgroup v1's cpuacct controller or cgroup v2.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

_V1 = Path("/sys/fs/cgroup/cpuacct")
_V2 = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuGroup:
    """One control group made for the benchmark; removed by `remove()`."""

    path: Path
    v2: bool

    def add(self, pid: int) -> None:
        """Move process `pid` into the group; processes it starts afterwards stay in it."""
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def cpu_seconds(self) -> float:
        """CPU the group's processes have used since it was made, ended ones included."""
        if self.v2:
            for line in (self.path / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
            return 0.0
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        """Move what is left into the parent group and delete this one."""
        parent = self.path.parent / "cgroup.procs"
        try:
            pids = (self.path / "cgroup.procs").read_text().split()
        except FileNotFoundError:
            return
        for pid in pids:
            try:
                parent.write_text(f"{pid}\n")
            except (ProcessLookupError, OSError):
                pass
        try:
            self.path.rmdir()
        except OSError:
            pass


def make_group(name: str) -> CpuGroup | None:
    """A new empty group `name-<random>`, or None where there is no cgroup CPU accounting."""
    unique = f"scmflow-bench-{name}-{uuid.uuid4().hex[:8]}"
    if (_V1 / "cpuacct.usage").exists():
        path, v2 = _V1 / unique, False
    elif (_V2 / "cgroup.controllers").exists():
        path, v2 = _V2 / unique, True
    else:
        return None
    try:
        path.mkdir()
    except OSError:
        return None
    return CpuGroup(path, v2)


def join(group: CpuGroup | None) -> None:
    """preexec_fn for Popen: the child joins `group` before it runs the command."""
    if group is not None:
        group.add(os.getpid())
