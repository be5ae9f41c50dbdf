"""Run locks and the per-host step lock, without SSH: agent ops called directly, sessions local.

A host lock's holder is judged from this machine: dead (same machine, boot and pid
namespace, its pid gone or reused) is taken over with a warning; alive is never taken;
anything else needs --break-lock. Taking over is a compare-and-swap that exactly one of
several breakers wins, and it waits for the host's step lock, which is one per install.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import pwd
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from scmflow.agent.context import Ctx, Failure
from scmflow.agent.files import write_atomic
from scmflow.agent.locks import hold_step_lock
from scmflow.agent.operations import run_op
from scmflow.cli.render import render
from scmflow.errors import LockError
from scmflow.events import Event
from scmflow.locks import (
    RunIdentity,
    clear_dead_host_locks,
    host_lock_path,
    host_locks,
    judge,
    process_start,
)
from scmflow.session.local import LocalSession

ME = pwd.getpwuid(os.geteuid()).pw_name
HERE = RunIdentity(run_id="here.1")


def lock_spec(path: Path, run: str, **extra: Any) -> dict[str, Any]:
    """A `lock`/`unlock` spec as the control machine sends it, for run `run` of this process."""
    return {"lock_path": str(path), **RunIdentity(run_id=run).describe(), **extra}


def call(op: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run an agent op in this process, as a host would; the reply must be ok."""
    reply = run_op(op, spec)
    assert reply["ok"], reply
    return reply


@contextmanager
def flocked(path: Path) -> Iterator[None]:
    """Hold an flock on a directory, as an agent in a step holds the host's step lock."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def record(**fields: Any) -> dict[str, Any]:
    """A holder record of this machine and boot (`fields` override)."""
    base = {**HERE.describe(), "run_id": "gone.4242", "host": "h1", "time": "2026-01-02T03:04:05Z"}
    base.update(fields)
    return base


def plant(path: Path, holder: dict[str, Any]) -> None:
    """Leave a lock file behind, as a run killed with SIGKILL does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(holder, sort_keys=True))


# ---------------------------------------------------------------- the agent's lock op


def test_a_held_lock_is_refused_with_the_holder_record_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "pack" / ".scmflow-run.lock"
    assert call("lock", lock_spec(path, "a")) == {"ok": True, "locked": True}
    assert call("lock", lock_spec(path, "a"))["already"] is True
    refused = call("lock", lock_spec(path, "b"))
    assert refused["locked"] is False
    holder = refused["holder"]
    assert holder["run_id"] == "a" and holder["pid"] == os.getpid()
    # what a later run needs to prove this holder dead
    assert holder["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert holder["pid_start"] == process_start(os.getpid())
    assert holder["pid_ns"] == os.readlink("/proc/self/ns/pid")
    assert json.loads(path.read_text())["run_id"] == "a"


def test_a_takeover_replaces_only_the_record_it_judged(tmp_path: Path) -> None:
    path = tmp_path / ".scmflow-run.lock"
    call("lock", lock_spec(path, "a"))
    digest = call("lock", lock_spec(path, "b"))["holder_digest"]
    taken = call("lock", lock_spec(path, "b", take_from=digest))
    assert taken["locked"] is True and taken["replaced"]["run_id"] == "a"
    # a breaker that judged the old record finds another holder now: refused, nothing written
    late = call("lock", lock_spec(path, "c", take_from=digest))
    assert late["locked"] is False and late["holder"]["run_id"] == "b"
    assert json.loads(path.read_text())["run_id"] == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".scmflow-run.lock"], "no temporary file left"


def _breaker(path: str, run: str, digest: str, start: Any, out: Any) -> None:
    start.wait()
    out.put((run, run_op("lock", lock_spec(Path(path), run, take_from=digest))))


