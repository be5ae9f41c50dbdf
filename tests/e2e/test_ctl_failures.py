"""A ctl tool whose JVM cannot start, on real test hosts: never read as "no node runs".

The reference (Nodes): such a ctl prints `Error occurred during initialization of VM` on
stderr and exits 1 with no `Total:` line. The check must refuse the host (exit 2, one
[ERROR] line with the tool's stderr, nothing changed); a JVM that fails once is retried.
Outcomes are judged from outside: tree digests and each node's health over HTTP.
"""

from __future__ import annotations

import pytest

from scmflow import sandbox
from tests.e2e.sandbox_cluster import Scenario, outer_install

pytestmark = pytest.mark.e2e

OLD, NEW = "3.1.2", "3.2.2"


@pytest.fixture
def scenario(standard_scenario: Scenario) -> Scenario:
    return standard_scenario


def test_a_ctl_whose_jvm_cannot_start_fails_the_check_and_changes_nothing(scenario: Scenario) -> None:
    host = scenario.cluster.hosts[1]
    # content-server's ctl (scmctl.sh): its node must not pass for stopped.
    sandbox.set_fault(outer_install(host), "content-server", "jvm-fail")
    digests, running = scenario.digests(), scenario.running()
    done = scenario.scm(*scenario.upgrade_args(NEW, "--unattended"))
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("[ERROR]")]
    assert len(errors) == 1, done.stderr
    assert host.address in errors[0] and "Error occurred during initialization of VM" in errors[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert scenario.digests() == digests
    assert scenario.running() == running
    assert all(version == OLD for ports in running.values() for version in ports.values())


def test_a_jvm_that_fails_once_is_retried_and_the_upgrade_reaches_every_node(scenario: Scenario) -> None:
    host = scenario.cluster.hosts[0]
    sandbox.set_fault(outer_install(host), "content-server", "jvm-fail", times=1)
    before = scenario.running()
    done = scenario.scm(*scenario.upgrade_args(NEW, "--unattended"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert sandbox.fault_times_left(outer_install(host), "content-server", "jvm-fail") == 0
    after = scenario.running()
    # Every node that ran before answers (from the control side) with the new version.
    assert {name: sorted(ports) for name, ports in after.items()} == {
        name: sorted(ports) for name, ports in before.items()
    }
    assert all(version == NEW for ports in after.values() for version in ports.values()), after
