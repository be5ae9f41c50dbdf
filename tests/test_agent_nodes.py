"""The agent's reading of nodes, held to the reference's facts with stand-in ctl tools.

Each stand-in prints exactly what original-tool.md (section Nodes) says the real tools
print, so these tests disagree with the agent whenever it expects anything else.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scmflow import agent
from scmflow.catalog import load_catalog

CATALOG = load_catalog()
JVM_FAILURE = "Error occurred during initialization of VM\nCould not reserve enough space for object heap\n"


def ctx_for(install: Path, service: str, **extra: Any) -> agent.Ctx:
    """An agent Ctx for one service of an install at `install`."""
    spec = {"install_path": str(install), "service": CATALOG.get(service).to_spec(), **extra}
    return agent.Ctx(spec)


def write_ctl(install: Path, service: str, script: str) -> Path:
    """A stand-in `<dir>/bin/<ctl>` running `script` (bash)."""
    svc = CATALOG.get(service)
    assert svc.ctl is not None
    ctl = install / svc.dir / "bin" / svc.ctl
    ctl.parent.mkdir(parents=True, exist_ok=True)
    ctl.write_text("#!/bin/bash\n" + script)
    ctl.chmod(0o755)
    return ctl


def configure(install: Path, service: str, *ports: int) -> None:
    """Node config dirs `<dir>/conf/<service>/<port>/`, as the installer makes them."""
    svc = CATALOG.get(service)
    for port in ports:
        conf = install / svc.dir / "conf" / service / str(port)
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "application.properties").write_text(f"server.port={port}\n")


def listing(*lines: str, code: int = 0) -> str:
    body = "".join(f"echo '{line}'\n" for line in lines)
    return body + f"exit {code}\n"


@pytest.fixture
def install(tmp_path: Path) -> Path:
    root = tmp_path / "sequoiacm"
    root.mkdir()
    return root


@pytest.fixture
def fake_node(tmp_path: Path) -> Iterator[Any]:
    """Start a process whose command line names a jar and a config path, like a real node."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*words: str) -> int:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *words])
        procs.append(proc)
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_hyphenated_listing_names_are_recognised(install: Path, fake_node: Any) -> None:
    configure(install, "service-center", 8800, 8801)
    cloud = install / "sequoiacm-cloud"
    jar = cloud / "jars" / "sequoiacm-cloud-servicecenter-3.1.2.jar"
    conf = cloud / "conf" / "service-center" / "8800" / "application.properties"
    pid = fake_node("-jar", str(jar), f"--spring.config.location={conf}")
    write_ctl(install, "service-center", listing(f"SERVICE-CENTER(8800) ({pid})", "SERVICE-CENTER(8801) (-)",
                                                 "Total:2"))
    nodes = agent.list_nodes(ctx_for(install, "service-center"))
    assert nodes == [
        {"port": 8800, "pid": pid, "running": True},
        {"port": 8801, "pid": None, "running": False},
    ]


def test_the_operators_printed_name_is_not_a_listing_name(install: Path) -> None:
    configure(install, "service-center", 8800)
    write_ctl(install, "service-center", listing("SERVICE_CENTER(8800) (-)", "Total:1"))
    with pytest.raises(agent.Failure, match=r"SERVICE_CENTER on .*port 8800 .*missing"):
        agent.list_nodes(ctx_for(install, "service-center"))


def test_a_listed_pid_that_is_not_the_node_does_not_count_as_running(install: Path, fake_node: Any) -> None:
    configure(install, "gateway", 8080)
    other = fake_node("-jar", "/elsewhere/some-other-app.jar")
    write_ctl(install, "gateway", listing(f"GATEWAY(8080) ({other})", "Total:1"))
    (node,) = agent.list_nodes(ctx_for(install, "gateway"))
    assert node["running"] is False and node["stale_pid"] == other


def test_a_configured_node_missing_from_the_listing_is_an_error(install: Path) -> None:
    configure(install, "content-server", 15000, 15001)
    write_ctl(install, "content-server", listing("CONTENT-SERVER(15000) (-)", "Total:1"))
    with pytest.raises(agent.Failure, match=r"CONTENT_SERVER on .*port 15001"):
        agent.list_nodes(ctx_for(install, "content-server"))


def test_no_node_is_exit_1_with_total_0(install: Path) -> None:
    write_ctl(install, "gateway", listing("Total:0", code=1))
    assert agent.list_nodes(ctx_for(install, "gateway")) == []