def test_of_concurrent_breakers_exactly_one_wins(tmp_path: Path) -> None:
    path = tmp_path / ".scmflow-run.lock"
    plant(path, record(control_host="ctl-elsewhere"))
    digest = call("lock", lock_spec(path, "probe"))["holder_digest"]
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    runs = [f"breaker-{i}" for i in range(8)]
    procs = [ctx.Process(target=_breaker, args=(str(path), run, digest, start, out)) for run in runs]
    for proc in procs:
        proc.start()
    start.set()
    replies = dict(out.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(30)
    winners = [run for run, reply in replies.items() if reply["ok"] and reply["locked"]]
    assert len(winners) == 1, replies
    assert json.loads(path.read_text())["run_id"] == winners[0]
    for run, reply in replies.items():
        if run != winners[0]:
            assert reply["ok"] and reply["holder"]["run_id"] == winners[0], reply


def test_a_takeover_waits_for_the_step_running_on_the_install(tmp_path: Path) -> None:
    path, install = tmp_path / "pack" / ".scmflow-run.lock", tmp_path / "sequoiacm"
    install.mkdir()
    plant(path, record(control_host="ctl-elsewhere"))
    digest = call("lock", lock_spec(path, "b"))["holder_digest"]
    spec = lock_spec(path, "b", take_from=digest, install_path=str(install), step_wait=0.3)
    with flocked(install):
        busy = call("lock", spec)
        assert busy["locked"] is False and busy["step_pid"] == str(os.getpid())
        assert json.loads(path.read_text())["control_host"] == "ctl-elsewhere"
    assert call("lock", spec)["locked"] is True


def test_the_lock_file_is_never_followed_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = tmp_path / ".scmflow-run.lock"
    path.symlink_to(victim)
    reply = run_op("lock", lock_spec(path, "a"))
    assert not reply["ok"] and "symbolic link" in reply["error"]
    assert victim.read_text() == "precious"


def test_unlock_clears_a_dead_record_only_while_it_is_still_there(tmp_path: Path) -> None:
    path = tmp_path / ".scmflow-run.lock"
    plant(path, record())
    seen = call("unlock", lock_spec(path, "me"))
    assert seen["removed"] is False and seen["holder"]["run_id"] == "gone.4242"
    plant(path, record(time="2026-02-02T00:00:00Z"))
    assert call("unlock", lock_spec(path, "me", take_from=seen["holder_digest"]))["removed"] is False
    now = call("unlock", lock_spec(path, "me"))["holder_digest"]
    assert call("unlock", lock_spec(path, "me", take_from=now))["removed"] is True
    assert not path.exists()


# ---------------------------------------------------------------- the step lock and writes


def test_the_step_lock_is_one_per_install_whatever_the_run(tmp_path: Path) -> None:
    install = tmp_path / "sequoiacm"
    install.mkdir()
    first = Ctx({"install_path": str(install), "lock_path": str(tmp_path / "backup-1" / ".agent.lock")})
    fd = hold_step_lock(first, "backup")
    assert fd is not None
    try:
        other_lock = str(tmp_path / "backup-2" / ".agent.lock")
        other_run = Ctx({"install_path": str(install), "lock_path": other_lock, "lock_wait": 0.3})
        with pytest.raises(Failure) as held:
            hold_step_lock(other_run, "replace")
        assert held.value.step == "step-lock" and f"pid {os.getpid()}" in held.value.message
    finally:
        os.close(fd)
    assert list(install.iterdir()) == [], "the install tree gains no file"


def test_the_step_lock_writes_nothing_through_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    run_dir = tmp_path / "backup-1"
    run_dir.mkdir()
    (run_dir / ".agent.lock").symlink_to(victim)
    # abandon names no install: it locks its own run's backup dir
    ctx = Ctx({"backup_dir": str(run_dir / "gateway"), "lock_path": str(run_dir / ".agent.lock")})
    fd = hold_step_lock(ctx, "abandon")
    assert fd is not None
    os.close(fd)
    assert victim.read_text() == "precious"


def test_write_atomic_never_writes_through_a_planted_temporary_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = tmp_path / "manifest.json"
    Path(f"{path}.tmp").symlink_to(victim)
    write_atomic(str(path), b"new")
    assert path.read_bytes() == b"new"
    assert victim.read_text() == "precious"


def test_concurrent_atomic_writes_never_share_a_temporary_file(tmp_path: Path) -> None:
    path = str(tmp_path / "record.json")
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            for _ in range(200):
                write_atomic(path, data)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(bytes([65 + i]) * 4096,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    content = Path(path).read_bytes()
    assert len(set(content)) == 1 and len(content) == 4096
    assert os.listdir(tmp_path) == ["record.json"]


# ---------------------------------------------------------------- judging a holder


def test_a_holder_of_this_machine_whose_pid_is_gone_is_dead() -> None:
    pid = dead_pid()
    verdict = judge(record(pid=pid), HERE)
    assert verdict.dead and not verdict.alive and f"pid {pid} no longer runs" in verdict.why


def test_a_reused_pid_is_dead_and_the_same_process_alive() -> None:
    with subprocess.Popen(["sleep", "30"]) as proc:
        try:
            started = process_start(proc.pid)
            assert started is not None
            assert judge(record(pid=proc.pid, pid_start=started), HERE).alive
            reused = judge(record(pid=proc.pid, pid_start=started - 1), HERE)
            assert reused.dead and "another process" in reused.why
            # an older record without the start time cannot tell
            unknown = judge(record(pid=proc.pid, pid_start=None), HERE)
            assert not unknown.dead and not unknown.alive
        finally:
            proc.kill()


def test_a_zombie_holder_is_dead() -> None:
    proc = subprocess.Popen(["true"])
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        assert judge(record(pid=proc.pid), HERE).dead
    finally:
        proc.wait()


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"control_host": "ctl-elsewhere"}, "another control machine, ctl-elsewhere"),
        ({"boot_id": "00000000-0000-0000-0000-000000000000"}, "rebooted"),
        ({"boot_id": None}, "rebooted"),
        ({"pid_ns": "pid:[1]"}, "another pid namespace"),
    ],
)
def test_a_holder_of_another_machine_or_boot_cannot_be_proven_dead(fields: dict[str, Any], why: str) -> None:
    verdict = judge(record(pid=dead_pid(), **fields), HERE)
    assert not verdict.dead and not verdict.alive and why in verdict.why


