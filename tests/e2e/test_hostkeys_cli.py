"""Host keys as the operator meets them: `scm.py cluster --upgrade --dry-run` on a real sshd host."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scmflow.sandbox import NodeSpec, Topology
from tests.e2e.conftest import ClusterFactory
from tests.e2e.sandbox_cluster import Scenario
from tests.hosts import TestCluster, TestHost

pytestmark = pytest.mark.e2e

SMALL = Topology(services=("config-server",), nodes=(NodeSpec("config-server", 8840, running=False),))


@pytest.fixture(scope="module")
def cluster1(host_cluster_factory: ClusterFactory) -> TestCluster:
    """One test host: host keys need no more."""
    return host_cluster_factory(1)


@pytest.fixture
def scenario(cluster1: TestCluster, releases: dict[str, Path], tmp_path: Path) -> Iterator[Scenario]:
    """3.1.2 config-server (no running node) on the host; the operator's HOME knows no host key."""
    s = Scenario(cluster=cluster1, releases=releases, work=tmp_path)
    cluster1.home(s.home)
    (s.home / ".ssh" / "known_hosts").write_text("")
    s.cleanup()
    try:
        s.install(cluster1.hosts[0], "3.1.2", SMALL)
        s.config()
        yield s
    finally:
        s.cleanup()


def _fingerprint(host: TestHost) -> str:
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{host.host_key_path}.pub"],
        capture_output=True, text=True, check=True,
    ).stdout
    return listed.split()[1]


def _errors(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("[ERROR]")]


def _dry_run(s: Scenario, *extra: str) -> subprocess.CompletedProcess[str]:
    return s.scm(*s.upgrade_args("3.2.2", "--dry-run", *extra), timeout=120)


def test_unknown_key_is_one_error_line_and_changes_nothing(scenario: Scenario) -> None:
    host = scenario.cluster.hosts[0]
    before = scenario.digests()
    done = _dry_run(scenario)
    assert done.returncode != 0
    [error] = _errors(done)
    offered = f"ssh-ed25519 key {_fingerprint(host)}"
    assert f"[{host.address}] unknown host key for {host.address}: {offered}" in error
    assert f"`ssh-keyscan -p 22 {host.address} >> ~/.ssh/known_hosts`" in error
    assert "--accept-new-host-keys" in error
    assert "Traceback" not in done.stderr
    assert "Prepare to upgrade services" not in done.stdout
    assert (scenario.home / ".ssh" / "known_hosts").read_text() == ""
    assert scenario.digests() == before
    assert not scenario.status_files()


def test_accept_new_host_keys_records_the_key_and_proceeds(scenario: Scenario) -> None:
    host = scenario.cluster.hosts[0]
    known = scenario.home / ".ssh" / "known_hosts"
    done = _dry_run(scenario, "--accept-new-host-keys")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"[INFO ] [{host.address}]:CONFIG_SERVER:3.1.2 to 3.2.2" in done.stdout
    assert "[INFO ] Dry run: nothing was changed" in done.stdout
    assert known.read_text() == host.known_hosts_line()
    found = subprocess.run(
        ["ssh-keygen", "-F", host.address, "-f", str(known)], capture_output=True, text=True
    )
    assert found.returncode == 0 and host.host_public_key in found.stdout
    # once recorded, the key is simply trusted: no flag needed, nothing appended
    again = _dry_run(scenario)
    assert again.returncode == 0, again.stdout + again.stderr
    assert known.read_text() == host.known_hosts_line()


def test_changed_key_is_refused_even_with_accept_new(scenario: Scenario, tmp_path: Path) -> None:
    host = scenario.cluster.hosts[0]
    impostor = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    kind, blob = (tmp_path / "impostor.pub").read_text().split()[:2]
    known = scenario.home / ".ssh" / "known_hosts"
    known.write_text(f"{host.address} {kind} {blob}\n")
    before = scenario.digests()
    done = _dry_run(scenario, "--accept-new-host-keys")
    assert done.returncode != 0
    [error] = _errors(done)
    assert f"[{host.address}] host key for {host.address} has changed" in error
    assert _fingerprint(host) in error
    assert f"{known}:1" in error
    assert known.read_text() == f"{host.address} {kind} {blob}\n"
    assert scenario.digests() == before
    assert not scenario.status_files()
