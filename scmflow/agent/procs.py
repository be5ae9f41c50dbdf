"""This host's processes, as /proc shows them: command lines, liveness, start times."""

import os
import time
from typing import List, Optional


def process_running(command: Optional[List[str]]) -> Optional[int]:
    """Pid of a live process running `command`, or None."""
    if not command:
        return None
    want = " ".join(" ".join(command).split())
    skip = {os.getpid(), os.getppid()}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        if not same_mount_namespace(int(name)):
            # The same install path in another mount namespace (a container) is another install.
            continue
        words = " ".join(cmdline(int(name)) or []).split()
        # The cron shell that launched it also carries the command, after `nohup`.
        if words and "nohup" not in words and f" {want} " in f" {' '.join(words)} ":
            return int(name)
    return None


def same_mount_namespace(pid: int) -> bool:
    """Whether process `pid` sees the same mounts as this one (True when that is not ours to know)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except OSError:
        # Not ours to inspect (another user's process): judge by the command line alone.
        return True


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

