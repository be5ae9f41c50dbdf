"""Sandbox SequoiaCM control tool: the program every pack's `bin/<ctl>.sh` runs.

Shipped verbatim in each pack's `bin/` beside `sandbox.json` (the pack's manifest), so an
upgrade that replaces `bin/` replaces it too. The ctl script checks JAVA_HOME and runs the
pack's tools jar with `$JAVA_HOME/bin/java -Dsandbox.program=<this file>`: the sandbox JDK
(scmflow/sandbox/jdk.py) then runs this file as the tool. Standard library only: it runs on
test hosts with nothing but python3. Every path is derived from this file's location at run
time, so the install may be moved or bind-mounted elsewhere.

Behaviour, as SequoiaCM's own tools (see the reference's "Nodes" section):
  <ctl> list [-m local|run] [-l] [-p PORT]
        one line per node, `NAME(PORT) (PID)` running or `NAME(PORT) (-)` stopped, then
        `Total:N`. NAME is the service name upper-cased, hyphen kept (`SERVICE-CENTER`).
        `-m local` lists every configured node (a dir `<dir>/conf/<service>/<port>/`), the
        default `run` only running ones; `-l` appends the node's properties path.
  <ctl> start [--timeout S] -p PORT [-p PORT...] | -t SERVICE | -t all | --all
        starts each node as `nohup java <jvm options> -jar <jar>
        --spring.config.location=<conf>/application.properties`, `java` being the FIRST java
        on PATH, and waits until GET /internal/v1/health says UP (a node not up in time is
        killed and the start fails); a running node is left alone.
  <ctl> stop  -p PORT | -t SERVICE | -t all | --all      stops and waits; none running = 0
  scmd.sh start|stop|status        the daemon; status exits 0 when running, 1 when not
  scmsysctl.sh -v | list           version of the sys-tools; every node of the host
A node runs when the pid in its pid file (under `log/`) is a live process whose command
line names that node's config file. Exit codes (ScmExitCode): 0 success, 1 EMPTY_OUT (a
listing with no node; `Total:0` is still printed), 3 invalid argument, 4 file not found,
8 system error; errors are one `ERROR:` line on stderr.

Fault switches (`<install>/.sandbox-faults/<service>.<kind>`, see faults.py): start-fail,
stop-fail, start-slow, health-down (the node reports UP to the start check, then DOWN), and
jvm-fail, which makes the whole tool of the service's directory
fail as a JVM that cannot start: nothing on stdout, `Error occurred during initialization of
VM` on stderr, exit 1, no `Total:` line.

Usage: scmsandbox.py <ctl-name> <ctl args...>     (through the ctl script and the JDK)
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time

# Tools call the ctl scripts many times per upgrade, so each call imports only what it needs:
# argparse alone (re, gettext...) cost a third of a `list`, http.client more still, and
# pathlib, glob, json (all three import re) and signal (enum) together some 20 ms of a 57 ms
# `list`. So options are parsed by hand, paths are strings, the manifests' `jars/NAME-*.jar`
# patterns are matched by listing the directory, JSON goes to json's C scanner (load_json),
# signals are sent by number, health is asked over a plain socket, and socket, subprocess
# and fcntl are imported by the commands that need them. errno and stat cost nothing: one is
# built in, os has imported the other.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    import subprocess
    from collections.abc import Callable, Sequence
    from typing import Any

JAR_MAGIC = "SEQUOIACM-SANDBOX-JAR"
CONFIG_OPTION = "--spring.config.location="
PROPERTIES = "application.properties"
HEALTH_PATH = "/internal/v1/health"
JVM_OPTIONS = ("-Xms256m", "-Xmx512m")
DELAY_PROPERTY = "sandbox.startDelay"
HEALTH_DOWN_PROPERTY = "sandbox.healthDown"
FAULTS_DIR = ".sandbox-faults"
POLL_SECONDS = 0.01
STOP_GRACE_SECONDS = 10.0
DEFAULT_START_TIMEOUT = 60.0
DEFAULT_SLOW_SECONDS = 3.0
MAX_ANSWER = 64 * 1024
# The numbers POSIX fixes for `kill -15` and `kill -9`.
SIGTERM = 15
SIGKILL = 9
# stat errors that pathlib's is_dir()/exists() take for "no such path" (others raise).
MISSING_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)
JSON_SPACE = " \t\n\r"  # what json skips around a value

# ScmExitCode of the real tools.
SUCCESS = 0
EMPTY_OUT = 1
INVALID_ARG = 3
FILE_NOT_FIND = 4
SYSTEM_ERROR = 8
# What java prints and returns when the VM cannot start (no memory, wrong java).
JVM_FAILURE = 1
JVM_FAILURE_TEXT = (
    "Error occurred during initialization of VM\n"
    "Could not reserve enough space for object heap\n"
)


class CtlError(Exception):
    """A failure the ctl reports as one `ERROR:` line and exit status `code`."""

    def __init__(self, message: str, code: int = SYSTEM_ERROR) -> None:
        super().__init__(message)
        self.code = code


class Usage(Exception):
    """`-h`: print the command's usage on stdout and exit 0."""


