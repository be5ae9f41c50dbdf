"""End-to-end: roll back and resume upgrades of a sandbox SequoiaCM on three real sshd test hosts.

The promise under test: whatever happened, the status file brings every host back exactly
(same install trees, same running nodes answering with the old version), or carries the
upgrade forward to the very result of an uninterrupted run.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scmflow import sandbox
from scmflow.errors import JournalError
from scmflow.journalreader import read_journal
from scmflow.outcome import INTERRUPTED
from scmflow.sandbox import Topology
from scmflow.statuslist import list_status_files
from tests.e2e.sandbox_cluster import (
    STANDARD_PORTS,
    Scenario,
    outer_install,
    pair_states,
    resume_args,
    rollback_args,
    small_topology,
    spawn,
    standard_topology,
)
from tests.hosts import TestCluster, TestHost

pytestmark = pytest.mark.e2e

ROLLBACK_ORDER = (
    "DAEMON",
    "OM_SERVER",
    "ADMIN_SERVER",
    "CONTENT_SERVER",
    "GATEWAY",
    "SCHEDULE_SERVER",
    "CONFIG_SERVER",
    "AUTH_SERVER",
    "SERVICE_CENTER",
)
GATEWAY_JAR = "sequoiacm-cloud/jars/sequoiacm-cloud-gateway-*.jar"
CONTENT_JAR = "sequoiacm-content/lib/sequoiacm-content-server-*.jar"
SC_JAR = "sequoiacm-cloud/jars/sequoiacm-cloud-servicecenter-*.jar"
TOOLS_JAR = "sequoiacm-cloud/jars/sequoiacm-cloud-tools-*.jar"


def _install_all(s: Scenario, topology_of: dict[int, Topology]) -> None:
    indexes = range(len(s.cluster.hosts))
    s.install_all("3.1.2", [topology_of[i] for i in indexes], customer_jars=[i == 0 for i in indexes])
    s.config()


@pytest.fixture
def bare(cluster3: TestCluster, releases: dict[str, Path], tmp_path: Path) -> Iterator[Scenario]:
    """Three empty hosts; the test installs what it needs. Cleaned up afterwards."""
    s = Scenario(cluster=cluster3, releases=releases, work=tmp_path)
    cluster3.home(s.home)
    s.cleanup()
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def small(bare: Scenario) -> Scenario:
    """Three hosts with the small topology of 3.1.2 installed and running."""
    _install_all(bare, dict.fromkeys(range(3), small_topology()))
    return bare


def wait_for_record(s: Scenario, predicate: Callable[[dict[str, Any]], bool], timeout: float = 120.0) -> Path:
    """Poll the scenario's status file until one of its records satisfies `predicate`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in s.status_files():
            try:
                records = read_journal(path).records
            except JournalError:
                continue
            if any(predicate(r) for r in records):
                return path
        time.sleep(0.05)
    raise AssertionError("the status file never recorded the awaited event")


def info_lines(text: str) -> list[str]:
    """The operator lines of an output, without their `[INFO ] ` prefix."""
    return [line[len("[INFO ] ") :] for line in text.splitlines() if line.startswith("[INFO ] ")]


def upgrade_ok(s: Scenario, *extra: str) -> Path:
    """Run an unattended upgrade that must succeed; its status file."""
    before = set(s.status_files())
    done = s.scm(*s.upgrade_args("3.2.2", "--unattended", *extra))
    assert done.returncode == 0, done.stdout + done.stderr
    (status,) = set(s.status_files()) - before
    return status


