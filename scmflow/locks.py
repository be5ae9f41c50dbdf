"""Run locks: one run at a time per status directory (control machine) and per host.

The control lock is an flock, so it dies with its process and is never stale. The host
lock is a file in the remote upgrade pack directory naming the run and the control host;
a run killed with SIGKILL leaves it behind, so a refusal says whether its holder still
lives (when it was this machine) and `--break-lock` takes it over.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scmflow.agentcall import AgentError, call_agent
from scmflow.errors import LockError, ScmflowError
from scmflow.remote import Session

CONTROL_LOCK_NAME = ".scmflow.lock"
HOST_LOCK_NAME = ".scmflow-run.lock"


@dataclass(frozen=True)
class RunIdentity:
    """Who holds a lock: written into every lock this run takes."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    control_host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    def describe(self) -> dict[str, Any]:
        """The holder record."""
        return {
            "run_id": self.run_id,
            "control_host": self.control_host,
            "pid": self.pid,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


@contextmanager
def control_lock(status_dir: Path, me: RunIdentity) -> Iterator[None]:
    """Hold the status directory's lock for the duration of the block."""
    status_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = status_dir / CONTROL_LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            raise LockError(
                f"another scmflow run holds {path}: {_holder_text(holder)}; wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me.describe()).encode(), 0)
        yield
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        value = json.loads(data.decode() or "{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _holder_text(holder: Mapping[str, Any]) -> str:
    return (
        f"run {holder.get('run_id', '?')} from {holder.get('control_host', '?')} "
        f"(pid {holder.get('pid', '?')}) since {holder.get('time', '?')}"
    )


def host_lock_path(upgrade_pack_path: str) -> str:
    """Where the per-host run lock lives on every host."""
    return f"{upgrade_pack_path.rstrip('/')}/{HOST_LOCK_NAME}"


@contextmanager
def host_locks(
    sessions: Mapping[str, Session],
    *,
    upgrade_pack_path: str,
    admin_user: str | None,
    login_users: Mapping[str, str],
    me: RunIdentity,
    force: bool,
) -> Iterator[None]:
    """Hold the run lock on every host for the duration of the block; all or none."""
    path = host_lock_path(upgrade_pack_path)
    taken: list[str] = []
    errors: list[str] = []

    def take(host: str) -> None:
        session = sessions[host]
        spec = {"dirs": [{"path": upgrade_pack_path, "owner": login_users[host], "fresh": False}]}
        call_agent(session, "prepare", spec, user=admin_user, java_home=None, timeout=120.0)
        call_agent(
            session,
            "lock",
            {"lock_path": path, "force": force, **me.describe()},
            user=None,
            java_home=None,
            timeout=120.0,
        )

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(sessions)))) as pool:
        futures = {host: pool.submit(take, host) for host in sessions}
        for host, future in futures.items():
            exc = future.exception()
            if exc is None:
                taken.append(host)
            else:
                errors.append(_lock_error_text(host, exc, me))
    try:
        if errors:
            raise LockError("; ".join(errors))
        yield
    finally:
        _release(sessions, taken, path, me)


def _lock_error_text(host: str, exc: BaseException, me: RunIdentity) -> str:
    if not isinstance(exc, AgentError) or exc.op != "lock":
        return exc.message if isinstance(exc, ScmflowError) else f"[{host}] {exc}"
    text = f"[{host}] the run lock {exc.reason}"
    if me.control_host in exc.reason and _dead_local_pid(exc.reason):
        text += " - that run is dead (its pid no longer runs here): rerun with --break-lock"
    else:
        text += " - if that run is dead, rerun with --break-lock"
    return text


def _dead_local_pid(reason: str) -> bool:
    found = re.search(r"\(pid (\d+)\)", reason)
    if found is None:
        return False
    try:
        os.kill(int(found.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _release(sessions: Mapping[str, Session], hosts: list[str], path: str, me: RunIdentity) -> None:
    for host in hosts:
        try:
            call_agent(
                sessions[host],
                "unlock",
                {"lock_path": path, "run_id": me.run_id},
                user=None,
                java_home=None,
                timeout=60.0,
            )
        except ScmflowError:
            # A dead host keeps its lock; the next run reports it with its holder.
            continue


@contextmanager
def run_locks(
    status_dir: Path,
    sessions: Mapping[str, Session],
    *,
    upgrade_pack_path: str,
    admin_user: str | None,
    login_users: Mapping[str, str],
    run_id: str,
    force: bool = False,
) -> Iterator[None]:
    """One run per status directory here, and one per host: held while a run changes hosts.

    Locks carry the status file's run id (then this process's pid, since a rollback of a
    run is another holder than the run itself), so "held by run X" leads to that file.
    """
    me = RunIdentity(run_id=f"{run_id}.{os.getpid()}")
    with (
        control_lock(status_dir, me),
        host_locks(
            sessions,
            upgrade_pack_path=upgrade_pack_path,
            admin_user=admin_user,
            login_users=login_users,
            me=me,
            force=force,
        ),
    ):
        yield
