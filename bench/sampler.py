"""Where a run's CPU goes, from /proc: scm.py's threads, and the host agents it started.

Process accounting (bench/acct.py) sees a process only once it ends and only by command
name, which lumps the host agents in with the sandbox's ctl scripts and nodes (all
python3). This samples /proc instead, every `interval` seconds while a run goes on: the
CPU of each thread of the control process (/proc/PID/task/TID/stat), and of each process
whose command line says it is a host agent. A thread's or an agent's figure is its last
sample, so up to one interval of CPU per thread or agent can be missed at its end; the
serving agents live for the whole run, which keeps that small.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# In every agent's command line (the boot code that imports the bundled package).
AGENT_MARK = b"scmflow.agent.protocol"
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """CPU seconds seen: the control process (main thread, other threads) and the agents."""

    main_thread: float = 0.0
    other_threads: float = 0.0
    threads: int = 0
    agents: float = 0.0
    agent_processes: int = 0

    @property
    def control(self) -> float:
        """CPU of the whole control process."""
        return self.main_thread + self.other_threads

    def line(self) -> str:
        """`scm.py 3.1 s (main thread 0.4 s, 40 other threads 2.7 s), agents 2.0 s in 33`."""
        return (
            f"scm.py {self.control:.1f} s (main thread {self.main_thread:.1f} s, "
            f"{self.threads - 1 if self.threads else 0} other threads {self.other_threads:.1f} s), "
            f"host agents {self.agents:.1f} s in {self.agent_processes} processes"
        )


def cpu_of(stat: str) -> float:
    """utime + stime of one /proc stat line, in seconds (the comm field may hold spaces)."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


@dataclass
class Sampler:
    """Samples until stopped; `usage()` sums what it saw."""

    pid: int
    interval: float = 0.1
    mark: bytes = AGENT_MARK
    _threads: dict[int, float] = field(default_factory=dict)
    _agents: dict[int, float] = field(default_factory=dict)
    _others: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        """One pass over the control process's threads and the agents."""
        task = Path(f"/proc/{self.pid}/task")
        try:
            tids = [int(t) for t in os.listdir(task)]
        except FileNotFoundError:
            tids = []
        for tid in tids:
            stat = _read(task / str(tid) / "stat")
            if stat is not None:
                self._threads[tid] = cpu_of(stat)
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in self._others:
                continue
            self._sample_process(int(name))

    def _sample_process(self, pid: int) -> None:
        if pid not in self._agents:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                return
            # sudo and the login shell carry the same command line; the agent is python
            program = cmdline.split(b"\0", 1)[0].rsplit(b"/", 1)[-1]
            if self.mark not in cmdline or not program.startswith(b"python"):
                # pids are not reused within one run on this machine's pid range
                self._others.add(pid)
                return
        stat = _read(Path(f"/proc/{pid}/stat"))
        if stat is not None:
            self._agents[pid] = cpu_of(stat)

    def run(self) -> None:
        """Sample every interval until stop()."""
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        """End run()."""
        self._stop.set()

    def usage(self) -> Usage:
        """What was seen, summed."""
        main = self._threads.get(self.pid, 0.0)
        return Usage(
            main_thread=main,
            other_threads=sum(self._threads.values()) - main,
            threads=len(self._threads),
            agents=sum(self._agents.values()),
            agent_processes=len(self._agents),
        )


@contextmanager
def sampling(pid: int, interval: float = 0.1, mark: bytes = AGENT_MARK) -> Iterator[Sampler]:
    """Sample `pid` and the agents (processes with `mark` in their command line) for the block."""
    sampler = Sampler(pid, interval, mark)
    thread = threading.Thread(target=sampler.run, name="bench-sampler", daemon=True)
    thread.start()
    try:
        yield sampler
    finally:
        sampler.stop()
        thread.join()