# option -> (key, kind): "flag" takes no value, "one" one value, "many" one value per use
OptionSpec = dict[str, tuple[str, str]]
HELP: OptionSpec = {"-h": ("help", "flag"), "--help": ("help", "flag")}
LIST_OPTIONS: OptionSpec = {
    **HELP, "-m": ("mode", "one"), "--mode": ("mode", "one"), "-l": ("long", "flag"),
    "--long": ("long", "flag"), "-p": ("port", "one"), "--port": ("port", "one"),
}
NODE_OPTIONS: OptionSpec = {
    **HELP, "-p": ("port", "many"), "--port": ("port", "many"), "-t": ("type", "many"),
    "--type": ("type", "many"), "--all": ("all", "flag"), "--timeout": ("timeout", "one"),
}
NODES_USAGE = """usage: {ctl} list [-m local|run] [-l] [-p PORT]
       {ctl} start [--timeout SECONDS] -p PORT [-p PORT...] | -t SERVICE | -t all | --all
       {ctl} stop -p PORT [-p PORT...] | -t SERVICE | -t all | --all
"""


def parse_options(ctl: str, args: Sequence[str], spec: OptionSpec) -> dict[str, Any]:
    """The options of `args` by key; CtlError(INVALID_ARG) for anything `spec` lacks."""
    values: dict[str, Any] = {}
    index = 0
    while index < len(args):
        word = args[index]
        name, eq, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if name not in spec:
            raise CtlError(f"{ctl}: unrecognized argument: {word}", INVALID_ARG)
        key, kind = spec[name]
        index += 1
        if kind == "flag":
            if eq:
                raise CtlError(f"{ctl}: {name} takes no value", INVALID_ARG)
            if key == "help":
                raise Usage
            values[key] = True
            continue
        if not eq:
            if index >= len(args):
                raise CtlError(f"{ctl}: {name} needs a value", INVALID_ARG)
            inline = args[index]
            index += 1
        if kind == "many":
            values.setdefault(key, []).append(inline)
        else:
            values[key] = inline
    return values


def number(ctl: str, option: str, text: str, kind: type[float] | type[int] = int) -> Any:
    """`text` as an int (or float); CtlError(INVALID_ARG) when it is not one."""
    try:
        return kind(text)
    except ValueError:
        raise CtlError(f"{ctl}: {option}: invalid number '{text}'", INVALID_ARG) from None


