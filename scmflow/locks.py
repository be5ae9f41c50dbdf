"""Run locks: one run at a time per status directory (control machine) and per host.

The control lock is an flock, so it dies with its process and is never stale. The host
lock is a file in the remote upgrade pack directory holding its run's record: run id,
control host and pid, plus the control machine's boot id, pid namespace and the pid's
start time. A run killed with SIGKILL, or cut off from a host, leaves it behind. When the
record proves its holder dead (this machine, this boot, and no process with that pid and
start time), the next run takes it over by itself and says so in one warning. Any other
holder is refused, naming it, until the operator passes `--break-lock`.

Taking over is a compare-and-swap on the host (see `op_lock` in agent/locks.py): only the very record
the control machine judged is replaced, so of two breakers exactly one wins; and it waits
for the host's step lock, so it never happens while an agent of the old holder is in a step.
The core never prints: what the operator should know goes to the caller's `on_event`.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scmflow.agentcall import call_agent
from scmflow.errors import LockError, ScmflowError
from scmflow.events import LockEvent, LocksTakenOver, LockUnchecked
from scmflow.fanout import DEFAULT_PARALLEL_SSH, each_host
from scmflow.session.base import Session

CONTROL_LOCK_NAME = ".scmflow.lock"
HOST_LOCK_NAME = ".scmflow-run.lock"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
# How long a takeover waits for a step of the old holder's agent (orphaned by a killed
# control process, it finishes its step) before it refuses.
STEP_WAIT = 30.0
# /proc/<pid>/stat fields after "(comm)": state is the first, starttime (field 22) the 20th.
_STAT_STATE, _STAT_START = 0, 19

EventFn = Callable[[LockEvent], None]


def boot_id() -> str:
    """This machine's boot id (new at every boot); "" when the kernel does not say."""
    try:
        return Path(BOOT_ID_PATH).read_text().strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    """This process's pid namespace ("pid:[4026531836]"); "" when unknown.

    Containers share the kernel's boot id: a pid means the same process only within one
    pid namespace.
    """
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot); None when no live process has it.

    OSError or ValueError when it cannot tell (e.g. /proc hidden from this user).
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return None
    fields = raw.rpartition(b")")[2].split()
    if fields[_STAT_STATE] in (b"Z", b"X"):
        return None  # a zombie never runs again
    return int(fields[_STAT_START])


def _own_start() -> int | None:
    try:
        return process_start(os.getpid())
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class RunIdentity:
    """Who holds a lock: written into every lock this run takes."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    control_host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    boot_id: str = field(default_factory=boot_id)
    pid_ns: str = field(default_factory=pid_namespace)
    pid_start: int | None = field(default_factory=_own_start)

    def describe(self) -> dict[str, Any]:
        """The holder record."""
        return {
            "run_id": self.run_id,
            "control_host": self.control_host,
            "pid": self.pid,
            "boot_id": self.boot_id,
            "pid_ns": self.pid_ns,
            "pid_start": self.pid_start,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


@dataclass(frozen=True)
class Verdict:
    """What this machine can prove about a lock's holder: dead, alive, or neither; and why."""

    dead: bool
    alive: bool
    why: str


def judge(holder: Mapping[str, Any], me: RunIdentity) -> Verdict:
    """Whether `holder` is provably dead, or provably alive, judged from this machine.

    Only a holder of this very machine, boot and pid namespace can be either: it is dead
    when no process has its pid or the one that has it started at another time (a reused
    pid), and alive when that very process still runs.
    """
    pid = holder.get("pid")
    unknown = _not_here(holder, me)
    if unknown:
        return Verdict(False, False, unknown)
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return Verdict(False, False, f"its pid {pid} is not one this run can check")
    if pid == me.pid:
        return Verdict(False, True, "it is this very process")
    try:
        started = process_start(pid)
    except (OSError, ValueError, IndexError):
        return Verdict(False, False, f"pid {pid} cannot be checked here")
    if started is None:
        return Verdict(True, False, f"pid {pid} no longer runs on this machine")
    recorded = holder.get("pid_start")
    if not isinstance(recorded, int):
        return Verdict(False, False, f"pid {pid} runs here; the lock does not say when its holder started")
    if started != recorded:
        return Verdict(True, False, f"pid {pid} now belongs to another process")
    return Verdict(False, True, f"its pid {pid} still runs here")


