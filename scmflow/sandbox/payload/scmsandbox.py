"""Sandbox SequoiaCM control tool: what every pack's `bin/<ctl>.sh` runs, and its nodes.

Shipped verbatim in each pack's `bin/` beside `sandbox.json` (the pack's manifest), so an
upgrade that replaces `bin/` replaces it too. Standard library only: it runs on test hosts
with nothing but python3. Every path is derived from this file's location at run time, so
the install may be moved or bind-mounted elsewhere.

Interface (all need JAVA_HOME with an executable bin/java; failures exit 1 with `ERROR:`):
  <ctl> list [-m local]            `NAME(PORT) (PID)` or `NAME(PORT) (-)` per node, `Total:N`;
                                   exit 1 when there are no nodes
  <ctl> start [--timeout S] -p PORT [-p PORT...] | -t SERVICE | -t all | --all
                                   start detached, wait for /health; a running node is a no-op;
                                   a node not up in time is killed and the start fails
  <ctl> stop  -p PORT | -t SERVICE | -t all | --all     stop and wait; nothing running = exit 0
  scmd.sh start|stop|status        the daemon; status exits 0 when running, 1 when not
  scmsysctl.sh -v | list           version of the sys-tools; every node of the host
Runtime files live only under <dir>/log/. Fault switches: <install>/.sandbox-faults/.

Usage: scmsandbox.py <ctl-name> <ctl args...>     (through the ctl wrapper)
       scmsandbox.py node --service S --port P --delay D -jar JAR   (one node process)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Tools call the ctl scripts many times per upgrade, so each call imports only what it needs:
# http.client and http.server alone cost more CPU than the rest of a `list`. Nodes answer HTTP
# from a plain socket, and subprocess is imported by the commands that spawn.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any

JAR_MAGIC = "SEQUOIACM-SANDBOX-JAR"
NODE_MODE = "node"
POLL_SECONDS = 0.01
STOP_GRACE_SECONDS = 10.0
DEFAULT_START_TIMEOUT = 60.0
DEFAULT_SLOW_SECONDS = 3.0
MAX_ANSWER = 64 * 1024
MAX_REQUEST_HEAD = 8 * 1024
REQUEST_SECONDS = 2.0


class CtlError(Exception):
    """A failure the ctl reports as one `ERROR:` line and exit status 1."""


class Pack:
    """One installed service directory (`<install>/<dir>`), as its manifest describes it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifest: dict[str, Any] = json.loads(
            (root / "bin" / "sandbox.json").read_text(encoding="utf-8")
        )
        self.services: list[dict[str, str]] = self.manifest["services"]

    @property
    def install_path(self) -> Path:
        """The install path: the parent of every service directory."""
        return self.root.parent

    @property
    def role(self) -> str:
        """`nodes`, `daemon` or `systools`."""
        return str(self.manifest["role"])

    def service(self, name: str) -> dict[str, str]:
        """The manifest entry of the service `name`."""
        for service in self.services:
            if service["name"] == name:
                return service
        known = ", ".join(s["name"] for s in self.services)
        raise CtlError(f"unknown service '{name}' (this tool handles: {known})")

    def jar(self, service: dict[str, str]) -> Path:
        """The one jar of `service`; CtlError when the glob matches none or several."""
        return single_match(self.root, service["version_file"])

    def check_tools_jar(self) -> None:
        """The real tools find their tools jar with a glob that must match exactly once."""
        pattern = self.manifest.get("tools_jar")
        if pattern:
            single_match(self.root, str(pattern))


class Node:
    """One port node: its config dir is `<dir>/conf/<service>/<port>/`."""

    def __init__(self, pack: Pack, service: dict[str, str], port: int) -> None:
        self.pack = pack
        self.service = service
        self.port = port

    @property
    def label(self) -> str:
        """`GATEWAY(8080)`."""
        return f"{self.service['printed']}({self.port})"

    @property
    def run_dir(self) -> Path:
        """Where the node's pid file and log live (under `log/`, never replaced)."""
        return self.pack.root / "log" / self.service["name"] / str(self.port)

    @property
    def pid_file(self) -> Path:
        """The node's pid file."""
        return self.run_dir / "node.pid"

    def pid(self) -> int | None:
        """The pid of the live node process, or None when the node is stopped."""
        pid = read_pid(self.pid_file)
        if pid is None:
            return None
        argv = live_cmdline(pid)
        if argv is None or not is_node_argv(argv, self.service["name"], self.port):
            return None
        return pid