class Pack:
    """One installed service directory (`<install>/<dir>`), as its manifest describes it."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.manifest: dict[str, Any] = load_json(
            read_text(os.path.join(root, "bin", "sandbox.json"))
        )
        self.services: list[dict[str, str]] = self.manifest["services"]

    @property
    def install_path(self) -> str:
        """The install path: the parent of every service directory."""
        return os.path.dirname(self.root)

    @property
    def role(self) -> str:
        """`nodes`, `daemon` or `systools`."""
        return str(self.manifest["role"])

    @property
    def version(self) -> str:
        """The version of the tool itself (of this bin/)."""
        return str(self.manifest["version"])

    def service(self, name: str) -> dict[str, str]:
        """The manifest entry of the service `name`."""
        for service in self.services:
            if service["name"] == name:
                return service
        known = ", ".join(s["name"] for s in self.services)
        raise CtlError(f"unknown service '{name}' (this tool handles: {known})", INVALID_ARG)

    def jar(self, service: dict[str, str]) -> str:
        """The one jar of `service`; CtlError when the glob matches none or several."""
        return single_match(self.root, service["version_file"])


def listed_name(service: dict[str, str]) -> str:
    """The node name the tools print: `getName().toUpperCase()`, hyphen kept."""
    return service["name"].upper()


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


def main(argv: Sequence[str]) -> int:
    """Run the ctl named in argv[0] with the rest of argv."""
    if not argv:
        sys.stderr.write("usage: scmsandbox.py <ctl-name> <command> [options]\n")
        return INVALID_ARG
    ctl, args = argv[0], list(argv[1:])
    try:
        pack = Pack(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
        if jvm_fails(pack):
            sys.stderr.write(JVM_FAILURE_TEXT)
            return JVM_FAILURE
        commands = {"nodes": ctl_nodes, "daemon": ctl_daemon, "systools": ctl_systools}
        return commands[pack.role](pack, ctl, args)
    except CtlError as exc:
        sys.stderr.write(f"ERROR: {exc}\n")
        return exc.code
    except OSError as exc:
        sys.stderr.write(f"ERROR: {exc}\n")
        return SYSTEM_ERROR


def jvm_fails(pack: Pack) -> bool:
    """Whether a jvm-fail switch of one of the pack's services applies to this call."""
    if not is_dir(os.path.join(pack.install_path, FAULTS_DIR)):
        return False
    return any(
        Faults(pack.install_path, s["name"], pack.version).active("jvm-fail") is not None
        for s in pack.services
    )


# ---------------------------------------------------------------- port-node ctl scripts


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


# ---------------------------------------------------------------- the daemon: scmd.sh


def ctl_daemon(pack: Pack, ctl: str, args: list[str]) -> int:
    """`start`, `stop` and `status` of the daemon (no ports, one process)."""
    if len(args) != 1 or args[0] not in ("start", "stop", "status"):
        raise CtlError(f"{ctl}: give one command: start, stop or status", INVALID_ARG)
    daemon = Daemon(pack)
    if args[0] == "start":
        daemon.start()
        return SUCCESS
    if args[0] == "stop":
        daemon.stop()
        return SUCCESS
    pid = daemon.pid()
    sys.stdout.write(f"{daemon.name} ({pid if pid is not None else '-'})\n")
    return SUCCESS if pid is not None else EMPTY_OUT


class Daemon:
    """The daemon: its command lives in `conf/.crontab.properties`, its pid in `log/`."""

    def __init__(self, pack: Pack) -> None:
        self.pack = pack
        self.service = pack.services[0]
        self.name = listed_name(self.service)
        self.crontab = os.path.join(pack.root, "conf", ".crontab.properties")
        self.pid_file = os.path.join(pack.root, "log", "scmd.pid")

    def command(self) -> list[str] | None:
        """The command of the `linuxCron` line (between `nohup` and `>`), or None."""
        try:
            text = read_text(self.crontab)
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
            sys.stdout.write(f"{self.name} is already running ({running})\n")
            return
        self._kill_stale()
        jar = self.pack.jar(self.service)
        faults = Faults(self.pack.install_path, self.service["name"], jar_version(jar))
        if faults.active("start-fail") is not None:
            raise CtlError(f"failed to start {self.name}: injected start failure")
        slow = faults.active("start-slow")
        if slow:
            time.sleep(slow)
        script = os.path.join(os.path.dirname(os.path.realpath(__file__)), "scmdaemon.py")
        command = [sys.executable, script, "--jar", jar]
        if any(" " in word for word in command):
            raise CtlError("the daemon's paths must not contain spaces (crontab line)")
        make_dirs(os.path.dirname(self.crontab))
        line = f"linuxCron=* * * * * nohup {' '.join(command)} > /dev/null 2>&1 &\n"
        write_text(self.crontab, line)
        proc = spawn_detached(command, cwd=self.pack.root, log=None)
        write_pid(self.pid_file, proc.pid)
        sys.stdout.write(f"Success: {self.name} is successfully started ({proc.pid})\n")

    def stop(self) -> None:
        """Kill the daemon process and delete the crontab file."""
        if self.pid() is not None:
            faults = Faults(self.pack.install_path, self.service["name"], self._version())
            if faults.active("stop-fail") is not None:
                raise CtlError(f"failed to stop {self.name}: injected stop failure")
        self._kill_stale()
        unlink(self.crontab)
        sys.stdout.write(f"Success: {self.name} is stopped\n")

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
    if args in (["-v"], ["--version"]):
        version = jar_version(pack.jar(pack.services[0]))
        sys.stdout.write(f"SequoiaCM version: {version}\n")
        return SUCCESS
    if args != ["list"]:
        raise CtlError(f"{ctl}: give -v or list", INVALID_ARG)
    nodes: list[Node] = []
    for root in pack_roots(pack.install_path):
        other = Pack(root)
        if other.role == "nodes":
            nodes.extend(all_nodes(other))
    return list_nodes(nodes, running_only=False, long=False)