# ---------------------------------------------------------------- host_locks over a session


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Any]:
    """A local host with an install dir and an upgrade pack dir."""
    install = tmp_path / "sequoiacm"
    install.mkdir()
    return {"pack": str(tmp_path / "upgrade"), "install": str(install)}


def collect(warnings: list[str]) -> Callable[[Event], None]:
    """An on_event that keeps each event's text as the operator reads it."""

    def keep(event: Event) -> None:
        line = render(event)
        assert line is not None and line.warning
        warnings.append(line.text)

    return keep


def locks(layout: dict[str, Any], warnings: list[str], *, force: bool = False, run: str = "new.1") -> Any:
    """host_locks on one local host, "h1"."""
    return host_locks(
        {"h1": LocalSession(host="h1")},
        upgrade_pack_path=layout["pack"],
        admin_user=None,
        login_users={"h1": ME},
        me=RunIdentity(run_id=run),
        force=force,
        install_path=layout["install"],
        on_event=collect(warnings),
    )


def test_a_dead_runs_lock_is_taken_over_with_one_warning(layout: dict[str, Any]) -> None:
    path = Path(host_lock_path(layout["pack"]))
    pid = dead_pid()
    plant(path, record(pid=pid))
    warnings: list[str] = []
    with locks(layout, warnings):
        assert json.loads(path.read_text())["run_id"] == "new.1"
    assert not path.exists(), "released at the end"
    assert len(warnings) == 1, warnings
    line = warnings[0]
    host = HERE.control_host
    assert f"Took over the run lock on h1 from run gone.4242 from {host} (pid {pid})" in line
    assert "since 2026-01-02T03:04:05Z" in line and "that run is dead" in line


def test_a_holder_on_another_control_machine_needs_break_lock(layout: dict[str, Any]) -> None:
    path = Path(host_lock_path(layout["pack"]))
    plant(path, record(control_host="ctl-elsewhere", pid=dead_pid()))
    warnings: list[str] = []
    with pytest.raises(LockError) as refused, locks(layout, warnings):
        pass
    assert refused.value.exit_code == 2
    assert "[h1] the run lock" in refused.value.message
    assert "another control machine, ctl-elsewhere" in refused.value.message
    assert "rerun with --break-lock" in refused.value.message
    assert warnings == [] and json.loads(path.read_text())["control_host"] == "ctl-elsewhere"
    with locks(layout, warnings, force=True):
        pass
    assert len(warnings) == 1
    assert warnings[0].startswith("--break-lock: took over the run lock on h1 from run gone.4242")


def test_break_lock_never_takes_a_live_runs_lock(layout: dict[str, Any]) -> None:
    path = Path(host_lock_path(layout["pack"]))
    with subprocess.Popen(["sleep", "30"]) as proc:
        try:
            plant(path, record(pid=proc.pid, pid_start=process_start(proc.pid)))
            with pytest.raises(LockError) as refused, locks(layout, [], force=True):
                pass
        finally:
            proc.kill()
    assert f"its pid {proc.pid} still runs here" in refused.value.message
    assert "wait for that run to finish" in refused.value.message


def test_break_lock_refuses_while_an_agent_holds_the_step_lock(
    layout: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("scmflow.locks.STEP_WAIT", 0.5)
    path = Path(host_lock_path(layout["pack"]))
    plant(path, record(control_host="ctl-elsewhere"))
    with pytest.raises(LockError) as refused, flocked(Path(layout["install"])), locks(layout, [], force=True):
        pass
    assert f"a step of its agent (pid {os.getpid()}) still runs there" in refused.value.message
    assert json.loads(path.read_text())["control_host"] == "ctl-elsewhere"


def test_nothing_to_do_still_clears_dead_locks_and_only_those(tmp_path: Path) -> None:
    packs = {h: str(tmp_path / h) for h in ("h1", "h2", "h3")}
    plant(Path(host_lock_path(packs["h1"])), record(pid=dead_pid()))
    plant(Path(host_lock_path(packs["h2"])), record(control_host="ctl-elsewhere", pid=dead_pid()))
    warnings: list[str] = []
    for host, pack in packs.items():
        session = LocalSession(host=host)
        # as this user, who owns the locks here (the default admin user, root, needs root)
        clear_dead_host_locks(
            {host: session}, upgrade_pack_path=pack, run_id="r", on_event=collect(warnings), admin_user=ME
        )
    assert not Path(host_lock_path(packs["h1"])).exists()
    assert Path(host_lock_path(packs["h2"])).exists(), "not provably dead: left alone"
    assert len(warnings) == 1 and warnings[0].startswith("Removed the run lock on h1 left by run gone.4242")
