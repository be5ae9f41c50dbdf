"""The agent's health checks: what a node answers on its health endpoint, and at which version."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from scmflow.agent import health
from scmflow.agent.context import Ctx
from scmflow.catalog import load_catalog


def gateway(tmp_path: Path) -> Ctx:
    """An agent Ctx for the gateway of an install under `tmp_path`."""
    return Ctx({"install_path": str(tmp_path), "service": load_catalog().get("gateway").to_spec()})


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
    answers: dict[str, tuple[int, bytes]], expected: str | None, tmp_path: Path
) -> None:
    node = Health(answers)
    try:
        problem = health.node_problem(gateway(tmp_path), node.port, {node.port: 1}, "3.2.2")
    finally:
        node.close()
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


def test_a_stopped_node_is_not_healthy(tmp_path: Path) -> None:
    assert health.node_problem(gateway(tmp_path), 1, {}, "3.2.2") == "GATEWAY(1) is not running"


def test_a_health_answer_names_the_version_it_runs(tmp_path: Path) -> None:
    body = json.dumps({"status": "UP", "version": "3.2.2"}).encode()
    node = Health({"/internal/v1/health": (200, body)})
    try:
        deadline = time.monotonic() + 5
        while health.node_health(node.port) == (None, None) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health.node_health(node.port) == ("UP", "3.2.2")
    finally:
        node.close()
