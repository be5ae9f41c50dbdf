"""End-to-end run locks: one run per status directory, one run per host, dead holders taken over.

While a run holds its locks (kept busy by a slow-starting gateway node on host1):
a second run with the same status directory is refused by the control lock, and a
second run with another status directory is refused by every host's run lock; both
name the holder, which is alive. A run killed with SIGKILL leaves its host locks behind:
the rollback takes them over by itself with a warning, and a rollback with nothing left
to do removes the rest. A lock of another control machine needs `--break-lock`; of two
breakers exactly one wins; and no breaker takes a lock while a step runs on the host.
"""

from __future__ import annotations

import fcntl
import json
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
from scmflow.journalreader import read_journal
from scmflow.locks import HOST_LOCK_NAME, STEP_WAIT
from scmflow.sandbox import NodeSpec, Topology
from tests.e2e.sandbox_cluster import REPO, SCM, Scenario, outer_install
from tests.hosts import TestCluster, TestHost

pytestmark = pytest.mark.e2e

LOCK_EXIT = 2
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


INSIDE_PACK = "/opt/upgrade/sequoiacm"


def host_lock(host: TestHost) -> Path:
    """The host's run lock file, seen from the control machine."""
    return host.opt_dirs["/opt/upgrade"] / "sequoiacm" / HOST_LOCK_NAME


def error_lines(text: str) -> list[str]:
    """The [ERROR] lines of some output."""
    return [line for line in text.splitlines() if line.startswith("[ERROR]")]


def refused(done: subprocess.CompletedProcess[str]) -> str:
    """The one [ERROR] line of a run refused for a lock (exit 2, no traceback)."""
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
        # the holder provably lives (this machine, its pid and start time): not even
        # --break-lock would take its locks
        assert f"(its pid {first.pid} still runs here): wait for that run to finish" in message
        assert "--break-lock" not in message
        assert not list(other_dir.glob("upgrade_status_*"))
        assert first.poll() is None, "the first run was still busy: the refusals were for its locks"
    finally:
        code = finish(first)
    assert code == 0, (s.work / "first.out").read_text()
    assert all(not host_lock(h).exists() for h in s.cluster.hosts), "a finished run releases its host locks"

    # The lock names the status file's run (then the holding process's pid).
    assert holders[0][0] == read_journal(status).header["run_id"]


def rollback_args(s: Scenario, status: Path, *extra: str) -> list[str]:
    """`cluster --rollback` of a status file, unattended."""
    return [
        "cluster", "--rollback", "--upgrade-status-path", str(status), "--status-dir", str(s.status_dir),
        "--unattended", *extra,
    ]


def warn_lines(text: str) -> list[str]:
    """The [WARN ] lines of some output."""
    return [line for line in text.splitlines() if line.startswith("[WARN ]")]


def foreign_holder(host: TestHost) -> Record:
    """A lock record left by a run of another control machine (it cannot be judged from here)."""
    return {
        "run_id": f"{'f' * 32}.4242",
        "control_host": "ctl-elsewhere",
        "pid": 4242,
        "boot_id": "6c1f4f4e-0000-4000-8000-000000000000",
        "pid_ns": "pid:[4026531836]",
        "pid_start": 1,
        "host": host.address,
        "time": "2026-01-02T03:04:05Z",
    }


def plant(host: TestHost, holder: Record) -> None:
    """Leave a run lock on the host, as a run that died there would."""
    path = host_lock(host)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(holder, sort_keys=True))


def with_status_dir(args: list[str], status_dir: Path) -> list[str]:
    """The same arguments with another --status-dir (so another control lock)."""
    out = list(args)
    out[out.index("--status-dir") + 1] = str(status_dir)
    return out


def test_a_killed_runs_locks_do_not_block_the_rollback(scenario: Scenario) -> None:
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
    run_id = read_journal(status).header["run_id"]
    since = json.loads(host_lock(s.cluster.hosts[0]).read_text())["time"]

    # no --break-lock: the holder is provably dead (this machine, this boot, its pid gone)
    done = s.scm(*rollback_args(s, status))
    assert done.returncode == 0, done.stdout + done.stderr
    assert error_lines(done.stderr) == []
    # the run was killed in its first pair (host1): that is the one host rollback works on
    h1, h2, h3 = s.cluster.hosts
    taken = [line for line in warn_lines(done.stdout) if "run lock" in line]
    assert taken == [
        f"[WARN ] Took over the run lock on {h1.address} from run {run_id}.{first.pid} from "
        f"{socket.gethostname()} (pid {first.pid}) since {since}: that run is dead "
        f"(pid {first.pid} no longer runs on this machine)"
    ], done.stdout
    assert s.digests() == before
    assert s.running() == running_before
    assert not host_lock(h1).exists(), "the rollback released the lock it took over"

    # nothing is left to roll back, yet the dead run's locks on host2 and host3 go too
    assert host_lock(h2).exists() and host_lock(h3).exists()
    again = s.scm(*rollback_args(s, status))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[INFO ] No service need to rollback" in again.stdout
    removed = [line for line in warn_lines(again.stdout) if "run lock" in line]
    assert len(removed) == 1, again.stdout
    hosts, _, rest = removed[0].removeprefix("[WARN ] Removed the run lock on ").partition(" left by ")
    assert sorted(hosts.split(", ")) == sorted([h2.address, h3.address]), removed
    assert rest.startswith(f"run {run_id}.{first.pid} from {socket.gethostname()} (pid {first.pid})"), removed
    assert rest.endswith(f"that run is dead (pid {first.pid} no longer runs on this machine)"), removed
    assert not any(host_lock(h).exists() for h in s.cluster.hosts)


