"""The remote steps of a pair: the agent spec each action sends, as whom, with what timeout."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from scmflow import agentcall
from scmflow.actions import HostActions, RemoteLayout
from scmflow.agent.protocol import PROTOCOL
from scmflow.agentcall import AgentError
from scmflow.catalog import load_catalog
from scmflow.errors import RemoteError
from scmflow.plan import Pair, PlannedNode
from scmflow.session.base import CommandResult, StreamEnded

CATALOG = load_catalog()
LAYOUT = RemoteLayout(
    install_path="/opt/sequoiacm",
    install_user="scmadmin",
    upgrade_dir="/opt/upgrade/sequoiacm/upgrade-2024-05-01-08:00:00",
    backup_dir="/opt/backup/sequoiacm/backup-2024-05-01-08:00:00",
    start_timeout=100,
)
PACKAGES = {"gateway": "sequoiacm-cloud-3.2.2-release.tar.gz", "daemon": "daemon-3.2.2-release.tar.gz"}
GATEWAY = Pair(
    host="h1",
    service="gateway",
    printed="GATEWAY",
    old_version="3.1.2",
    new_version="3.2.2",
    nodes=(PlannedNode(8080, True), PlannedNode(8081, False), PlannedNode(8082, True)),
)
DAEMON = Pair(
    host="h1",
    service="daemon",
    printed="DAEMON",
    old_version="3.1.2",
    new_version="3.2.2",
    nodes=(PlannedNode(None, True),),
)


class FakeStream:
    """A serving agent's stream: answers each request line with `replies[op]` (default ok).

    A reply without an agent answer in it is followed by the agent's end (exit 1, "err tail").
    """

    def __init__(self, session: FakeSession, user: str | None, env: Mapping[str, str] | None) -> None:
        self.host = session.host
        self.session = session
        self.user = user
        self.env = env
        # A serving agent greets first (agent.serve).
        self.lines: list[bytes | None] = [json.dumps({"scmflow_agent": PROTOCOL}).encode() + b"\n"]
        self.closed = False

    def send(self, data: bytes) -> None:
        assert not self.closed
        request = json.loads(data)
        op = request["op"]
        spec = dict(request["spec"])
        # `timeout` is the step's budget, which the agent gets as step_timeout.
        budget = spec.pop("step_timeout")
        self.session.calls.append(
            {"op": op, "spec": spec, "user": self.user, "env": self.env, "timeout": budget}
        )
        text = self.session.replies.get(op, json.dumps({"ok": True, "op": op, "moved": ["jars"]}))
        self.lines += [_with_id(line, request["id"]).encode() + b"\n" for line in text.splitlines()]
        if '"ok"' not in text:
            self.lines.append(None)

    def read_line(self, timeout: float) -> bytes:
        if self.session.calls:
            # The control side waits longer than the agent's own budget.
            assert timeout <= self.session.calls[-1]["timeout"] + agentcall.STEP_MARGIN
        line = self.lines.pop(0)
        if line is None:
            raise StreamEnded(self.host, "the command ended", exit_code=1, stderr="err tail")
        return line

    def close(self) -> None:
        self.closed = True


def _with_id(line: str, request_id: int) -> str:
    """A reply line answering `request_id`, as the serving agent marks its replies."""
    try:
        reply = json.loads(line)
    except ValueError:
        return line
    if isinstance(reply, dict) and "ok" in reply:
        return json.dumps({**reply, "id": request_id})
    return line


class FakeSession:
    """Opens FakeStreams; `replies` by op."""

    def __init__(self, replies: Mapping[str, str] | None = None) -> None:
        self.host = "h1"
        self.replies = dict(replies or {})
        self.calls: list[dict[str, Any]] = []
        self.streams: list[FakeStream] = []

    def open_stream(
        self, argv: Sequence[str], *, user: str | None = None, env: Mapping[str, str] | None = None
    ) -> FakeStream:
        assert list(argv)[-1] == "--serve"
        self.streams.append(FakeStream(self, user, env))
        return self.streams[-1]

    def run(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        raise AssertionError("actions talk to the serving agent only")

    def put(self, local: Path, remote: str, *, sha256: str | None = None, progress: Any = None) -> None:
        raise AssertionError("actions send no files")

    def close(self) -> None:
        pass


def actions(session: FakeSession, **kwargs: Any) -> HostActions:
    return HostActions(
        session, layout=LAYOUT, java_home="/opt/jdk", catalog=CATALOG, packages=PACKAGES, **kwargs
    )


def one_call(action: str, pair: Pair = GATEWAY, **kwargs: Any) -> tuple[dict[str, Any], Mapping[str, Any]]:
    session = FakeSession()
    reply = actions(session, **kwargs)(action, pair)
    (call,) = session.calls
    assert call["op"] == action
    assert call["user"] == "scmadmin"
    assert call["env"] == {"JAVA_HOME": "/opt/jdk"}
    return call, reply


BASE = {
    "install_path": "/opt/sequoiacm",
    "service": CATALOG.get("gateway").to_spec(),
    "backup_dir": "/opt/backup/sequoiacm/backup-2024-05-01-08:00:00/gateway",
    "lock_path": "/opt/backup/sequoiacm/backup-2024-05-01-08:00:00/.agent.lock",
}


def test_layout_paths() -> None:
    assert LAYOUT.lock_path == "/opt/backup/sequoiacm/backup-2024-05-01-08:00:00/.agent.lock"
    assert LAYOUT.pair_backup_dir("om-server") == "/opt/backup/sequoiacm/backup-2024-05-01-08:00:00/om-server"
    assert LAYOUT.package_path("x.tar.gz") == "/opt/upgrade/sequoiacm/upgrade-2024-05-01-08:00:00/x.tar.gz"
    assert LAYOUT.to_record() == {
        "install_path": "/opt/sequoiacm",
        "install_user": "scmadmin",
        "upgrade_dir": "/opt/upgrade/sequoiacm/upgrade-2024-05-01-08:00:00",
        "backup_dir": "/opt/backup/sequoiacm/backup-2024-05-01-08:00:00",
        "start_timeout": 100,
        "admin_user": "root",
    }


def test_backup_spec_and_reply_without_ok() -> None:
    call, reply = one_call("backup")
    assert call["spec"] == BASE
    assert call["timeout"] == 3600.0
    assert reply == {"op": "backup", "moved": ["jars"]}


def test_replace_spec_names_the_package_in_the_run_dir() -> None:
    call, _ = one_call("replace")
    assert call["spec"] == {
        **BASE,
        "package": "/opt/upgrade/sequoiacm/upgrade-2024-05-01-08:00:00/sequoiacm-cloud-3.2.2-release.tar.gz",
        "new_version": "3.2.2",
    }
    assert call["timeout"] == 1800.0


def test_restart_spec_starts_only_the_nodes_that_ran_and_tells_the_operator() -> None:
    started: list[tuple[str, int | None]] = []
    call, _ = one_call("restart", on_node_start=lambda p, port: started.append((p.service, port)))
    assert call["spec"] == {**BASE, "ports": [8080, 8082], "daemon": False, "timeout": 100}
    # each running node gets the start timeout, plus a margin for the step itself
    assert call["timeout"] == (100 + 60) * 2 + 120
    assert started == [("gateway", 8080), ("gateway", 8082)]


def test_restart_of_a_daemon() -> None:
    started: list[tuple[str, int | None]] = []
    call, _ = one_call("restart", DAEMON, on_node_start=lambda p, port: started.append((p.service, port)))
    assert call["spec"]["ports"] == [] and call["spec"]["daemon"] is True
    assert call["spec"]["service"] == CATALOG.get("daemon").to_spec()
    assert call["timeout"] == (100 + 60) + 120
    assert started == [("daemon", None)]


def test_restart_with_nothing_running_still_has_a_timeout() -> None:
    idle = Pair("h1", "gateway", "GATEWAY", "3.1.2", "3.2.2", (PlannedNode(8080, False),))
    call, _ = one_call("restart", idle)
    assert call["spec"]["ports"] == []
    assert call["timeout"] == (100 + 60) + 120


def test_verify_spec_waits_for_health_up_to_the_start_timeout() -> None:
    call, _ = one_call("verify")
    assert call["spec"] == {**BASE, "version": "3.2.2", "ports": [8080, 8082], "daemon": False, "wait": 100}
    assert call["timeout"] == 300.0


def test_restore_spec_brings_back_the_old_version_and_its_nodes() -> None:
    call, _ = one_call("restore")
    assert call["spec"] == {
        **BASE,
        "ports": [8080, 8082],
        "daemon": False,
        "old_version": "3.1.2",
        "timeout": 100,
    }
    assert call["timeout"] == (100 + 60) * 2 + 120 + 1800.0


def test_restore_of_a_pair_that_was_absent_before() -> None:
    new = Pair("h1", "non-service", "NON_SERVICE[doc, driver, tools]", None, "3.2.2", ())
    call, _ = one_call("restore", new)
    assert call["spec"]["old_version"] is None
    assert call["spec"]["service"]["name"] == "non-service"


def test_abandon_only_names_the_backup_and_the_lock() -> None:
    call, _ = one_call("abandon")
    assert call["spec"] == {"backup_dir": BASE["backup_dir"], "lock_path": BASE["lock_path"]}
    assert call["timeout"] == 600.0


def test_an_unknown_action_is_a_programming_error() -> None:
    session = FakeSession()
    with pytest.raises(ValueError, match="no such action 'explode'"):
        actions(session)("explode", GATEWAY)
    assert session.calls == []


def test_a_failing_step_raises_the_agents_message() -> None:
    session = FakeSession(
        {"replace": json.dumps({"ok": False, "error": "no space left on h1:/opt", "step": "extract"})}
    )
    with pytest.raises(AgentError) as caught:
        actions(session)("replace", GATEWAY)
    assert str(caught.value) == "[h1] replace failed: no space left on h1:/opt"
    assert caught.value.op == "replace" and caught.value.reason == "no space left on h1:/opt"


def test_a_step_without_an_agent_answer_is_a_remote_error_with_its_output() -> None:
    session = FakeSession({"verify": "Traceback (most recent call last):\nSyntaxError: bad\n"})
    with pytest.raises(RemoteError) as caught:
        actions(session)("verify", GATEWAY)
    assert not isinstance(caught.value, AgentError)
    assert str(caught.value) == "[h1] verify: the host agent gave no answer (exit 1) (err tail)"
    assert caught.value.remote_exit_code == 1


def test_without_java_home_no_environment_is_sent() -> None:
    session = FakeSession()
    HostActions(session, layout=LAYOUT, java_home="", catalog=CATALOG, packages=PACKAGES)("backup", GATEWAY)
    assert session.calls[0]["env"] is None


def test_steps_of_a_host_share_one_serving_agent_until_it_is_lost() -> None:
    session = FakeSession({"verify": "Traceback (most recent call last):\n"})
    host = actions(session)
    host("backup", GATEWAY)
    host("replace", GATEWAY)
    assert len(session.streams) == 1
    with pytest.raises(RemoteError):
        host("verify", GATEWAY)
    # the lost agent's stream is closed and the next step starts a fresh one
    assert session.streams[0].closed
    host("restore", GATEWAY)
    assert len(session.streams) == 2 and not session.streams[1].closed
    host.close()
    assert session.streams[1].closed


def test_a_failed_step_keeps_the_serving_agent() -> None:
    session = FakeSession({"backup": json.dumps({"ok": False, "error": "disk full", "step": "copy"})})
    host = actions(session)
    with pytest.raises(AgentError):
        host("backup", GATEWAY)
    host("abandon", GATEWAY)
    assert len(session.streams) == 1 and not session.streams[0].closed


def test_restart_right_after_this_process_replaced_the_pair_skips_the_listing() -> None:
    session = FakeSession()
    host = actions(session)
    host("restart", GATEWAY)
    host("replace", GATEWAY)
    host("restart", GATEWAY)
    host("restart", GATEWAY)
    flags = [c["spec"].get("nodes_down") for c in session.calls if c["op"] == "restart"]
    # a restart on its own (a resume or retry) lists the nodes; so does a second one
    assert flags == [None, True, None]


def test_a_failed_replace_does_not_vouch_for_stopped_nodes() -> None:
    session = FakeSession({"replace": json.dumps({"ok": False, "error": "still running", "step": "stop"})})
    host = actions(session)
    with pytest.raises(AgentError):
        host("replace", GATEWAY)
    host("restart", GATEWAY)
    assert "nodes_down" not in session.calls[-1]["spec"]
