"""AgentLink: one serving agent per host, step after step, recovering from a lost or late one."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from scmflow import agentcall
from scmflow.agentcall import AgentError, AgentLink
from scmflow.catalog import load_catalog
from scmflow.errors import RemoteError, RemoteTimeout
from scmflow.session import local as remote
from scmflow.session.base import Stream
from scmflow.session.local import LocalSession

# A stand-in agent with the serving protocol: replies with its pid; `slow` sleeps, `die` exits 3.
FAKE = r"""
import json, os, sys, time
print("a line that is not a reply", flush=True)
print(json.dumps({"scmflow_agent": 2, "pid": os.getpid()}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    op = request["op"]
    if op == "slow":
        time.sleep(float(request["spec"]["seconds"]))
    if op == "die":
        sys.stderr.write("agent crashed\n")
        sys.exit(3)
    ok = op != "refuse"
    reply = {"ok": ok, "pid": os.getpid(), "java": os.environ.get("JAVA_HOME"), "error": "refused"}
    # `stale` answers as if for the request before, as an agent out of step would.
    reply["id"] = request["id"] - 1 if op == "stale" else request["id"]
    print(json.dumps(reply), flush=True)
"""
# An agent that never greets: whatever reaches its stdin is written to a file.
SILENT = r"""
import sys, time
with open(sys.argv[1], "ab") as seen:
    seen.write(sys.stdin.buffer.read1(4096))
time.sleep(30)
"""


class CountingSession(LocalSession):
    """A LocalSession that counts the streams it opens."""

    def __init__(self) -> None:
        super().__init__("h1")
        self.opened = 0

    def open_stream(
        self, argv: Sequence[str], *, user: str | None = None, env: Mapping[str, str] | None = None
    ) -> Stream:
        self.opened += 1
        return super().open_stream(argv, user=user, env=env)


@pytest.fixture
def fake_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agentcall, "serve_argv", lambda: [sys.executable, "-c", FAKE])


@pytest.mark.usefixtures("fake_agent")
def test_steps_share_one_agent_with_the_java_home_in_its_environment() -> None:
    session = CountingSession()
    link = AgentLink(session, user=None, java_home="/opt/jdk")
    first = link.call("a", {}, timeout=10)
    second = link.call("b", {}, timeout=10)
    assert first["pid"] == second["pid"] and first["java"] == "/opt/jdk"
    assert session.opened == 1
    link.close()
    session.close()


@pytest.mark.usefixtures("fake_agent")
def test_a_refused_step_is_an_agent_error_and_the_agent_stays() -> None:
    session = CountingSession()
    link = AgentLink(session, user=None, java_home=None)
    with pytest.raises(AgentError, match=r"\[h1\] refuse failed: refused"):
        link.call("refuse", {}, timeout=10)
    assert link.call("a", {}, timeout=10)["java"] is None
    assert session.opened == 1
    session.close()


@pytest.mark.usefixtures("fake_agent")
def test_a_lost_agent_is_reported_with_its_stderr_and_replaced() -> None:
    session = CountingSession()
    link = AgentLink(session, user=None, java_home=None)
    before = link.call("a", {}, timeout=10)["pid"]
    with pytest.raises(RemoteError) as lost:
        link.call("die", {}, timeout=10)
    assert str(lost.value) == "[h1] die: the host agent gave no answer (exit 3) (agent crashed)"
    assert lost.value.remote_exit_code == 3
    assert link.call("a", {}, timeout=10)["pid"] != before
    assert session.opened == 2
    session.close()


@pytest.mark.usefixtures("fake_agent")
def test_a_late_step_times_out_and_the_next_step_gets_a_fresh_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agentcall, "STEP_MARGIN", 0.0)
    monkeypatch.setattr(remote, "_EXIT_WAIT", 0.5)  # the late agent is killed sooner (5 s in use)
    session = CountingSession()
    link = AgentLink(session, user=None, java_home=None)
    with pytest.raises(RemoteTimeout, match=r"\[h1\] slow did not finish within 0.5 s"):
        link.call("slow", {"seconds": 30}, timeout=0.5)
    assert link.call("a", {}, timeout=10)["ok"] is True
    assert session.opened == 2
    session.close()


@pytest.mark.usefixtures("fake_agent")
def test_steps_from_several_threads_take_turns() -> None:
    session = CountingSession()
    link = AgentLink(session, user=None, java_home=None)
    pids: list[int] = []

    def step() -> None:
        pids.append(link.call("slow", {"seconds": 0.05}, timeout=30)["pid"])

    workers = [threading.Thread(target=step) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(pids) == 6 and len(set(pids)) == 1
    assert session.opened == 1
    session.close()


def test_the_real_agent_serves_steps_in_one_process(tmp_path: Path) -> None:
    session = CountingSession()
    link = AgentLink(session, user=None, java_home=None)
    missing = str(tmp_path / "missing")
    assert link.call("exists", {"paths": [str(tmp_path), missing]}, timeout=30)["exists"] == [str(tmp_path)]
    assert link.call("prepare", {"dirs": [{"path": str(tmp_path / "made")}]}, timeout=30)["ok"] is True
    assert (tmp_path / "made").is_dir()
    with pytest.raises(AgentError, match="unknown op 'explode'"):
        link.call("explode", {}, timeout=30)
    assert session.opened == 1
    link.close()
    session.close()


@pytest.mark.usefixtures("fake_agent")
def test_a_reply_to_another_request_is_an_error_and_the_agent_is_replaced() -> None:
    session = CountingSession()
    link = AgentLink(session, user=None, java_home=None)
    first = link.call("a", {}, timeout=10)
    with pytest.raises(RemoteError, match=r"stale: the host agent answered request 1, not request 2"):
        link.call("stale", {}, timeout=10)
    again = link.call("a", {}, timeout=10)
    assert again["pid"] != first["pid"] and session.opened == 2
    link.close()
    session.close()


def test_nothing_is_sent_to_an_agent_that_has_not_greeted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = tmp_path / "stdin"
    monkeypatch.setattr(agentcall, "serve_argv", lambda: [sys.executable, "-c", SILENT, str(seen)])
    monkeypatch.setattr(agentcall, "GREETING_TIMEOUT", 1.0)
    monkeypatch.setattr(remote, "_EXIT_WAIT", 0.5)  # the silent agent is killed sooner (5 s in use)
    session = CountingSession()
    link = AgentLink(session, user=None, java_home=None)
    with pytest.raises(RemoteTimeout, match="greeting"):
        link.call("a", {"secret-ish": "spec"}, timeout=10)
    link.close()
    session.close()
    assert not seen.exists() or seen.read_bytes() == b""


def test_the_real_agent_greets_and_echoes_request_ids() -> None:
    session = CountingSession()
    link = AgentLink(session, user=None, java_home=None)
    assert link.call("exists", {"paths": ["/"]}, timeout=60)["exists"] == ["/"]
    # The id is the protocol's, checked and dropped: the step's result does not carry it.
    assert link.call("exists", {"paths": []}, timeout=60) == {"ok": True, "exists": []}
    link.close()
    session.close()


def test_the_agent_gives_up_on_a_step_before_the_control_side_does(tmp_path: Path) -> None:
    session = CountingSession()
    link = AgentLink(session, user=None, java_home=None)
    # A ctl that hangs: the agent's budget (the step's timeout) ends it, and the reply
    # still arrives within the control side's wait (the timeout plus STEP_MARGIN).
    ctl = tmp_path / "sequoiacm" / "sequoiacm-cloud" / "bin" / "scmcloudctl.sh"
    ctl.parent.mkdir(parents=True)
    ctl.write_text("#!/bin/sh\nsleep 30\n")
    ctl.chmod(0o755)
    service = load_catalog().get("gateway").to_spec()
    started = time.monotonic()
    with pytest.raises(AgentError, match="timeout"):
        link.call("verify", {"install_path": str(tmp_path / "sequoiacm"), "service": service,
                             "ports": [8080], "version": "3.2.2"}, timeout=2)
    assert time.monotonic() - started < 10
    link.close()
    session.close()
