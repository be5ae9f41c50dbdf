"""End-to-end faults during an upgrade: a host that stops answering, a backup disk that fills up.

(a) host2's link is cut while one of its pairs is in flight: the run must report that
pair's failure within the SSH dead-peer bound (plus slack for the on-the-spot rollback
attempt and the run's wind-down), stop with exit 1, and once the link is back a
`--rollback` from the status file must restore every host as it was.
(b) host2's /opt/backup is a full tmpfs: its first pair fails in `backup`, before
anything of its install is replaced; the run stops with exit 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scmflow.errors import JournalError
from scmflow.journalreader import read_journal
from scmflow.replay import replay
from scmflow.sandbox import NodeSpec, Topology
from scmflow.session.targets import SSHOptions
from tests.e2e.sandbox_cluster import REPO, SCM, Scenario
from tests.hosts import TestCluster, TestHost

pytestmark = pytest.mark.e2e

# Beyond the dead-peer bound: the failed pair's on-the-spot rollback attempt on the dead
# host (its connection is already dropped, so that fails at once), journal writes, the
# release of the other hosts' locks, and a loaded 2-core machine.
SLACK = 30.0
Record = dict[str, Any]


def fault_topology() -> Topology:
    """Small: two cloud services sharing a directory, one running node each."""
    return Topology(
        services=("service-center", "gateway"),
        nodes=(NodeSpec("service-center", 8810), NodeSpec("gateway", 8080)),
    )


@pytest.fixture
def scenario(cluster3: TestCluster, releases: dict[str, Path], tmp_path: Path) -> Iterator[Scenario]:
    """Three hosts with 3.1.2 installed and running; links restored afterwards whatever happens."""
    s = Scenario(cluster=cluster3, releases=releases, work=tmp_path)
    cluster3.home(s.home)
    s.cleanup()
    try:
        s.install_all("3.1.2", fault_topology())
        s.config()
        yield s
    finally:
        for host in cluster3.hosts:
            host.restore_link()
        s.cleanup()


def spawn(s: Scenario, args: list[str]) -> subprocess.Popen[str]:
    """Start scm.py in the background as the operator; output goes to files in the work dir."""
    env = {
        "HOME": str(s.home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
    }
    # the child keeps its own copies of the descriptors; ours close when Popen returns
    with (s.work / "run.out").open("w") as out, (s.work / "run.err").open("w") as err:
        return subprocess.Popen(
            [sys.executable, str(SCM), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            text=True,
            env=env,
            cwd=s.work,
        )


def records(s: Scenario) -> list[Record]:
    """The intact records of the run's status file so far (none while it does not exist)."""
    files = s.status_files()
    if not files:
        return []
    try:
        return list(read_journal(files[-1]).records)
    except JournalError:
        return []