def _not_here(holder: Mapping[str, Any], me: RunIdentity) -> str:
    """Why the holder's pid cannot be checked from here; "" when it can."""
    if holder.get("control_host") != me.control_host:
        return f"it ran on another control machine, {holder.get('control_host', '?')}"
    if not holder.get("boot_id") or holder.get("boot_id") != me.boot_id:
        return "this machine has rebooted since, or the lock does not record its boot"
    if not holder.get("pid_ns") or holder.get("pid_ns") != me.pid_ns:
        return "it ran in another pid namespace of this machine"
    return ""


def holder_text(holder: Mapping[str, Any]) -> str:
    """`run R from C (pid P) since T`: the lock's holder as the operator reads it."""
    return (
        f"run {holder.get('run_id', '?')} from {holder.get('control_host', '?')} "
        f"(pid {holder.get('pid', '?')}) since {holder.get('time', '?')}"
    )


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
                f"another scmflow run holds {path}: {holder_text(holder)}; wait for it to finish"
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


def host_lock_path(upgrade_pack_path: str) -> str:
    """Where the per-host run lock lives on every host."""
    return f"{upgrade_pack_path.rstrip('/')}/{HOST_LOCK_NAME}"


@dataclass(frozen=True)
class Takeover:
    """A host lock this run took from (or cleared for) another holder."""

    host: str
    holder: Mapping[str, Any]
    verdict: Verdict


def takeover_events(takeovers: Sequence[Takeover], *, cleared: bool = False) -> list[LocksTakenOver]:
    """One event per former holder, with its hosts (`cleared`: removed, not taken)."""
    groups: dict[tuple[Any, ...], list[Takeover]] = {}
    for t in takeovers:
        key = (t.holder.get("run_id"), t.holder.get("control_host"), t.holder.get("pid"), t.verdict.dead)
        groups.setdefault(key, []).append(t)
    events = []
    for group in groups.values():
        first = min(group, key=lambda t: str(t.holder.get("time", "")))
        events.append(
            LocksTakenOver(
                hosts=tuple(t.host for t in group),
                holder=first.holder,
                dead=first.verdict.dead,
                why=first.verdict.why,
                cleared=cleared,
            )
        )
    return events


@dataclass(frozen=True)
class _HostLock:
    """How this run takes the lock on one host."""

    upgrade_pack_path: str
    admin_user: str | None
    me: RunIdentity
    force: bool
    install_path: str | None

    @property
    def path(self) -> str:
        return host_lock_path(self.upgrade_pack_path)

    def take(self, host: str, session: Session, login_user: str) -> Takeover | None:
        """Take the lock; the takeover when it had another holder; LockError when refused."""
        # The lock lives in the pack base, root's alone: no other user can plant or swap it.
        spec = {"dirs": [{"path": self.upgrade_pack_path, "fresh": False}]}
        call_agent(session, "prepare", spec, user=self.admin_user, java_home=None, timeout=120.0)
        reply = self._lock(session)
        if reply.get("locked"):
            return None
        holder = _holder_of(reply)
        verdict = judge(holder, self.me)
        if verdict.alive:
            # --break-lock is for a holder that may be dead; this one provably is not
            raise LockError(f"{self._held(host, holder)} ({verdict.why}): wait for that run to finish")
        if not verdict.dead and not self.force:
            raise LockError(
                f"{self._held(host, holder)} ({verdict.why}) - if that run is dead, rerun with --break-lock"
            )
        again = self._lock(session, take_from=str(reply.get("holder_digest", "")))
        if again.get("locked"):
            return Takeover(host, holder, verdict)
        if again.get("step_pid"):
            raise LockError(
                f"{self._held(host, holder)}, and a step of its agent (pid {again['step_pid']}) still "
                f"runs there after {STEP_WAIT:g} s: wait for it to end, then rerun"
            )
        raise LockError(f"{self._held(host, _holder_of(again))}: another run took it over first")

    def _lock(self, session: Session, **extra: Any) -> dict[str, Any]:
        spec = {"lock_path": self.path, **self.me.describe(), "step_wait": STEP_WAIT, **extra}
        if self.install_path:
            spec["install_path"] = self.install_path
        return call_agent(
            session, "lock", spec, user=self.admin_user, java_home=None, timeout=STEP_WAIT * 3 + 60
        )

    def _held(self, host: str, holder: Mapping[str, Any]) -> str:
        return f"[{host}] the run lock {self.path} is held by {holder_text(holder)}"