# ---------------------------------------------------------------- fault switches


class Faults:
    """Switches under `<install>/.sandbox-faults/`, named `<service>.<kind>`.

    Content: `VERSION [seconds=S] [times=N]`. VERSION (`*` = any) must equal the node's jar
    version (for jvm-fail: the tool's own version). `times=N` makes the switch apply to the
    next N checks only: each applying check takes one, under an exclusive flock, so
    concurrent ctl calls never both take the last one.
    """

    def __init__(self, install_path: str, service: str, version: str | None) -> None:
        self.dir = os.path.join(install_path, FAULTS_DIR)
        self.service = service
        self.version = version

    def active(self, kind: str) -> float | None:
        """The switch's seconds (a default when unset) when it applies now, else None."""
        path = os.path.join(self.dir, f"{self.service}.{kind}")
        try:
            words = _read_switch(path).split()
        except OSError:
            return None
        if not self._applies(words):
            return None
        if "times" in _settings(words) and not self._take_one(path):
            return None
        try:
            return float(_settings(words).get("seconds", DEFAULT_SLOW_SECONDS))
        except ValueError:
            return DEFAULT_SLOW_SECONDS

    def _applies(self, words: list[str]) -> bool:
        return bool(words) and words[0] in ("*", self.version)

    def _take_one(self, path: str) -> bool:
        """Take one of the switch's remaining times; False when none is left."""
        import fcntl

        try:
            handle = open(path, "r+", encoding="utf-8")
        except OSError as exc:
            raise CtlError(f"cannot count down fault switch {path}: {exc}") from exc
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            words = handle.read().split()
            settings = _settings(words)
            try:
                left = int(settings.get("times", "0"))
            except ValueError:
                left = 0
            if not self._applies(words) or left <= 0:
                return False
            rest = [w for w in words[1:] if not w.startswith("times=")]
            handle.seek(0)
            handle.truncate()
            handle.write(" ".join([words[0], *rest, f"times={left - 1}"]) + "\n")
            handle.flush()
        return True