def main(argv: Sequence[str]) -> int:
    """Dispatch to node mode or to the ctl named in argv[0]."""
    if argv and argv[0] == NODE_MODE:
        return run_node(argv[1:])
    if not argv:
        sys.stderr.write("usage: scmsandbox.py <ctl-name> <command> [options]\n")
        return 2
    ctl, args = argv[0], list(argv[1:])
    try:
        require_java()
        pack = Pack(Path(__file__).resolve().parent.parent)
        commands = {"nodes": ctl_nodes, "daemon": ctl_daemon, "systools": ctl_systools}
        return commands[pack.role](pack, ctl, args)
    except (CtlError, OSError) as exc:
        sys.stderr.write(f"ERROR: {exc}\n")
        return 1


def require_java() -> None:
    """The real ctl scripts refuse to run without a usable JAVA_HOME."""
    java_home = os.environ.get("JAVA_HOME", "")
    if not java_home:
        raise CtlError("JAVA_HOME is not set")
    java = Path(java_home) / "bin" / "java"
    if not (java.is_file() and os.access(java, os.X_OK)):
        raise CtlError(f"{java} does not exist or is not executable; check JAVA_HOME")


# ---------------------------------------------------------------- port-node ctl scripts


def ctl_nodes(pack: Pack, ctl: str, args: list[str]) -> int:
    """`list`, `start` and `stop` for a pack whose services run one node per port."""
    parser = argparse.ArgumentParser(prog=ctl)
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="list the nodes on this host")
    listing.add_argument("-m", "--mode", default="local")
    for name in ("start", "stop"):
        cmd = sub.add_parser(name, help=f"{name} nodes")
        cmd.add_argument("-p", "--port", type=int, action="append", default=[])
        cmd.add_argument("-t", "--type", dest="service", action="append", default=[])
        cmd.add_argument("--all", action="store_true")
        cmd.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT)
    opts = parser.parse_args(args)
    pack.check_tools_jar()
    if opts.command == "list":
        return list_nodes([pack])
    nodes = select_nodes(pack, opts.port, opts.service, opts.all)
    if opts.command == "start":
        for node in nodes:
            start_node(node, opts.timeout)
    else:
        for node in nodes:
            stop_node(node)
    return 0


def all_nodes(pack: Pack) -> list[Node]:
    """Every configured node of the pack, in manifest order then port order."""
    nodes: list[Node] = []
    for service in pack.services:
        conf = pack.root / "conf" / service["name"]
        ports = sorted(int(p.name) for p in conf.glob("*") if p.is_dir() and p.name.isdigit())
        nodes.extend(Node(pack, service, port) for port in ports)
    return nodes


def select_nodes(pack: Pack, ports: list[int], services: list[str], every: bool) -> list[Node]:
    """The nodes named by `-p`, `-t` (`all` = every service) or `--all`."""
    if not (ports or services or every):
        raise CtlError("name the nodes: -p PORT, -t SERVICE, -t all or --all")
    nodes = all_nodes(pack)
    if every or "all" in services:
        return nodes
    for name in services:
        pack.service(name)
    chosen = [n for n in nodes if n.service["name"] in services]
    for port in ports:
        found = [n for n in nodes if n.port == port]
        if not found:
            raise CtlError(f"no node with port {port} under {pack.root}/conf")
        chosen.extend(n for n in found if n not in chosen)
    return chosen


def list_nodes(packs: Sequence[Pack]) -> int:
    """Print `NAME(PORT) (PID)` or `NAME(PORT) (-)` per node, then `Total:N`."""
    nodes = [node for pack in packs for node in all_nodes(pack)]
    for node in nodes:
        pid = node.pid()
        sys.stdout.write(f"{node.label} ({pid if pid is not None else '-'})\n")
    sys.stdout.write(f"Total:{len(nodes)}\n")
    return 0 if nodes else 1


