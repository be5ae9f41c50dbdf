"""Look at a sandbox install from the outside: tree digests, node health, free ports."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

from scmflow.sandbox.errors import SandboxError
from scmflow.sandbox.faults import FAULTS_DIR

_CHUNK = 1 << 20
# Where every node answers its health (Spring Boot actuator style), as the real nodes do.
HEALTH_PATH = "/internal/v1/health"


def tree_digest(install_path: Path, *, include_owner: bool = False) -> str:
    """sha256 over relative paths, types, modes, symlink targets and file contents.

    Runtime state is ignored: `log/` directories, `*.pid` files and the fault switches.
    """
    h = hashlib.sha256()
    for rel, path in _walk(install_path):
        st = path.lstat()
        owner = f" {st.st_uid}:{st.st_gid}" if include_owner else ""
        h.update(f"{rel}\0{stat.S_IFMT(st.st_mode):o} {stat.S_IMODE(st.st_mode):o}{owner}\0"
                 .encode("utf-8", "surrogateescape"))
        if stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(path).encode("utf-8", "surrogateescape"))
        elif stat.S_ISREG(st.st_mode):
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _walk(root: Path) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        top = base == root
        dirnames[:] = sorted(
            d for d in dirnames if d != "log" and not (top and d == FAULTS_DIR)
        )
        names = sorted([*dirnames, *(f for f in filenames if not f.endswith(".pid"))])
        for name in names:
            path = base / name
            out.append((path.relative_to(root).as_posix(), path))
    out.sort()
    return out


def health(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    """GET http://host:port/internal/v1/health and return its JSON.

    SandboxError when the node does not answer 200 (a starting node answers 503, DOWN).
    """
    url = f"{host}:{port}{HEALTH_PATH}"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", HEALTH_PATH)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise SandboxError(f"{url} answered HTTP {resp.status}")
        data = json.loads(body)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise SandboxError(f"{url}: {exc}") from exc
    finally:
        conn.close()
    if not isinstance(data, dict):
        raise SandboxError(f"{url} answered {data!r}")
    return data


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that were free on every address a moment ago."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("0.0.0.0", 0))  # noqa: S104 (nodes listen on every address)
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()