def _read_switch(path: str) -> str:
    """A switch's text, read under a shared flock.

    A concurrent `_take_one` rewrites the file in place under its exclusive flock; without
    the lock, a read could land between its truncate and its write and see no switch.
    """
    import fcntl

    with open(path, encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        return handle.read()


def _settings(words: list[str]) -> dict[str, str]:
    """The `key=value` words of a switch (a bare number is the old `seconds`)."""
    out: dict[str, str] = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if sep:
            out[key] = value
        else:
            out["seconds"] = word
    return out


# ---------------------------------------------------------------- shared helpers


def single_match(root: str, pattern: str) -> str:
    """The one file matching `pattern` under `root`; CtlError otherwise."""
    found = glob_sorted(root, pattern)
    if len(found) != 1:
        names = ", ".join(os.path.basename(f) for f in found) or "none"
        code = FILE_NOT_FIND if not found else SYSTEM_ERROR
        raise CtlError(
            f"expected exactly one {os.path.basename(root)}/{pattern}, found: {names}", code
        )
    return found[0]


def glob_sorted(root: str, pattern: str) -> list[str]:
    """`sorted(glob.glob(str(Path(root) / pattern)))`.

    The manifests' patterns (`jars/NAME-*.jar`: one `*`, in the last part, nothing for
    pathlib to normalise) are matched here as glob does: the names in the directory, those
    starting with `.` only when the pattern does. Any other pattern goes to glob itself.
    """
    *dirs, name = pattern.split("/")
    head, star, rest = name.partition("*")
    plain = star and not any(c in part for part in (root, *dirs, head, rest) for c in "*?[")
    if not plain or "" in dirs or "." in dirs:
        import glob
        from pathlib import Path

        return sorted(glob.glob(str(Path(root) / pattern)))
    folder = os.path.join(root, *dirs)
    names: list[str] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                names.append(entry.name)
    except OSError:
        pass
    return sorted(
        os.path.join(folder, n) for n in names
        if n.startswith(head) and n.endswith(rest) and len(n) >= len(head) + len(rest)
        and (head.startswith(".") or not n.startswith("."))
    )


class _JsonContext:
    """What json.loads' decoder hands the C scanner: json.JSONDecoder()'s defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {
        "-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan"),
    }.__getitem__


def load_json(data: str | bytes) -> Any:
    """`json.loads(data)`, without importing json for plain JSON.

    Every call reads its pack's manifest, and `import json` costs about as much as the rest
    of a `list` (json.decoder compiles regular expressions, so it imports re). So the text
    goes to the C scanner that json.loads itself uses, set up as json.loads sets it up;
    whatever that does not take whole (or a Python without _json) goes to json.loads, so
    values and errors are json's own.
    """
    try:
        from _json import make_scanner

        if isinstance(data, str):
            text = data
        elif data[:1] not in (b"\0", b"\xef", b"\xfe", b"\xff") and data[1:2] != b"\0":
            # what json.loads decodes as UTF-8 (no BOM, not UTF-16/32)
            text = data.decode("utf-8", "surrogatepass")
        else:
            text = ""  # refused by the scanner: json.loads decodes it
        start = len(text) - len(text.lstrip(JSON_SPACE))
        value, end = make_scanner(_JsonContext)(text, start)  # type: ignore[arg-type]
        if not text[end:].strip(JSON_SPACE):
            return value
    except Exception:  # noqa: S110 - json.loads below gives json's own answer
        pass
    import json

    return json.loads(data)


def jar_version(jar: str) -> str:
    """The version written in a sandbox jar's header line."""
    try:
        with open(jar, "rb") as f:
            head = f.readline(512).decode("utf-8", "replace").split()
    except OSError as exc:
        raise CtlError(f"cannot read {jar}: {exc}", FILE_NOT_FIND) from exc
    if len(head) != 3 or head[0] != JAR_MAGIC:
        raise CtlError(f"{jar} is not a sandbox jar")
    return head[2]


def spawn_detached(argv: list[str], *, cwd: str, log: str | None) -> subprocess.Popen[bytes]:
    """Start argv in its own session with no inherited stdio, so an SSH exec can return."""
    import subprocess
    if log is None:
        out: int = subprocess.DEVNULL
        return subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True, close_fds=True,
        )
    with open(log, "ab") as sink:
        return subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )


def is_daemon_argv(argv: list[str]) -> bool:
    """Whether argv is a sandbox daemon process."""
    return len(argv) >= 2 and argv[1].endswith("scmdaemon.py")


