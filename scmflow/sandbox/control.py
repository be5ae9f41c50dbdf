"""Start and stop sandbox nodes through their real ctl scripts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from scmflow.catalog import load_catalog
from scmflow.sandbox.errors import SandboxError
from scmflow.sandbox.payload.scmsandbox.procs import start_time
from scmflow.sandbox.topology import Topology, check_topology

# run(argv, env): run one command where the caller decides (locally, or on a test host);
# `env` holds the variables to add (JAVA_HOME, PATH); raise SandboxError when it fails.
RunFn = Callable[[list[str], dict[str, str]], None]

# The install user sees a plain system PATH, not the caller's (which may point into /root).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_COMMAND_TIMEOUT = 120.0
# Files whose process is a sandbox process: nodes run the JDK's JVM, the daemon its script.
_SANDBOX_PROGRAMS = (b"/sandboxjvm.py", b"/scmsandbox", b"/scmdaemon.py")


def java_env(java_home: Path) -> dict[str, str]:
    """What the vendor's upgrader gives the ctl scripts: JAVA_HOME, and its bin/ first on
    PATH, since the tools start nodes with the first `java` on PATH."""
    return {"JAVA_HOME": str(java_home), "PATH": f"{java_home}/bin:{SYSTEM_PATH}"}


def start_topology(
    install_path: Path, topology: Topology, *, java_home: Path, run: RunFn, timeout: int = 30
) -> None:
    """Start the running=True nodes in service order with `<ctl> start`.

    `install_path` is the path as the runner sees it; nothing is read from it here.
    """
    catalog = load_catalog()
    for service in check_topology(topology, catalog):
        if not service.has_nodes or service.ctl is None:
            continue
        ctl = str(install_path / service.dir / "bin" / service.ctl)
        nodes = [n for n in topology.nodes_of(service.name) if n.running]
        for node in sorted(nodes, key=lambda n: n.port or 0):
            if node.port is None:
                run([ctl, "start"], java_env(java_home))
            else:
                argv = [ctl, "start", "--timeout", str(timeout), "-p", str(node.port)]
                run(argv, java_env(java_home))


def stop_all(
    install_path: Path, java_home: Path, run: RunFn, *, run_path: Path | None = None
) -> None:
    """Stop every node of every installed service with the ctl scripts' stop arguments.

    `install_path` is read here to find the installed ctl scripts; `run_path` is the same
    install as the runner sees it (default: the same path). Raises after trying them all.
    """
    errors: list[str] = []
    for service in reversed(load_catalog().ordered()):
        if not service.has_nodes or service.ctl is None:
            continue
        if not (install_path / service.dir / "bin" / service.ctl).is_file():
            continue
        ctl = str((run_path or install_path) / service.dir / "bin" / service.ctl)
        try:
            run([ctl, *service.stop_args], java_env(java_home))
        except SandboxError as exc:
            errors.append(str(exc))
    if errors:
        raise SandboxError("; ".join(errors))


def local_run(argv: list[str], env: dict[str, str]) -> None:
    """Run argv here, as the current user, with `env` added to this process's environment."""
    _run(argv, {**os.environ, **env}, None)


def local_run_as(uid: int, gid: int) -> RunFn:
    """A RunFn that runs argv here as (uid, gid), with a system PATH, like `sudo -u`."""

    def run(argv: list[str], env: dict[str, str]) -> None:
        _run(argv, {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", **env}, (uid, gid))

    return run


def _run(argv: list[str], env: dict[str, str], owner: tuple[int, int] | None) -> None:
    try:
        proc = subprocess.run(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT,
            cwd="/",
            user=owner[0] if owner else None,
            group=owner[1] if owner else None,
            extra_groups=[] if owner else None,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"{' '.join(argv)}: {exc}") from exc
    if proc.returncode != 0:
        detail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise SandboxError(f"{' '.join(argv)} exited {proc.returncode}: {detail}")


def kill_nodes(install_path: Path) -> list[int]:
    """Last-resort cleanup: kill every sandbox process working in one of the install's dirs.

    Processes are found by their working directory's inode, not by path or pid file, so this
    also finds nodes started inside other mount or PID namespaces (run it as root for those).
    Needs no JAVA_HOME and ignores fault switches; returns the pids it killed.
    """
    packs = [p for p in install_path.iterdir() if p.is_dir()] if install_path.is_dir() else []
    dirs = {inode for inode in map(_inode, packs) if inode is not None}
    killed = [pid for pid in _sandbox_pids() if _inode(Path(f"/proc/{pid}/cwd")) in dirs]
    for pid in killed:
        _terminate(pid)
    for pid_file in install_path.glob("*/log/**/*.pid"):
        pid_file.unlink(missing_ok=True)
    return killed


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _sandbox_pids() -> list[int]:
    return sorted(
        int(entry.name) for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _is_sandbox_process(int(entry.name))
    )


def _is_sandbox_process(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    alive = state.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])
    # python3 [-S] PROGRAM ...: the program is the first or second argument
    return alive and any(arg.endswith(_SANDBOX_PROGRAMS) for arg in argv[1:3])


def _terminate(pid: int) -> None:
    started = start_time(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5.0
        # An exiting process loses its command line before it becomes a zombie, so "gone"
        # is judged from its state, and its start time tells it from a later process: the
        # ctl tool's own test, so the control side and the hosts judge a node gone alike.
        while time.monotonic() < deadline:
            if started is None or start_time(pid) != started:
                return
            time.sleep(0.01)

