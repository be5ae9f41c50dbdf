"""End-to-end crash consistency: SIGKILL the tool anywhere in an upgrade, then roll back or resume.

Kill points are drawn at random for each test run from a seed that every failure message
names; `SCMFLOW_CRASH_SEED=N` replays a run, `SCMFLOW_CRASH_KILLS=N` sets how many kills
each test makes. A kill point is "when the status file reaches record k, plus a small
delay", with k spread evenly over the records of a clean run, so every stretch of the run
(checks done, packages on their way, each pair's backup, replace, restart and verify) is hit.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from scmflow import sandbox
from scmflow.agentpayload import BOOT
from scmflow.errors import JournalError
from scmflow.journalreader import read_journal, verify_journal
from scmflow.outcome import INTERRUPTED, SUCCESS
from scmflow.replay import replay
from scmflow.sandbox import NodeSpec, Topology
from scmflow.statuslist import summarize
from tests.e2e.sandbox_cluster import REPO, SCM, Scenario, outer_install
from tests.hosts import TestCluster

pytestmark = pytest.mark.e2e

# Each run draws fresh kill points (spread evenly over the records, so every stretch of a
# run is hit each time) and every CI run draws new ones; SCMFLOW_CRASH_KILLS=40 for a soak.
DEFAULT_KILLS = 10
MAX_DELAY = 0.3
Record = dict[str, Any]


def crash_topology() -> Topology:
    """Small but complete: a cloud pair sharing a dir, content-server, daemon, a stopped node."""
    return Topology(
        services=("service-center", "gateway", "content-server", "daemon"),
        nodes=(
            NodeSpec("service-center", 8810),
            NodeSpec("gateway", 8080),
            NodeSpec("gateway", 8081, running=False),
            NodeSpec("content-server", 15000),
            NodeSpec("daemon", None),
        ),
    )


@pytest.fixture(scope="module")
def seed() -> int:
    """The run's seed: SCMFLOW_CRASH_SEED, else a fresh one (printed to replay a failure)."""
    value = int(os.environ.get("SCMFLOW_CRASH_SEED") or random.SystemRandom().randrange(1, 10**9))
    print(f"crash seed {value} (replay with SCMFLOW_CRASH_SEED={value})")
    return value


@pytest.fixture
def crash(cluster3: TestCluster, releases: dict[str, Path], tmp_path: Path) -> Iterator[Scenario]:
    """Three hosts with the crash topology of 3.1.2 installed and running."""
    s = Scenario(cluster=cluster3, releases=releases, work=tmp_path)
    cluster3.home(s.home)
    s.cleanup()
    try:
        s.install_all("3.1.2", crash_topology())
        s.config()
        yield s
    finally:
        s.cleanup()


@dataclass(frozen=True)
class KillPoint:
    """Kill the tool once the status file holds `records` records, `delay` seconds later."""

    records: int
    delay: float
    parallel: int
    torn_tail: bool

    def __str__(self) -> str:
        torn = ", torn tail added" if self.torn_tail else ""
        return f"kill at record {self.records} + {self.delay:.3f}s (--parallel {self.parallel}{torn})"


def kill_points(rng: random.Random, total_records: int, count: int) -> list[KillPoint]:
    """`count` kill points with record numbers spread evenly over 1..total_records-1."""
    span = total_records - 1
    points = []
    for i in range(count):
        records = 1 + min(span - 1, int((i + rng.random()) * span / count))
        points.append(
            KillPoint(
                records=records,
                delay=rng.uniform(0.0, MAX_DELAY),
                parallel=rng.choice((1, 3)),
                torn_tail=rng.random() < 0.25,
            )
        )
    return points


def kill_count() -> int:
    """How many kills the rollback test makes; the resume test, whose kills cost twice as
    much (a resume and a reinstall each), makes half as many."""
    return int(os.environ.get("SCMFLOW_CRASH_KILLS") or DEFAULT_KILLS)


def cut_last_record(status: Path) -> None:
    """Drop the last record, as if the run died just before writing it."""
    data = status.read_bytes()
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    ends = []
    for _ in unpacker:
        ends.append(unpacker.tell())
    with status.open("r+b") as handle:
        handle.truncate(ends[-2])