def live_cmdline(pid: int) -> list[str] | None:
    """argv of a live (not zombie) process, or None."""
    try:
        state = read_text(f"/proc/{pid}/stat", errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if state.rpartition(")")[2].split()[:1] in (["Z"], ["X"]) or not raw:
        return None
    return raw.decode("utf-8", "replace").rstrip("\0").split("\0")


def terminate(pid: int, *, grace: float) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL; return once the process is gone."""
    # An exiting process loses its command line before it closes its files (its listening
    # socket among them) and becomes a zombie: "gone" is judged from its state, and its
    # start time tells it from a later process given the same pid.
    started = start_time(pid)
    for sig, wait in ((SIGTERM, grace), (SIGKILL, 5.0)):
        if grace == 0.0 and sig == SIGTERM:
            continue
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_until(lambda: started is None or start_time(pid) != started, wait):
            return
    raise CtlError(f"process {pid} did not exit")


def start_time(pid: int) -> str | None:
    """The start time of a live (not zombie) process `pid`, None when there is none."""
    try:
        fields = read_text(f"/proc/{pid}/stat", errors="replace").rpartition(")")[2].split()
    except OSError:
        return None
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19] if len(fields) > 19 else None


def wait_until(done: Callable[[], bool], seconds: float) -> bool:
    """Poll `done` until it is true or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def read_pid(path: str) -> int | None:
    """The pid in a pid file, or None."""
    try:
        text = read_text(path).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def write_pid(path: str, pid: int) -> None:
    """Write a pid file (under `log/`)."""
    make_dirs(os.path.dirname(path))
    write_text(path, f"{pid}\n")


def remove_pid(path: str, pid: int | None) -> None:
    """Remove a pid file; with `pid`, only when it still names that process."""
    if pid is None or read_pid(path) == pid:
        unlink(path)


def tail(log: str, lines: int = 3) -> str:
    """The last lines of a log, joined for a one-line message."""
    try:
        text = read_text(log, errors="replace")
    except OSError:
        return "no log"
    return " | ".join(text.strip().splitlines()[-lines:]) or "empty log"


# ---------------------------------------------------------------- paths: pathlib's answers

# This tool used pathlib; these helpers keep its answers and errors (the same exceptions,
# naming the same paths), so no message or exit code changed with the move to strings.


def read_text(path: str, errors: str | None = None) -> str:
    """The file's text (UTF-8)."""
    with open(path, encoding="utf-8", errors=errors) as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    """Replace the file's text (UTF-8)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def unlink(path: str) -> None:
    """Remove a file; a missing one is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def stat_mode(path: str) -> int | None:
    """The path's st_mode; None where pathlib's is_dir() and exists() say False."""
    try:
        return os.stat(path).st_mode
    except OSError as exc:
        if exc.errno not in MISSING_ERRNOS:
            raise
    except ValueError:
        pass
    return None


def is_dir(path: str) -> bool:
    """`Path(path).is_dir()`."""
    mode = stat_mode(path)
    return mode is not None and stat.S_ISDIR(mode)


def make_dirs(path: str, *, parents: bool = True) -> None:
    """`Path(path).mkdir(parents=True, exist_ok=True)`, failing as it does."""
    try:
        os.mkdir(path)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if not parents or parent == path:
            raise
        make_dirs(parent)
        make_dirs(path, parents=False)
    except OSError:
        if not is_dir(path):
            raise


def dir_names(path: str) -> list[str]:
    """The names `Path(path).glob("*")` yields (hidden ones too), in directory order."""
    if not is_dir(path):
        return []
    try:
        with os.scandir(path) as entries:
            return [entry.name for entry in entries]
    except PermissionError:
        return []


def pack_roots(install_path: str) -> list[str]:
    """The `<install>/<dir>` that `sorted(Path(install_path).glob("*/bin/sandbox.json"))`
    finds, in that order."""
    found: list[str] = []
    if not is_dir(install_path):
        return found
    try:
        with os.scandir(install_path) as listing:
            entries = list(listing)
        for entry in entries:
            try:
                if not entry.is_dir():
                    continue
            except OSError as exc:
                if exc.errno not in MISSING_ERRNOS:
                    raise
                continue
            bin_dir = os.path.join(install_path, entry.name, "bin")
            try:
                if is_dir(bin_dir) and stat_mode(os.path.join(bin_dir, "sandbox.json")) is not None:
                    found.append(entry.name)
            except PermissionError:
                pass
    except PermissionError:
        pass
    return [os.path.join(install_path, name) for name in sorted(found)]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
