"""End-to-end run locks: one run per status directory, one run per host, stale locks broken.

While a run holds its locks (kept busy by a slow-starting gateway node on host1):
a second run with the same status directory is refused by the control lock, and a
second run with another status directory is refused by every host's run lock; both
name the holder. A run killed with SIGKILL leaves its host locks behind: the next run
is told that their holder is dead, and `--break-lock` takes them over.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scmflow import sandbox
from scmflow.errors import JournalError
from scmflow.journal import read_journal
from scmflow.locks import HOST_LOCK_NAME
from scmflow.sandbox import NodeSpec, Topology
from tests.e2e.sandbox_cluster import REPO, SCM, Scenario, outer_install
from tests.hosts import TestCluster, TestHost

pytestmark = pytest.mark.e2e

LOCK_EXIT = 3
SLOW_START = 25.0
Record = dict[str, Any]


def lock_topology() -> Topology:
    """Small: two cloud services sharing a directory, one running node each."""
    return Topology(
        services=("service-center", "gateway"),
        nodes=(NodeSpec("service-center", 8810), NodeSpec("gateway", 8080)),
    )


@pytest.fixture
def scenario(cluster3: TestCluster, releases: dict[str, Path], tmp_path: Path) -> Iterator[Scenario]:
    """Three hosts with 3.1.2 installed and running."""
    s = Scenario(cluster=cluster3, releases=releases, work=tmp_path)
    cluster3.home(s.home)
    s.cleanup()
    try:
        for host in cluster3.hosts:
            s.install(host, "3.1.2", lock_topology())
        s.config()
        yield s
    finally:
        s.cleanup()


def spawn(s: Scenario, args: list[str], name: str) -> subprocess.Popen[str]:
    """Start scm.py in the background as the operator; output goes to work/<name>.out."""
    env = {
        "HOME": str(s.home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
    }
    # the child keeps its own copy of the descriptor; ours closes when Popen returns
    with (s.work / f"{name}.out").open("w") as out:
        return subprocess.Popen(
            [sys.executable, str(SCM), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=s.work,
        )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> int:
    """Wait for a spawned run; kill it if it outlives `timeout`."""
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def records(path: Path) -> list[Record]:
    """Intact records of a status file being written (none while unreadable)."""
    try:
        return list(read_journal(path).records)
    except JournalError:
        return []


def wait_for(check: Callable[[], bool], seconds: float, proc: subprocess.Popen[str]) -> bool:
    """Poll `check` until true, `seconds` pass, or `proc` exits."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() >= deadline or proc.poll() is not None:
            return check()
        time.sleep(0.01)
    return True


def host_lock(host: TestHost) -> Path:
    """The host's run lock file, seen from the control machine."""
    return host.opt_dirs["/opt/upgrade"] / "sequoiacm" / HOST_LOCK_NAME


def error_lines(text: str) -> list[str]:
    """The [ERROR] lines of some output."""
    return [line for line in text.splitlines() if line.startswith("[ERROR]")]


def refused(done: subprocess.CompletedProcess[str]) -> str:
    """The one [ERROR] line of a run refused for a lock (exit 3, no traceback)."""
    shown = done.stdout + done.stderr
    assert done.returncode == LOCK_EXIT, shown
    assert "Traceback" not in shown
    errors = error_lines(done.stderr)
    assert len(errors) == 1, shown
    return errors[0]


def test_second_run_refused_by_status_dir_lock_and_by_host_locks(scenario: Scenario) -> None:
    s = scenario
    h1 = s.cluster.hosts[0]
    # host1's new gateway node takes SLOW_START seconds to start: the first run stays busy
    sandbox.set_fault(outer_install(h1), "gateway", "start-slow", version="3.2.2", seconds=SLOW_START)
    first = spawn(s, s.upgrade_args("3.2.2", "--unattended"), "first")
    try:
        def restarting_gateway_on_h1() -> bool:
            status = s.status_files()
            return bool(status) and any(
                r["kind"] == "begin" and r.get("host") == h1.address and r.get("service") == "gateway"
                and r["trigger"] == "restart"
                for r in records(status[0])
            )

        assert wait_for(restarting_gateway_on_h1, 300, first), (s.work / "first.out").read_text()
        status = s.status_files()[0]
        me = socket.gethostname()

        # same status directory: the control lock names the holder
        same_dir = s.scm(*s.upgrade_args("3.2.2", "--unattended"))
        message = refused(same_dir)
        assert f"another scmflow run holds {s.status_dir / '.scmflow.lock'}" in message
        assert f"from {me} (pid {first.pid})" in message
        assert s.status_files() == [status], "the refused run must not start a status file"

        # another status directory, same hosts: every host's run lock names the holder
        other_dir = s.work / "other-status"
        args = s.upgrade_args("3.2.2", "--unattended")
        args[args.index("--status-dir") + 1] = str(other_dir)
        other = s.scm(*args)
        message = refused(other)
        # host1 is left out: everything there is already at 3.2.2 on disk, so the second run
        # plans nothing there and does not lock it; host2 and host3 still wait for gateway
        h1, h2, h3 = s.cluster.hosts
        assert f"[{h2.address}] the run lock" in message and f"[{h3.address}] the run lock" in message
        holders = re.findall(r"is held by run ([0-9a-f]{32})\.\d+ from (\S+) \(pid (\d+)\)", message)
        assert len(holders) == 2 and {(m, int(p)) for _, m, p in holders} == {(me, first.pid)}, message
        assert "if that run is dead, rerun with --break-lock" in message
        assert "that run is dead (its pid" not in message
        assert not list(other_dir.glob("upgrade_status_*"))
        assert first.poll() is None, "the first run was still busy: the refusals were for its locks"
    finally:
        code = finish(first)
    assert code == 0, (s.work / "first.out").read_text()
    assert all(not host_lock(h).exists() for h in s.cluster.hosts), "a finished run releases its host locks"

    # The lock names the status file's run (then the holding process's pid).
    assert holders[0][0] == read_journal(status).header["run_id"]


def test_stale_host_lock_of_a_killed_run_is_reported_and_broken(scenario: Scenario) -> None:
    s = scenario
    before = s.digests()
    running_before = s.running()
    first = spawn(s, s.upgrade_args("3.2.2", "--unattended"), "killed")
    try:
        def begun() -> bool:
            status = s.status_files()
            return bool(status) and any(r["kind"] == "begin" for r in records(status[0]))

        assert wait_for(begun, 300, first), (s.work / "killed.out").read_text()
        first.send_signal(signal.SIGKILL)
    finally:
        assert finish(first, 30) == -signal.SIGKILL
    status = s.status_files()[0]
    assert all(host_lock(h).exists() for h in s.cluster.hosts), "SIGKILL leaves the host locks behind"
    rollback = [
        "cluster", "--rollback", "--upgrade-status-path", str(status), "--status-dir", str(s.status_dir),
        "--unattended",
    ]

    mid = s.digests()
    stale = s.scm(*rollback)
    message = refused(stale)
    # the run was killed in its first pair (host1): that is the one host rollback works on
    h1 = s.cluster.hosts[0]
    dead = "that run is dead (its pid no longer runs here): rerun with --break-lock"
    assert message.startswith(f"[ERROR] [{h1.address}] the run lock"), message
    assert dead in message and f"(pid {first.pid})" in message, message
    assert s.digests() == mid, "the refused rollback changed nothing"

    broken = s.scm(*rollback, "--break-lock")
    assert broken.returncode == 0, broken.stdout + broken.stderr
    assert s.digests() == before
    assert s.running() == running_before
    assert not host_lock(h1).exists(), "the rollback released the lock it took over"