def spawn(s: Scenario, args: list[str]) -> subprocess.Popen[bytes]:
    """Start `scm.py` in the background, as Scenario.scm runs it; output goes to files."""
    env = {
        "HOME": str(s.home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
    }
    with (s.work / "killed.out").open("w") as out:
        return subprocess.Popen(
            [sys.executable, str(SCM), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=s.work,
        )


def new_status_file(s: Scenario, known: set[Path]) -> Path | None:
    """The status file a run started after `known` was listed, if it exists yet."""
    fresh = sorted(set(s.status_files()) - known)
    return fresh[-1] if fresh else None


def record_count(path: Path) -> int:
    """Intact records of a status file being written (0 while unreadable)."""
    try:
        return read_journal(path).count
    except JournalError:
        return 0


@dataclass(frozen=True)
class Killed:
    """What a killed run left: its status file, exit code (None when killed) and output."""

    status: Path | None
    code: int | None
    output: str


def run_and_kill(s: Scenario, point: KillPoint, *, timeout: float = 300.0) -> Killed:
    """Start an upgrade and SIGKILL it at `point`."""
    known = set(s.status_files())
    # A kill before any pair changed leaves nothing to roll back, so no rollback takes over
    # the dead run's host locks: the next upgrade has to, as the refusal tells an operator.
    args = s.upgrade_args("3.2.2", "--unattended", "--break-lock", "--parallel", str(point.parallel))
    proc = spawn(s, args)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            status = new_status_file(s, known)
            if status is not None and record_count(status) >= point.records:
                time.sleep(point.delay)
                break
            time.sleep(0.01)
        else:
            if proc.poll() is None:
                raise AssertionError(f"{point}: the run never reached that record")
        proc.send_signal(signal.SIGKILL)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = (s.work / "killed.out").read_text(errors="replace")
    return Killed(new_status_file(s, known), None if code == -signal.SIGKILL else code, output)


def add_torn_tail(status: Path) -> None:
    """Append the first half of a record, as a crash in the middle of a write leaves it.

    Format 2 frames are [payload, sha256, mac]; the mac's bytes do not matter, half of
    the frame is cut off anyway.
    """
    payload = msgpack.packb({"seq": read_journal(status).count, "kind": "note", "detail": {"x": "y" * 40}})
    frame = msgpack.packb([payload, hashlib.sha256(payload).digest(), bytes(32)])
    with status.open("ab") as handle:
        handle.write(frame[: len(frame) // 2])


def run_clean(s: Scenario) -> tuple[Path, int]:
    """An uninterrupted upgrade: its status file and record count."""
    known = set(s.status_files())
    done = s.scm(*s.upgrade_args("3.2.2", "--unattended"))
    assert done.returncode == 0, done.stdout + done.stderr
    status = new_status_file(s, known)
    assert status is not None
    return status, read_journal(status).count


def scm_ok(s: Scenario, args: list[str], context: str) -> subprocess.CompletedProcess[str]:
    """Run scm.py; fail with the context (seed, kill point) and its output when it fails."""
    done = s.scm(*args)
    assert done.returncode == 0, f"{context}: scm.py {' '.join(args[:2])} exited {done.returncode}\n" + (
        done.stdout + done.stderr
    )
    return done


def rollback_args(s: Scenario, status: Path) -> list[str]:
    """Unattended rollback of a killed run (whose host locks it left behind are taken over)."""
    return [
        "cluster", "--rollback", "--upgrade-status-path", str(status), "--status-dir", str(s.status_dir),
        "--unattended", "--break-lock",
    ]


def resume_args(s: Scenario, status: Path) -> list[str]:
    """Unattended resume of a killed run."""
    return [
        "cluster", "--upgrade", "--upgrade-status-path", str(status), "--status-dir", str(s.status_dir),
        "--unattended", "--break-lock",
    ]


def reinstall(s: Scenario) -> None:
    """Back to the freshly installed 3.1.2 hosts (cheaper than a rollback between kills)."""
    s.cleanup()
    s.install_all("3.1.2", crash_topology())


def pair_states(status: Path) -> dict[tuple[str, str], str]:
    """Each pair's replayed state."""
    return {key: r.state for key, r in replay(read_journal(status)).items()}


def _agent_processes(cluster: TestCluster) -> dict[int, tuple[list[bytes], int]]:
    """argv and parent pid of every process inside one of `cluster`'s hosts.

    Every test host lives on this machine, and other test runs may be starting agents of
    their own at the same time: a process belongs to a host when it is in its network
    namespace.
    """
    host_netns = {os.stat(f"/proc/{h.sshd_pid}/ns/net").st_ino for h in cluster.hosts}
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino not in host_netns:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_bytes().rpartition(b")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        found[int(entry.name)] = (argv, parent)
    return found


def restarting_agents(cluster: TestCluster) -> list[int]:
    """Pids of `cluster`'s host agents in the middle of a restart step: a serving agent
    whose ctl child is starting a node, or a one-shot agent started for `restart`."""
    processes = _agent_processes(cluster)
    starting = {
        parent
        for argv, parent in processes.values()
        if any(a.endswith(b"ctl.sh") for a in argv) and b"start" in argv
    }
    found = []
    for pid, (argv, _) in processes.items():
        if len(argv) > 5 and argv[1:3] == [b"-I", b"-c"] and argv[3] == BOOT.encode():
            if argv[5] == b"restart" or (argv[5] == b"--serve" and pid in starting):
                found.append(pid)
    return found


def wait_until(check: Callable[[], bool], seconds: float) -> bool:
    """Poll `check` until true or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


# Generous: the suite takes about ten minutes on an idle two-core machine, more when loaded.
@pytest.mark.timeout(1500)
def test_sigkill_anywhere_then_rollback_restores_everything(crash: Scenario, seed: int) -> None:
    s = crash
    before, running = s.digests(), s.running()
    clean, total = run_clean(s)
    scm_ok(s, rollback_args(s, clean), "reference rollback")
    assert s.digests() == before
    points = kill_points(random.Random(seed), total, kill_count())
    for index, point in enumerate(points):
        context = f"seed {seed}, kill {index + 1}/{len(points)}: {point}"
        killed = run_and_kill(s, point)
        status = killed.status
        assert status is not None and killed.code in (None, 0), (
            f"{context}: the run exited {killed.code} before the kill\n{killed.output}"
        )
        if point.torn_tail:
            add_torn_tail(status)
            assert read_journal(status).torn_tail

        done = scm_ok(s, rollback_args(s, status), context)

        assert s.digests() == before, f"{context}: install trees differ after the rollback\n{done.stdout}"
        assert s.running() == running, f"{context}: running nodes differ after the rollback\n{done.stdout}"
        assert all(s.daemon_running(h) for h in s.cluster.hosts), context
        states = set(pair_states(status).values())
        assert states <= {"rolled_back", "pending"}, f"{context}: {states}"
        checked = verify_journal(status)
        assert checked.ok and not checked.torn_tail, f"{context}: {checked.message}"


@pytest.mark.timeout(1500)
def test_sigkill_anywhere_then_resume_equals_a_clean_upgrade(crash: Scenario, seed: int) -> None:
    s = crash
    before, running = s.digests(), s.running()
    clean, total = run_clean(s)
    upgraded, upgraded_running = s.digests(), s.running()
    assert all(v == "3.2.2" for ports in upgraded_running.values() for v in ports.values())
    # killed after the last pair was verified but before the run's end was written: the
    # resume has nothing to redo and closes the run, which then reads as a success
    cut_last_record(clean)
    assert summarize(clean).outcome == INTERRUPTED
    done = scm_ok(s, resume_args(s, clean), "resume of a finished run")
    assert "nothing to resume" in done.stdout
    assert summarize(clean).outcome == SUCCESS
    assert s.digests() == upgraded
    scm_ok(s, rollback_args(s, clean), "reference rollback")
    assert s.digests() == before
    # a different draw from the rollback test's, so the two tests hit different moments
    points = kill_points(random.Random(seed + 1), total, max(1, kill_count() // 2))
    for index, point in enumerate(points):
        context = f"seed {seed}, resume kill {index + 1}/{len(points)}: {point}"
        killed = run_and_kill(s, point)
        status = killed.status
        assert status is not None and killed.code in (None, 0), (
            f"{context}: the run exited {killed.code} before the kill\n{killed.output}"
        )
        if point.torn_tail:
            add_torn_tail(status)

        done = scm_ok(s, resume_args(s, status), context)

        assert s.digests() == upgraded, f"{context}: install trees differ after the resume\n{done.stdout}"
        assert s.running() == upgraded_running, f"{context}: running nodes differ after the resume"
        assert set(pair_states(status).values()) == {"verified"}, context
        assert summarize(status).outcome == SUCCESS, f"{context}: {summarize(status)}"
        reinstall(s)
        assert s.digests() == before and s.running() == running, f"{context}: reinstall failed"


def test_rollback_waits_for_the_step_a_killed_run_left_running(crash: Scenario) -> None:
    s = crash
    h2 = s.cluster.hosts[1]
    before, running = s.digests(), s.running()
    # host2's new content-server takes 10 s to start: the killed run's agent outlives it
    sandbox.set_fault(outer_install(h2), "content-server", "start-slow", version="3.2.2", seconds=10)
    known = set(s.status_files())
    proc = spawn(s, s.upgrade_args("3.2.2", "--unattended"))
    try:

        def restarting() -> bool:
            status = new_status_file(s, known)
            if status is None:
                return False
            try:
                records = read_journal(status).records
            except JournalError:
                return False
            return any(
                r.get("kind") == "begin"
                and r.get("trigger") == "restart"
                and r.get("host") == h2.address
                and r.get("service") == "content-server"
                for r in records
            )

        assert wait_until(restarting, 120), "the run never began host2's content-server restart"
        assert wait_until(lambda: bool(restarting_agents(s.cluster)), 10), "no restart agent ran"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    status = new_status_file(s, known)
    assert status is not None
    assert restarting_agents(s.cluster), "the killed run's restart agent should still be running"
    replayed = replay(read_journal(status))
    assert replayed[(h2.address, "content-server")].in_flight == "restart"

    # The killed run is provably dead (this machine, this boot, its pid gone): its host
    # locks do not block the way back, and the rollback waits for the orphaned step, whose
    # per-host step lock it must take before it changes anything.
    done = scm_ok(
        s,
        ["cluster", "--rollback", "--upgrade-status-path", str(status), "--status-dir", str(s.status_dir),
         "--unattended"],
        "rollback during the orphan restart",
    )
    assert "[WARN ] Took over the run lock on" in done.stdout + done.stderr
    assert not restarting_agents(s.cluster)
    assert s.digests() == before, done.stdout
    assert s.running() == running
    assert pair_states(status)[(h2.address, "content-server")] == "rolled_back"
