"""Port nodes: `<ctl> list`, `start` and `stop` for a pack whose services run one node per port."""

from __future__ import annotations

import os
import sys
import time

from .faults import Faults
from .files import (
    dir_names,
    is_dir,
    jar_version,
    load_json,
    make_dirs,
    read_pid,
    remove_pid,
    tail,
    write_pid,
)
from .pack import LIST_OPTIONS, NODE_OPTIONS, NODES_USAGE, Pack, listed_name, number, parse_options
from .procs import live_cmdline, spawn_detached, terminate
from .tool import (
    CONFIG_OPTION,
    DEFAULT_START_TIMEOUT,
    DELAY_PROPERTY,
    EMPTY_OUT,
    HEALTH_DOWN_PROPERTY,
    HEALTH_PATH,
    INVALID_ARG,
    JVM_OPTIONS,
    MAX_ANSWER,
    POLL_SECONDS,
    PROPERTIES,
    STOP_GRACE_SECONDS,
    SUCCESS,
    CtlError,
    Usage,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence
    from typing import Any


class Node:
    """One port node: its config dir is `<dir>/conf/<service>/<port>/`."""

    def __init__(self, pack: Pack, service: dict[str, str], port: int) -> None:
        self.pack = pack
        self.service = service
        self.port = port

    @property
    def label(self) -> str:
        """`GATEWAY(8080)`, `SERVICE-CENTER(8800)`."""
        return f"{listed_name(self.service)}({self.port})"

    @property
    def conf_file(self) -> str:
        """The node's application.properties (it need not exist)."""
        return os.path.join(self.pack.root, "conf", self.service["name"], str(self.port), PROPERTIES)

    @property
    def run_dir(self) -> str:
        """Where the node's pid file and log live (under `log/`, never replaced)."""
        return os.path.join(self.pack.root, "log", self.service["name"], str(self.port))

    @property
    def pid_file(self) -> str:
        """The node's pid file."""
        return os.path.join(self.run_dir, "node.pid")

    def pid(self) -> int | None:
        """The pid of the live node process, or None when the node is stopped."""
        pid = read_pid(self.pid_file)
        if pid is None:
            return None
        argv = live_cmdline(pid)
        return pid if argv is not None and self.named_by(argv) else None

    def named_by(self, argv: list[str]) -> bool:
        """Whether a command line runs this node: `-jar` and this node's config file.

        The config path is compared from the pack's directory on, so a node started through
        another path to the same install (moved, bind-mounted) is still this node.
        """
        tail = f"/{os.path.basename(self.pack.root)}/conf/{self.service['name']}/{self.port}/{PROPERTIES}"
        here = f"{CONFIG_OPTION}{self.conf_file}"
        return "-jar" in argv and any(
            arg == here or (arg.startswith(CONFIG_OPTION) and arg.endswith(tail)) for arg in argv
        )


def ctl_nodes(pack: Pack, ctl: str, args: list[str]) -> int:
    """`list`, `start` and `stop` for a pack whose services run one node per port."""
    try:
        if args[:1] == ["list"]:
            return ctl_list(pack, ctl, parse_options(ctl, args[1:], LIST_OPTIONS))
        if args[:1] in (["start"], ["stop"]):
            return ctl_start_stop(pack, ctl, args[0], parse_options(ctl, args[1:], NODE_OPTIONS))
        if args[:1] not in (["-h"], ["--help"]):
            raise CtlError(f"{ctl}: give a command: list, start or stop", INVALID_ARG)
    except Usage:
        pass
    sys.stdout.write(NODES_USAGE.format(ctl=ctl))
    return SUCCESS


def ctl_list(pack: Pack, ctl: str, opts: dict[str, Any]) -> int:
    """`list [-m local|run] [-l] [-p PORT]`."""
    mode = opts.get("mode", "run")
    if mode not in ("local", "run"):
        raise CtlError(f"{ctl}: -m must be local or run, not '{mode}'", INVALID_ARG)
    nodes = all_nodes(pack)
    if "port" in opts:
        port = number(ctl, "-p", opts["port"])
        nodes = [n for n in nodes if n.port == port]
    return list_nodes(nodes, running_only=mode == "run", long=bool(opts.get("long")))


def ctl_start_stop(pack: Pack, ctl: str, command: str, opts: dict[str, Any]) -> int:
    """`start`/`stop` of the nodes named by `-p`, `-t` or `--all`."""
    ports = [number(ctl, "-p", p) for p in opts.get("port", [])]
    timeout = number(ctl, "--timeout", opts.get("timeout", DEFAULT_START_TIMEOUT), float)
    nodes = select_nodes(pack, ports, opts.get("type", []), bool(opts.get("all")))
    for node in nodes:
        if command == "start":
            start_node(node, timeout)
        else:
            stop_node(node)
    return SUCCESS


def all_nodes(pack: Pack) -> list[Node]:
    """Every configured node of the pack, in manifest order then port order."""
    nodes: list[Node] = []
    for service in pack.services:
        conf = os.path.join(pack.root, "conf", service["name"])
        ports = sorted(
            int(name) for name in dir_names(conf)
            if is_dir(os.path.join(conf, name)) and name.isdigit()
        )
        nodes.extend(Node(pack, service, port) for port in ports)
    return nodes


def select_nodes(pack: Pack, ports: list[int], services: list[str], every: bool) -> list[Node]:
    """The nodes named by `-p`, `-t` (`all` = every service) or `--all`."""
    if not (ports or services or every):
        raise CtlError("name the nodes: -p PORT, -t SERVICE, -t all or --all", INVALID_ARG)
    nodes = all_nodes(pack)
    if every or "all" in services:
        return nodes
    for name in services:
        pack.service(name)
    chosen = [n for n in nodes if n.service["name"] in services]
    for port in ports:
        found = [n for n in nodes if n.port == port]
        if not found:
            raise CtlError(f"node does not exist: no {pack.root}/conf/*/{port}", INVALID_ARG)
        chosen.extend(n for n in found if n not in chosen)
    return chosen


def list_nodes(nodes: Sequence[Node], *, running_only: bool, long: bool) -> int:
    """Print `NAME(PORT) (PID)` or `NAME(PORT) (-)` per node, then `Total:N`."""
    count = 0
    for node in nodes:
        pid = node.pid()
        if running_only and pid is None:
            continue
        line = f"{node.label} ({pid if pid is not None else '-'})"
        sys.stdout.write(f"{line} {node.conf_file}\n" if long else f"{line}\n")
        count += 1
    sys.stdout.write(f"Total:{count}\n")
    return SUCCESS if count else EMPTY_OUT


def start_node(node: Node, timeout: float) -> None:
    """`nohup java ... -jar JAR --spring.config.location=...` (java from PATH), detached,
    then wait until the node's health, asked of this very process, says UP."""
    running = node.pid()
    if running is not None:
        sys.stdout.write(f"{node.label} is already running ({running})\n")
        return
    jar = node.pack.jar(node.service)
    faults = Faults(node.pack.install_path, node.service["name"], jar_version(jar))
    if faults.active("start-fail") is not None:
        raise CtlError(f"failed to start {node.label}: injected start failure")
    slow = faults.active("start-slow")
    make_dirs(node.run_dir)
    log = os.path.join(node.run_dir, "node.log")
    argv = ["nohup", "java", *JVM_OPTIONS]
    if slow:
        argv.append(f"-D{DELAY_PROPERTY}={slow:g}")
    if faults.active("health-down") is not None:
        argv.append(f"-D{HEALTH_DOWN_PROPERTY}=true")
    argv += ["-jar", jar, f"{CONFIG_OPTION}{node.conf_file}"]
    proc = spawn_detached(argv, cwd=node.pack.root, log=log)
    write_pid(node.pid_file, proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            remove_pid(node.pid_file, proc.pid)
            raise CtlError(
                f"failed to start {node.label}: exited {code} ({tail(log)}; "
                f"java on PATH: {java_on_path() or 'none'})"
            )
        if node_up(node.port, proc.pid):
            sys.stdout.write(f"Success: {node.label} is successfully started ({proc.pid})\n")
            return
        time.sleep(POLL_SECONDS)
    # A node that missed its deadline is killed, so a failed start never leaves it running.
    terminate(proc.pid, grace=0.0)
    proc.wait()
    remove_pid(node.pid_file, proc.pid)
    raise CtlError(f"failed to start {node.label}: not up within {timeout:g}s")


def java_on_path() -> str | None:
    """The `java` that `nohup java` ran: the first executable one on PATH."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(folder or ".", "java")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def stop_node(node: Node) -> None:
    """Stop the node if it runs and wait until it is gone."""
    pid = node.pid()
    if pid is None:
        remove_pid(node.pid_file, None)
        return
    faults = Faults(node.pack.install_path, node.service["name"], disk_version(node))
    if faults.active("stop-fail") is not None:
        raise CtlError(f"failed to stop {node.label}: injected stop failure")
    terminate(pid, grace=STOP_GRACE_SECONDS)
    remove_pid(node.pid_file, pid)
    sys.stdout.write(f"Success: {node.label} is successfully stopped ({pid})\n")


def disk_version(node: Node) -> str | None:
    """Version of the node's jar on disk, or None when it cannot be read."""
    try:
        return jar_version(node.pack.jar(node.service))
    except CtlError:
        return None


def node_up(port: int, pid: int) -> bool:
    """Whether localhost:`port` answers its health as UP from process `pid`."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(f"GET {HEALTH_PATH} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            answer = read_until_closed(conn, MAX_ANSWER)
    except OSError:
        return False
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        return False
    try:
        health = load_json(body)
    except ValueError:
        return False
    return isinstance(health, dict) and health.get("status") == "UP" and health.get("pid") == pid


def read_until_closed(conn: socket.socket, limit: int) -> bytes:
    """Everything the peer sends until it closes (at most `limit` bytes)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = conn.recv(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