def test_a_jvm_that_cannot_start_is_not_an_empty_listing(
    install: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent, "_LIST_RETRY_PAUSE", 0.0)
    configure(install, "gateway", 8080)
    write_ctl(install, "gateway", f"printf '{JVM_FAILURE}' >&2\nexit 1\n")
    with pytest.raises(agent.Failure, match="initialization of VM") as caught:
        agent.list_nodes(ctx_for(install, "gateway"))
    assert caught.value.step == "list"


def test_a_listing_that_fails_once_is_tried_again(install: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "_LIST_RETRY_PAUSE", 0.0)
    configure(install, "gateway", 8080)
    calls = tmp_path / "calls"
    write_ctl(install, "gateway", (
        f"echo x >> {calls}\n"
        f"if [ $(wc -l < {calls}) -eq 1 ]; then printf '{JVM_FAILURE}' >&2; exit 1; fi\n"
        + listing("GATEWAY(8080) (-)", "Total:1")
    ))
    assert agent.list_nodes(ctx_for(install, "gateway")) == [{"port": 8080, "pid": None, "running": False}]
    assert len(calls.read_text().splitlines()) == 2


@pytest.mark.parametrize("out", [
    listing("GATEWAY(8080) (-)", code=0),                     # no Total line
    listing("GATEWAY(8080) (-)", "Total:1", code=8),          # system error
    listing("Total:1", code=1),                               # exit 1 is only "none" with Total:0
])
def test_anything_else_is_not_a_listing(install: Path, out: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "_LIST_RETRY_PAUSE", 0.0)
    configure(install, "gateway", 8080)
    write_ctl(install, "gateway", out)
    with pytest.raises(agent.Failure, match="cannot list the nodes"):
        agent.list_nodes(ctx_for(install, "gateway"))


def test_the_check_starts_a_bounded_number_of_ctl_jvms_at_once(install: Path, tmp_path: Path) -> None:
    running = tmp_path / "running"
    running.mkdir()
    services = ["gateway", "mq-server", "config-server", "schedule-server", "content-server", "om-server"]
    for name in services:
        # Each stand-in notes how many listings run beside it, then lingers a little.
        write_ctl(install, name, (
            f"touch {running}/$$; ls {running} | wc -l >> {tmp_path}/seen; sleep 0.3; rm {running}/$$\n"
            + listing("Total:0", code=1)
        ))
    ctxs = [ctx_for(install, name) for name in services]
    agent.list_at_once(ctxs)
    seen = [int(n) for n in (tmp_path / "seen").read_text().split()]
    assert len(seen) == len({agent.ctl_path(c) for c in ctxs})
    assert max(seen) <= agent._LISTS_AT_ONCE and max(seen) > 1