def _holder_of(reply: Mapping[str, Any]) -> dict[str, Any]:
    holder = reply.get("holder")
    return dict(holder) if isinstance(holder, dict) else {}


@contextmanager
def host_locks(
    sessions: Mapping[str, Session],
    *,
    upgrade_pack_path: str,
    admin_user: str | None,
    login_users: Mapping[str, str],
    me: RunIdentity,
    force: bool,
    install_path: str | None = None,
    on_event: EventFn | None = None,
    parallel: int = DEFAULT_PARALLEL_SSH,
) -> Iterator[None]:
    """Hold the run lock on every host for the duration of the block; all or none.

    Hosts are locked `parallel` at a time (`--parallel-ssh`).

    A dead holder's lock is taken over with a warning; `force` takes any holder's. With
    `install_path`, no takeover happens while a step runs on that install.
    """
    lock = _HostLock(upgrade_pack_path, admin_user, me, force, install_path)
    taken: list[str] = []
    errors: list[str] = []
    takeovers: list[Takeover] = []
    outcomes = each_host(
        list(sessions), lambda host: lock.take(host, sessions[host], login_users[host]), parallel=parallel
    )
    for host, outcome in outcomes.items():
        if outcome.error is not None:
            errors.append(_error_text(host, outcome.error))
            continue
        taken.append(host)
        if outcome.result is not None:
            takeovers.append(outcome.result)
    for event in takeover_events(takeovers):
        if on_event is not None:
            on_event(event)
    try:
        if errors:
            raise LockError("; ".join(errors))
        yield
    finally:
        _release(sessions, taken, lock.path, me, admin_user)


def _error_text(host: str, exc: BaseException) -> str:
    return exc.message if isinstance(exc, ScmflowError) else f"[{host}] {exc}"


def _release(
    sessions: Mapping[str, Session], hosts: list[str], path: str, me: RunIdentity, admin_user: str | None
) -> None:
    for host in hosts:
        try:
            call_agent(
                sessions[host],
                "unlock",
                {"lock_path": path, "run_id": me.run_id},
                user=admin_user,
                java_home=None,
                timeout=STEP_WAIT * 3,
            )
        except ScmflowError:
            # A dead host keeps its lock; the next run from here takes it over, saying so.
            continue


def clear_dead_host_locks(
    sessions: Mapping[str, Session],
    *,
    upgrade_pack_path: str,
    run_id: str,
    on_event: EventFn,
    admin_user: str | None = "root",
    parallel: int = DEFAULT_PARALLEL_SSH,
) -> None:
    """Remove the host locks of provably dead runs, leaving every other holder alone.

    For a run that has nothing to do on its hosts and so takes no lock: a dead run's lock
    would otherwise stay behind. A host that cannot be asked is reported in an event.
    """
    me = RunIdentity(run_id=f"{run_id}.{os.getpid()}")
    path = host_lock_path(upgrade_pack_path)

    def unlock(host: str, spec: dict[str, str]) -> dict[str, Any]:
        session = sessions[host]
        return call_agent(session, "unlock", spec, user=admin_user, java_home=None, timeout=STEP_WAIT * 3)

    def clear(host: str) -> Takeover | None:
        spec = {"lock_path": path, "run_id": me.run_id}
        reply = unlock(host, spec)
        holder = _holder_of(reply)
        if not holder:
            return None
        verdict = judge(holder, me)
        if not verdict.dead:
            return None
        spec["take_from"] = str(reply.get("holder_digest", ""))
        again = unlock(host, spec)
        return Takeover(host, holder, verdict) if again.get("removed") else None

    cleared: list[Takeover] = []
    for host, outcome in each_host(list(sessions), clear, parallel=parallel).items():
        if outcome.error is not None:
            on_event(LockUnchecked(host, _error_text(host, outcome.error)))
        elif outcome.result is not None:
            cleared.append(outcome.result)
    for event in takeover_events(cleared, cleared=True):
        on_event(event)


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
    install_path: str | None = None,
    on_event: EventFn | None = None,
    parallel: int = DEFAULT_PARALLEL_SSH,
) -> Iterator[None]:
    """One run per status directory here, and one per host: held while a run changes hosts.

    Locks carry the status file's run id (then this process's pid, since a rollback of a
    run is another holder than the run itself), so "held by run X" leads to that file.
    `on_event` receives one event per dead (or, with `force`, broken) holder taken over.
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
            install_path=install_path,
            on_event=on_event,
            parallel=parallel,
        ),
    ):
        yield
