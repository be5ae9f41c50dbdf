"""A service's nodes on this host: listing them through its ctl, stopping and starting them."""

import fnmatch
import os
import re
import shlex
import time
from typing import Any, Dict, List, Optional

from .commands import Done, run_command
from .context import Ctx, Failure, wait_for
from .procs import cmdline, pid_alive, process_running, same_mount_namespace

# `NAME(PORT) (PID)` or `NAME(PORT) (-)`; `-l` appends the properties path.
_NODE_LINE = re.compile(r"^\s*(\S+)\((\d+)\)\s+\((\d+|-)\)(?:\s.*)?$")
_TOTAL_LINE = re.compile(r"^\s*Total:\s*(\d+)\s*$")
# Real ctl scripts return once their nodes are gone; this covers a slow exit.
_STOP_WAIT = 15.0
# Each ctl call starts a JVM: a host's check starts at most this many at once, so the
# check cannot itself exhaust the memory whose shortage it must detect.
_LISTS_AT_ONCE = 2
# A listing that did not end in `Total:N` (a JVM that could not start) is tried once more.
_LIST_RETRY_PAUSE = 1.0
# The ctl tools' exit code for a listing that found no node (ScmExitCode.EMPTY_OUT).
_EMPTY_OUT = 1


def ctl_path(ctx: Ctx) -> str:
    """`<dir>/bin/<ctl>`."""
    return os.path.join(ctx.service_dir(), "bin", str(ctx.service().get("ctl") or ""))


def has_ctl(ctx: Ctx) -> bool:
    """Whether the service has a control script on disk."""
    return bool(ctx.service().get("ctl")) and os.path.isfile(ctl_path(ctx))


def list_command(ctx: Ctx) -> List[str]:
    """`<ctl> list -m local`: every configured node of the ctl's directory, running or not."""
    return [ctl_path(ctx), "list", "-m", "local"]


def listing_total(done: Done) -> Optional[int]:
    """N of a listing that ends in `Total:N` with a matching exit code, else None.

    Only such output is a listing: a ctl whose JVM could not start prints nothing on
    stdout, and a bare exit 1 would otherwise read as "no node runs".
    """
    lines = [line for line in done.out.splitlines() if line.strip()]
    m = _TOTAL_LINE.match(lines[-1]) if lines else None
    if m is None:
        return None
    total = int(m.group(1))
    if done.code == 0 or (done.code == _EMPTY_OUT and total == 0):
        return total
    return None


def read_listing(ctx: Ctx) -> Done:
    """Run the ctl's listing; once more after a pause when it is not one; Failure after that."""
    argv = list_command(ctx)
    done = run_command(ctx, argv, check=False)
    if listing_total(done) is None:
        time.sleep(_LIST_RETRY_PAUSE)
        done = run_command(ctx, argv, check=False)
    if listing_total(done) is None:
        raise Failure(f"cannot list the nodes on {ctx.host}: {done.describe()}", "list")
    return done


def configured_ports(ctx: Ctx) -> List[int]:
    """Ports of the service's nodes: the directories `<dir>/conf/<service>/<port>/`."""
    conf = os.path.join(ctx.service_dir(), "conf", str(ctx.service()["name"]))
    try:
        names = os.listdir(conf)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(conf, n)))


def node_process_matches(ctx: Ctx, port: int, pid: int) -> bool:
    """Whether `pid` is alive and its command line names this node's jar and config dir."""
    argv = cmdline(pid)
    return bool(argv) and names_node(ctx, port, argv or [])


def names_node(ctx: Ctx, port: int, argv: List[str]) -> bool:
    """Whether a command line is the node's: it names the service's jar and the node's config."""
    svc = ctx.service()
    jar_glob = os.path.basename(str(svc["version_file"]))
    conf = f"conf/{svc['name']}/{port}"
    names_jar = any(fnmatch.fnmatchcase(os.path.basename(word), jar_glob) for word in argv)
    names_conf = any(conf + "/" in word or word.endswith(conf) for word in argv)
    return names_jar and names_conf


