"""Whether a service is healthy at a version: the version on disk, its nodes' health answers."""

import json
import socket
from typing import Any, Dict, List, Optional, Tuple

from .context import Ctx, wait_for
from .nodes import daemon_pid, running_ports
from .packages import installed_version
from .procs import seconds_since_start

_HEALTH_PATHS = ("/internal/v1/health", "/health")


def node_health(port: int, timeout: float = 5.0) -> Tuple[Optional[str], Optional[str]]:
    """(status, version) a node reports on its health endpoint on this host; (None, None) if none.

    SequoiaCM nodes answer `/internal/v1/health` (Spring Boot actuator style, `status`
    UP when ready); `/health` is asked when that path is unknown to the node.
    """
    for path in _HEALTH_PATHS:
        code, body = _http_get(port, path, timeout)
        if code == 404:
            continue
        if code != 200:
            return None, None
        try:
            answer = json.loads(body.decode("utf-8", "replace"))
        except ValueError:
            return None, None
        if not isinstance(answer, dict):
            return None, None
        version = answer.get("version")
        return str(answer.get("status") or ""), (str(version) if version is not None else None)
    return None, None


def _http_get(port: int, path: str, timeout: float) -> Tuple[int, bytes]:
    """Status code and body of GET http://127.0.0.1:port/path; (0, b"") when there is no answer."""
    request = f"GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(request)
            while len(data) < (1 << 20):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    words = head.split(b"\r\n", 1)[0].split()
    if len(words) < 2 or not words[0].startswith(b"HTTP/") or not words[1].isdigit():
        return 0, b""
    return int(words[1]), body


def node_problem(ctx: Ctx, port: int, running: Dict[int, int], version: Optional[str]) -> Optional[str]:
    """Why the node on `port` is not running the expected version and healthy, or None."""
    name = f"{ctx.service()['printed']}({port})"
    if port not in running:
        return f"{name} is not running"
    status, reported = node_health(port)
    if status is None:
        return f"{name} does not answer its health endpoint on port {port}"
    if status.upper() != "UP":
        return f"{name} reports status {status or 'none'}, not UP"
    if version is not None and reported is not None and reported != version:
        return f"{name} runs version {reported}, not {version}"
    return None


def wrong_version(port: int, version: Optional[str]) -> bool:
    """Whether the node on `port` answers UP with a version other than `version`."""
    if version is None:
        return False
    status, reported = node_health(port)
    return status is not None and status.upper() == "UP" and reported is not None and reported != version


def health_problems(
    ctx: Ctx, version: Optional[str], ports: List[int], daemon: bool, wait: float
) -> Tuple[List[str], Dict[str, Any]]:
    """What is wrong with the service's version and nodes (waiting up to `wait` for nodes)."""
    problems: List[str] = []
    found = installed_version(ctx)
    if found != version:
        problems.append(f"version on disk is {found or 'none'}, expected {version or 'none'}")
    state: Dict[str, Any] = {"version": found}

    healthy: Dict[str, float] = {}
    # A node that answers with another version will not change its mind: no use waiting.
    final: List[bool] = []

    def node_problems() -> List[str]:
        out: List[str] = []
        if ports:
            running = running_ports(ctx)
            state["pids"] = {str(p): running.get(p) for p in ports}
            for port in ports:
                problem = node_problem(ctx, port, running, version)
                if problem:
                    out.append(problem)
                    if wrong_version(port, version):
                        final.append(True)
                elif str(port) not in healthy:
                    healthy[str(port)] = seconds_since_start(running[port])
        if daemon:
            state["daemon_pid"] = daemon_pid(ctx)
            if state["daemon_pid"] is None:
                out.append("DAEMON is not running")
        return out

    nodes: List[str] = []

    def settled() -> bool:
        nodes[:] = node_problems()
        return not nodes or bool(final)

    # with the wrong files on disk no node can come up right: say so at once
    wait_for(settled, 0.0 if problems else wait)
    if ports:
        # how long each node took from its process start to its first healthy answer
        state["healthy_after_s"] = healthy
    return problems + nodes, state
