"""Runs one step of the host agent (scmflow/agent.py) on a host through a Session."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scmflow import agent
from scmflow.errors import RemoteError
from scmflow.remote import Session


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
        agent.agent_argv(op, dict(spec)), user=user, env=env, timeout=timeout, check=False
    )
    try:
        reply = agent.parse_agent_output(result.stdout)
    except ValueError:
        raise RemoteError(
            session.host,
            f"{op}: the host agent gave no answer (exit {result.exit_code})",
            argv=result.argv,
            exit_code=result.exit_code,
            stderr=result.stderr or result.stdout,
        ) from None
    if not reply.get("ok"):
        raise AgentError(session.host, op, str(reply.get("error", "unknown error")))
    return reply