def scan_nodes(ctx: Ctx) -> Dict[int, int]:
    """port -> pid of the service's configured nodes found among this host's processes.

    For when the ctl cannot list them (a replace cut short removed bin/ or the tools jar).
    """
    ports = configured_ports(ctx)
    install = ctx.service_dir() + os.sep
    found: Dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or not same_mount_namespace(int(name)):
            continue
        argv = cmdline(int(name))
        if not argv or not any(install in word for word in argv):
            continue
        for port in ports:
            if names_node(ctx, port, argv):
                found[port] = int(name)
    return found


def list_nodes(ctx: Ctx, cache: Optional[Dict[str, Done]] = None) -> List[Dict[str, Any]]:
    """The service's port nodes from its ctl's listing; none when the ctl is absent.

    Every configured node must be listed; a listed pid counts as running only when that
    process is alive and is the node (see `node_process_matches`).
    """
    if not has_ctl(ctx):
        return []
    ctl = ctl_path(ctx)
    done = cache.get(ctl) if cache is not None else None
    if done is None:
        done = read_listing(ctx)
        if cache is not None:
            cache[ctl] = done
    svc = ctx.service()
    listed: Dict[int, Optional[int]] = {}
    for line in done.out.splitlines():
        m = _NODE_LINE.match(line)
        if m and m.group(1) == svc["listed"]:
            listed[int(m.group(2))] = None if m.group(3) == "-" else int(m.group(3))
    missing = [p for p in configured_ports(ctx) if p not in listed]
    if missing:
        ports = ", ".join(str(p) for p in missing)
        raise Failure(
            f"{svc['printed']} on {ctx.host}: the node(s) configured on port {ports} are missing "
            f"from `{os.path.basename(ctl)} list -m local`, which lists every configured node",
            "list",
        )
    nodes = []
    for port, pid in sorted(listed.items()):
        running = pid is not None and node_process_matches(ctx, port, pid)
        node: Dict[str, Any] = {"port": port, "pid": pid if running else None, "running": running}
        if pid is not None and not running:
            node["stale_pid"] = pid
        nodes.append(node)
    return nodes


def list_at_once(services: List[Ctx]) -> Dict[str, Done]:
    """The listing of every distinct ctl of port services, a few side by side.

    Each real ctl call starts a JVM (the better part of a second) and lists only its own
    directory's nodes, so listings overlap, but no more than `_LISTS_AT_ONCE` JVMs at once.
    """
    ctls: Dict[str, Ctx] = {}
    for one in services:
        if one.service()["node_kind"] == "port" and has_ctl(one):
            ctls.setdefault(ctl_path(one), one)
    if not ctls:
        return {}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(ctls), _LISTS_AT_ONCE)) as pool:
        futures = {ctl: pool.submit(read_listing, one) for ctl, one in ctls.items()}
        return {ctl: future.result() for ctl, future in futures.items()}


def running_ports(ctx: Ctx) -> Dict[int, int]:
    """port -> pid of the service's running nodes."""
    return {n["port"]: n["pid"] for n in list_nodes(ctx) if n["running"]}


def daemon_command(ctx: Ctx) -> Optional[List[str]]:
    """The daemon's command: between `nohup` and `>` in the crontab file's linuxCron line."""
    path = os.path.join(ctx.service_dir(), "conf", ".crontab.properties")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() != "linuxCron":
            continue
        m = re.search(r"\bnohup\s+(.*?)\s*>", value)
        if m and m.group(1).strip():
            try:
                return shlex.split(m.group(1))
            except ValueError:
                return m.group(1).split()
    return None



def daemon_pid(ctx: Ctx) -> Optional[int]:
    """Pid of the running daemon, or None."""
    return process_running(daemon_command(ctx))


