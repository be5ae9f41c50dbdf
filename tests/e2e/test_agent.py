"""The host agent, run as the control machine runs it (agent_argv) against a sandbox install."""

from __future__ import annotations

import ast
import dataclasses
import fcntl
import io
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scmflow.agentcall import is_greeting, parse_agent_output, request_line
from scmflow.agentpayload import agent_argv, bundle, bundle_sources, serve_argv
from scmflow.catalog import Catalog, load_catalog
from scmflow.release import Release, load_release
from scmflow.sandbox import (
    NodeSpec,
    Topology,
    build_release,
    clear_faults,
    free_ports,
    health,
    install,
    kill_nodes,
    local_run,
    make_jdk,
    set_fault,
    start_topology,
    stop_all,
    tree_digest,
)

OLD, NEW = "3.2.0", "3.2.2"
PY36 = Path("/root/.pyenv/versions/3.6.15/bin/python3.6")
CUSTOMER_JAR = "lib/hbase_transwarp/hbase-client-transwarp-5.2.3.jar"
UPGRADED = ("gateway", "content-server", "daemon", "scmsystools", "non-service")


@dataclass(frozen=True)
class World:
    """Releases, their packages and a JDK, shared by the module."""

    root: Path
    catalog: Catalog
    new: Release
    jdk: Path