def test_a_stop_whose_ctl_cannot_list_looks_for_the_node_processes(
    install: Path, fake_node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A replace cut short took the tools jar with it: the ctl dies, the nodes were stopped.
    monkeypatch.setattr(agent, "_LIST_RETRY_PAUSE", 0.0)
    configure(install, "gateway", 8080)
    write_ctl(install, "gateway", "echo 'ERROR: expected exactly one tools jar' >&2\nexit 4\n")
    ctx = ctx_for(install, "gateway")
    assert agent.stop_service(ctx)["stopped"] == []
    conf = install / "sequoiacm-cloud" / "conf" / "gateway" / "8080" / "application.properties"
    pid = fake_node("-jar", str(install / "sequoiacm-cloud/jars/sequoiacm-cloud-gateway-3.1.2.jar"),
                    f"--spring.config.location={conf}")
    with pytest.raises(agent.Failure, match=rf"exited 4 .*nodes still run: GATEWAY\(8080\) pid {pid}"):
        agent.stop_service(ctx)


def test_java_home_bin_comes_first_on_path() -> None:
    env = {"PATH": "/usr/local/bin:/usr/bin:/opt/jdk8/bin:/bin"}
    agent.use_java(env, "/opt/jdk8")
    assert env["JAVA_HOME"] == "/opt/jdk8"
    assert env["PATH"] == "/opt/jdk8/bin:/usr/local/bin:/usr/bin:/bin"


def test_every_ctl_call_gets_java_home_first_on_path(tmp_path: Path) -> None:
    ctx = agent.Ctx({"java_home": "/opt/jdk8"})
    done = agent.run_command(ctx, ["sh", "-c", 'command -v java || true; echo "$PATH"'])
    assert done.out.splitlines()[-1].split(":")[0] == "/opt/jdk8/bin"


def test_a_step_given_java_home_in_its_environment_puts_it_first_on_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Steps get JAVA_HOME as an environment variable (agentcall), not in their spec.
    monkeypatch.setenv("JAVA_HOME", "/opt/jdk8")
    monkeypatch.setenv("PATH", "/usr/local/sbin:/usr/bin")
    done = agent.run_command(agent.Ctx({}), ["sh", "-c", 'echo "$PATH"'])
    assert done.out.strip() == "/opt/jdk8/bin:/usr/local/sbin:/usr/bin"


class Health:
    """A tiny HTTP node answering its health endpoint."""

    def __init__(self, answers: dict[str, tuple[int, bytes]]) -> None:
        self.answers = answers
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                path = conn.recv(4096).split(b" ")[1].decode()
                code, body = self.answers.get(path, (404, b""))
                conn.sendall(f"HTTP/1.0 {code} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize(("answers", "expected"), [
    ({"/internal/v1/health": (200, b'{"status": "UP", "version": "3.2.2"}')}, None),
    ({"/health": (200, b'{"status": "UP"}')}, None),
    ({"/internal/v1/health": (200, b'{"status": "UP", "version": "3.1.2"}')},
     "runs version 3.1.2, not 3.2.2"),
    ({"/internal/v1/health": (200, b'{"status": "DOWN"}')}, "reports status DOWN"),
    ({"/internal/v1/health": (503, b"")}, "does not answer its health endpoint"),
    ({}, "does not answer its health endpoint"),
])
def test_a_node_is_healthy_only_when_up_with_the_expected_version(
    answers: dict[str, tuple[int, bytes]], expected: str | None, install: Path
) -> None:
    node = Health(answers)
    try:
        problem = agent.node_problem(ctx_for(install, "gateway"), node.port, {node.port: 1}, "3.2.2")
    finally:
        node.close()
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


def test_a_stopped_node_is_not_healthy(install: Path) -> None:
    assert agent.node_problem(ctx_for(install, "gateway"), 1, {}, "3.2.2") == "GATEWAY(1) is not running"


def _other_group() -> int | None:
    """A group this process may give files that is not its primary group, if any."""
    if os.geteuid() == 0:
        return 4242
    others = [g for g in os.getgroups() if g != os.getegid()]
    return others[0] if others else None


def test_copies_keep_group_mode_links_and_content(tmp_path: Path) -> None:
    gid = _other_group()
    if gid is None:
        pytest.skip("this user belongs to no second group")
    src = tmp_path / "src"
    (src / "lib" / "hbase").mkdir(parents=True)
    jar = src / "lib" / "hbase" / "client.jar"
    jar.write_bytes(b"customer jar\n")
    jar.chmod(0o640)
    (src / "lib" / "current").symlink_to("hbase/client.jar")
    for path in (src, src / "lib", src / "lib" / "hbase", jar, src / "lib" / "current"):
        os.chown(path, -1, gid, follow_symlinks=False)
    agent.copy_tree(str(src), str(tmp_path / "dst"))
    for rel in ("", "lib", "lib/hbase", "lib/hbase/client.jar", "lib/current"):
        a, b = (src / rel).lstat(), (tmp_path / "dst" / rel).lstat()
        assert (b.st_mode, b.st_uid, b.st_gid) == (a.st_mode, a.st_uid, a.st_gid), rel
    assert (tmp_path / "dst" / "lib" / "hbase" / "client.jar").read_bytes() == b"customer jar\n"
    assert os.readlink(tmp_path / "dst" / "lib" / "current") == "hbase/client.jar"
    assert stat.S_IMODE((tmp_path / "dst" / "lib" / "hbase" / "client.jar").stat().st_mode) == 0o640


def test_a_health_answer_names_the_version_it_runs(install: Path) -> None:
    body = json.dumps({"status": "UP", "version": "3.2.2"}).encode()
    node = Health({"/internal/v1/health": (200, body)})
    try:
        deadline = time.monotonic() + 5
        while agent.node_health(node.port) == (None, None) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert agent.node_health(node.port) == ("UP", "3.2.2")
    finally:
        node.close()