def test_another_control_machines_lock_needs_break_lock(scenario: Scenario) -> None:
    s = scenario
    before = s.digests()
    for host in s.cluster.hosts:
        plant(host, foreign_holder(host))

    done = s.scm(*s.upgrade_args("3.2.2", "--unattended"))
    message = refused(done)
    for host in s.cluster.hosts:
        assert (
            f"[{host.address}] the run lock {INSIDE_PACK}/{HOST_LOCK_NAME} is held by run {'f' * 32}.4242 "
            f"from ctl-elsewhere (pid 4242) since 2026-01-02T03:04:05Z (it ran on another control "
            f"machine, ctl-elsewhere) - if that run is dead, rerun with --break-lock"
        ) in message, message
    assert s.digests() == before and not s.status_files(), "refused before any host changed"
    for host in s.cluster.hosts:
        assert json.loads(host_lock(host).read_text())["control_host"] == "ctl-elsewhere"

    broken = s.scm(*s.upgrade_args("3.2.2", "--unattended", "--break-lock"))
    assert broken.returncode == 0, broken.stdout + broken.stderr
    hosts = ", ".join(h.address for h in s.cluster.hosts)
    assert [line for line in warn_lines(broken.stdout) if "run lock" in line] == [
        f"[WARN ] --break-lock: took over the run lock on {hosts} from run {'f' * 32}.4242 from "
        f"ctl-elsewhere (pid 4242) since 2026-01-02T03:04:05Z (it ran on another control machine, "
        f"ctl-elsewhere)"
    ], broken.stdout
    assert not any(host_lock(h).exists() for h in s.cluster.hosts)


def test_of_two_concurrent_breakers_exactly_one_wins(scenario: Scenario) -> None:
    s = scenario
    h1 = s.cluster.hosts[0]
    plant(h1, foreign_holder(h1))
    # the winner stays busy on host1 while the loser arrives
    sandbox.set_fault(outer_install(h1), "gateway", "start-slow", version="3.2.2", seconds=SLOW_START)
    args = s.upgrade_args("3.2.2", "--unattended", "--break-lock", "--host", h1.address)
    procs = [
        spawn(s, with_status_dir(args, s.work / f"status-{i}"), f"breaker-{i}") for i in range(2)
    ]
    codes = [finish(p, 400) for p in procs]
    outputs = [(s.work / f"breaker-{i}.out").read_text() for i in range(2)]
    assert sorted(codes) == [0, LOCK_EXIT], outputs
    win, lose = (0, 1) if codes[0] == 0 else (1, 0)
    winner, loser = procs[win], outputs[lose]
    errors = error_lines(loser)
    assert len(errors) == 1, loser
    # the loser either lost the compare-and-swap or found the winner's live lock
    assert f"from {socket.gethostname()} (pid {winner.pid})" in errors[0], errors
    assert "another run took it over first" in errors[0] or "wait for that run to finish" in errors[0]
    assert "--break-lock: took over the run lock" in outputs[win]
    assert "took over" not in loser
    assert not list((s.work / f"status-{lose}").glob("upgrade_status_*"))
    assert not host_lock(h1).exists()


def test_break_lock_refuses_while_a_step_holds_the_hosts_step_lock(scenario: Scenario) -> None:
    s = scenario
    h1 = s.cluster.hosts[0]
    before = s.digests()
    plant(h1, foreign_holder(h1))
    args = s.upgrade_args("3.2.2", "--unattended", "--break-lock", "--host", h1.address)
    # what an agent in a step holds: an flock on the host's install directory
    fd = os.open(outer_install(h1), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.monotonic()
        done = s.scm(*args)
        waited = time.monotonic() - started
    finally:
        os.close(fd)
    message = refused(done)
    assert f"a step of its agent (pid {os.getpid()}) still runs there after {STEP_WAIT:g} s" in message
    assert waited >= STEP_WAIT, "it waited for the step to end before refusing"
    assert json.loads(host_lock(h1).read_text())["control_host"] == "ctl-elsewhere"
    assert s.digests() == before and not s.status_files()

    done = s.scm(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not host_lock(h1).exists()