class Server:
    """A serving agent (`serve_argv`) in a child process, as AgentLink keeps one per host."""

    def __init__(self, python: str, jdk: Path) -> None:
        argv = serve_argv()
        argv[0] = python
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "JAVA_HOME": str(jdk)},
        )
        assert self.process.stdout is not None
        greeting = json.loads(self.process.stdout.readline())
        assert is_greeting(greeting) and greeting["pid"] == self.process.pid
        self.requests = 0

    def send(self, data: bytes) -> dict[str, Any]:
        """Write raw request bytes; the next reply line."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()
        reply = json.loads(self.process.stdout.readline())
        assert isinstance(reply, dict)
        return reply

    def call(self, op: str, spec: dict[str, Any]) -> dict[str, Any]:
        """One request; its reply names it; the agent must still be running afterwards."""
        self.requests += 1
        reply = self.send(request_line(op, spec, self.requests))
        assert reply.pop("id") == self.requests
        assert self.process.poll() is None
        return reply

    def finish(self) -> tuple[int, str]:
        """End stdin; the exit code and stderr."""
        _, err = self.process.communicate(timeout=60)
        return self.process.returncode, err.decode()


@dataclass(frozen=True)
class Host:
    """One sandbox install: service-center and gateway (one node stopped), content, daemon."""

    world: World
    install: Path
    backups: Path
    sc: int
    gw: int
    gw_stopped: int
    cs: int
    python: str = "python3"
    server: Server | None = None

    def call(self, op: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Run the agent exactly as the control machine does; its reply."""
        if self.server is not None:
            return self.server.call(op, spec)
        argv = agent_argv(op, spec)
        argv[0] = self.python
        env = {**os.environ, "JAVA_HOME": str(self.world.jdk)}
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        reply = parse_agent_output(proc.stdout)
        assert proc.returncode == (0 if reply["ok"] else 1), (proc.returncode, reply)
        assert "Traceback" not in proc.stderr
        return reply

    def ok(self, op: str, spec: dict[str, Any]) -> dict[str, Any]:
        """A call that must succeed."""
        reply = self.call(op, spec)
        assert reply["ok"], reply
        return reply

    def fails(self, op: str, spec: dict[str, Any]) -> dict[str, Any]:
        """A call that must fail with a one-line error."""
        reply = self.call(op, spec)
        assert not reply["ok"], reply
        assert "\n" not in reply["error"]
        return reply

    def spec(self, service: str, **extra: Any) -> dict[str, Any]:
        """The spec the control side sends for one pair of this host."""
        spec = {
            "install_path": str(self.install),
            "service": self.world.catalog.get(service).to_spec(),
            "backup_dir": str(self.backups / service),
        }
        spec.update(extra)
        return spec

    def package(self, service: str) -> str:
        """The new release's package for `service`."""
        return str(self.world.new.package_for(service).path)

    def ports(self, service: str) -> list[int]:
        """Ports that run before the upgrade."""
        return {"service-center": [self.sc], "gateway": [self.gw], "content-server": [self.cs]}.get(
            service, []
        )

    def probe(self) -> dict[str, Any]:
        """The probe of every catalog service."""
        return self.ok(
            "probe",
            {
                "install_path": str(self.install),
                "services": [s.to_spec() for s in self.world.catalog.services],
                "java_home": str(self.world.jdk),
                "df_paths": [str(self.backups)],
            },
        )

    def running(self) -> set[tuple[str, int | None]]:
        """(service, port) of every running node."""
        services = self.probe()["services"]
        return {
            (name, node["port"])
            for name, info in services.items()
            for node in info["nodes"]
            if node["running"]
        }

    def upgrade(self, service: str, *, twice: bool = False) -> None:
        """backup, replace, restart, verify; each op twice with `twice`."""
        daemon = service == "daemon"
        ports = self.ports(service)
        for _ in range(2 if twice else 1):
            self.ok("backup", self.spec(service))
        for _ in range(2 if twice else 1):
            self.ok("replace", self.spec(service, package=self.package(service), new_version=NEW))
        # The first restart comes right after the replace stopped every node, so it may skip
        # listing them (as the control side asks then); a repeat must list and skip them.
        self.ok("restart", self.spec(service, ports=ports, daemon=daemon, timeout=30, nodes_down=True))
        if twice:
            self.ok("restart", self.spec(service, ports=ports, daemon=daemon, timeout=30))
        for _ in range(2 if twice else 1):
            self.ok("verify", self.spec(service, version=NEW, ports=ports, daemon=daemon))

    def restore(self, service: str, old_version: str | None = OLD) -> dict[str, Any]:
        """Roll one pair back."""
        return self.ok(
            "restore",
            self.spec(
                service,
                ports=self.ports(service),
                daemon=service == "daemon",
                old_version=old_version,
                timeout=30,
            ),
        )


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="scmflow-agent-test-"))
    try:
        catalog = load_catalog()
        build_release(root / "rel-old", OLD)
        new_root = build_release(root / "rel-new", NEW)
        new = load_release(new_root, catalog, catalog.names(), work_dir=root / "work")
        yield World(root=root, catalog=catalog, new=new, jdk=make_jdk(root / "jdk"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _make_host(world: World, base: Path, python: str = "python3") -> Host:
    sc, gw, gw_stopped, cs = free_ports(4)
    topology = Topology(
        services=(
            "service-center",
            "gateway",
            "content-server",
            "daemon",
            "scmsystools",
            "non-service",
        ),
        nodes=(
            NodeSpec("service-center", sc),
            NodeSpec("gateway", gw),
            NodeSpec("gateway", gw_stopped, running=False),
            NodeSpec("content-server", cs),
            NodeSpec("daemon", None),
        ),
    )
    path = base / "sequoiacm"
    install(world.root / "rel-old" / "sequoiacm", path, topology, customer_jars=True)
    start_topology(path, topology, java_home=world.jdk, run=local_run)
    return Host(world, path, base / "backup", sc, gw, gw_stopped, cs, python)


@contextmanager
def _running_host(world: World, base: Path, python: str = "python3") -> Iterator[Host]:
    host = _make_host(world, base, python)
    try:
        yield host
    finally:
        clear_faults(host.install)
        try:
            stop_all(host.install, world.jdk, local_run)
        finally:
            kill_nodes(host.install)


@pytest.fixture
def host(world: World, tmp_path: Path) -> Iterator[Host]:
    with _running_host(world, tmp_path) as h:
        yield h


@contextmanager
def _tmpfs(where: Path, options: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    where.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _conf_digests(install_path: Path) -> dict[str, str]:
    return {d: tree_digest(install_path / d / "conf") for d in ("sequoiacm-cloud", "sequoiacm-content")}


def _jars(install_path: Path, pattern: str) -> list[str]:
    return sorted(p.name for p in install_path.glob(pattern))


# ---------------------------------------------------------------- the command itself


def test_argv_runs_the_bundle_and_replies_on_the_last_line(host: Host) -> None:
    argv = agent_argv("exists", {"paths": [str(host.install), str(host.install / "nope")]})
    assert argv[:3] == ["python3", "-I", "-c"]
    assert argv[5:] == ["exists", json.dumps({"paths": [str(host.install), str(host.install / "nope")]})]
    assert host.ok("exists", {"paths": [str(host.install), str(host.install / "nope")]}) == {
        "ok": True,
        "exists": [str(host.install)],
    }
    assert parse_agent_output('noise\n{"ok": true, "x": 1}\n\n') == {"ok": True, "x": 1}
    for bad in ("", "noise only", '["ok"]', '{"x": 1}'):
        with pytest.raises(ValueError):
            parse_agent_output(bad)


def test_bad_requests_fail_with_one_line_and_no_traceback(host: Host) -> None:
    unknown = host.fails("explode", {})
    assert unknown["error"] == "unknown op 'explode'" and unknown["step"] == "args"
    missing = host.fails("backup", {"service": host.world.catalog.get("gateway").to_spec()})
    assert missing["error"] == "the spec lacks 'backup_dir'"
    # An unexpected error still answers, with the trace kept for the log.
    broken = host.fails("probe", {"install_path": str(host.install), "services": [{"name": "x"}]})
    assert broken["error"].startswith("KeyError") and "Traceback" in broken["trace"]


def test_a_serving_agent_answers_request_after_request_until_stdin_ends(host: Host) -> None:
    server = Server("python3", host.world.jdk)
    pid = server.process.pid
    paths = [str(host.install), str(host.install / "nope")]
    assert server.call("exists", {"paths": paths}) == {"ok": True, "exists": [str(host.install)]}
    bad = server.send(b"not json\n")
    assert bad == {"ok": False, "error": "malformed request line", "step": "args", "id": None}
    assert server.send(b'{"spec": {}}\n')["error"] == "malformed request line"
    assert server.call("explode", {})["error"] == "unknown op 'explode'"
    broken = server.call("probe", {"install_path": str(host.install), "services": [{"name": "x"}]})
    assert broken["error"].startswith("KeyError") and "Traceback" in broken["trace"]
    # the same process, still answering after failures
    assert server.call("exists", {"paths": paths})["exists"] == [str(host.install)]
    assert server.process.pid == pid
    code, err = server.finish()
    assert code == 0 and err == ""


def test_a_serving_agent_holds_the_step_lock_only_during_a_step(host: Host, tmp_path: Path) -> None:
    lock = tmp_path / "locks" / ".agent.lock"
    server = Server("python3", host.world.jdk)
    try:
        assert server.call("backup", host.spec("gateway", lock_path=str(lock)))["already"] is False
        # the step lock is an flock on the install dir; between steps another process
        # (another run's agent) may take it at once
        fd = os.open(host.install, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = server.call("backup", host.spec("gateway", lock_path=str(lock), lock_wait=0.3))
            assert held["step"] == "step-lock" and f"pid {os.getpid()}" in held["error"]
        finally:
            os.close(fd)
        assert server.call("backup", host.spec("gateway", lock_path=str(lock)))["already"] is True
    finally:
        assert server.finish()[0] == 0


def _log_ctl_calls(ctl: Path, log: Path) -> None:
    """Put a shim in front of a ctl script that appends each call's arguments to `log`."""
    real = ctl.with_name(ctl.name + ".real")
    ctl.rename(real)
    ctl.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    ctl.chmod(0o755)


def test_a_clean_stop_lists_nodes_once_and_nodes_down_skips_the_listing(host: Host, tmp_path: Path) -> None:
    log = tmp_path / "ctl-calls"
    _log_ctl_calls(host.install / "sequoiacm-cloud" / "bin" / "scmcloudctl.sh", log)
    host.ok("backup", host.spec("gateway"))
    stopped = host.ok("replace", host.spec("gateway", package=host.package("gateway"), new_version=NEW))
    assert stopped["stopped"] == [host.gw]
    # the listing, then the stop: all listed pids gone, so no listing to confirm it
    assert log.read_text().splitlines() == ["list -m local", "stop -t gateway"]
    log.unlink()
    _log_ctl_calls(host.install / "sequoiacm-cloud" / "bin" / "scmcloudctl.sh", log)
    spec = host.spec("gateway", ports=[host.gw], daemon=False, timeout=30)
    assert host.ok("restart", dict(spec, nodes_down=True))["started"] == [host.gw]
    assert log.read_text().splitlines() == [f"start --timeout 30 -p {host.gw}"]
    # without the flag the agent lists first and leaves a running node alone
    assert host.ok("restart", spec)["already_running"] == [host.gw]
    assert log.read_text().splitlines()[1:] == ["list -m local"]


def test_agent_source_stays_python36_compatible(tmp_path: Path) -> None:
    sources = bundle_sources().items()
    modules = {name: data.decode() for name, data in sources if name.startswith("scmflow/agent/")}
    assert "scmflow/agent/__main__.py" in modules and "scmflow/agent/tarcheck.py" in modules
    for name, source in modules.items():
        _check_python36(name, source)
    if PY36.exists():
        # what the AST cannot tell: each module of the bundle compiles and imports on a real 3.6
        code = "import importlib, sys; sys.path.insert(0, sys.argv[1]); " + "; ".join(
            f"importlib.import_module({name[:-3].replace('/', '.')!r})" for name in sorted(modules)
        )
        zipapp = tmp_path / "agent.pyz"
        zipapp.write_bytes(bundle())
        done = subprocess.run([str(PY36), "-I", "-c", code, str(zipapp)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def _check_python36(name: str, source: str) -> None:
    """A module of the agent: 3.6 syntax, stdlib or relative imports, 3.6-evaluable annotations."""
    tree = ast.parse(source, feature_version=(3, 6))
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            imported = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom) and not n.level:
            imported = [n.module or ""]
        else:
            continue  # not an import, or one of the package's own modules, imported relatively
        for module in imported:
            # the host has Python's standard library and the bundle, nothing else of scmflow
            assert module.split(".")[0] in sys.stdlib_module_names, (name, module)
            assert module != "__future__", name
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, ast.FunctionDef):
            annotations = [a.annotation for a in node.args.args if a.annotation] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        for ann in annotations:
            for part in ast.walk(ann) if ann is not None else ():
                # 3.6 evaluates annotations: no `X | Y` and no builtin generics like list[str].
                assert not isinstance(part, ast.BinOp), (name, ast.unparse(ann))
                if isinstance(part, ast.Subscript):
                    generic = isinstance(part.value, ast.Name) and part.value.id[0].isupper()
                    assert generic, (name, ast.unparse(ann))
    for newer in ("capture_output", "text=True", "dirs_exist_ok", "missing_ok", ":="):
        assert newer not in source, (name, newer)


# ---------------------------------------------------------------- probe


def test_probe_reports_java_versions_and_nodes(host: Host) -> None:
    reply = host.probe()
    assert reply["java_home"] == str(host.world.jdk)
    assert reply["java_version"] == "1.8.0_221"
    assert reply["install_path_exists"] is True
    assert reply["user"] == pwd.getpwuid(os.geteuid()).pw_name
    assert reply["free"][str(host.backups)] > 0
    services = reply["services"]
    versions = {name: info["version"] for name, info in services.items() if info["version"]}
    assert versions == {
        name: OLD
        for name in ("service-center", "gateway", "content-server", "daemon", "scmsystools", "non-service")
    }
    assert services["service-trace"] == {"version": None, "nodes": []}

    def nodes(name: str) -> list[tuple[int | None, bool]]:
        return sorted((n["port"], n["running"]) for n in services[name]["nodes"])

    assert nodes("service-center") == [(host.sc, True)]
    assert nodes("gateway") == sorted([(host.gw, True), (host.gw_stopped, False)])
    assert nodes("content-server") == [(host.cs, True)]
    assert nodes("daemon") == [(None, True)]
    assert nodes("scmsystools") == [] and nodes("non-service") == []
    for name, port in (("gateway", host.gw), ("content-server", host.cs)):
        pid = next(n["pid"] for n in services[name]["nodes"] if n["port"] == port)
        assert health("127.0.0.1", port)["pid"] == pid


def test_probe_runs_each_ctl_listing_at_the_same_time(host: Host, tmp_path: Path) -> None:
    # Each ctl waits (up to a timeout, then fails) until the other has started: listings run
    # one after another would fail, and the probe would see no nodes.
    marks = tmp_path / "marks"
    marks.mkdir(mode=0o777)
    ctls = [host.install / "sequoiacm-cloud" / "bin" / "scmcloudctl.sh",
            host.install / "sequoiacm-content" / "bin" / "scmctl.sh"]
    for ctl in ctls:
        ctl.rename(ctl.with_name(ctl.name + ".real"))
        others = " ".join(f"{marks}/{c.name}" for c in ctls if c != ctl)
        ctl.write_text(
            "#!/bin/bash\n"
            f'touch {marks}/{ctl.name}\n'
            f"for i in $(seq 200); do [ -e {others} ] && exec \"$0.real\" \"$@\"; sleep 0.1; done\n"
            "echo 'the other listing never started' >&2; exit 1\n"
        )
        ctl.chmod(0o755)
    services = host.probe()["services"]
    assert [n["running"] for n in services["service-center"]["nodes"]] == [True]
    assert [n["running"] for n in services["content-server"]["nodes"]] == [True]


def test_daemon_runs_only_while_its_crontab_command_does(host: Host) -> None:
    crontab = (host.install / "daemon" / "conf" / ".crontab.properties").read_text()
    command = crontab.split("nohup", 1)[1].split(">", 1)[0].strip()
    pid = host.probe()["services"]["daemon"]["nodes"][0]["pid"]
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1] == [
        w.encode() for w in command.split()
    ]
    os.kill(pid, signal.SIGTERM)
    # A cron shell still carrying the command after `nohup` is not the daemon.
    with subprocess.Popen(["sh", "-c", f"sleep 30 || nohup {command} > /dev/null", "cron"]) as shell:
        try:
            deadline = time.monotonic() + 5
            while host.probe()["services"]["daemon"]["nodes"][0]["running"]:
                assert time.monotonic() < deadline, "daemon still reported running"
            node = host.probe()["services"]["daemon"]["nodes"]
            assert node == [{"port": None, "pid": None, "running": False}]
        finally:
            shell.kill()


def test_probe_reads_java_home_from_the_profile_when_not_given(host: Host, tmp_path: Path) -> None:
    jdk17 = make_jdk(tmp_path / "jdk17", "17.0.2")
    profile = tmp_path / "profile"
    profile.write_text(f"echo noise\nexport JAVA_HOME={jdk17}\n", encoding="utf-8")
    spec = {"install_path": str(tmp_path / "absent"), "services": [], "java_home": None}
    reply = host.ok("probe", {**spec, "profile": str(profile)})
    assert (reply["java_home"], reply["java_version"]) == (str(jdk17), "17.0.2")
    assert reply["install_path_exists"] is False
    profile.write_text("# no JAVA_HOME here\n", encoding="utf-8")
    bare = host.ok("probe", {**spec, "profile": str(profile)})
    assert (bare["java_home"], bare["java_version"]) == (None, None)


def test_probe_refuses_two_versions_of_one_service(host: Host) -> None:
    jars = host.install / "sequoiacm-cloud" / "jars"
    shutil.copy(jars / f"sequoiacm-cloud-gateway-{OLD}.jar", jars / f"sequoiacm-cloud-gateway-{NEW}.jar")
    reply = host.fails(
        "probe", {"install_path": str(host.install), "services": [host.spec("gateway")["service"]]}
    )
    assert f"sequoiacm-cloud-gateway-{OLD}.jar" in reply["error"]
    assert f"sequoiacm-cloud-gateway-{NEW}.jar" in reply["error"]


# ---------------------------------------------------------------- upgrade and restore


@pytest.mark.parametrize(
    ("python", "serve"),
    [("python3", False), (str(PY36), False), ("python3", True), (str(PY36), True)],
    ids=["default", "py36", "serving", "serving-py36"],
)
def test_upgrade_then_restore_round_trip(world: World, tmp_path: Path, python: str, serve: bool) -> None:
    if python == str(PY36) and not PY36.exists():
        pytest.skip("no Python 3.6 on this machine")
    with _running_host(world, tmp_path, python) as host:
        if not serve:
            _round_trip(host)
            return
        server = Server(python, world.jdk)
        try:
            _round_trip(dataclasses.replace(host, server=server))
        finally:
            code, err = server.finish()
        assert code == 0 and "Traceback" not in err


def _round_trip(host: Host) -> None:
    inst = host.install
    before_digest = tree_digest(inst)
    before_conf = _conf_digests(inst)
    before_running = host.running()
    customer = (inst / "sequoiacm-content" / CUSTOMER_JAR).read_bytes()
    for service in UPGRADED:
        host.upgrade(service, twice=True)

    probe = host.probe()["services"]
    assert {name: probe[name]["version"] for name in UPGRADED} == dict.fromkeys(UPGRADED, NEW)
    assert probe["service-center"]["version"] == OLD  # shares the dir, not upgraded
    assert _jars(inst, "sequoiacm-cloud/jars/sequoiacm-cloud-gateway-*.jar") == [
        f"sequoiacm-cloud-gateway-{NEW}.jar"
    ]
    assert _jars(inst, "sequoiacm-cloud/jars/sequoiacm-cloud-tools-*.jar") == [
        f"sequoiacm-cloud-tools-{NEW}.jar"
    ]
    assert _jars(inst, "sequoiacm-cloud/jars/sequoiacm-cloud-servicetrace-*.jar") == []
    assert _jars(inst, "sequoiacm-content/lib/sequoiacm-content-server-*.jar") == [
        f"sequoiacm-content-server-{NEW}.jar"
    ]
    assert _jars(inst, "driver/sequoiacm-driver-*.tar.gz") == [f"sequoiacm-driver-{NEW}-release.tar.gz"]
    assert (inst / "sequoiacm-content" / CUSTOMER_JAR).read_bytes() == customer
    assert _conf_digests(inst) == before_conf
    assert not list(inst.glob(".scmflow-staging-*"))
    for port in (host.gw, host.cs):
        assert health("127.0.0.1", port)["version"] == NEW
    assert health("127.0.0.1", host.sc)["version"] == OLD
    assert host.running() == before_running  # the stopped gateway node stays stopped

    for service in reversed(UPGRADED):
        assert host.restore(service)["restored"] is True
    assert host.restore("gateway")["restored"] is True  # restore is idempotent
    assert tree_digest(inst) == before_digest
    assert host.running() == before_running
    for port in (host.sc, host.gw, host.cs):
        assert health("127.0.0.1", port)["version"] == OLD


def test_rerun_after_a_crash_mid_replace_gives_the_same_tree(host: Host) -> None:
    inst = host.install
    before = tree_digest(inst)
    host.upgrade("content-server")
    upgraded = tree_digest(inst)
    restart = host.spec("content-server", ports=[host.cs], daemon=False, timeout=30)
    replace = host.spec("content-server", package=host.package("content-server"), new_version=NEW)

    # A crash after half the swap: bin/ and the new lib/ gone, a staging dir left behind.
    host.ok("replace", replace)
    content = inst / "sequoiacm-content"
    shutil.rmtree(content / "bin")
    shutil.rmtree(content / "lib")
    (inst / ".scmflow-staging-content-server" / "junk").mkdir(parents=True)
    host.ok("replace", replace)
    host.ok("restart", restart)
    assert tree_digest(inst) == upgraded
    assert (content / CUSTOMER_JAR).is_file()

    # The same crash, then a rollback instead of a rerun.
    host.ok("replace", replace)
    shutil.rmtree(content / "lib")
    host.restore("content-server")
    assert tree_digest(inst) == before
    assert health("127.0.0.1", host.cs)["version"] == OLD


def test_replace_refuses_an_incomplete_backup_and_abandon_drops_it(host: Host) -> None:
    before = tree_digest(host.install)
    host.ok("backup", host.spec("gateway"))
    marker = host.backups / "gateway" / ".complete"
    marker.unlink()
    replace = host.spec("gateway", package=host.package("gateway"), new_version=NEW)
    reply = host.fails("replace", replace)
    assert reply["step"] == "check-backup" and "not complete" in reply["error"]
    assert tree_digest(host.install) == before
    assert health("127.0.0.1", host.gw)["version"] == OLD

    # A rerun backup wipes the partial one and redoes it.
    (host.backups / "gateway" / "files" / "bin" / "stray").write_text("x")
    again = host.ok("backup", host.spec("gateway"))
    assert again["already"] is False and marker.is_file()
    assert not (host.backups / "gateway" / "files" / "bin" / "stray").exists()
    assert host.ok("abandon", {"backup_dir": str(host.backups / "gateway")}) == {
        "ok": True,
        "removed": False,
    }
    other = host.fails("replace", dict(replace, service=host.spec("daemon")["service"]))
    assert other["error"] == f"the backup {host.backups / 'gateway'} holds gateway, not daemon"
    marker.unlink()
    assert host.ok("abandon", {"backup_dir": str(host.backups / "gateway")})["removed"] is True
    assert not (host.backups / "gateway").exists()

    host.ok("backup", host.spec("daemon"))
    (host.backups / "daemon" / ".complete").unlink()
    assert host.restore("daemon") == {"ok": True, "restored": False}
    assert not (host.backups / "daemon").exists()
    assert tree_digest(host.install) == before


def test_stop_failure_fails_replace_before_any_file_changes(host: Host) -> None:
    before = tree_digest(host.install)
    set_fault(host.install, "gateway", "stop-fail")
    host.ok("backup", host.spec("gateway"))
    reply = host.fails("replace", host.spec("gateway", package=host.package("gateway"), new_version=NEW))
    assert reply["step"] == "stop"
    assert f"GATEWAY({host.gw})" in reply["error"] and "injected stop failure" in reply["error"]
    assert tree_digest(host.install) == before
    assert not list(host.install.glob(".scmflow-staging-*"))


def test_start_failure_reports_the_ctl_error_and_restore_recovers(host: Host) -> None:
    set_fault(host.install, "gateway", "start-fail", NEW)
    before = tree_digest(host.install)
    host.ok("backup", host.spec("gateway"))
    host.ok("replace", host.spec("gateway", package=host.package("gateway"), new_version=NEW))
    reply = host.fails("restart", host.spec("gateway", ports=[host.gw], daemon=False, timeout=30))
    assert reply["step"] == f"start {host.gw}"
    assert "injected start failure" in reply["error"] and "scmcloudctl.sh" in reply["error"]
    verify = host.fails("verify", host.spec("gateway", version=OLD, ports=[host.gw], wait=0.5))
    assert f"version on disk is {NEW}, expected {OLD}" in verify["error"]
    assert f"GATEWAY({host.gw}) is not running" in verify["error"]
    host.restore("gateway")
    assert tree_digest(host.install) == before
    assert health("127.0.0.1", host.gw)["version"] == OLD


def test_fresh_install_of_an_absent_service_is_undone_by_restore(world: World, tmp_path: Path) -> None:
    with _running_host(world, tmp_path) as host:
        shutil.rmtree(host.install / "sequoiacm-sys-tools")
        before = tree_digest(host.install)
        host.upgrade("scmsystools")
        assert _jars(host.install, "sequoiacm-sys-tools/jars/*.jar") == [f"sequoiacm-sys-tools-{NEW}.jar"]
        host.restore("scmsystools", old_version=None)
        assert not (host.install / "sequoiacm-sys-tools").exists()
        assert tree_digest(host.install) == before


def test_unsafe_packages_are_refused_before_anything_stops(host: Host, tmp_path: Path) -> None:
    before = tree_digest(host.install)
    host.ok("backup", host.spec("gateway"))
    for name, kind, target in (
        ("sequoiacm-cloud/../../evil", tarfile.REGTYPE, ""),
        ("/etc/evil", tarfile.REGTYPE, ""),
        ("sequoiacm-cloud/bin/link", tarfile.SYMTYPE, "../../../etc/passwd"),
        ("sequoiacm-cloud/bin/up", tarfile.SYMTYPE, "../../sequoiacm-content"),
        ("sequoiacm-cloud/bin/hard", tarfile.LNKTYPE, "other/file"),
        ("sequoiacm-content/bin/x.sh", tarfile.REGTYPE, ""),
        ("sequoiacm-cloud/fifo", tarfile.FIFOTYPE, ""),
    ):
        bad = tmp_path / "bad.tar.gz"
        with tarfile.open(bad, "w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info, io.BytesIO(b""))
        reply = host.fails("replace", host.spec("gateway", package=str(bad), new_version=NEW))
        assert reply["step"] == "extract" and name in reply["error"]
    assert tree_digest(host.install) == before
    assert health("127.0.0.1", host.gw)["version"] == OLD


def test_symlink_chains_that_climb_out_on_disk_are_refused(host: Host, tmp_path: Path) -> None:
    before = tree_digest(host.install)
    host.ok("backup", host.spec("gateway"))
    chains = (
        # each name reads as inside the package, but the links make it climb out once unpacked
        [
            ("sequoiacm-cloud/b", tarfile.SYMTYPE, "."),
            ("sequoiacm-cloud/e", tarfile.SYMTYPE, "b/b/b/../../../etc"),
        ],
        [("sequoiacm-cloud/d", tarfile.SYMTYPE, "bin"), ("sequoiacm-cloud/d/x", tarfile.REGTYPE, "")],
    )
    for chain in chains:
        bad = tmp_path / "chain.tar.gz"
        with tarfile.open(bad, "w:gz") as tar:
            for name, kind, target in chain:
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                tar.addfile(info, io.BytesIO(b""))
        reply = host.fails("replace", host.spec("gateway", package=str(bad), new_version=NEW))
        assert reply["step"] == "extract" and "symlink" in reply["error"], reply
    assert tree_digest(host.install) == before


# ---------------------------------------------------------------- full disks


def test_full_backup_disk_fails_the_backup_and_so_the_replace(host: Host, tmp_path: Path) -> None:
    before = tree_digest(host.install)
    with _tmpfs(tmp_path / "small", "size=4m") as small:
        (small / "filler").write_bytes(b"\0" * (3 << 20) + b"\0" * (800 << 10))
        spec = host.spec("content-server", backup_dir=str(small / "content-server"))
        reply = host.fails("backup", spec)
        assert reply["step"] == "space"
        assert reply["error"].startswith(f"not enough space on {os.uname().nodename}:{small}/content-server:")
        need, have = re.fullmatch(r".*: need (\d+), have (\d+)", reply["error"]).groups()
        assert int(need) > int(have)
        assert not (small / "content-server").exists()
        replace = dict(spec, package=host.package("content-server"), new_version=NEW)
        assert host.fails("replace", replace)["step"] == "check-backup"
    assert tree_digest(host.install) == before


def test_disk_filling_up_during_the_copy_is_a_clean_error(host: Host, tmp_path: Path) -> None:
    # Bytes to spare but only a handful of inodes: the space check passes, the copy fails.
    with _tmpfs(tmp_path / "few-inodes", "size=64m,nr_inodes=8") as small:
        reply = host.fails("backup", host.spec("content-server", backup_dir=str(small / "cs")))
        assert reply["step"] == "copy"
        assert reply["error"] == f"no space left on {os.uname().nodename}:{small}/cs during the backup"
        assert "trace" not in reply
        assert not (small / "cs").exists()


# ---------------------------------------------------------------- locks and dirs


def test_run_lock_names_its_holder_and_is_taken_over_only_as_judged(host: Host, tmp_path: Path) -> None:
    path = str(tmp_path / "pack" / "scmflow.lock")

    def spec(run: str, **extra: Any) -> dict[str, Any]:
        return {"lock_path": path, "run_id": run, "control_host": f"ctl-{run}", "pid": 42, **extra}

    assert host.ok("lock", spec("a")) == {"ok": True, "locked": True}
    assert host.ok("lock", spec("a"))["already"] is True
    taken = host.ok("lock", spec("b"))
    assert taken["locked"] is False
    assert taken["holder"]["run_id"] == "a" and taken["holder"]["control_host"] == "ctl-a"
    forced = host.ok("lock", spec("b", take_from=taken["holder_digest"]))
    assert forced["replaced"]["run_id"] == "a"
    assert host.ok("unlock", spec("a"))["removed"] is False
    assert json.loads(Path(path).read_text())["run_id"] == "b"
    assert host.ok("unlock", spec("b"))["removed"] is True
    assert not Path(path).exists()


def test_step_lock_keeps_two_steps_apart(host: Host, tmp_path: Path) -> None:
    fd = os.open(host.install, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        spec = host.spec("gateway", lock_path=str(tmp_path / "backup" / ".agent.lock"), lock_wait=0.3)
        reply = host.fails("backup", spec)
        assert reply["step"] == "step-lock" and f"pid {os.getpid()}" in reply["error"]
        assert not (host.backups / "gateway").exists()
    finally:
        os.close(fd)
    assert host.ok("backup", spec)["already"] is False


def test_prepare_makes_owned_dirs_and_exists_lists_them(host: Host, tmp_path: Path) -> None:
    leaf = tmp_path / "opt" / "upgrade" / "sequoiacm" / "upgrade-1"
    reply = host.ok("prepare", {"dirs": [{"path": str(leaf), "mode": "0750", "owner": "nobody"}]})
    assert reply["created"] == [str(tmp_path / "opt"), str(leaf.parent.parent), str(leaf.parent), str(leaf)]
    nobody = pwd.getpwnam("nobody")
    st = leaf.stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o750, nobody.pw_uid)
    # The bases above the run dir are whoever runs prepare's (root's), never the owner's.
    for base in (tmp_path / "opt", leaf.parent.parent, leaf.parent):
        assert (base.stat().st_uid, base.stat().st_mode & 0o777) == (os.geteuid(), 0o755)
    spec = {"paths": [str(leaf), str(leaf.parent / "upgrade-2")]}
    assert host.ok("exists", spec)["exists"] == [str(leaf)]
    assert host.fails("prepare", {"dirs": [{"path": str(leaf), "owner": "no-such-user"}]})["step"] == "chown"
    reused = host.fails("prepare", {"dirs": [{"path": str(leaf), "mode": 0o755, "fresh": True}]})
    assert reused["step"] == "prepare" and "already exists" in reused["error"]
    assert leaf.stat().st_mode & 0o777 == 0o750


def test_a_service_dir_linked_outside_the_install_is_never_touched(host: Host, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me\n")
    om = host.install / "sequoiacm-om"
    if om.exists():
        shutil.rmtree(om)
    om.symlink_to(outside)
    reply = host.fails("backup", host.spec("om-server"))
    assert reply["step"] == "spec"
    assert "outside the install path" in reply["error"]
    # No backup was made, so restore has nothing to put back and must not touch the link.
    reply = host.ok("restore", host.spec("om-server", ports=[], daemon=False, old_version=OLD))
    assert reply["restored"] is False
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]


def test_a_relative_or_root_install_path_is_refused(host: Host) -> None:
    for bad in ("/", "opt/sequoiacm", "/opt/../opt/sequoiacm"):
        spec = host.spec("gateway")
        spec["install_path"] = bad
        reply = host.fails("backup", spec)
        assert reply["step"] == "spec", bad