def start_node(node: Node, timeout: float) -> None:
    """Launch the node detached and wait until its port answers as this very process."""
    running = node.pid()
    if running is not None:
        sys.stdout.write(f"{node.label} is already running ({running})\n")
        return
    jar = node.pack.jar(node.service)
    version = jar_version(jar)
    faults = Faults(node.pack.install_path, node.service["name"], version)
    if faults.active("start-fail") is not None:
        raise CtlError(f"failed to start {node.label}: injected start failure")
    slow = faults.active("start-slow")
    delay = slow if slow is not None else 0.0
    node.run_dir.mkdir(parents=True, exist_ok=True)
    log = node.run_dir / "node.log"
    argv = [
        sys.executable, str(Path(__file__).resolve()), NODE_MODE,
        "--service", node.service["name"], "--port", str(node.port),
        "--delay", str(delay), "-jar", str(jar),
    ]
    proc = spawn_detached(argv, cwd=node.pack.root, log=log)
    write_pid(node.pid_file, proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            remove_pid(node.pid_file, proc.pid)
            raise CtlError(f"failed to start {node.label}: exited ({tail(log)})")
        if probe_pid(node.port) == proc.pid:
            sys.stdout.write(f"Success: {node.label} is successfully started ({proc.pid})\n")
            return
        time.sleep(POLL_SECONDS)
    # A node that missed its deadline is killed, so a failed start never leaves it running.
    terminate(proc.pid, grace=0.0)
    proc.wait()
    remove_pid(node.pid_file, proc.pid)
    raise CtlError(f"failed to start {node.label}: not up within {timeout:g}s")


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


def probe_pid(port: int) -> int | None:
    """The pid a node on localhost:`port` reports on /health, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
            answer = read_until_closed(conn, MAX_ANSWER)
    except OSError:
        return None
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        return None
    try:
        pid = json.loads(body).get("pid")
    except (ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None


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


# ---------------------------------------------------------------- the daemon: scmd.sh


def ctl_daemon(pack: Pack, ctl: str, args: list[str]) -> int:
    """`start`, `stop` and `status` of the daemon (no ports, one process)."""
    parser = argparse.ArgumentParser(prog=ctl)
    parser.add_argument("command", choices=["start", "stop", "status"])
    opts = parser.parse_args(args)
    daemon = Daemon(pack)
    if opts.command == "start":
        daemon.start()
        return 0
    if opts.command == "stop":
        daemon.stop()
        return 0
    pid = daemon.pid()
    sys.stdout.write(f"{daemon.printed} ({pid if pid is not None else '-'})\n")
    return 0 if pid is not None else 1


class Daemon:
    """The daemon: its command lives in `conf/.crontab.properties`, its pid in `log/`."""

    def __init__(self, pack: Pack) -> None:
        self.pack = pack
        self.service = pack.services[0]
        self.printed = self.service["printed"]
        self.crontab = pack.root / "conf" / ".crontab.properties"
        self.pid_file = pack.root / "log" / "scmd.pid"

    def command(self) -> list[str] | None:
        """The command of the `linuxCron` line (between `nohup` and `>`), or None."""
        try:
            text = self.crontab.read_text(encoding="utf-8")
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("linuxCron="):
                words = line.split()
                if "nohup" in words and ">" in words:
                    return words[words.index("nohup") + 1 : words.index(">")]
        return None

    def pid(self) -> int | None:
        """Pid of the live process that runs the crontab command, or None."""
        command = self.command()
        pid = read_pid(self.pid_file)
        if command is None or pid is None:
            return None
        return pid if live_cmdline(pid) == command else None

    def start(self) -> None:
        """Write the crontab line and start its command detached; no-op when running."""
        running = self.pid()
        if running is not None:
            sys.stdout.write(f"{self.printed} is already running ({running})\n")
            return
        self._kill_stale()
        jar = self.pack.jar(self.service)
        faults = Faults(self.pack.install_path, self.service["name"], jar_version(jar))
        if faults.active("start-fail") is not None:
            raise CtlError(f"failed to start {self.printed}: injected start failure")
        slow = faults.active("start-slow")
        if slow:
            time.sleep(slow)
        script = Path(__file__).resolve().parent / "scmdaemon.py"
        command = [sys.executable, str(script), "--jar", str(jar)]
        if any(" " in word for word in command):
            raise CtlError("the daemon's paths must not contain spaces (crontab line)")
        self.crontab.parent.mkdir(parents=True, exist_ok=True)
        line = f"linuxCron=* * * * * nohup {' '.join(command)} > /dev/null 2>&1 &\n"
        self.crontab.write_text(line, encoding="utf-8")
        proc = spawn_detached(command, cwd=self.pack.root, log=None)
        write_pid(self.pid_file, proc.pid)
        sys.stdout.write(f"Success: {self.printed} is successfully started ({proc.pid})\n")

    def stop(self) -> None:
        """Kill the daemon process and delete the crontab file."""
        if self.pid() is not None:
            faults = Faults(self.pack.install_path, self.service["name"], self._version())
            if faults.active("stop-fail") is not None:
                raise CtlError(f"failed to stop {self.printed}: injected stop failure")
        self._kill_stale()
        self.crontab.unlink(missing_ok=True)
        sys.stdout.write(f"Success: {self.printed} is stopped\n")

    def _kill_stale(self) -> None:
        pid = read_pid(self.pid_file)
        argv = live_cmdline(pid) if pid is not None else None
        if pid is not None and argv is not None and is_daemon_argv(argv):
            terminate(pid, grace=STOP_GRACE_SECONDS)
        remove_pid(self.pid_file, None)

    def _version(self) -> str | None:
        try:
            return jar_version(self.pack.jar(self.service))
        except CtlError:
            return None


# ---------------------------------------------------------------- scmsysctl.sh


def ctl_systools(pack: Pack, ctl: str, args: list[str]) -> int:
    """`-v` prints the tools' version; `list` lists every node of every pack on the host."""
    parser = argparse.ArgumentParser(prog=ctl)
    parser.add_argument("-v", "--version", action="store_true")
    parser.add_argument("command", nargs="?", choices=["list"])
    opts = parser.parse_args(args)
    if opts.version:
        version = jar_version(pack.jar(pack.services[0]))
        sys.stdout.write(f"SequoiaCM version: {version}\n")
        return 0
    if opts.command != "list":
        parser.error("give -v or list")
    packs = []
    for manifest in sorted(pack.install_path.glob("*/bin/sandbox.json")):
        other = Pack(manifest.parent.parent)
        if other.role == "nodes":
            packs.append(other)
    return list_nodes(packs)


# ---------------------------------------------------------------- fault switches


class Faults:
    """Switches under `<install>/.sandbox-faults/`, named `<service>.<kind>`.

    Content: empty, or `VERSION [SECONDS]` (`*` = any version); a switch with a version
    applies only when the node's jar carries that version.
    """

    def __init__(self, install_path: Path, service: str, version: str | None) -> None:
        self.dir = install_path / ".sandbox-faults"
        self.service = service
        self.version = version

    def active(self, kind: str) -> float | None:
        """The switch's seconds (a default when unset) when it applies, else None."""
        try:
            words = (self.dir / f"{self.service}.{kind}").read_text(encoding="utf-8").split()
        except OSError:
            return None
        if words and words[0] != "*" and words[0] != self.version:
            return None
        try:
            return float(words[1]) if len(words) > 1 else DEFAULT_SLOW_SECONDS
        except ValueError:
            return DEFAULT_SLOW_SECONDS


# ---------------------------------------------------------------- node process


def run_node(args: Sequence[str]) -> int:
    """Serve GET /health on every address until SIGTERM."""
    parser = argparse.ArgumentParser(prog="scmsandbox.py node")
    parser.add_argument("--service", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("-jar", dest="jar", required=True)
    opts = parser.parse_args(args)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    info = {
        "service": opts.service,
        "port": opts.port,
        "version": jar_version(Path(opts.jar)),
        "pid": os.getpid(),
    }
    if opts.delay > 0:
        time.sleep(opts.delay)
    server = listen(opts.port)
    sys.stderr.write(f"node {opts.service}({opts.port}) version {info['version']} up\n")
    sys.stderr.flush()
    try:
        serve_health(server, json.dumps(info).encode())
    finally:
        server.close()
    return 0


def listen(port: int) -> socket.socket:
    """A listening socket on every address (a test host may lack DNS: no names resolved)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))  # noqa: S104
    server.listen(64)
    return server


def serve_health(server: socket.socket, body: bytes) -> None:
    """Answer GET /health with `body` (JSON) and anything else with 404, a thread per client."""
    import threading

    while True:
        conn, _ = server.accept()
        threading.Thread(target=answer_client, args=(conn, body), daemon=True).start()


def answer_client(conn: socket.socket, body: bytes) -> None:
    """Read one request from `conn`, answer it, close."""
    with conn:
        conn.settimeout(REQUEST_SECONDS)
        try:
            conn.sendall(health_answer(read_request_head(conn), body))
        except OSError:
            return


def read_request_head(conn: socket.socket) -> bytes:
    """The request line and headers (up to the blank line), at most MAX_REQUEST_HEAD bytes."""
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < MAX_REQUEST_HEAD:
        chunk = conn.recv(MAX_REQUEST_HEAD - len(head))
        if not chunk:
            break
        head += chunk
    return head


def health_answer(head: bytes, body: bytes) -> bytes:
    """The HTTP/1.0 answer to a request head: 200 with `body` for GET /health, else 404/405."""
    words = head.split(b"\n", 1)[0].split()
    if len(words) < 2 or words[0] not in (b"GET", b"HEAD"):
        status, payload, kind = b"405 Method Not Allowed", b"", b"text/plain"
    elif words[1].split(b"?", 1)[0] != b"/health":
        status, payload, kind = b"404 Not Found", b"not found\n", b"text/plain"
    else:
        status, payload, kind = b"200 OK", body, b"application/json"
    headers = (
        b"HTTP/1.0 " + status + b"\r\nContent-Type: " + kind
        + b"\r\nContent-Length: " + str(len(payload)).encode() + b"\r\nConnection: close\r\n\r\n"
    )
    return headers + (payload if words[:1] != [b"HEAD"] else b"")


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


# ---------------------------------------------------------------- shared helpers


def single_match(root: Path, pattern: str) -> Path:
    """The one file matching `pattern` under `root`; CtlError otherwise."""
    found = sorted(glob.glob(str(root / pattern)))
    if len(found) != 1:
        names = ", ".join(Path(f).name for f in found) or "none"
        raise CtlError(f"expected exactly one {root.name}/{pattern}, found: {names}")
    return Path(found[0])


def jar_version(jar: Path) -> str:
    """The version written in a sandbox jar's header line."""
    try:
        with jar.open("rb") as f:
            head = f.readline(512).decode("utf-8", "replace").split()
    except OSError as exc:
        raise CtlError(f"cannot read {jar}: {exc}") from exc
    if len(head) != 3 or head[0] != JAR_MAGIC:
        raise CtlError(f"{jar} is not a sandbox jar")
    return head[2]


def spawn_detached(argv: list[str], *, cwd: Path, log: Path | None) -> subprocess.Popen[bytes]:
    """Start argv in its own session with no inherited stdio, so an SSH exec can return."""
    import subprocess
    if log is None:
        out: int = subprocess.DEVNULL
        return subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True, close_fds=True,
        )
    with log.open("ab") as sink:
        return subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )


def is_node_argv(argv: list[str], service: str, port: int) -> bool:
    """Whether argv is a sandbox node of `service` on `port` (wherever it was started from)."""
    if len(argv) < 3 or not argv[1].endswith("scmsandbox.py") or argv[2] != NODE_MODE:
        return False
    pairs = dict(zip(argv[3::2], argv[4::2], strict=False))
    return pairs.get("--service") == service and pairs.get("--port") == str(port)


def is_daemon_argv(argv: list[str]) -> bool:
    """Whether argv is a sandbox daemon process."""
    return len(argv) >= 2 and argv[1].endswith("scmdaemon.py")


def live_cmdline(pid: int) -> list[str] | None:
    """argv of a live (not zombie) process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"]) or not raw:
        return None
    return raw.decode("utf-8", "replace").rstrip("\0").split("\0")


def terminate(pid: int, *, grace: float) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL; return once the process is gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if grace == 0.0 and sig == signal.SIGTERM:
            continue
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_until(lambda: live_cmdline(pid) is None, wait):
            return
    raise CtlError(f"process {pid} did not exit")


def wait_until(done: Callable[[], bool], seconds: float) -> bool:
    """Poll `done` until it is true or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, or None."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def write_pid(path: Path, pid: int) -> None:
    """Write a pid file (under `log/`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n", encoding="utf-8")


def remove_pid(path: Path, pid: int | None) -> None:
    """Remove a pid file; with `pid`, only when it still names that process."""
    if pid is None or read_pid(path) == pid:
        path.unlink(missing_ok=True)


def tail(log: Path, lines: int = 3) -> str:
    """The last lines of a log, joined for a one-line message."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "no log"
    return " | ".join(text.strip().splitlines()[-lines:]) or "empty log"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
