"""The sandbox SequoiaCM: release layout, install, real node processes, faults, digests."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scmflow.catalog import load_catalog, parse_version
from scmflow.release import load_release
from scmflow.sandbox import (
    NodeSpec,
    SandboxError,
    Topology,
    build_release,
    clear_fault,
    clear_faults,
    fault_times_left,
    free_ports,
    health,
    install,
    kill_nodes,
    local_run,
    local_run_as,
    make_decoy_java,
    make_jdk,
    set_fault,
    start_topology,
    stop_all,
    tree_digest,
)
from scmflow.sandbox.control import SYSTEM_PATH
from scmflow.sandbox.payload import scmsandbox as ctl_package

OLD, NEW = "3.1.2", "3.2.2"
CLOUD = "sequoiacm-cloud"
CLOUD_JARS = ("servicecenter", "servicetrace", "authserver", "gateway", "adminserver")


@dataclass(frozen=True)
class World:
    """Releases and a JDK shared by the module, in a dir the install user can traverse."""

    root: Path
    old: Path
    new: Path
    jdk: Path


@dataclass(frozen=True)
class Host:
    """One installed sandbox host: its path and its node ports."""

    path: Path
    topology: Topology
    sc: int
    gw: int
    cs: int
    jdk: Path

    def ctl(
        self, rel: str, *args: str, java: bool = True, path: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a ctl script of the install (stdout/stderr captured: start must not hang).

        As the vendor's upgrader does, JAVA_HOME is set and its bin/ comes first on PATH,
        unless `path` gives the whole PATH.
        """
        # nor does a host's login environment keep Python from writing bytecode
        env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "PYTHONDONTWRITEBYTECODE")}
        if java:
            env["JAVA_HOME"] = str(self.jdk)
        env["PATH"] = path if path is not None else f"{self.jdk}/bin:{SYSTEM_PATH}"
        return subprocess.run(
            [str(self.path / rel), *args], env=env, capture_output=True, text=True, timeout=30
        )


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="scmflow-sandbox-test-"))
    root.chmod(0o755)  # the non-root test's install user must reach the install
    try:
        yield World(
            root=root,
            old=build_release(root / "rel-old", OLD),
            new=build_release(root / "rel-new", NEW),
            jdk=make_jdk(root / "jdk"),
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _topology(sc: int, gw: int, cs: int) -> Topology:
    return Topology(
        services=(
            "service-center", "gateway", "config-server", "content-server",
            "daemon", "scmsystools", "non-service",
        ),
        nodes=(
            NodeSpec("service-center", sc, running=True),
            NodeSpec("gateway", gw, running=False),
            NodeSpec("content-server", cs, running=True),
            NodeSpec("daemon", None, running=True),
        ),
    )


@pytest.fixture
def host(world: World, request: pytest.FixtureRequest) -> Iterator[Host]:
    base = world.root / f"host-{request.node.name}"
    sc, gw, cs = free_ports(3)
    topology = _topology(sc, gw, cs)
    path = base / "sequoiacm"
    install(world.old, path, topology, customer_jars=True)
    try:
        yield Host(path, topology, sc, gw, cs, world.jdk)
    finally:
        for where in (path, base / "moved"):
            if where.exists():
                kill_nodes(where)
        shutil.rmtree(base, ignore_errors=True)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _members(tarball: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(tarball) as tar:
        return {m.name: m for m in tar.getmembers()}


def _files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------- release


def test_release_has_the_real_layout(world: World, tmp_path: Path) -> None:
    packages = sorted(p.name for p in (world.old / "package").iterdir())
    assert packages == sorted(
        f"{name}-{OLD}-release.tar.gz"
        for name in (
            "sequoiacm-cloud", "sequoiacm-config", "sequoiacm-content", "sequoiacm-schedule",
            "sequoiacm-om", "sequoiacm-mq", "sequoiacm-fulltext", "sequoiacm-s3", "daemon",
            "sequoiacm-sys-tools",
        )
    )
    old_cloud = _members(world.old / "package" / f"{CLOUD}-{OLD}-release.tar.gz")
    new_cloud = _members(world.new / "package" / f"{CLOUD}-{NEW}-release.tar.gz")
    old_jars = {n for n in old_cloud if n.startswith(f"{CLOUD}/jars/") and n.endswith(".jar")}
    assert old_jars == {
        f"{CLOUD}/jars/sequoiacm-cloud-{j}-{OLD}.jar" for j in CLOUD_JARS if j != "servicetrace"
    } | {f"{CLOUD}/jars/sequoiacm-cloud-tools-{OLD}.jar"}
    assert f"{CLOUD}/jars/sequoiacm-cloud-servicetrace-{NEW}.jar" in new_cloud
    assert old_cloud[f"{CLOUD}/bin/scmcloudctl.sh"].mode == 0o755
    assert any(re.fullmatch(rf"{CLOUD}/[^/]+\.py", n) for n in old_cloud)
    for tarball in (world.old / "package").iterdir():
        members = _members(tarball)
        top = tarball.name.removesuffix(f"-{OLD}-release.tar.gz")
        assert all(n == top or n.startswith(f"{top}/") for n in members), tarball.name
        assert not any(n.split("/")[1:2] == ["conf"] for n in members), tarball.name
    content = _members(world.old / "package" / f"sequoiacm-content-{OLD}-release.tar.gz")
    assert f"sequoiacm-content/lib/sequoiacm-content-server-{OLD}.jar" in content
    assert (world.old / "driver" / f"sequoiacm-driver-{OLD}-release.tar.gz").is_file()
    for folder in ("doc", "tools", "sequoiacm-deploy/conf"):
        assert any((world.old / folder).iterdir()), folder
    # The project's own release reader accepts it.
    catalog = load_catalog()
    release = load_release(world.new, catalog, catalog.names(), work_dir=tmp_path)
    assert release.version == NEW
    assert release.packages["gateway"].path.name == f"{CLOUD}-{NEW}-release.tar.gz"


def test_release_is_deterministic_per_version(world: World, tmp_path: Path) -> None:
    again = build_release(tmp_path / "again", OLD)
    assert _files(again) == _files(world.old)
    old_gw = world.old / "package" / f"{CLOUD}-{OLD}-release.tar.gz"
    new_gw = world.new / "package" / f"{CLOUD}-{NEW}-release.tar.gz"
    assert old_gw.read_bytes() != new_gw.read_bytes()
    with pytest.raises(SandboxError, match="already exists"):
        build_release(tmp_path / "again", OLD)


def test_pad_bytes_make_big_incompressible_tarballs(tmp_path: Path) -> None:
    root = build_release(tmp_path, NEW, services=["gateway", "config-server"], pad_bytes=4 << 20)
    tarballs = sorted((root / "package").iterdir())
    assert [t.name for t in tarballs] == [
        f"sequoiacm-cloud-{NEW}-release.tar.gz", f"sequoiacm-config-{NEW}-release.tar.gz"
    ]
    assert sum(t.stat().st_size for t in tarballs) >= 4 << 20
    assert not (root / "doc").exists()


# ---------------------------------------------------------------- install


def test_install_lays_out_selected_services(host: Host) -> None:
    jars = sorted(p.name for p in (host.path / CLOUD / "jars").iterdir())
    assert jars == [
        f"sequoiacm-cloud-gateway-{OLD}.jar",
        f"sequoiacm-cloud-servicecenter-{OLD}.jar",
        f"sequoiacm-cloud-tools-{OLD}.jar",
    ]
    catalog = load_catalog()
    for name in ("service-center", "gateway", "content-server", "daemon", "scmsystools",
                 "non-service", "config-server"):
        service = catalog.get(name)
        found = list((host.path / service.dir).glob(service.version_file))
        assert [parse_version(f.name) for f in found] == [OLD], name
    for name in ("auth-server", "admin-server", "service-trace", "schedule-server"):
        service = catalog.get(name)
        assert not list((host.path / service.dir).glob(service.version_file)), name
    conf = host.path / CLOUD / "conf" / "gateway" / str(host.gw) / "application.properties"
    assert f"server.port={host.gw}" in conf.read_text()
    lib = host.path / "sequoiacm-content" / "lib"
    assert [p.name for p in (lib / "hbase_transwarp").iterdir()]
    assert [p.name for p in (lib / "hdfs_transwarp").iterdir()]
    assert not (host.path / "sequoiacm-schedule").exists()


def test_install_rejects_inconsistent_topologies(world: World, tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="does not ship service-trace"):
        install(world.old, tmp_path / "a", Topology(("service-trace",)))
    with pytest.raises(SandboxError, match="used by two nodes"):
        install(world.old, tmp_path / "b", Topology(
            ("gateway", "auth-server"),
            (NodeSpec("gateway", 9000), NodeSpec("auth-server", 9000)),
        ))
    with pytest.raises(SandboxError, match="without a port"):
        install(world.old, tmp_path / "c", Topology(("daemon",), (NodeSpec("daemon", 1),)))
    with pytest.raises(SandboxError, match="not installed"):
        install(world.old, tmp_path / "d", Topology(("gateway",), (NodeSpec("om-server", 2),)))


def test_make_jdk_answers_version_like_java(world: World) -> None:
    out = subprocess.run(
        [str(world.jdk / "bin" / "java"), "-version"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert out.stderr.splitlines()[0] == 'java version "1.8.0_221"'


# ---------------------------------------------------------------- nodes


def test_nodes_start_list_answer_health_and_stop(host: Host) -> None:
    started = time.monotonic()
    start_topology(host.path, host.topology, java_home=host.jdk, run=local_run)
    assert time.monotonic() - started < 5
    listing = host.ctl(f"{CLOUD}/bin/scmcloudctl.sh", "list", "-m", "local")
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    match = re.fullmatch(rf"SERVICE-CENTER\({host.sc}\) \((\d+)\)", lines[0])
    assert match is not None, lines
    assert lines[1:] == [f"GATEWAY({host.gw}) (-)", "Total:2"]
    sc_pid = int(match.group(1))
    assert health("127.0.0.1", host.sc, 2) == {
        "status": "UP", "service": "service-center", "port": host.sc, "version": OLD,
        "pid": sc_pid,
    }
    assert health("127.0.0.1", host.cs, 2)["service"] == "content-server"
    assert not _port_open(host.gw)

    # Starting a running node changes nothing; a stopped one starts, detached.
    again = host.ctl(f"{CLOUD}/bin/scmcloudctl.sh", "start", "--timeout", "10", "-p", str(host.sc))
    assert again.returncode == 0
    assert health("127.0.0.1", host.sc, 2)["pid"] == sc_pid
    gw = host.ctl(f"{CLOUD}/bin/scmcloudctl.sh", "start", "--timeout", "10", "-p", str(host.gw))
    assert gw.returncode == 0, gw.stderr
    assert health("127.0.0.1", host.gw, 2)["service"] == "gateway"

    stop = host.ctl(f"{CLOUD}/bin/scmcloudctl.sh", "stop", "-t", "gateway")
    assert stop.returncode == 0, stop.stderr
    assert not _port_open(host.gw)
    assert _alive(sc_pid)
    assert host.ctl(f"{CLOUD}/bin/scmcloudctl.sh", "stop", "-t", "gateway").returncode == 0
    assert host.ctl("sequoiacm-content/bin/scmctl.sh", "stop", "--all").returncode == 0
    assert not _port_open(host.cs)
    assert host.ctl(f"{CLOUD}/bin/scmcloudctl.sh", "stop", "-t", "service-center").returncode == 0
    assert not _alive(sc_pid)
    final = host.ctl(f"{CLOUD}/bin/scmcloudctl.sh", "list", "-m", "local").stdout.splitlines()
    assert final == [f"SERVICE-CENTER({host.sc}) (-)", f"GATEWAY({host.gw}) (-)", "Total:2"]


def test_single_node_start_is_fast(host: Host) -> None:
    started = time.monotonic()
    out = host.ctl(f"{CLOUD}/bin/scmcloudctl.sh", "start", "--timeout", "30", "-p", str(host.gw))
    assert out.returncode == 0, out.stderr
    # returns once the node listens, not after the timeout (the bound is loose: a busy
    # machine may run three test workers on two cores)
    assert time.monotonic() - started < 10


def _http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def test_node_answers_http_like_a_web_service(host: Host) -> None:
    out = host.ctl(f"{CLOUD}/bin/scmcloudctl.sh", "start", "--timeout", "10", "-p", str(host.gw))
    assert out.returncode == 0, out.stderr
    # a client that connects and says nothing must not keep the node from answering others
    with socket.create_connection(("127.0.0.1", host.gw), timeout=5):
        assert health("127.0.0.1", host.gw, 1)["service"] == "gateway"
    head = _http(host.gw, b"HEAD /internal/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ") and head.endswith(b"\r\n\r\n")
    assert _http(host.gw, b"GET /nothing HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 404 ")
    assert _http(host.gw, b"GET /health HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 404 ")
    assert _http(host.gw, b"POST /internal/v1/health HTTP/1.0\r\n\r\n").startswith(
        b"HTTP/1.0 405 "
    )
    answer = _http(host.gw, b"GET /internal/v1/health?x=1 HTTP/1.0\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["service"] == "gateway"


def test_ctl_runs_through_a_relative_path(host: Host) -> None:
    bin_dir = host.path / CLOUD / "bin"
    out = subprocess.run(
        ["./scmcloudctl.sh", "list", "-m", "local"], cwd=bin_dir, capture_output=True, text=True,
        env={**os.environ, "JAVA_HOME": str(host.jdk)}, check=False,
    )
    assert out.stdout.splitlines()[-1] == "Total:2", out.stderr
    out = subprocess.run(
        ["bash", "scmcloudctl.sh", "list", "-m", "local"], cwd=bin_dir, capture_output=True,
        text=True,
        env={**os.environ, "JAVA_HOME": str(host.jdk)}, check=False,
    )
    assert out.stdout.splitlines()[-1] == "Total:2", out.stderr


def test_list_without_nodes_exits_non_zero(host: Host) -> None:
    out = host.ctl("sequoiacm-config/bin/confctl.sh", "list", "-m", "local")
    assert (out.returncode, out.stdout) == (1, "Total:0\n")
    assert host.ctl("sequoiacm-config/bin/confctl.sh", "stop", "-t", "all").returncode == 0


def test_ctl_scripts_need_java_home(host: Host, tmp_path: Path) -> None:
    out = host.ctl(f"{CLOUD}/bin/scmcloudctl.sh", "list", java=False)
    assert out.returncode == 1
    assert "JAVA_HOME" in out.stderr
    env = {**os.environ, "JAVA_HOME": str(tmp_path)}
    bad = subprocess.run(
        [str(host.path / CLOUD / "bin" / "scmcloudctl.sh"), "list"],
        env=env, capture_output=True, text=True,
    )
    assert bad.returncode == 1
    assert "not executable" in bad.stderr


def test_started_version_is_read_from_the_jar(host: Host, world: World) -> None:
    jars = host.path / CLOUD / "jars"
    with tarfile.open(world.new / "package" / f"{CLOUD}-{NEW}-release.tar.gz") as tar:
        for name in ("gateway", "tools"):
            member = tar.getmember(f"{CLOUD}/jars/sequoiacm-cloud-{name}-{NEW}.jar")
            extracted = tar.extractfile(member)
            assert extracted is not None
            (jars / f"sequoiacm-cloud-{name}-{NEW}.jar").write_bytes(extracted.read())
        (jars / f"sequoiacm-cloud-gateway-{OLD}.jar").unlink()
    # An old tools jar left beside the new one breaks the ctl script, as in the real tools.
    out = host.ctl(f"{CLOUD}/bin/scmcloudctl.sh", "start", "-p", str(host.gw))
    assert (out.returncode, out.stdout) == (8, "")
    assert "exactly one" in out.stderr
    (jars / f"sequoiacm-cloud-tools-{OLD}.jar").unlink()
    out = host.ctl(f"{CLOUD}/bin/scmcloudctl.sh", "start", "-p", str(host.gw))
    assert out.returncode == 0, out.stderr
    assert health("127.0.0.1", host.gw, 2)["version"] == NEW


# ---------------------------------------------------------------- daemon


def test_daemon_start_status_stop(host: Host) -> None:
    crontab = host.path / "daemon" / "conf" / ".crontab.properties"
    assert host.ctl("daemon/bin/scmd.sh", "status").returncode == 1
    assert host.ctl("daemon/bin/scmd.sh", "start").returncode == 0
    line = crontab.read_text().strip()
    match = re.fullmatch(r"linuxCron=\* \* \* \* \* nohup (.+) > /dev/null 2>&1 &", line)
    assert match is not None, line
    command = match.group(1).split()
    jar = host.path.resolve() / "daemon" / "jars" / f"sequoiacm-daemon-tools-{OLD}.jar"
    assert command[1:] == [
        str(host.path.resolve() / "daemon" / "bin" / "scmdaemon.py"), "--jar", str(jar)
    ]
    pids = [
        int(p.name) for p in Path("/proc").iterdir()
        if p.name.isdigit() and _cmdline(p) == command and _alive(int(p.name))
    ]
    assert len(pids) == 1
    status = host.ctl("daemon/bin/scmd.sh", "status")
    assert (status.returncode, status.stdout) == (0, f"DAEMON ({pids[0]})\n")
    assert host.ctl("daemon/bin/scmd.sh", "start").returncode == 0
    assert host.ctl("daemon/bin/scmd.sh", "status").stdout == f"DAEMON ({pids[0]})\n"
    assert host.ctl("daemon/bin/scmd.sh", "stop").returncode == 0
    assert not crontab.exists()
    assert not _alive(pids[0])
    assert host.ctl("daemon/bin/scmd.sh", "status").returncode == 1
    assert host.ctl("daemon/bin/scmd.sh", "stop").returncode == 0


def _cmdline(proc: Path) -> list[str]:
    try:
        return (proc / "cmdline").read_bytes().decode().rstrip("\0").split("\0")
    except OSError:
        return []


# ---------------------------------------------------------------- faults


def test_faults_apply_only_to_their_service_and_version(host: Host) -> None:
    cloud = f"{CLOUD}/bin/scmcloudctl.sh"
    set_fault(host.path, "gateway", "start-fail", version=NEW)
    set_fault(host.path, "service-center", "start-fail")
    assert host.ctl(cloud, "start", "-p", str(host.gw)).returncode == 0
    failed = host.ctl(cloud, "start", "-p", str(host.sc))
    assert failed.returncode == 8
    assert "injected start failure" in failed.stderr
    assert not _port_open(host.sc)

    set_fault(host.path, "gateway", "stop-fail", version=OLD)
    assert host.ctl(cloud, "stop", "-t", "gateway").returncode == 8
    assert _port_open(host.gw)
    set_fault(host.path, "daemon", "start-fail", version=OLD)
    assert host.ctl("daemon/bin/scmd.sh", "start").returncode == 8
    clear_faults(host.path)
    assert host.ctl(cloud, "stop", "-t", "gateway").returncode == 0
    assert not _port_open(host.gw)
    assert host.ctl("daemon/bin/scmd.sh", "start").returncode == 0


def test_slow_start_fault_delays_the_node(host: Host) -> None:
    cloud = f"{CLOUD}/bin/scmcloudctl.sh"
    set_fault(host.path, "gateway", "start-slow", version=OLD, seconds=0.8)
    late = host.ctl(cloud, "start", "--timeout", "0.3", "-p", str(host.gw))
    assert late.returncode == 8
    assert "not up within" in late.stderr
    assert not _port_open(host.gw)
    assert f"GATEWAY({host.gw}) (-)" in host.ctl(cloud, "list", "-m", "local").stdout
    started = time.monotonic()
    assert host.ctl(cloud, "start", "--timeout", "5", "-p", str(host.gw)).returncode == 0
    assert time.monotonic() - started >= 0.8
    set_fault(host.path, "gateway", "start-slow", version=NEW, seconds=5)
    assert host.ctl(cloud, "stop", "-t", "gateway").returncode == 0
    assert host.ctl(cloud, "start", "--timeout", "5", "-p", str(host.gw)).returncode == 0


# ---------------------------------------------------------------- digests and cleanup


def test_tree_digest_ignores_runtime_files_only(host: Host) -> None:
    before = tree_digest(host.path)
    start_topology(host.path, host.topology, java_home=host.jdk, run=local_run)
    set_fault(host.path, "gateway", "start-fail")
    assert list((host.path / CLOUD / "log").rglob("node.pid"))
    stop_all(host.path, host.jdk, local_run)
    assert tree_digest(host.path) == before
    conf = host.path / CLOUD / "conf" / "gateway" / str(host.gw) / "application.properties"
    conf.chmod(0o600)
    assert tree_digest(host.path) != before
    conf.chmod(0o644)
    assert tree_digest(host.path) == before
    conf.write_text(conf.read_text() + "x=1\n")
    assert tree_digest(host.path) != before


def test_stop_all_and_kill_nodes_leave_nothing_running(host: Host) -> None:
    start_topology(host.path, host.topology, java_home=host.jdk, run=local_run)
    stop_all(host.path, host.jdk, local_run)
    assert not _port_open(host.sc) and not _port_open(host.cs)
    assert host.ctl("daemon/bin/scmd.sh", "status").returncode == 1
    start_topology(host.path, host.topology, java_home=host.jdk, run=local_run)
    killed = kill_nodes(host.path)
    assert len(killed) == 3
    assert not any(_alive(pid) for pid in killed)
    assert not _port_open(host.sc)


def test_scripts_follow_the_install_when_it_moves(host: Host) -> None:
    moved = host.path.parent / "moved"
    host.path.rename(moved)
    topology = host.topology
    start_topology(moved, topology, java_home=host.jdk, run=local_run)
    assert health("127.0.0.1", host.sc, 2)["version"] == OLD
    crontab = (moved / "daemon" / "conf" / ".crontab.properties").read_text()
    assert str(moved) in crontab
    stop_all(moved, host.jdk, local_run)
    assert not _port_open(host.sc)


def _can_unshare_mounts() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare_mounts(), reason="needs root and mount namespaces")
def test_scripts_work_bind_mounted_elsewhere(host: Host) -> None:
    mnt = host.path.parent / "mnt"
    mnt.mkdir()
    script = (
        'mount --bind "$1" "$2" && '
        f'exec "$2/{CLOUD}/bin/scmcloudctl.sh" start --timeout 10 -p "$3"'
    )
    subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(host.path), str(mnt), str(host.sc)],
        env={**os.environ, "JAVA_HOME": str(host.jdk), "PATH": f"{host.jdk}/bin:{SYSTEM_PATH}"},
        check=True, capture_output=True, timeout=30,
    )
    assert not any(mnt.iterdir())  # the mount lives only in the node's namespace
    line = host.ctl(f"{CLOUD}/bin/scmcloudctl.sh", "list").stdout.splitlines()[0]
    match = re.fullmatch(rf"SERVICE-CENTER\({host.sc}\) \((\d+)\)", line)
    assert match is not None, line
    pid = int(match.group(1))
    assert str(mnt) in " ".join(_cmdline(Path(f"/proc/{pid}")))
    assert kill_nodes(host.path) == [pid]
    assert not _port_open(host.sc)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to install for another user")
def test_scripts_run_as_a_non_root_install_user(world: World, tmp_path: Path) -> None:
    base = world.root / "nobody-host"
    sc, gw, cs = free_ports(3)
    topology = _topology(sc, gw, cs)
    path = base / "sequoiacm"
    nobody = (65534, 65534)
    try:
        install(world.old, path, topology, owner=nobody)
        base.chmod(0o755)
        run = local_run_as(*nobody)
        start_topology(path, topology, java_home=world.jdk, run=run)
        assert health("127.0.0.1", sc, 2)["version"] == OLD
        log = path / CLOUD / "log" / "service-center" / str(sc) / "node.log"
        assert log.stat().st_uid == 65534
        stop_all(path, world.jdk, run)
        assert not _port_open(sc)
    finally:
        kill_nodes(path)
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- the reference's "Nodes" facts
# Literal facts of /work/shared/reference/original-tool.md, checked against the sandbox.

JVM_ERROR = "Error occurred during initialization of VM"
# The node names the real tools print (getName().toUpperCase()), per ctl, from the reference.
LISTED = {
    "sequoiacm-cloud/bin/scmcloudctl.sh": {
        "service-center": "SERVICE-CENTER", "service-trace": "SERVICE-TRACE",
        "auth-server": "AUTH-SERVER", "gateway": "GATEWAY", "admin-server": "ADMIN-SERVER",
    },
    "sequoiacm-config/bin/confctl.sh": {"config-server": "CONFIG-SERVER"},
    "sequoiacm-schedule/bin/schctl.sh": {"schedule-server": "SCHEDULE-SERVER"},
    "sequoiacm-content/bin/scmctl.sh": {"content-server": "CONTENT-SERVER"},
    "sequoiacm-om/bin/omctl.sh": {"om-server": "OM-SERVER"},
    "sequoiacm-s3/bin/s3ctl.sh": {"s3-server": "S3-SERVER"},
    "sequoiacm-mq/bin/mqctl.sh": {"mq-server": "MQ-SERVER"},
    "sequoiacm-fulltext/bin/ftctl.sh": {"fulltext-server": "FULLTEXT-SERVER"},
}


def test_every_service_is_listed_upper_cased_with_its_hyphen(world: World) -> None:
    services = [name for names in LISTED.values() for name in names]
    ports = dict(zip(services, free_ports(len(services)), strict=True))
    topology = Topology(
        services=tuple(services),
        nodes=tuple(NodeSpec(name, port, running=False) for name, port in ports.items()),
    )
    path = world.root / "all-services" / "sequoiacm"
    install(world.new, path, topology)
    try:
        host = Host(path, topology, 0, 0, 0, world.jdk)
        for ctl, names in LISTED.items():
            local = host.ctl(ctl, "list", "-m", "local")
            expected = {f"{listed}({ports[name]}) (-)" for name, listed in names.items()}
            assert local.returncode == 0, (ctl, local.stderr)
            assert set(local.stdout.splitlines()[:-1]) == expected, ctl
            assert local.stdout.splitlines()[-1] == f"Total:{len(names)}", ctl
            # without -m local (mode run): running nodes only, and there are none
            running = host.ctl(ctl, "list")
            assert (running.returncode, running.stdout) == (1, "Total:0\n"), ctl
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def test_listing_stopped_then_running_nodes(host: Host) -> None:
    cloud = f"{CLOUD}/bin/scmcloudctl.sh"
    before = host.ctl(cloud, "list", "-m", "local")
    assert (before.returncode, before.stdout.splitlines()) == (
        0, [f"SERVICE-CENTER({host.sc}) (-)", f"GATEWAY({host.gw}) (-)", "Total:2"]
    )
    assert host.ctl("sequoiacm-content/bin/scmctl.sh", "list", "-m", "local").stdout == (
        f"CONTENT-SERVER({host.cs}) (-)\nTotal:1\n"
    )
    assert host.ctl(cloud, "start", "--timeout", "10", "-p", str(host.sc)).returncode == 0
    pid = health("127.0.0.1", host.sc, 2)["pid"]
    after = host.ctl(cloud, "list", "-m", "local")
    assert after.stdout.splitlines() == [
        f"SERVICE-CENTER({host.sc}) ({pid})", f"GATEWAY({host.gw}) (-)", "Total:2"
    ]
    running = host.ctl(cloud, "list")
    assert (running.returncode, running.stdout) == (
        0, f"SERVICE-CENTER({host.sc}) ({pid})\nTotal:1\n"
    )
    conf = host.path.resolve() / CLOUD / "conf"
    assert host.ctl(cloud, "list", "-m", "local", "-l").stdout.splitlines() == [
        f"SERVICE-CENTER({host.sc}) ({pid}) {conf}/service-center/{host.sc}/application.properties",
        f"GATEWAY({host.gw}) (-) {conf}/gateway/{host.gw}/application.properties",
        "Total:2",
    ]


def test_bad_arguments_exit_with_invalid_arg(host: Host) -> None:
    cloud = f"{CLOUD}/bin/scmcloudctl.sh"
    for args in (
        ("list", "-m", "everything"), ("list", "--bogus"), ("start",), ("start", "-t", "nope"),
        ("start", "-p", "notaport"), ("start", "-p", "1"), ("frobnicate",), (),
    ):
        done = host.ctl(cloud, *args)
        assert (done.returncode, done.stdout) == (3, ""), args
        assert done.stderr.startswith("ERROR: "), args
    assert host.ctl("daemon/bin/scmd.sh", "restart").returncode == 3


def test_running_means_a_live_process_naming_the_node(host: Host) -> None:
    cloud = f"{CLOUD}/bin/scmcloudctl.sh"
    assert host.ctl(cloud, "start", "--timeout", "10", "-p", str(host.gw)).returncode == 0
    pid_file = host.path / CLOUD / "log" / "gateway" / str(host.gw) / "node.pid"
    pid = int(pid_file.read_text())
    os.kill(pid, 9)
    assert _wait(lambda: not _alive(pid))
    assert pid_file.exists()
    assert f"GATEWAY({host.gw}) (-)" in host.ctl(cloud, "list", "-m", "local").stdout
    # a live process that is not this node (this test) behind a pid file is not the node
    pid_file.write_text(f"{os.getpid()}\n")
    assert f"GATEWAY({host.gw}) (-)" in host.ctl(cloud, "list", "-m", "local").stdout
    assert host.ctl(cloud, "start", "--timeout", "10", "-p", str(host.gw)).returncode == 0
    assert health("127.0.0.1", host.gw, 2)["pid"] != os.getpid()


def test_node_command_line_names_its_jar_and_config(host: Host, world: World) -> None:
    cloud = f"{CLOUD}/bin/scmcloudctl.sh"
    assert host.ctl(cloud, "start", "--timeout", "10", "-p", str(host.gw)).returncode == 0
    pid = health("127.0.0.1", host.gw, 2)["pid"]
    argv = _cmdline(Path(f"/proc/{pid}"))
    root = host.path.resolve() / CLOUD
    jar = root / "jars" / f"sequoiacm-cloud-gateway-{OLD}.jar"
    conf = root / "conf" / "gateway" / str(host.gw) / "application.properties"
    assert argv[argv.index("-jar") + 1] == str(jar), argv
    assert argv[-1] == f"--spring.config.location={conf}", argv
    # `java` from PATH was the JDK's: its JVM runs the node
    assert any(a.startswith(str(world.jdk)) and a.endswith("sandboxjvm.py") for a in argv), argv
    assert Path(f"/proc/{pid}/cwd").resolve() == root


def test_nodes_start_with_the_first_java_on_path(host: Host, tmp_path: Path) -> None:
    cloud = f"{CLOUD}/bin/scmcloudctl.sh"
    decoy = make_decoy_java(tmp_path / "decoy")
    # JAVA_HOME is right, but the OS's java comes first on PATH: the node cannot start
    wrong = host.ctl(cloud, "start", "--timeout", "10", "-p", str(host.gw),
                     path=f"{decoy.parent}:{SYSTEM_PATH}")
    assert wrong.returncode == 8, wrong.stderr
    assert "Invalid or corrupt jarfile" in wrong.stderr
    assert f"java on PATH: {decoy}" in wrong.stderr
    assert not _port_open(host.gw)
    assert f"GATEWAY({host.gw}) (-)" in host.ctl(cloud, "list", "-m", "local").stdout
    assert not list((host.path / CLOUD / "log").rglob("node.pid"))
    # With $JAVA_HOME/bin first on PATH, as the vendor's upgrader sets it, it starts.
    right = host.ctl(cloud, "start", "--timeout", "10", "-p", str(host.gw),
                     path=f"{host.jdk}/bin:{decoy.parent}:{SYSTEM_PATH}")
    assert right.returncode == 0, right.stderr
    assert health("127.0.0.1", host.gw, 2)["status"] == "UP"


def test_the_tool_itself_runs_on_java_home(host: Host, tmp_path: Path) -> None:
    wrong_home = tmp_path / "jdk17"
    make_decoy_java(wrong_home / "bin")
    env = {**os.environ, "JAVA_HOME": str(wrong_home), "PATH": f"{host.jdk}/bin:{SYSTEM_PATH}"}
    done = subprocess.run(
        [str(host.path / CLOUD / "bin" / "scmcloudctl.sh"), "list", "-m", "local"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert "Invalid or corrupt jarfile" in done.stderr


def test_sandbox_jdk_and_decoy_answer_like_java(world: World, tmp_path: Path) -> None:
    decoy = make_decoy_java(tmp_path / "decoy")
    version = subprocess.run([str(decoy), "-version"], capture_output=True, text=True)
    assert version.returncode == 0
    assert version.stderr.splitlines()[0] == 'openjdk version "17.0.15"'
    with tarfile.open(world.old / "package" / f"{CLOUD}-{OLD}-release.tar.gz") as tar:
        member = tar.extractfile(f"{CLOUD}/jars/sequoiacm-cloud-gateway-{OLD}.jar")
        tools = tar.extractfile(f"{CLOUD}/jars/sequoiacm-cloud-tools-{OLD}.jar")
        assert member is not None and tools is not None
        (tmp_path / "gw.jar").write_bytes(member.read())
        (tmp_path / "tools.jar").write_bytes(tools.read())
    (tmp_path / "plain.jar").write_text("not a jar\n")
    (tmp_path / "nomain.jar").write_text("SEQUOIACM-SANDBOX-JAR x 1.0.0\n")
    java = str(world.jdk / "bin" / "java")
    expected = {
        (java, "missing.jar"): f"Error: Unable to access jarfile {tmp_path}/missing.jar",
        (java, "plain.jar"): f"Error: Invalid or corrupt jarfile {tmp_path}/plain.jar",
        (java, "nomain.jar"): f"no main manifest attribute, in {tmp_path}/nomain.jar",
        (java, "tools.jar"): "Error: Could not find or load main class com.sequoiacm.tools.Main",
        (str(decoy), "gw.jar"): f"Error: Invalid or corrupt jarfile {tmp_path}/gw.jar",
    }
    for (binary, jar), first_line in expected.items():
        done = subprocess.run([binary, "-Xmx1g", "-jar", str(tmp_path / jar)],
                              capture_output=True, text=True, timeout=10)
        assert (done.returncode, done.stdout) == (1, ""), (binary, jar)
        assert done.stderr.splitlines()[0] == first_line, (binary, jar)


def test_node_answers_down_until_ready(host: Host, world: World) -> None:
    conf = host.path / CLOUD / "conf" / "gateway" / str(host.gw) / "application.properties"
    jar = host.path / CLOUD / "jars" / f"sequoiacm-cloud-gateway-{OLD}.jar"
    node = subprocess.Popen(
        [str(world.jdk / "bin" / "java"), "-Dsandbox.startDelay=0.8", "-jar", str(jar),
         f"--spring.config.location={conf}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait(lambda: _port_open(host.gw))
        head, _, body = _http(host.gw, b"GET /internal/v1/health HTTP/1.0\r\n\r\n").partition(
            b"\r\n\r\n"
        )
        assert head.startswith(b"HTTP/1.0 503 ") and json.loads(body) == {"status": "DOWN"}
        assert _wait(lambda: _status(host.gw) == 200)
        assert health("127.0.0.1", host.gw, 2) == {
            "status": "UP", "version": OLD, "service": "gateway", "port": host.gw,
            "pid": node.pid,
        }
    finally:
        node.terminate()
        node.wait(timeout=10)


def test_jvm_fail_fails_the_whole_tool_like_a_jvm(host: Host) -> None:
    cloud = f"{CLOUD}/bin/scmcloudctl.sh"
    set_fault(host.path, "gateway", "jvm-fail")
    for args in (("list", "-m", "local"), ("list",), ("start", "-p", str(host.sc)),
                 ("stop", "--all")):
        done = host.ctl(cloud, *args)
        assert (done.returncode, done.stdout) == (1, ""), args
        assert done.stderr.splitlines() == [
            JVM_ERROR, "Could not reserve enough space for object heap"
        ], args
    assert not _port_open(host.sc)
    # other directories' tools are not affected
    assert host.ctl("sequoiacm-content/bin/scmctl.sh", "list", "-m", "local").returncode == 0
    # a switch for another version of the tool does not apply
    set_fault(host.path, "gateway", "jvm-fail", version=NEW)
    assert host.ctl(cloud, "list", "-m", "local").returncode == 0
    clear_fault(host.path, "gateway", "jvm-fail")
    assert host.ctl(cloud, "list", "-m", "local").stdout.endswith("Total:2\n")


def test_jvm_fail_for_the_next_calls_only(host: Host) -> None:
    cloud = f"{CLOUD}/bin/scmcloudctl.sh"
    set_fault(host.path, "service-center", "jvm-fail", times=1)
    first = host.ctl(cloud, "list", "-m", "local")
    assert (first.returncode, first.stdout, first.stderr.splitlines()[0]) == (1, "", JVM_ERROR)
    assert fault_times_left(host.path, "service-center", "jvm-fail") == 0
    retry = host.ctl(cloud, "list", "-m", "local")
    assert (retry.returncode, retry.stdout.splitlines()[-1]) == (0, "Total:2")
    # concurrent calls share the count exactly
    set_fault(host.path, "service-center", "jvm-fail", times=3)
    env = {**os.environ, "JAVA_HOME": str(host.jdk)}
    procs = [
        subprocess.Popen([str(host.path / cloud), "list", "-m", "local"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    results = [(p.returncode, out) for p in procs for out, _ in [p.communicate(timeout=30)]]
    assert sorted(code for code, _ in results) == [0, 0, 0, 1, 1, 1]
    assert all(out.endswith("Total:2\n") for code, out in results if code == 0)
    assert fault_times_left(host.path, "service-center", "jvm-fail") == 0


def _status(port: int) -> int:
    try:
        line = _http(port, b"GET /internal/v1/health HTTP/1.0\r\n\r\n").split(b"\r\n", 1)[0]
    except OSError:
        return 0
    return int(line.split()[1])


def _wait(done: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_ctl_tool_is_its_package_and_a_call_writes_no_bytecode(host: Host) -> None:
    # The tool ships as bin/scmsandbox/, the package's modules as they are here; running
    # it imports them, and an import that cached bytecode would change the install's tree.
    package = Path(ctl_package.__file__).parent
    shipped = host.path / CLOUD / "bin" / "scmsandbox"
    assert sorted(p.name for p in shipped.iterdir()) == sorted(p.name for p in package.glob("*.py"))
    assert all((shipped / p.name).read_bytes() == p.read_bytes() for p in package.glob("*.py"))
    cloud = f"{CLOUD}/bin/scmcloudctl.sh"
    for args in (("list", "-m", "local"), ("start", "-p", str(host.gw)), ("stop", "-p", str(host.gw))):
        assert host.ctl(cloud, *args).returncode == 0, args
    for command, code in (("start", 0), ("status", 0), ("stop", 0), ("status", 1)):
        assert host.ctl("daemon/bin/scmd.sh", command).returncode == code, command
    assert list(host.path.rglob("__pycache__")) == []