def stop_service(ctx: Ctx) -> Dict[str, Any]:
    """Stop the service's nodes on this host and confirm that none still runs."""
    kind = ctx.service()["node_kind"]
    if kind == "daemon":
        return _stop_daemon(ctx)
    if kind != "port":
        return {"stopped": []}
    svc = ctx.service()
    try:
        before = running_ports(ctx)
    except Failure as exc:
        # Only a replace cut short leaves a ctl that cannot list (its tools jar gone), and
        # it had stopped the nodes first: confirm that from the processes themselves.
        left = scan_nodes(ctx)
        if left:
            names = ", ".join(f"{svc['printed']}({port}) pid {pid}" for port, pid in sorted(left.items()))
            raise Failure(f"{exc.message}, and nodes still run: {names}", "stop") from None
        return {"stopped": [], "unlisted": exc.message}
    if not has_ctl(ctx):
        left = scan_nodes(ctx)
        if left:
            message = f"{svc['printed']} nodes run on ports {sorted(left)} but {ctl_path(ctx)} is missing"
            raise Failure(message, "stop")
        return {"stopped": [], "ctl_missing": True}
    if not before:
        return {"stopped": []}
    done = run_command(ctx, [ctl_path(ctx)] + list(svc["stop_args"]), check=False)
    if done.code == 0 and wait_for(lambda: not any(pid_alive(p) for p in before.values()), _STOP_WAIT):
        # Every node the listing showed is gone and the stop succeeded: no second listing.
        return {"stopped": sorted(before)}
    still = running_ports(ctx)
    if still:
        names = ", ".join(f"{svc['printed']}({port}) pid {pid}" for port, pid in sorted(still.items()))
        raise Failure(f"nodes still running after stop: {names}; {done.describe()}", "stop")
    return {"stopped": sorted(before)}


def _stop_daemon(ctx: Ctx) -> Dict[str, Any]:
    # `scmd.sh stop` deletes the crontab file, so read the command before stopping.
    command = daemon_command(ctx)
    pid = process_running(command)
    if pid is None:
        return {"stopped": []}
    if not has_ctl(ctx):
        raise Failure(f"DAEMON runs (pid {pid}) but {ctl_path(ctx)} is missing", "stop")
    done = run_command(ctx, [ctl_path(ctx)] + list(ctx.service()["stop_args"]), check=False)
    wait = _STOP_WAIT if done.code == 0 else 0.0
    # Wait on the pid seen (cheap), then look once at every process for another copy.
    if not wait_for(lambda: not pid_alive(pid), wait) or process_running(command) is not None:
        raise Failure(f"DAEMON still running after stop (pid {pid}); {done.describe()}", "stop")
    return {"stopped": ["daemon"]}


def start_service(
    ctx: Ctx, ports: List[int], daemon: bool, timeout: float, nodes_down: bool = False
) -> Dict[str, Any]:
    """Start exactly the given nodes (and the daemon), skipping those already running.

    `nodes_down`: the caller knows no node of the service runs, so none is listed first.
    """
    svc = ctx.service()
    started: List[int] = []
    already: List[int] = []
    if ports:
        if not has_ctl(ctx):
            raise Failure(f"cannot start {svc['printed']}: {ctl_path(ctx)} is missing", "start")
        running = {} if nodes_down else running_ports(ctx)
        for port in ports:
            if port in running:
                already.append(port)
                continue
            ctx.step = f"start {port}"
            argv = [ctl_path(ctx), "start", "--timeout", f"{timeout:g}", "-p", str(port)]
            run_command(ctx, argv, timeout=timeout + 60)
            started.append(port)
    daemon_started = False
    if daemon and daemon_pid(ctx) is None:
        ctx.step = "start daemon"
        if not has_ctl(ctx):
            raise Failure(f"cannot start DAEMON: {ctl_path(ctx)} is missing", "start")
        run_command(ctx, [ctl_path(ctx), "start"], timeout=timeout + 60)
        daemon_started = True
    return {"started": started, "already_running": already, "daemon_started": daemon_started}
