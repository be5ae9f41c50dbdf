"""`scm.py demo` as a fresh operator runs it: a non-root user, no SSH server, no cluster.

End-to-end (as everything under tests/e2e/) though it needs no sshd: it needs root to create
and become that user.
Each run gets a fresh HOME and TMPDIR; afterwards the user must own no process and no file.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
USER = "scmdemo"
SYSTEM_PYTHON = Path("/usr/bin/python3")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEPENDENCIES = ("click", "paramiko", "msgpack", "transitions")
PLAN_ORDER = ("SERVICE_CENTER", "CONFIG_SERVER", "GATEWAY", "CONTENT_SERVER", "DAEMON")
NODE_LINE = re.compile(r"^\[INFO \] Demo:   \[localhost\]:(\S+ node(?:,port=\d+)?): (.+)$")


def _require_root() -> None:
    if os.geteuid() == 0:
        return
    reason = "the demo test creates and becomes a non-root user, which needs root"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class DemoRunner:
    """How to run `scm.py demo` as the demo user: interpreter, import path, checkout."""

    uid: int
    gid: int
    python: Path
    pythonpath: str
    repo: Path

    def env(self, home: Path, tmp: Path) -> dict[str, str]:
        """A login-like environment: fresh HOME and TMPDIR, the system PATH."""
        return {
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "USER": USER,
            "LOGNAME": USER,
            "PATH": SYSTEM_PATH,
            "LANG": "C.UTF-8",
            "PYTHONPATH": self.pythonpath,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        }

    def popen(self, args: list[str], home: Path, tmp: Path) -> subprocess.Popen[str]:
        """Start `scm.py ARGS` as the user (its pid is the Python process itself)."""
        return subprocess.Popen(
            [str(self.python), str(self.repo / "scm.py"), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(home, tmp),
            cwd=home,
            user=self.uid,
            group=self.gid,
            extra_groups=[],
        )

    def run(
        self, args: list[str], home: Path, tmp: Path, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run `scm.py ARGS` as the user to the end."""
        process = self.popen(args, home, tmp)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"scm.py {' '.join(args)} did not finish in {timeout} s:\n{out}\n{err}")
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _as_user(uid: int, gid: int, argv: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, env=dict(env), cwd="/", user=uid, group=gid,
        extra_groups=[], timeout=120, check=False,
    )


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", USER],
            check=True, capture_output=True,
        )
        return pwd.getpwnam(USER)


