"""Runs steps of the host agent (scmflow/agent/) on a host through a Session.

`call_agent` starts one agent process per step; `AgentLink` keeps one serving agent per
host and sends it step after step, which spares each step Python's start-up and imports
(on a sandbox host about a third of a pair's remote time).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from scmflow.agent.protocol import GREETING_KEY, PROTOCOL
from scmflow.agentpayload import agent_argv, serve_argv
from scmflow.errors import RemoteError, RemoteTimeout
from scmflow.session.base import Session, Stream, StreamEnded

# Lines a serving agent may print before its reply (none expected) that are kept for errors.
_NOISE_KEEP = 20
# How long a new serving agent may take to greet (Python's start-up on a busy host).
GREETING_TIMEOUT = 60.0
# A step's agent gets `timeout` as its own budget (`step_timeout`) and gives up when it
# runs out; the control side waits this much longer, so it never abandons a step that the
# agent is still carrying out.
STEP_MARGIN = 60.0


def request_line(op: str, spec: Mapping[str, Any], request_id: int | None = None) -> bytes:
    """One request for a serving agent; its reply carries the same `id`."""
    request: dict[str, Any] = {"op": op, "spec": dict(spec)}
    if request_id is not None:
        request["id"] = request_id
    return (json.dumps(request, sort_keys=True) + "\n").encode()


def is_greeting(line: Mapping[str, Any]) -> bool:
    """Whether a line from a serving agent is its greeting, of this protocol."""
    return line.get(GREETING_KEY) == PROTOCOL


def parse_agent_output(stdout: str) -> dict[str, Any]:
    """The agent's reply: the JSON object on the last non-empty line; ValueError if none."""
    for line in reversed(stdout.splitlines()):
        if line.strip():
            reply = json.loads(line)
            if not isinstance(reply, dict) or "ok" not in reply:
                raise ValueError("the last line is not an agent reply")
            return reply
    raise ValueError("no output")


def with_budget(spec: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """The spec with the agent's own time budget for the step."""
    return {**spec, "step_timeout": timeout}


class AgentError(RemoteError):
    """The agent ran and reported that its step failed."""

    def __init__(self, host: str, op: str, message: str, *, stderr: str = "") -> None:
        super().__init__(host, f"{op} failed: {message}", stderr=stderr)
        self.op = op
        self.reason = message


def call_agent(
    session: Session,
    op: str,
    spec: Mapping[str, Any],
    *,
    user: str | None,
    java_home: str | None,
    timeout: float,
) -> dict[str, Any]:
    """Run `op` with `spec` on the session's host as `user`; the agent's result on success."""
    env = {"JAVA_HOME": java_home} if java_home else None
    result = session.run(
        agent_argv(op, with_budget(spec, timeout)),
        user=user,
        env=env,
        timeout=timeout + STEP_MARGIN,
        check=False,
    )
    try:
        reply = parse_agent_output(result.stdout)
    except ValueError:
        raise RemoteError(
            session.host,
            f"{op}: the host agent gave no answer (exit {result.exit_code})",
            argv=result.argv,
            exit_code=result.exit_code,
            stderr=result.stderr or result.stdout,
        ) from None
    return _checked(session.host, op, reply)


class AgentLink:
    """One serving agent on a host, started on first use, one step at a time.

    Steps from several threads take turns, as the agent's per-host step lock would make
    them anyway. After a timeout or a lost agent the next step starts a fresh one.
    """

    def __init__(self, session: Session, *, user: str | None, java_home: str | None) -> None:
        self.session = session
        self.user = user
        self.env = {"JAVA_HOME": java_home} if java_home else None
        self._lock = threading.Lock()
        self._stream: Stream | None = None
        self._last_id = 0

    def call(self, op: str, spec: Mapping[str, Any], *, timeout: float) -> dict[str, Any]:
        """Run `op` with `spec`; the agent's result on success (AgentError/RemoteError if not)."""
        with self._lock:
            fresh = self._stream is None
            if self._stream is None:
                self._stream = self.session.open_stream(serve_argv(), user=self.user, env=self.env)
            stream = self._stream
            self._last_id += 1
            try:
                if fresh:
                    self._await_greeting(stream, op)
                reply = self._exchange(stream, op, spec, timeout, self._last_id)
            except BaseException:
                # a stream in an unknown position (or a dead agent) is not reused
                self._stream = None
                stream.close()
                raise
        return _checked(self.session.host, op, reply)

    def close(self) -> None:
        """Let the serving agent end (idempotent)."""
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def _await_greeting(self, stream: Stream, op: str) -> None:
        """Read up to the agent's greeting; nothing is sent to a process that has not greeted."""
        self._read_reply(stream, f"{op} (the host agent's greeting)", GREETING_TIMEOUT, is_greeting)

    def _exchange(
        self, stream: Stream, op: str, spec: Mapping[str, Any], timeout: float, request_id: int
    ) -> dict[str, Any]:
        stream.send(request_line(op, with_budget(spec, timeout), request_id))
        reply = self._read_reply(stream, op, timeout + STEP_MARGIN, lambda line: "ok" in line)
        answered = reply.pop("id", None)
        if answered != request_id:
            # Out of step with the agent: no later answer on this stream can be trusted.
            raise RemoteError(
                self.session.host,
                f"{op}: the host agent answered request {answered!r}, not request {request_id}",
            )
        return reply

    def _read_reply(
        self, stream: Stream, op: str, timeout: float, wanted: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        """The first JSON object line that `wanted` accepts; other lines are kept as noise."""
        deadline = time.monotonic() + timeout
        noise: list[str] = []
        while True:
            try:
                line = stream.read_line(max(deadline - time.monotonic(), 0.0))
            except StreamEnded as ended:
                raise RemoteError(
                    self.session.host,
                    f"{op}: the host agent gave no answer (exit {ended.remote_exit_code})",
                    argv=ended.argv,
                    exit_code=ended.remote_exit_code,
                    stderr=ended.stderr or "\n".join(noise),
                ) from None
            except RemoteTimeout as late:
                raise RemoteTimeout(
                    self.session.host, f"{op} did not finish within {timeout:g} s", argv=late.argv
                ) from None
            text = line.decode(errors="replace").strip()
            try:
                reply = json.loads(text)
            except ValueError:
                reply = None
            if isinstance(reply, dict) and wanted(reply):
                return reply
            if text:
                noise = [*noise, text][-_NOISE_KEEP:]


def _checked(host: str, op: str, reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok"):
        raise AgentError(host, op, str(reply.get("error", "unknown error")))
    return reply
