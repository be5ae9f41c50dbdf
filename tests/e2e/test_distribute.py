"""End-to-end: package distribution sends only what a host lacks, over one connection per host."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scmflow.actions import RemoteLayout
from scmflow.catalog import load_catalog
from scmflow.distribute import distribute
from scmflow.errors import RemoteError
from scmflow.plan import Pair
from scmflow.release import Release, load_release
from scmflow.sandbox import NodeSpec, Topology
from scmflow.session.base import Session, Upload
from scmflow.session.local import LocalSession
from scmflow.session.ssh import connect_all
from scmflow.session.targets import SSHOptions, SSHTarget
from tests.e2e.sandbox_cluster import Scenario
from tests.hosts import TestCluster, TestHost

pytestmark = pytest.mark.e2e

OLD, NEW = "3.1.2", "3.2.2"
SERVICES = {"host1": ("gateway", "content-server", "daemon"), "host2": ("gateway",)}


def _pairs(hosts: list[TestHost]) -> dict[str, list[Pair]]:
    catalog = load_catalog()
    return {
        h.address: [
            Pair(h.address, s, catalog.get(s).printed, "3.1.2", "3.2.2", ()) for s in SERVICES[h.name]
        ]
        for h in hosts
    }


def _outer(host: TestHost, remote: str) -> Path:
    """A path under the host's /opt/upgrade, as seen from the control machine."""
    return host.opt_dirs["/opt/upgrade"] / Path(remote).relative_to("/opt/upgrade")


def _upgrade_files(host: TestHost, layout: RemoteLayout) -> dict[str, tuple[bytes, int]]:
    """Each file of the host's upgrade dir: (bytes, mtime in ns)."""
    files = sorted(_outer(host, layout.upgrade_dir).iterdir())
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


@pytest.fixture
def sessions(cluster3: TestCluster) -> Iterator[tuple[dict[str, Session], list[int]]]:
    """Root sessions to host1 and host2, and how many connections each had accepted before."""
    hosts = cluster3.hosts[:2]
    before = [h.accepted_connections() for h in hosts]
    options = SSHOptions(
        known_hosts=(cluster3.known_hosts,), key_filenames=(cluster3.client_key,), use_agent=False
    )
    opened = connect_all([SSHTarget(h.address) for h in hosts], options)
    try:
        yield opened, before
    finally:
        for session in opened.values():
            session.close()


def test_rerun_sends_nothing_and_a_damaged_package_alone_is_resent(
    cluster3: TestCluster,
    releases: dict[str, Path],
    sessions: tuple[dict[str, Session], list[int]],
    tmp_path: Path,
) -> None:
    hosts = cluster3.hosts[:2]
    opened, before = sessions
    catalog = load_catalog()
    release: Release = load_release(
        releases["3.2.2"], catalog, ["gateway", "content-server", "daemon"], work_dir=tmp_path / "work"
    )
    run = uuid.uuid4().hex
    layout = RemoteLayout(
        install_path="/opt/sequoiacm",
        install_user="scmadmin",
        upgrade_dir=f"/opt/upgrade/sequoiacm/upgrade-{run}",
        backup_dir=f"/opt/backup/sequoiacm/backup-{run}",
    )
    pairs = _pairs(hosts)
    reported: dict[str, int] = {}

    def send(*, fresh: bool) -> dict[str, int]:
        reported.clear()

        def on_bytes(host: str, sent: int, total: int) -> None:
            reported[host] = max(reported.get(host, 0), sent)

        return distribute(
            opened, pairs, release, layout,
            login_users=dict.fromkeys(opened, "root"), fresh=fresh, parallel=16,
            on_host_start=lambda host: None, on_bytes=on_bytes,
        )

    h1, h2 = (h.address for h in hosts)
    sizes = {s: release.package_for(s).size for s in ("gateway", "content-server", "daemon")}
    first = send(fresh=True)
    assert first == {h1: sum(sizes.values()), h2: sizes["gateway"]}
    assert reported == first
    sent_files = {h.name: _upgrade_files(h, layout) for h in hosts}
    for host in hosts:
        packages = [release.package_for(s) for s in SERVICES[host.name]]
        expected = {p.name: p.path.read_bytes() for p in packages}
        assert {name: data for name, (data, _) in sent_files[host.name].items()} == expected

    assert send(fresh=False) == {h1: 0, h2: 0}
    assert not any(reported.values())
    assert {h.name: _upgrade_files(h, layout) for h in hosts} == sent_files

    daemon = release.package_for("daemon")
    damaged = _outer(hosts[0], layout.package_path(daemon.name))
    damaged.write_bytes(b"not the package")
    assert send(fresh=False) == {h1: daemon.size, h2: 0}
    assert damaged.read_bytes() == daemon.path.read_bytes()
    now = {h.name: _upgrade_files(h, layout) for h in hosts}
    assert now["host2"] == sent_files["host2"]
    unchanged = {n: v for n, v in now["host1"].items() if n != daemon.name}
    assert unchanged == {n: v for n, v in sent_files["host1"].items() if n != daemon.name}
    assert [h.accepted_connections() - b for h, b in zip(hosts, before, strict=True)] == [1, 1]


def _lean_topology() -> Topology:
    return Topology(
        services=("service-center", "gateway", "daemon"),
        nodes=(NodeSpec("service-center", 8810), NodeSpec("gateway", 8080), NodeSpec("daemon", None)),
    )