def _imports(uid: int, gid: int, python: Path, pythonpath: str, repo: Path) -> bool:
    """Whether the user can run `python` and import scmflow's CLI and its dependencies."""
    if not python.exists():
        return False
    check = f"import sys; sys.path.insert(0, {str(repo)!r}); import {', '.join(DEPENDENCIES)}, scmflow.cli"
    env = {"PATH": SYSTEM_PATH, "PYTHONPATH": pythonpath, "HOME": "/", "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        return _as_user(uid, gid, [str(python), "-c", check], env).returncode == 0
    except OSError:  # the user may not even reach the interpreter
        return False


def _readable_repo(uid: int, gid: int, base: Path) -> Path:
    """The checkout, or a copy the user can read when it cannot read the checkout."""
    probe = _as_user(uid, gid, [str(SYSTEM_PYTHON), "-c", f"open({str(REPO / 'scm.py')!r}).read()"],
                     {"PATH": SYSTEM_PATH})
    if probe.returncode == 0:
        return REPO
    copy = base / "repo"
    ignore = shutil.ignore_patterns("__pycache__", ".*")
    for name in ("scm.py", "scmflow", "states", "conf"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=ignore)
        else:
            copy.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    subprocess.run(["chmod", "-R", "a+rX", str(copy)], check=True)
    return copy


@pytest.fixture(scope="session")
def demo_runner() -> Iterator[DemoRunner]:
    """The demo user, and an interpreter plus import path it can use; set up once."""
    _require_root()
    user = _ensure_user()
    uid, gid = user.pw_uid, user.pw_gid
    base = Path(tempfile.mkdtemp(prefix="scmflow-demo-test-"))
    base.chmod(0o755)
    try:
        repo = _readable_repo(uid, gid, base)
        yield _pick_interpreter(uid, gid, repo, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _pick_interpreter(uid: int, gid: int, repo: Path, base: Path) -> DemoRunner:
    # 1. this test's own interpreter (the dev venv), when the user may run it;
    # 2. the system python with this venv's site-packages, when the user may read them;
    # 3. the system python with the dependencies pip-installed into a directory of our own.
    here = Path(sys.executable)
    if _imports(uid, gid, here, str(repo), repo):
        return DemoRunner(uid, gid, here, str(repo), repo)
    site = sysconfig.get_paths()["purelib"]
    if _imports(uid, gid, SYSTEM_PYTHON, f"{repo}:{site}", repo):
        return DemoRunner(uid, gid, SYSTEM_PYTHON, f"{repo}:{site}", repo)
    target = base / "site-packages"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--target", str(target), *DEPENDENCIES],
        check=True, capture_output=True, timeout=600,
    )
    subprocess.run(["chmod", "-R", "a+rX", str(target)], check=True)
    if not _imports(uid, gid, SYSTEM_PYTHON, f"{repo}:{target}", repo):
        pytest.fail(f"{USER} cannot import scmflow's dependencies even from {target}")
    return DemoRunner(uid, gid, SYSTEM_PYTHON, f"{repo}:{target}", repo)


@dataclass
class Sandboxed:
    """One demo run's fresh HOME and TMPDIR, and what the user owned before it."""

    home: Path
    tmp: Path
    processes_before: set[int]
    shared_tmp_before: set[str]


def _user_pids(uid: int) -> set[int]:
    """Live processes of the user; zombies are dead already and wait for init to reap them."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if str(uid) in fields.get("Uid", "").split() and not fields.get("State", "").strip().startswith("Z"):
            pids.add(int(entry.name))
    return pids


def _lingering_pids(uid: int, before: set[int]) -> set[int]:
    """The user's new processes, after giving any still exiting a few seconds to go."""
    deadline = time.monotonic() + 5.0
    left = _user_pids(uid) - before
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _user_pids(uid) - before
    return left


def _describe(pids: set[int]) -> list[str]:
    out = []
    for pid in sorted(pids):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            out.append(f"{pid}: {argv}")
        except OSError:
            continue
    return out


def _owned_entries(uid: int) -> set[str]:
    """Entries of the shared temporary directories owned by the user."""
    found = set()
    for folder in (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            try:
                if entry.lstat().st_uid == uid:
                    found.add(str(entry))
            except OSError:
                continue
    return found


@pytest.fixture
def fresh(demo_runner: DemoRunner) -> Iterator[Sandboxed]:
    """A fresh HOME and TMPDIR for one run; the user must start with no process."""
    base = Path(tempfile.mkdtemp(prefix="scmflow-demo-run-"))
    base.chmod(0o755)
    home, tmp = base / "home", base / "tmp"
    for folder in (home, tmp):
        folder.mkdir(mode=0o700)
        os.chown(folder, demo_runner.uid, demo_runner.gid)
    before = _user_pids(demo_runner.uid)
    assert not before, f"{USER} already runs processes: {_describe(before)}"
    try:
        yield Sandboxed(home, tmp, before, _owned_entries(demo_runner.uid))
    finally:
        for pid in _user_pids(demo_runner.uid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        shutil.rmtree(base, ignore_errors=True)


def _assert_nothing_left(runner: DemoRunner, box: Sandboxed) -> None:
    left = _lingering_pids(runner.uid, box.processes_before)
    assert not left, f"processes left behind: {_describe(left)}"
    assert list(box.tmp.iterdir()) == [], "files left in TMPDIR"
    assert list(box.home.iterdir()) == [], "files left in HOME"
    assert _owned_entries(runner.uid) == box.shared_tmp_before


def _section(lines: list[str], heading: str, count: int) -> list[str]:
    start = lines.index(heading)
    return lines[start + 1 : start + 1 + count]


def _nodes(lines: list[str]) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in map(NODE_LINE.match, lines) if m]


def test_demo_upgrades_rolls_back_and_leaves_nothing(demo_runner: DemoRunner, fresh: Sandboxed) -> None:
    done = demo_runner.run(["demo"], fresh.home, fresh.tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    created = "[INFO ] Created upgrade status file, file location:"
    assert _section(lines, "[INFO ] Prepare to upgrade services in this order", 6) == [
        *(f"[INFO ] [localhost]:{s}:3.1.2 to 3.2.2" for s in PLAN_ORDER),
        next(line for line in lines if line.startswith(created)),
    ]
    assert any(line.startswith("[INFO ] Upgrade service success, generate upgrade status file success")
               for line in lines)
    assert _section(lines, "[INFO ] prepare to rollback services in this order", 5) == [
        f"[INFO ] [localhost]:{s}:3.2.2 to 3.1.2" for s in reversed(PLAN_ORDER)
    ]
    assert any(line.startswith("[INFO ] Rollback service success, upgrade status file location:")
               for line in lines)
    assert "[INFO ]       Outcome   rolled back" in lines
    nodes = _nodes(lines)
    before, upgraded, back = nodes[:6], nodes[6:12], nodes[12:]
    for states, version in ((before, "3.1.2"), (upgraded, "3.2.2")):
        running = f"running, version {version}"
        assert [s for _, s in states] == [running] * 3 + ["stopped"] + [running] * 2
    assert back == [(label, f"{state}, as before") for label, state in before]
    assert any(line.startswith("[INFO ] Demo:   customer jars kept in ") for line in lines)
    assert any(re.match(r"\[INFO \] Demo:   files: every file under .* is as before the upgrade", line)
               for line in lines)
    assert ("[INFO ] Demo: everything is back: every file and every node is as it was before the upgrade, "
            "on 3.1.2") in lines
    assert lines[-1] == "[INFO ] Demo: done; no sandbox process or file is left"
    assert done.stderr == ""
    _assert_nothing_left(demo_runner, fresh)


def test_demo_fail_rolls_back_the_failed_pair_then_the_rest(
    demo_runner: DemoRunner, fresh: Sandboxed
) -> None:
    done = demo_runner.run(["demo", "--fail", "content-server"], fresh.home, fresh.tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    errors = done.stderr.splitlines()
    assert len(errors) == 1
    assert errors[0].startswith("[ERROR] [localhost]:CONTENT_SERVER: restart failed: ")
    assert "injected start failure" in errors[0]
    assert errors[0].endswith("; it was rolled back to 3.1.2")
    assert "[INFO ] Restarting CONTENT_SERVER node" in "\n".join(lines)
    assert not any("upgrading DAEMON" in line for line in lines)
    after = _nodes(lines[lines.index("[INFO ] Demo: after the failed upgrade:") :])[:6]
    assert [state for _, state in after] == [
        "running, version 3.2.2",
        "running, version 3.2.2",
        "running, version 3.2.2",
        "stopped",
        "running, version 3.1.2",
        "running, version 3.1.2",
    ]
    assert _section(lines, "[INFO ] prepare to rollback services in this order", 4) == [
        "[INFO ] [localhost]:GATEWAY:3.2.2 to 3.1.2",
        "[INFO ] [localhost]:CONFIG_SERVER:3.2.2 to 3.1.2",
        "[INFO ] [localhost]:SERVICE_CENTER:3.2.2 to 3.1.2",
        "[INFO ] Rolling back service...(0/3)",
    ]
    back = [state for _, state in _nodes(lines)[-6:]]
    assert back == [
        "running, version 3.1.2, as before",
        "running, version 3.1.2, as before",
        "running, version 3.1.2, as before",
        "stopped, as before",
        "running, version 3.1.2, as before",
        "running, version 3.1.2, as before",
    ]
    assert ("[INFO ] Demo: everything is back: every file and every node is as it was before the upgrade, "
            "on 3.1.2") in lines
    _assert_nothing_left(demo_runner, fresh)


def test_demo_ctrl_c_stops_after_the_step_and_cleans_up(demo_runner: DemoRunner, fresh: Sandboxed) -> None:
    process = demo_runner.popen(["demo"], fresh.home, fresh.tmp)
    assert process.stdout is not None
    seen: list[str] = []
    try:
        for line in process.stdout:
            seen.append(line.rstrip("\n"))
            if "Upgrading Service: upgrading GATEWAY on localhost" in line:
                process.send_signal(signal.SIGINT)
                break
        rest, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    lines = seen + rest.splitlines()
    assert process.returncode == 130, "\n".join(lines) + err
    assert any("Interrupted: finishing the step in flight, then cleaning up" in line for line in lines)
    assert not any("upgrading CONTENT_SERVER" in line for line in lines)
    assert not any("Rollback service success" in line for line in lines)
    assert lines[-1] == "[INFO ] Demo: done; no sandbox process or file is left"
    assert err.strip().splitlines()[-1] == "[ERROR] demo interrupted"
    _assert_nothing_left(demo_runner, fresh)


def test_demo_keep_leaves_running_nodes_and_working_stop_commands(
    demo_runner: DemoRunner, fresh: Sandboxed
) -> None:
    workdir = fresh.tmp / "kept"
    done = demo_runner.run(["demo", "--keep", "--workdir", str(workdir)], fresh.home, fresh.tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert f"[INFO ] Demo: kept the sandbox in {workdir} (--keep):" in lines
    status = [line for line in lines if line.startswith("[INFO ] Demo:   status file: scm.py status show ")]
    assert len(status) == 1 and Path(status[0].rsplit(" ", 1)[1]).is_file()
    assert (workdir / "sequoiacm" / "sequoiacm-cloud" / "bin" / "scmcloudctl.sh").is_file()
    assert _user_pids(demo_runner.uid), "--keep left no node running"
    start = lines.index("[INFO ] Demo:   its nodes still run; stop them with:")
    indent = "[INFO ] Demo:     "
    stops = [line.removeprefix(indent) for line in lines[start + 1 :] if line.startswith(indent)]
    assert stops and all("JAVA_HOME=" in s for s in stops)
    for command in stops:
        env = demo_runner.env(fresh.home, fresh.tmp)
        stopped = _as_user(demo_runner.uid, demo_runner.gid, ["sh", "-c", command], env)
        assert stopped.returncode == 0, stopped.stderr
    assert lines[-1] == f"[INFO ] Demo:   then remove it: rm -rf {workdir}"
    shutil.rmtree(workdir)
    _assert_nothing_left(demo_runner, fresh)


def test_demo_refuses_a_service_it_does_not_run(demo_runner: DemoRunner, fresh: Sandboxed) -> None:
    done = demo_runner.run(["demo", "--fail", "om-server"], fresh.home, fresh.tmp, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "[ERROR] --fail om-server: the demo runs only "
        "service-center, config-server, gateway, content-server, daemon"
    )
    _assert_nothing_left(demo_runner, fresh)