def wait_for(check: Callable[[], bool], seconds: float, proc: subprocess.Popen[str] | None = None) -> bool:
    """Poll `check` until true, `seconds` pass, or `proc` exits."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() >= deadline or (proc is not None and proc.poll() is not None):
            return check()
        time.sleep(0.01)
    return True


def output(s: Scenario) -> str:
    """What the spawned run printed so far."""
    return (s.work / "run.out").read_text() + (s.work / "run.err").read_text()


def stop(proc: subprocess.Popen[str]) -> None:
    """Make sure a spawned run is gone (only called on a failing path)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def test_host_that_stops_answering_fails_its_pair_in_bounded_time(scenario: Scenario) -> None:
    s = scenario
    h1, h2, h3 = s.cluster.hosts
    before = s.digests()
    running_before = s.running()
    bound = SSHOptions().dead_peer_bound

    proc = spawn(s, s.upgrade_args("3.2.2", "--unattended"))
    try:
        def begun_on_h2() -> bool:
            return any(r["kind"] == "begin" and r.get("host") == h2.address for r in records(s))

        assert wait_for(begun_on_h2, 300, proc), "no pair began on host2:\n" + output(s)
        h2.cut_link()
        cut_at = time.monotonic()

        def h2_failed() -> bool:
            return any(r["kind"] == "fail" and r.get("host") == h2.address for r in records(s))

        limit = bound + SLACK
        assert wait_for(h2_failed, limit, proc), f"no failure of host2's pair within {limit:g}s of the cut"
        failed_after = time.monotonic() - cut_at
        print(f"host2's pair failed {failed_after:.1f}s after its link was cut (bound {bound:g}s)")
        code = proc.wait(timeout=max(1.0, limit - failed_after))
    finally:
        stop(proc)
    out = (s.work / "run.out").read_text()
    err = (s.work / "run.err").read_text()
    assert code == 1, out + err
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("[ERROR]")]
    assert len(errors) == 1 and h2.address in errors[0], err
    assert "If you want to rollback successfully upgraded services" in out

    status = s.status_files()[-1]
    replayed = replay(read_journal(status))
    failed = [r for r in replayed.values() if r.host == h2.address and r.state in ("failed", "rolled_back")]
    assert len(failed) == 1, {k: r.state for k, r in replayed.items()}
    assert failed[0].last_error, "the failure says why"
    # nothing was started on host3 after host2 stopped answering (the run stopped)
    assert all(r.state == "pending" for r in replayed.values() if r.host == h3.address)

    h2.restore_link()
    rollback = s.scm(
        "cluster", "--rollback", "--upgrade-status-path", str(status), "--status-dir", str(s.status_dir),
        "--unattended", "--break-lock",
    )
    assert rollback.returncode == 0, rollback.stdout + rollback.stderr
    assert s.digests() == before
    assert s.running() == running_before


def fill_backup_disk(host: TestHost) -> None:
    """Mount a 256 KiB tmpfs over the host's /opt/backup (its namespace only) and fill it.

    It is root's, as /opt/backup is on the test hosts (scmflow refuses a base another
    user owns).
    """
    host.exec(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "scmflow-full", "/opt/backup"])
    filled = host.exec(["dd", "if=/dev/zero", "of=/opt/backup/.filler", "bs=4k"], check=False)
    assert "No space left on device" in filled.stderr, filled.stderr
    free = host.exec(["df", "--output=avail", "-B1", "/opt/backup"]).stdout.split()[-1]
    assert int(free) == 0


def free_backup_disk(host: TestHost) -> None:
    """Unmount the tmpfs again; the bind-mounted directory underneath reappears."""
    host.exec(["umount", "/opt/backup"], check=False)


def test_full_backup_disk_fails_the_pair_before_any_replace(scenario: Scenario) -> None:
    s = scenario
    h1, h2, h3 = s.cluster.hosts
    before = s.digests()
    fill_backup_disk(h2)
    try:
        done = s.scm(*s.upgrade_args("3.2.2", "--unattended"))
    finally:
        free_backup_disk(h2)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("[ERROR]")]
    assert len(errors) == 1 and h2.address in errors[0] and "SERVICE_CENTER" in errors[0], done.stderr

    status = s.status_files()[-1]
    replayed = replay(read_journal(status))
    pair = replayed[(h2.address, "service-center")]
    story = "\n".join(f"{r['kind']} {r['trigger']} {r.get('detail')}" for r in pair.history)
    fails = [r for r in pair.history if r["kind"] == "fail"]
    assert fails and fails[0]["trigger"] == "backup", story
    # the backup's own space check names the host, the path and the shortfall
    assert "not enough space on" in str(fails[0].get("detail")), story
    assert "/opt/backup/sequoiacm/backup-" in str(fails[0].get("detail")), story
    assert not any(r["kind"] == "begin" and r["trigger"] == "replace" for r in pair.history), story
    # the failed pair's own rollback only drops the incomplete backup: nothing was replaced
    assert pair.state == "rolled_back", story
    # host2's install is as it was, its nodes still run the old version
    assert s.digests()[h2.name] == before[h2.name]
    assert s.running()[h2.name] == {8810: "3.1.2", 8080: "3.1.2"}
    # the run stopped: host3 never started, host1's earlier pair is untouched by the failure
    assert all(r.state == "pending" for r in replayed.values() if r.host == h3.address)
    assert replayed[(h1.address, "service-center")].state == "verified"
