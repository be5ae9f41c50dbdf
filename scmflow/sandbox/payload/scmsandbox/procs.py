"""Processes for the ctl tool: starting them detached, their command lines, stopping them."""

from __future__ import annotations

import os
import time

from .files import read_text
from .tool import POLL_SECONDS, SIGKILL, SIGTERM, CtlError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable


def spawn_detached(argv: list[str], *, cwd: str, log: str | None) -> subprocess.Popen[bytes]:
    """Start argv in its own session with no inherited stdio, so an SSH exec can return."""
    import subprocess
    if log is None:
        out: int = subprocess.DEVNULL
        return subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True, close_fds=True,
        )
    with open(log, "ab") as sink:
        return subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )


def is_daemon_argv(argv: list[str]) -> bool:
    """Whether argv is a sandbox daemon process."""
    return len(argv) >= 2 and argv[1].endswith("scmdaemon.py")


def live_cmdline(pid: int) -> list[str] | None:
    """argv of a live (not zombie) process, or None."""
    try:
        state = read_text(f"/proc/{pid}/stat", errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if state.rpartition(")")[2].split()[:1] in (["Z"], ["X"]) or not raw:
        return None
    return raw.decode("utf-8", "replace").rstrip("\0").split("\0")


def terminate(pid: int, *, grace: float) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL; return once the process is gone."""
    # An exiting process loses its command line before it closes its files (its listening
    # socket among them) and becomes a zombie: "gone" is judged from its state, and its
    # start time tells it from a later process given the same pid.
    started = start_time(pid)
    for sig, wait in ((SIGTERM, grace), (SIGKILL, 5.0)):
        if grace == 0.0 and sig == SIGTERM:
            continue
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_until(lambda: started is None or start_time(pid) != started, wait):
            return
    raise CtlError(f"process {pid} did not exit")


def start_time(pid: int) -> str | None:
    """The start time of a live (not zombie) process `pid`, None when there is none."""
    try:
        fields = read_text(f"/proc/{pid}/stat", errors="replace").rpartition(")")[2].split()
    except OSError:
        return None
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19] if len(fields) > 19 else None


def wait_until(done: Callable[[], bool], seconds: float) -> bool:
    """Poll `done` until it is true or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True
