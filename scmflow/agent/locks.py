"""The host's locks: a run's lock file (taken, released, taken over) and the step lock."""

import errno
import fcntl
import json
import os
import stat
import time
from typing import Any, Dict, Optional, Tuple

from .context import Ctx, Failure, wait_for
from .files import fsync_dir, write_atomic

# Attempts of op_lock when the lock file is released or replaced under it.
_LOCK_TRIES = 5
# A takeover holds the lock file's flock while it waits (`step_wait`) for the step lock.
_STEP_WAIT = 30.0
_LOCK_FILE_WAIT = 2 * _STEP_WAIT
# These manage the run lock themselves, or change nothing.
_UNLOCKED_OPS = ("lock", "unlock", "probe", "prepare", "exists")


def op_lock(ctx: Ctx) -> Dict[str, Any]:
    """Take the host's run lock, or say who holds it.

    A free lock: a file holding this run's record appears whole (a hard link of a written
    temporary file), or not at all. Held by this run: `already`. Held by another:
    `{"locked": False, "holder", "holder_digest"}`, unless spec `take_from` is that
    holder's digest: the control machine judged that very record dead (or the operator
    broke it), and it is replaced - under an flock on the lock file, so of two breakers
    only the first still finds the record it judged, and with the host's step lock held,
    so never while an agent of the old holder is in a step (`step_pid` names it).
    """
    path = ctx.need("lock_path")
    data = json.dumps(_lock_record(ctx), sort_keys=True).encode()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for _ in range(_LOCK_TRIES):
        if _create_lock(path, data):
            return {"locked": True}
        fd = _open_lock(ctx, path)
        if fd is None:
            continue  # released in between: create it again
        try:
            reply = _lock_held(ctx, fd, path, data)
        finally:
            os.close(fd)
        if reply is not None:
            return reply
    raise Failure(f"the run lock {path} on {ctx.host} kept changing hands; try again", "lock")


def op_unlock(ctx: Ctx) -> Dict[str, Any]:
    """Remove the run lock if this run holds it, or if it still is the record `take_from` names.

    The second form clears a dead run's lock without taking it. Otherwise the reply names
    the holder, as `op_lock` does.
    """
    path = ctx.need("lock_path")
    fd = _open_lock(ctx, path)
    if fd is None:
        return {"removed": False}
    try:
        _flock_lock_file(ctx, fd, path)
        raw = _lock_bytes(fd, path)
        if raw is None:
            return {"removed": False}
        holder, digest = _lock_holder(raw), _lock_digest(raw)
        if holder.get("run_id") != ctx.need("run_id") and ctx.spec.get("take_from") != digest:
            return {"removed": False, "holder": holder, "holder_digest": digest}
        os.unlink(path)
        fsync_dir(os.path.dirname(path))
        return {"removed": True, "holder": holder}
    finally:
        os.close(fd)


