"""This host's processes, as /proc shows them: command lines, liveness, start times."""

import os
import time
from typing import List, Optional


def process_running(command: Optional[List[str]]) -> Optional[int]:
    """Pid of a live process running `command`, or None."""
    if not command:
        return None
    want = " ".join(" ".join(command).split())
    # Every process on the host is looked at: a cheap test on the raw command line first
    # (its longest word), the full comparison and the namespace check only for the few left.
    marker = max(want.split(), key=len).encode()
    skip = {os.getpid(), os.getppid()}
    own_namespace = mount_namespace("self")
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if marker not in f.read():
                    continue
        except OSError:
            continue
        if not same_mount_namespace(int(name), own_namespace):
            # The same install path in another mount namespace (a container) is another install.
            continue
        words = " ".join(cmdline(int(name)) or []).split()
        # The cron shell that launched it also carries the command, after `nohup`.
        if words and "nohup" not in words and f" {want} " in f" {' '.join(words)} ":
            return int(name)
    return None


def mount_namespace(pid: str) -> Optional[str]:
    """The mount namespace of process `pid` ("self" for this one), None when not ours to read."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def same_mount_namespace(pid: int, own: Optional[str] = None) -> bool:
    """Whether process `pid` sees the same mounts as this one (True when that is not ours to know)."""
    theirs = mount_namespace(str(pid))
    if theirs is None:
        # Not ours to inspect (another user's process): judge by the command line alone.
        return True
    return theirs == (own if own is not None else mount_namespace("self"))


def cmdline(pid: int) -> Optional[List[str]]:
    """The argv of a live process (not a zombie), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[:1]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if state in ([b"Z"], [b"X"]) or not raw:
        return None
    return raw.decode("utf-8", "replace").rstrip("\0").split("\0")


def pid_alive(pid: int) -> bool:
    """Whether a process (not a zombie) has this pid."""
    return cmdline(pid) is not None


def seconds_since_start(pid: int) -> float:
    """Seconds since process `pid` started (from /proc), or -1.0 when that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return -1.0
    return round(max(0.0, time.time() - started), 2)

