"""End-to-end: check, plan and upgrade a sandbox SequoiaCM on three real sshd test hosts."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from scmflow import sandbox
from scmflow.journalreader import read_journal
from scmflow.replay import replay
from scmflow.sandbox import Topology
from tests.e2e.sandbox_cluster import (
    STANDARD_PORTS,
    Scenario,
    outer_install,
    standard_topology,
)
from tests.hosts import TestCluster

pytestmark = pytest.mark.e2e


@pytest.fixture
def scenario(cluster3: TestCluster, releases: dict[str, Path], tmp_path: Path) -> Iterator[Scenario]:
    """Three hosts with 3.1.2 installed: host3 has no om-server; gateway 8081 is stopped."""
    s = Scenario(cluster=cluster3, releases=releases, work=tmp_path)
    cluster3.home(s.home)
    s.cleanup()
    try:
        topologies = []
        for index in range(len(cluster3.hosts)):
            topology = standard_topology(STANDARD_PORTS)
            if index == 2:
                topology = Topology(
                    services=tuple(x for x in topology.services if x != "om-server"),
                    nodes=tuple(n for n in topology.nodes if n.service != "om-server"),
                )
            topologies.append(topology)
        s.install_all("3.1.2", topologies, customer_jars=[i == 0 for i in range(len(topologies))])
        s.config()
        yield s
    finally:
        s.cleanup()


def _conf_digest(s: Scenario) -> dict[str, bytes]:
    """Every conf/ file's bytes; the daemon's crontab line is rewritten by `scmd.sh start`."""
    out = {}
    for host in s.cluster.hosts:
        for path in sorted(outer_install(host).glob("*/conf/**/*")):
            if path.is_file() and path.name != ".crontab.properties":
                out[f"{host.name}:{path.relative_to(outer_install(host))}"] = path.read_bytes()
    return out


def test_plan_lines_order_warnings_and_no_means_no_change(scenario: Scenario) -> None:
    before = scenario.digests()
    done = scenario.scm(*scenario.upgrade_args(), stdin="n\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[INFO ] Parsing the upgrade configuration..."
    assert "[INFO ] Parse the upgrade configuration success" in lines
    assert "[INFO ] Checking the upgrade configuration... (0/2)" in lines
    assert "[INFO ] Checking the upgrade configuration: Host (1/2)" in lines
    assert "[INFO ] Checking the upgrade configuration: Config (2/2)" in lines
    assert "[INFO ] Check the upgrade configuration success" in lines
    absent = (
        "[WARN ] The following specified service do not exist in the cluster:"
        "[SERVICE_TRACE, MQ_SERVER, FULLTEXT_SERVER, S3_SERVER, SCMSYSTOOLS, NON_SERVICE[doc, driver, tools]]"
    )
    assert absent in lines
    start = lines.index("[INFO ] Prepare to upgrade services in this order")
    h1, h2, h3 = (h.address for h in scenario.cluster.hosts)
    expected = []
    for printed in (
        "SERVICE_CENTER",
        "AUTH_SERVER",
        "CONFIG_SERVER",
        "SCHEDULE_SERVER",
        "GATEWAY",
        "CONTENT_SERVER",
        "ADMIN_SERVER",
        "OM_SERVER",
        "DAEMON",
    ):
        for host in (h1, h2, h3):
            if printed == "OM_SERVER" and host == h3:
                continue
            expected.append(f"[INFO ] [{host}]:{printed}:3.1.2 to 3.2.2")
    assert lines[start + 1 : start + 1 + len(expected)] == expected
    assert lines[start + 1 + len(expected)] == "[INFO ] Whether to upgrade?"
    assert "Please enter (y/n) confirm:" in done.stdout
    assert scenario.digests() == before
    assert not scenario.status_files()


def test_upgrade_three_hosts_to_322(scenario: Scenario) -> None:
    conf_before = _conf_digest(scenario)
    running_before = scenario.running()
    done = scenario.scm(*scenario.upgrade_args("3.2.2", "--unattended", "--parallel", "2"))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "[INFO ] Upgrading service...(0/" in out
    assert "Upgrade service success, generate upgrade status file success, file location:" in out
    assert "[INFO ] Restarting GATEWAY node,port=8080" in out
    assert "[INFO ] Restarting DAEMON node" in out
    assert "Restarting GATEWAY node,port=8081" not in out
    for host in scenario.cluster.hosts:
        assert scenario.version_on(host, "sequoiacm-cloud/jars/sequoiacm-cloud-gateway-*.jar") == [
            "sequoiacm-cloud-gateway-3.2.2.jar"
        ]
        assert scenario.version_on(host, "sequoiacm-cloud/jars/sequoiacm-cloud-tools-*.jar") == [
            "sequoiacm-cloud-tools-3.2.2.jar"
        ]
        assert scenario.version_on(host, "sequoiacm-content/lib/sequoiacm-content-server-*.jar") == [
            "sequoiacm-content-server-3.2.2.jar"
        ]
        assert scenario.version_on(host, "daemon/jars/sequoiacm-daemon-tools-*.jar") == [
            "sequoiacm-daemon-tools-3.2.2.jar"
        ]
        assert scenario.daemon_running(host)
    # customer jars carried over
    assert scenario.version_on(scenario.cluster.hosts[0], "sequoiacm-content/lib/hbase_transwarp/*.jar")
    running_after = scenario.running()
    assert {h: set(p) for h, p in running_after.items()} == {h: set(p) for h, p in running_before.items()}
    assert all(v == "3.2.2" for ports in running_after.values() for v in ports.values())
    assert 8081 not in running_after["host2"]
    assert _conf_digest(scenario) == conf_before
    status = scenario.status_files()
    assert len(status) == 1
    assert stat.S_IMODE(status[0].stat().st_mode) == 0o600
    states = {key: r.state for key, r in replay(read_journal(status[0])).items()}
    assert set(states.values()) == {"verified"}
    assert len(states) == 26


def test_host_and_service_filters_change_only_selected_pairs(scenario: Scenario) -> None:
    h1, h2, h3 = scenario.cluster.hosts
    before = scenario.digests()
    done = scenario.scm(
        *scenario.upgrade_args(
            "3.2.2", "--unattended", "--host", h2.address, "--service", "gateway,config-server"
        )
    )
    assert done.returncode == 0, done.stdout + done.stderr
    after = scenario.digests()
    assert after[h1.name] == before[h1.name]
    assert after[h3.name] == before[h3.name]
    assert after[h2.name] != before[h2.name]
    assert scenario.version_on(h2, "sequoiacm-cloud/jars/sequoiacm-cloud-gateway-*.jar") == [
        "sequoiacm-cloud-gateway-3.2.2.jar"
    ]
    assert scenario.version_on(h2, "sequoiacm-cloud/jars/sequoiacm-cloud-authserver-*.jar") == [
        "sequoiacm-cloud-authserver-3.1.2.jar"
    ]
    assert scenario.version_on(h2, "sequoiacm-content/lib/sequoiacm-content-server-*.jar") == [
        "sequoiacm-content-server-3.1.2.jar"
    ]
    assert scenario.running()["host2"][8840] == "3.2.2"
    assert scenario.running()["host2"][8860] == "3.1.2"


def test_start_failure_rolls_back_that_pair_only(scenario: Scenario) -> None:
    h1, h2, h3 = scenario.cluster.hosts
    sandbox.set_fault(outer_install(h2), "content-server", "start-fail", version="3.2.2")
    done = scenario.scm(*scenario.upgrade_args("3.2.2", "--unattended"))
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("[ERROR]")]
    assert len(errors) == 1
    assert h2.address in errors[0] and "CONTENT_SERVER" in errors[0] and "restart" in errors[0]
    assert (
        "If you want to rollback successfully upgraded services, you need to specify the upgrade "
        "status file, file location:" in done.stdout
    )
    # the failed pair is back on 3.1.2 and its node runs again
    assert scenario.version_on(h2, "sequoiacm-content/lib/sequoiacm-content-server-*.jar") == [
        "sequoiacm-content-server-3.1.2.jar"
    ]
    running = scenario.running()
    assert running["host2"][15000] == "3.1.2"
    # earlier stages stay upgraded
    for name in ("host1", "host2", "host3"):
        assert running[name][8080] == "3.2.2"
        assert running[name][8840] == "3.2.2"
    # later stages never started
    assert running["host1"][8870] == "3.1.2"
    status = scenario.status_files()[0]
    replayed = replay(read_journal(status))
    assert replayed[(h2.address, "content-server")].state == "rolled_back"
    assert replayed[(h1.address, "gateway")].state == "verified"
    assert replayed[(h1.address, "admin-server")].state == "pending"
    assert "start" in (replayed[(h2.address, "content-server")].last_error or "")


def test_dry_run_and_json_plan_touch_nothing(scenario: Scenario) -> None:
    before = scenario.digests()
    done = scenario.scm(*scenario.upgrade_args("3.2.2", "--dry-run"))
    assert done.returncode == 0, done.stderr
    assert "Dry run: nothing was changed" in done.stdout
    assert "scmcloudctl.sh start --timeout 300 -p 8080" in done.stdout
    assert "stop nodes (scmcloudctl.sh stop -t gateway)" in done.stdout
    done = scenario.scm(*scenario.upgrade_args("3.2.2", "--dry-run", "--output", "json"))
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["release_version"] == "3.2.2"
    assert len(document["pairs"]) == 26
    first = document["pairs"][0]
    assert first["service"] == "service-center" and first["old_version"] == "3.1.2"
    assert first["nodes"] == [{"port": 8810, "running": True}]
    assert "SERVICE_TRACE" in document["absent"]
    assert any("backup" in step for step in next(iter(document["steps"].values())))
    assert scenario.digests() == before
    assert not scenario.status_files()


def test_service_already_at_new_version_is_skipped_with_warning(scenario: Scenario) -> None:
    h1 = scenario.cluster.hosts[0]
    done = scenario.scm(
        *scenario.upgrade_args("3.2.2", "--unattended", "--host", h1.address, "--service", "gateway")
    )
    assert done.returncode == 0, done.stdout + done.stderr
    done = scenario.scm(*scenario.upgrade_args("3.2.2", "--service", "gateway"), stdin="n\n")
    assert done.returncode == 0
    assert (
        "[WARN ] The following services are not older than the upgrade version 3.2.2 and will not be "
        f"upgraded:[[{h1.address}]:GATEWAY:3.2.2]"
    ) in done.stdout
    assert f"[{h1.address}]:GATEWAY" not in done.stdout.split("Prepare to upgrade")[-1]