def rollback_ok(s: Scenario, status: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run an unattended rollback that must succeed."""
    done = s.scm(*rollback_args(s, status, "--unattended", *extra))
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def old_everywhere(s: Scenario, running: dict[str, dict[int, str]]) -> None:
    """Every node that answers now is one that ran before and reports 3.1.2."""
    now = s.running()
    assert {h: set(p) for h, p in now.items()} == {h: set(p) for h, p in running.items()}
    assert all(v == "3.1.2" for ports in now.values() for v in ports.values()), now


def test_full_rollback_restores_every_host_exactly(bare: Scenario) -> None:
    topologies = dict.fromkeys(range(3), standard_topology(STANDARD_PORTS))
    full = topologies[0]
    topologies[2] = Topology(
        services=tuple(x for x in full.services if x != "om-server"),
        nodes=tuple(n for n in full.nodes if n.service != "om-server"),
    )
    _install_all(bare, topologies)
    s = bare
    before, running = s.digests(), s.running()
    assert all(v == "3.1.2" for ports in running.values() for v in ports.values())
    status = upgrade_ok(s, "--parallel", "2")
    assert s.digests() != before

    done = rollback_ok(s, status, "--parallel", "2")

    assert s.digests() == before
    old_everywhere(s, running)
    assert 8081 not in s.running()["host1"]
    assert all(s.daemon_running(h) for h in s.cluster.hosts)
    assert s.version_on(s.cluster.hosts[0], "sequoiacm-content/lib/hbase_transwarp/*.jar")
    lines = info_lines(done.stdout)
    start = lines.index("prepare to rollback services in this order")
    h1, h2, h3 = (h.address for h in s.cluster.hosts)
    expected = [
        f"[{host}]:{printed}:3.2.2 to 3.1.2"
        for printed in ROLLBACK_ORDER
        for host in (h3, h2, h1)
        if not (printed == "OM_SERVER" and host == h3)
    ]
    assert lines[start + 1 : start + 1 + len(expected)] == expected
    assert "Whether to rollback?" not in lines
    assert any(line.startswith("Rollback service success") for line in lines)
    states = pair_states(status)
    assert len(states) == 26
    assert set(states.values()) == {"rolled_back"}
    verified = s.scm("status", "verify", str(status))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_rollback_asks_first_and_no_changes_nothing(small: Scenario) -> None:
    s = small
    status = upgrade_ok(s)
    upgraded = s.digests()

    done = s.scm(*rollback_args(s, status), stdin="n\n")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "[INFO ] Whether to rollback?" in done.stdout
    assert "Please enter (y/n) confirm:" in done.stdout
    assert "[INFO ] Rollback cancelled, nothing was changed" in done.stdout
    assert s.digests() == upgraded
    assert set(pair_states(status).values()) == {"verified"}
    assert all(v == "3.2.2" for ports in s.running().values() for v in ports.values())


def test_partial_rollbacks_restore_exactly_the_selected_pairs(small: Scenario) -> None:
    s = small
    h1, h2, h3 = s.cluster.hosts
    before, running = s.digests(), s.running()
    status = upgrade_ok(s)
    upgraded = s.digests()

    # --host: that host's pairs only
    done = rollback_ok(s, status, "--host", h2.address)
    plan = info_lines(done.stdout.split("prepare to rollback services in this order")[1])
    order = ("DAEMON", "CONTENT_SERVER", "GATEWAY", "SERVICE_CENTER")
    assert plan[:4] == [f"[{h2.address}]:{p}:3.2.2 to 3.1.2" for p in order]
    now = s.digests()
    assert now == {"host1": upgraded["host1"], "host2": before["host2"], "host3": upgraded["host3"]}
    live = s.running()
    assert set(live["host2"].values()) == {"3.1.2"}
    assert set(live["host1"].values()) == set(live["host3"].values()) == {"3.2.2"}

    # --service, out of reverse order: service-center goes back before the gateway that
    # shares its directory (bin/, *.py, tools jar) and was upgraded after it
    done = rollback_ok(s, status, "--service", "service-center")
    assert f"[{h2.address}]:SERVICE_CENTER" not in done.stdout  # already rolled back
    for host in (h1, h3):
        assert s.version_on(host, SC_JAR) == ["sequoiacm-cloud-servicecenter-3.1.2.jar"]
        assert s.version_on(host, GATEWAY_JAR) == ["sequoiacm-cloud-gateway-3.2.2.jar"]
        assert s.running()[host.name] == {8810: "3.1.2", 8080: "3.2.2", 15000: "3.2.2"}
    states = pair_states(status)
    assert states[(h1.address, "service-center")] == states[(h3.address, "service-center")] == "rolled_back"
    assert states[(h1.address, "gateway")] == "verified"
    done = rollback_ok(s, status, "--service", "gateway")
    for host in (h1, h3):
        assert s.version_on(host, GATEWAY_JAR) == ["sequoiacm-cloud-gateway-3.1.2.jar"]
        assert s.version_on(host, TOOLS_JAR) == ["sequoiacm-cloud-tools-3.1.2.jar"]
        assert s.version_on(host, CONTENT_JAR) == ["sequoiacm-content-server-3.2.2.jar"]
        assert s.running()[host.name] == {8810: "3.1.2", 8080: "3.1.2", 15000: "3.2.2"}

    # a host that is not in the status file: one error line, nothing changed
    partial = s.digests()
    done = s.scm(*rollback_args(s, status, "--unattended", "--host", "10.251.254.9"))
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("[ERROR]") and "10.251.254.9" in errors[0], errors
    assert "Traceback" not in done.stdout + done.stderr
    assert s.digests() == partial

    # a service without a record: warned, nothing to do
    done = rollback_ok(s, status, "--service", "mq-server")
    assert "[WARN ] The following specified service have no upgrade record:[MQ_SERVER]" in done.stdout
    assert "[INFO ] No service need to rollback" in done.stdout
    assert s.digests() == partial

    # the rest, then nothing is left
    rollback_ok(s, status)
    assert s.digests() == before
    old_everywhere(s, running)
    assert set(pair_states(status).values()) == {"rolled_back"}
    done = rollback_ok(s, status)
    assert "[INFO ] No service need to rollback" in done.stdout
    assert s.digests() == before


def test_rollback_after_a_failed_upgrade_restores_the_earlier_stages(small: Scenario) -> None:
    s = small
    h2 = s.cluster.hosts[1]
    before, running = s.digests(), s.running()
    sandbox.set_fault(outer_install(h2), "content-server", "start-fail", version="3.2.2")
    done = s.scm(*s.upgrade_args("3.2.2", "--unattended"))
    assert done.returncode == 1, done.stdout + done.stderr
    (status,) = s.status_files()
    states = pair_states(status)
    assert states[(h2.address, "content-server")] == "rolled_back"
    assert states[(h2.address, "gateway")] == "verified"

    done = rollback_ok(s, status)

    assert f"[{h2.address}]:CONTENT_SERVER" not in done.stdout.split("in this order")[1]
    assert s.digests() == before
    old_everywhere(s, running)
    assert set(pair_states(status).values()) <= {"rolled_back", "pending"}


def _backup_dir(host: TestHost, status: Path, service: str) -> Path:
    stamp = read_journal(status).header["stamp"]
    return host.opt_dirs["/opt/backup"] / "sequoiacm" / f"backup-{stamp}" / service


def test_rollback_skips_pairs_changed_behind_its_back(small: Scenario) -> None:
    s = small
    h1, h2, h3 = s.cluster.hosts
    before, running = s.digests(), s.running()
    status = upgrade_ok(s)
    # someone installs another gateway jar by hand on host1, and host3 loses a backup marker
    jars = outer_install(h1) / "sequoiacm-cloud" / "jars"
    (jars / "sequoiacm-cloud-gateway-3.2.2.jar").rename(jars / "sequoiacm-cloud-gateway-3.2.3.jar")
    marker = _backup_dir(h3, status, "content-server") / ".complete"
    saved = marker.read_bytes()
    marker.unlink()

    done = rollback_ok(s, status)

    assert (
        f"[WARN ] [{h1.address}]:GATEWAY: current version 3.2.3 is not the upgraded version 3.2.2, "
        "skip rollback"
    ) in done.stdout
    assert f"[WARN ] [{h3.address}]:CONTENT_SERVER: backup " in done.stdout
    assert "is missing or incomplete, skip rollback" in done.stdout
    plan = done.stdout.split("in this order")[1]
    assert f"[{h1.address}]:GATEWAY" not in plan and f"[{h3.address}]:CONTENT_SERVER" not in plan
    assert s.version_on(h1, GATEWAY_JAR) == ["sequoiacm-cloud-gateway-3.2.3.jar"]
    assert s.version_on(h3, CONTENT_JAR) == ["sequoiacm-content-server-3.2.2.jar"]
    assert s.digests()["host2"] == before["host2"]
    states = pair_states(status)
    assert states[(h1.address, "gateway")] == states[(h3.address, "content-server")] == "verified"
    assert states[(h1.address, "content-server")] == "rolled_back"

    # put things back as they were: the same file finishes the rollback exactly
    (jars / "sequoiacm-cloud-gateway-3.2.3.jar").rename(jars / "sequoiacm-cloud-gateway-3.2.2.jar")
    marker.write_bytes(saved)
    rollback_ok(s, status)
    assert s.digests() == before
    old_everywhere(s, running)


def test_resume_after_a_failure_equals_a_clean_upgrade(small: Scenario) -> None:
    s = small
    h2 = s.cluster.hosts[1]
    before, running = s.digests(), s.running()
    clean = upgrade_ok(s)
    upgraded, upgraded_running = s.digests(), s.running()
    rollback_ok(s, clean)
    assert s.digests() == before

    sandbox.set_fault(outer_install(h2), "content-server", "start-fail", version="3.2.2")
    done = s.scm(*s.upgrade_args("3.2.2", "--unattended"))
    assert done.returncode == 1, done.stdout + done.stderr
    (status,) = set(s.status_files()) - {clean}
    sandbox.clear_fault(outer_install(h2), "content-server", "start-fail")

    done = s.scm(*resume_args(s, status, "--unattended"))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Upgrade service success" in done.stdout
    assert s.digests() == upgraded
    assert s.running() == upgraded_running
    assert all(v == "3.2.2" for ports in s.running().values() for v in ports.values())
    assert set(pair_states(status).values()) == {"verified"}

    # one file undoes the failed run and its resume together
    rollback_ok(s, status)
    assert s.digests() == before
    old_everywhere(s, running)


def test_ctrl_c_stops_cleanly_and_rollback_restores(small: Scenario) -> None:
    s = small
    before, running = s.digests(), s.running()
    proc = spawn(s, s.upgrade_args("3.2.2", "--unattended"))
    try:
        wait_for_record(s, lambda r: r.get("kind") == "transition" and r.get("dst") == "verified")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out + err
    (status,) = s.status_files()
    assert f"file location:{status}" in out
    assert "Traceback" not in out + err
    (summary,) = list_status_files(s.status_dir)
    assert summary.outcome == INTERRUPTED
    states = pair_states(status)
    assert "verified" in states.values()
    assert "pending" in states.values()  # it stopped before the end

    rollback_ok(s, status)
    assert s.digests() == before
    old_everywhere(s, running)
