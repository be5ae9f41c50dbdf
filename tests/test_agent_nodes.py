"""The agent's reading of nodes, held to the reference's facts with stand-in ctl tools.

Each stand-in prints exactly what original-tool.md (section Nodes) says the real tools
print, so these tests disagree with the agent whenever it expects anything else.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scmflow.agent import nodes
from scmflow.agent.context import Ctx, Failure
from scmflow.catalog import load_catalog

CATALOG = load_catalog()
JVM_FAILURE = "Error occurred during initialization of VM\nCould not reserve enough space for object heap\n"


def ctx_for(install: Path, service: str, **extra: Any) -> Ctx:
    """An agent Ctx for one service of an install at `install`."""
    spec = {"install_path": str(install), "service": CATALOG.get(service).to_spec(), **extra}
    return Ctx(spec)


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
    listed = nodes.list_nodes(ctx_for(install, "service-center"))
    assert listed == [
        {"port": 8800, "pid": pid, "running": True},
        {"port": 8801, "pid": None, "running": False},
    ]


def test_the_operators_printed_name_is_not_a_listing_name(install: Path) -> None:
    configure(install, "service-center", 8800)
    write_ctl(install, "service-center", listing("SERVICE_CENTER(8800) (-)", "Total:1"))
    with pytest.raises(Failure, match=r"SERVICE_CENTER on .*port 8800 .*missing"):
        nodes.list_nodes(ctx_for(install, "service-center"))


def test_a_listed_pid_that_is_not_the_node_does_not_count_as_running(install: Path, fake_node: Any) -> None:
    configure(install, "gateway", 8080)
    other = fake_node("-jar", "/elsewhere/some-other-app.jar")
    write_ctl(install, "gateway", listing(f"GATEWAY(8080) ({other})", "Total:1"))
    (node,) = nodes.list_nodes(ctx_for(install, "gateway"))
    assert node["running"] is False and node["stale_pid"] == other


def test_a_configured_node_missing_from_the_listing_is_an_error(install: Path) -> None:
    configure(install, "content-server", 15000, 15001)
    write_ctl(install, "content-server", listing("CONTENT-SERVER(15000) (-)", "Total:1"))
    with pytest.raises(Failure, match=r"CONTENT_SERVER on .*port 15001"):
        nodes.list_nodes(ctx_for(install, "content-server"))


def test_no_node_is_exit_1_with_total_0(install: Path) -> None:
    write_ctl(install, "gateway", listing("Total:0", code=1))
    assert nodes.list_nodes(ctx_for(install, "gateway")) == []


def test_a_jvm_that_cannot_start_is_not_an_empty_listing(
    install: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nodes, "_LIST_RETRY_PAUSE", 0.0)
    configure(install, "gateway", 8080)
    write_ctl(install, "gateway", f"printf '{JVM_FAILURE}' >&2\nexit 1\n")
    with pytest.raises(Failure, match="initialization of VM") as caught:
        nodes.list_nodes(ctx_for(install, "gateway"))
    assert caught.value.step == "list"


def test_a_listing_that_fails_once_is_tried_again(install: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodes, "_LIST_RETRY_PAUSE", 0.0)
    configure(install, "gateway", 8080)
    calls = tmp_path / "calls"
    write_ctl(install, "gateway", (
        f"echo x >> {calls}\n"
        f"if [ $(wc -l < {calls}) -eq 1 ]; then printf '{JVM_FAILURE}' >&2; exit 1; fi\n"
        + listing("GATEWAY(8080) (-)", "Total:1")
    ))
    assert nodes.list_nodes(ctx_for(install, "gateway")) == [{"port": 8080, "pid": None, "running": False}]
    assert len(calls.read_text().splitlines()) == 2


@pytest.mark.parametrize("out", [
    listing("GATEWAY(8080) (-)", code=0),                     # no Total line
    listing("GATEWAY(8080) (-)", "Total:1", code=8),          # system error
    listing("Total:1", code=1),                               # exit 1 is only "none" with Total:0
])
def test_anything_else_is_not_a_listing(install: Path, out: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodes, "_LIST_RETRY_PAUSE", 0.0)
    configure(install, "gateway", 8080)
    write_ctl(install, "gateway", out)
    with pytest.raises(Failure, match="cannot list the nodes"):
        nodes.list_nodes(ctx_for(install, "gateway"))


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
    nodes.list_at_once(ctxs)
    seen = [int(n) for n in (tmp_path / "seen").read_text().split()]
    assert len(seen) == len({nodes.ctl_path(c) for c in ctxs})
    assert max(seen) <= nodes._LISTS_AT_ONCE and max(seen) > 1


def test_a_stop_whose_ctl_cannot_list_looks_for_the_node_processes(
    install: Path, fake_node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A replace cut short took the tools jar with it: the ctl dies, the nodes were stopped.
    monkeypatch.setattr(nodes, "_LIST_RETRY_PAUSE", 0.0)
    configure(install, "gateway", 8080)
    write_ctl(install, "gateway", "echo 'ERROR: expected exactly one tools jar' >&2\nexit 4\n")
    ctx = ctx_for(install, "gateway")
    assert nodes.stop_service(ctx)["stopped"] == []
    conf = install / "sequoiacm-cloud" / "conf" / "gateway" / "8080" / "application.properties"
    pid = fake_node("-jar", str(install / "sequoiacm-cloud/jars/sequoiacm-cloud-gateway-3.1.2.jar"),
                    f"--spring.config.location={conf}")
    with pytest.raises(Failure, match=rf"exited 4 .*nodes still run: GATEWAY\(8080\) pid {pid}"):
        nodes.stop_service(ctx)