@pytest.fixture
def lean(cluster3: TestCluster, releases: dict[str, Path], tmp_path: Path) -> Iterator[Scenario]:
    """Three hosts with a lean 3.1.2 install running."""
    s = Scenario(cluster=cluster3, releases=releases, work=tmp_path)
    cluster3.home(s.home)
    s.cleanup()
    try:
        s.install_all("3.1.2", _lean_topology())
        s.config()
        yield s
    finally:
        s.cleanup()


def test_each_command_uses_one_connection_per_host(lean: Scenario) -> None:
    hosts = lean.cluster.hosts

    def connections_during(*args: str) -> list[int]:
        before = [h.accepted_connections() for h in hosts]
        done = lean.scm(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        return [h.accepted_connections() - b for h, b in zip(hosts, before, strict=True)]

    assert connections_during(*lean.upgrade_args("3.2.2", "--dry-run")) == [1, 1, 1]
    # check, locks, package send, every pair's steps, unlock: all over the same connection
    assert connections_during(*lean.upgrade_args("3.2.2", "--unattended", "--parallel", "3")) == [1, 1, 1]
    (status,) = lean.status_files()
    assert lean.version_on(hosts[0], "sequoiacm-cloud/jars/sequoiacm-cloud-gateway-*.jar") == [
        "sequoiacm-cloud-gateway-3.2.2.jar"
    ]
    rollback = ["cluster", "--rollback", "--upgrade-status-path", str(status), "--status-dir",
                str(lean.status_dir), "--unattended"]
    assert connections_during(*rollback) == [1, 1, 1]
    assert lean.version_on(hosts[0], "sequoiacm-cloud/jars/sequoiacm-cloud-gateway-*.jar") == [
        "sequoiacm-cloud-gateway-3.1.2.jar"
    ]


def test_one_transfer_stores_files_in_order_and_stops_at_the_first_bad_one(
    sessions: tuple[dict[str, Session], list[int]], cluster3: TestCluster, tmp_path: Path
) -> None:
    opened, _ = sessions
    host = cluster3.hosts[0]
    session = opened[host.address]
    files = []
    for name, size in (("a.bin", 5 * 1024 * 1024 + 3), ("b.bin", 0), ("c.bin", 70_000)):
        path = tmp_path / name
        path.write_bytes(os.urandom(size))
        path.chmod(0o640)
        files.append(path)
    run = uuid.uuid4().hex
    remote = f"/opt/upgrade/put-{run}"
    session.run(["mkdir", remote])
    seen: list[tuple[int, int]] = []
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    uploads = [Upload(f, f"{remote}/{f.name}", d) for f, d in zip(files, digests, strict=True)]
    session.put_files(uploads, progress=lambda sent, total: seen.append((sent, total)))
    total = sum(f.stat().st_size for f in files)
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    landed = _outer(host, remote)
    assert sorted(p.name for p in landed.iterdir()) == ["a.bin", "b.bin", "c.bin"]
    for f in files:
        assert (landed / f.name).read_bytes() == f.read_bytes()
        assert oct((landed / f.name).stat().st_mode & 0o777) == "0o640"

    bad = [
        Upload(files[2], f"{remote}/first.bin", digests[2]),
        Upload(files[0], f"{remote}/second.bin", "0" * 64),
        Upload(files[1], f"{remote}/third.bin", digests[1]),
    ]
    mismatch = f"checksum mismatch for {remote}/second.bin: expected sha256 0+, got "
    with pytest.raises(RemoteError, match=mismatch):
        session.put_files(bad)
    with pytest.raises(RemoteError, match="cannot write /opt/no-such-dir/x.bin: No such file or directory"):
        session.put_files([Upload(files[0], "/opt/no-such-dir/x.bin")])
    # the good file before the bad one is kept; nothing after it is written; no side files stay
    assert sorted(p.name for p in landed.iterdir()) == ["a.bin", "b.bin", "c.bin", "first.bin"]


def test_local_distribution_skips_what_is_already_there(releases: dict[str, Path], tmp_path: Path) -> None:
    catalog = load_catalog()
    release = load_release(releases["3.2.2"], catalog, ["gateway", "daemon"], work_dir=tmp_path / "work")
    layout = RemoteLayout(
        install_path=str(tmp_path / "install"),
        install_user="root",
        upgrade_dir=str(tmp_path / "upgrade" / "run"),
        backup_dir=str(tmp_path / "backup" / "run"),
        admin_user=None,
    )
    services = ("gateway", "daemon")
    pairs = {"localhost": [Pair("localhost", s, catalog.get(s).printed, OLD, NEW, ()) for s in services]}
    session = LocalSession()
    sizes = {s: release.package_for(s).size for s in services}

    def send(*, fresh: bool) -> dict[str, int]:
        return distribute(
            {"localhost": session}, pairs, release, layout, login_users={"localhost": "root"},
            fresh=fresh, parallel=1, on_host_start=lambda host: None,
        )

    assert send(fresh=True) == {"localhost": sum(sizes.values())}
    daemon = Path(layout.package_path(release.package_for("daemon").name))
    assert daemon.read_bytes() == release.package_for("daemon").path.read_bytes()
    assert send(fresh=False) == {"localhost": 0}
    daemon.unlink()
    assert send(fresh=False) == {"localhost": sizes["daemon"]}
    assert daemon.read_bytes() == release.package_for("daemon").path.read_bytes()