def _lock_record(ctx: Ctx) -> Dict[str, Any]:
    """The holder record: who the control machine says it is, and when and where it locked."""
    spec = ctx.spec
    record = {k: spec.get(k) for k in ("control_host", "pid", "boot_id", "pid_ns", "pid_start")}
    record.update(
        run_id=ctx.need("run_id"),
        host=ctx.host,
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    return record


def _create_lock(path: str, data: bytes) -> bool:
    """Create the lock file with `data` if there is none; link() makes it appear whole."""
    tmp = f"{path}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        os.unlink(tmp)
    fsync_dir(os.path.dirname(path))
    return True


def _open_lock(ctx: Ctx, path: str) -> Optional[int]:
    """The lock file, read-only, never through a link nor blocking on a FIFO; None if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Failure(f"{path} on {ctx.host} is a symbolic link, not a run lock", "lock") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Failure(f"{path} on {ctx.host} is not a regular file, not a run lock", "lock")
    return fd


def _flock_lock_file(ctx: Ctx, fd: int, path: str) -> None:
    """Wait for the lock file's flock: takeovers and releases take turns on it."""
    if not _flock_within(fd, _LOCK_FILE_WAIT):
        raise Failure(f"another scmflow process keeps {path} on {ctx.host} busy", "lock")


def _lock_bytes(fd: int, path: str) -> Optional[bytes]:
    """The content of the flocked file `fd`, or None when `path` no longer names it."""
    mine = os.fstat(fd)
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return None
    if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
        return None
    return os.pread(fd, 1 << 16, 0)


def _lock_holder(raw: bytes) -> Dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _lock_digest(raw: bytes) -> str:
    """What a takeover compares: the exact record, so a newer holder never matches."""
    import hashlib  # here: OpenSSL's start is a cost every other op would pay

    return hashlib.sha256(raw).hexdigest()


def _lock_held(ctx: Ctx, fd: int, path: str, data: bytes) -> Optional[Dict[str, Any]]:
    """op_lock's reply for an existing lock file `fd`; None when it was replaced meanwhile."""
    _flock_lock_file(ctx, fd, path)
    raw = _lock_bytes(fd, path)
    if raw is None:
        return None
    holder, digest = _lock_holder(raw), _lock_digest(raw)
    if holder.get("run_id") == ctx.need("run_id"):
        return {"locked": True, "already": True}
    refused = {"locked": False, "holder": holder, "holder_digest": digest}
    if ctx.spec.get("take_from") != digest:
        return refused
    quiet, busy = _quiet_install(ctx)
    if busy:
        return dict(refused, step_pid=busy)
    try:
        write_atomic(path, data, 0o644)
    finally:
        if quiet is not None:
            os.close(quiet)
    return {"locked": True, "replaced": holder}


def _quiet_install(ctx: Ctx) -> Tuple[Optional[int], str]:
    """Hold the host's step lock for a takeover: (its fd, "") or (None, the step's pid).

    Without spec `install_path` there is nothing to check: (None, "").
    """
    if not ctx.spec.get("install_path"):
        return None, ""
    fd = _open_step_lock(ctx, _install_dir(ctx))
    if _flock_within(fd, float(ctx.spec.get("step_wait", _STEP_WAIT))):
        return fd, ""
    pid = _flock_holder(fd)
    os.close(fd)
    return None, pid


def _install_dir(ctx: Ctx) -> str:
    """The install directory's real path, from a validated spec `install_path`."""
    base = ctx.need("install_path")
    if not os.path.isabs(base) or os.path.normpath(base) != base or base == "/":
        raise Failure(f"install path '{base}' must be absolute, normalised and not /", "spec")
    return os.path.realpath(base)


def _step_lock_dir(ctx: Ctx) -> Optional[str]:
    """The directory whose flock is the step lock, when the spec asks for one (`lock_path`).

    The install directory itself: every run on the host names the same one, whatever its
    run dirs; the install user can always open it (it owns the tree); and as nothing is
    created, nothing can be planted there and the install tree gains no file. An op that
    names no install (abandon only removes its own run's backup) locks the run's backup dir,
    the directory of its `lock_path`.
    """
    lock = ctx.spec.get("lock_path")
    if not lock:
        return None
    if ctx.spec.get("install_path"):
        return _install_dir(ctx)
    parent = os.path.dirname(str(lock))
    os.makedirs(parent, exist_ok=True)
    return os.path.realpath(parent)


def _open_step_lock(ctx: Ctx, path: str) -> int:
    """Open a step lock directory read-only (a real path: its last part is not a link)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise Failure(f"{path} does not exist on {ctx.host}", "step-lock") from None
    except OSError as exc:
        message = f"cannot open {path} on {ctx.host} for its step lock: {exc.strerror}"
        raise Failure(message, "step-lock") from None


def _flock_within(fd: int, seconds: float) -> bool:
    """Take an exclusive flock on fd, polling for up to `seconds`; False if still held."""

    def take() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    return wait_for(take, max(seconds, 0.0))


def _flock_holder(fd: int) -> str:
    """The pid holding an flock on fd's file, from /proc/locks; "?" when it cannot tell."""
    st = os.fstat(fd)
    exact = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return "?"
    loose = ""
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF"; waiters read "1: -> FLOCK ..."
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        if fields[5] == exact:
            return fields[4]
        # stacked filesystems (overlay) may name another device for the same inode
        if not loose and fields[5].rsplit(":", 1)[-1] == str(st.st_ino):
            loose = fields[4]
    return loose or "?"




def hold_step_lock(ctx: Ctx, op: str) -> Optional[int]:
    """Hold the host's step lock for the op, so two steps never change an install at once.

    It is an flock on the install directory (see `_step_lock_dir`), one per host: steps of
    different runs exclude each other too, not only the steps of one run. A takeover of a
    run lock (`op_lock`) takes it as well, so never happens during a step. The holder's pid
    comes from /proc/locks, so nothing is ever written for it (a full disk must still let
    the steps, and the rollback after a failed backup, run).
    """
    if op in _UNLOCKED_OPS:
        return None
    path = _step_lock_dir(ctx)
    if path is None:
        return None
    ctx.step = "step-lock"
    fd = _open_step_lock(ctx, path)
    if not _flock_within(fd, float(ctx.spec.get("lock_wait") or 30)):
        holder = _flock_holder(fd)
        os.close(fd)
        raise Failure(f"another scmflow step (pid {holder}) holds {path} on {ctx.host}", "step-lock")
    return fd
