"""The host agent: every remote step of an upgrade, run on the host in one round trip.

The control machine runs this very file on a host as
`python3 -c BOOT PAYLOAD OP SPEC-JSON` (see `agent_argv`), as the install user with
JAVA_HOME in the environment. It prints one JSON object on its last stdout line:
`{"ok": true, ...}` with exit status 0, or `{"ok": false, "error", "step"}` with 1.
With `--serve` instead of OP and SPEC (`serve_argv`) it answers one request line
(`{"op", "spec"}`) after another with one such reply line each, until stdin ends.

Hosts may carry Python as old as 3.6, so this file is standard library only, imports
nothing from scmflow, and its annotations use `typing` generics (3.6 evaluates them).
"""

# The annotations must evaluate on Python 3.6: builtin generics and `X | None` do not.
# ruff: noqa: UP006, UP035, UP045

import base64
import errno
import fcntl
import fnmatch
import functools
import glob
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import zlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

# ---------------------------------------------------------------- control side

SERVE = "--serve"
# -I: sudo keeps the login user's home as the working directory, and `python3 -c` would
# put it first on sys.path, so a module planted there (`base64.py`) would run as the
# target user; -I also ignores PYTHON* variables and the user's site-packages.
_PYTHON = ("python3", "-I", "-c")
_BOOT = (
    "import sys,zlib,base64;g={'__name__':'scmflow_agent'};"
    "exec(zlib.decompress(base64.b64decode(sys.argv[1])),g);"
    "sys.exit(g['main'](sys.argv[2:]))"
)


def agent_argv(op: str, spec: Dict[str, Any]) -> List[str]:
    """The argv that runs `op` with `spec` on a host: python3 with this file inlined."""
    return [*_PYTHON, _BOOT, _payload(), op, json.dumps(spec, sort_keys=True)]


def serve_argv() -> List[str]:
    """The argv of a long-lived agent that reads requests on stdin (see `serve`)."""
    return [*_PYTHON, _BOOT, _payload(), SERVE]


# A serving agent's first line: what it is and which request/reply protocol it speaks.
GREETING_KEY = "scmflow_agent"
PROTOCOL = 2


def request_line(op: str, spec: Dict[str, Any], request_id: Optional[int] = None) -> bytes:
    """One request for a serving agent; its reply carries the same `id`."""
    request: Dict[str, Any] = {"op": op, "spec": spec}
    if request_id is not None:
        request["id"] = request_id
    return (json.dumps(request, sort_keys=True) + "\n").encode()


def is_greeting(line: Dict[str, Any]) -> bool:
    """Whether a line from a serving agent is its greeting, of this protocol."""
    return line.get(GREETING_KEY) == PROTOCOL


@functools.lru_cache(maxsize=1)
def _payload() -> str:
    with open(__file__, "rb") as source:
        return base64.b64encode(zlib.compress(source.read(), 9)).decode("ascii")


def parse_agent_output(stdout: str) -> Dict[str, Any]:
    """The agent's reply: the JSON object on the last non-empty line; ValueError if none."""
    for line in reversed(stdout.splitlines()):
        if line.strip():
            reply = json.loads(line)
            if not isinstance(reply, dict) or "ok" not in reply:
                raise ValueError("the last line is not an agent reply")
            return reply
    raise ValueError("no output")


# ---------------------------------------------------------------- host side: basics

# `NAME(PORT) (PID)` or `NAME(PORT) (-)`; `-l` appends the properties path.
_NODE_LINE = re.compile(r"^\s*(\S+)\((\d+)\)\s+\((\d+|-)\)(?:\s.*)?$")
_TOTAL_LINE = re.compile(r"^\s*Total:\s*(\d+)\s*$")
_JAVA_VERSION = re.compile(r'version "([^"]+)"')
_PROFILE_JAVA_HOME = '. "$1" >/dev/null 2>&1; printf %s "$JAVA_HOME"'
_STAGING_PREFIX = ".scmflow-staging-"
_SPACE_MARGIN = 1 << 20
_OUTPUT_TAIL = 3
# What a step keeps of one command's output (the reply travels on one line).
_OUTPUT_LIMIT = 1 << 20
# Real ctl scripts return once their nodes are gone; this covers a slow exit.
_STOP_WAIT = 15.0
_POLL = 0.2
# Each ctl call starts a JVM: a host's check starts at most this many at once, so the
# check cannot itself exhaust the memory whose shortage it must detect.
_LISTS_AT_ONCE = 2
# A listing that did not end in `Total:N` (a JVM that could not start) is tried once more.
_LIST_RETRY_PAUSE = 1.0
# The ctl tools' exit code for a listing that found no node (ScmExitCode.EMPTY_OUT).
_EMPTY_OUT = 1
_HEALTH_PATHS = ("/internal/v1/health", "/health")


class Failure(Exception):
    """A step failed; `message` is the operator's one line."""

    def __init__(self, message: str, step: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.step = step


class Ctx:
    """One op: its spec, the environment for commands, and the step in progress."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        self.spec = spec
        self.step = "start"
        self.host = socket.gethostname()
        self.env = dict(os.environ)
        # The control side names the JDK in the spec (probe) or as JAVA_HOME (every step).
        java_home = spec.get("java_home") or self.env.get("JAVA_HOME")
        if java_home:
            use_java(self.env, str(java_home))
        self.command_timeout = float(spec.get("command_timeout") or 600)
        # The control side waits `step_timeout` plus a margin: the agent gives up first.
        budget = spec.get("step_timeout")
        self.deadline = time.monotonic() + float(budget) if budget else None

    def need(self, key: str) -> str:
        """A required string value of the spec; Failure naming the key when absent."""
        value = self.spec.get(key)
        if value is None or value == "":
            raise Failure(f"the spec lacks '{key}'", "spec")
        return str(value)

    def service(self) -> Dict[str, Any]:
        """The spec's service entry (`Service.to_spec()`)."""
        svc = self.spec.get("service")
        if not isinstance(svc, dict):
            raise Failure("the spec names no service", "spec")
        return svc

    def service_dir(self) -> str:
        """`<install_path>/<dir>`; the install path itself for an empty dir."""
        svc = self.service()
        base = self.need("install_path")
        if not os.path.isabs(base) or os.path.normpath(base) != base or base == "/":
            raise Failure(f"install path '{base}' must be absolute, normalised and not /", "spec")
        rel = str(svc["dir"])
        if rel.startswith("/") or ".." in rel.split("/"):
            raise Failure(f"service dir '{rel}' must stay inside the install path", "spec")
        path = os.path.join(base, rel) if rel else base
        # A link could carry the service dir elsewhere; nothing outside the install is touched.
        real_base, real = os.path.realpath(base), os.path.realpath(path)
        if real != real_base and not real.startswith(real_base + os.sep):
            raise Failure(f"{path} resolves to {real}, outside the install path {base}", "spec")
        return path


def use_java(env: Dict[str, str], java_home: str) -> None:
    """JAVA_HOME, and its bin/ first on PATH, as the vendor's upgrader sets them.

    The ctl tools start nodes with `nohup java`, the first java on PATH: without this a
    host's OS JDK (often a newer one at /usr/bin/java) would run the nodes and fail.
    """
    env["JAVA_HOME"] = java_home
    bindir = os.path.join(java_home, "bin")
    rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != bindir]
    env["PATH"] = os.pathsep.join([bindir] + rest)


class Done:
    """What one command did."""

    def __init__(self, argv: List[str], code: int, out: str, err: str) -> None:
        self.argv = argv
        self.code = code
        self.out = out
        self.err = err

    def tail(self) -> str:
        """The last lines of stderr (else stdout), on one line."""
        text = self.err.strip() or self.out.strip()
        return " | ".join(text.splitlines()[-_OUTPUT_TAIL:])

    def describe(self) -> str:
        """`ctl start -p 1` exited 1 (last output lines)."""
        shown = " ".join(shlex.quote(a) for a in [os.path.basename(self.argv[0])] + self.argv[1:])
        detail = self.tail()
        return f"`{shown}` exited {self.code}" + (f" ({detail})" if detail else "")


def run_command(ctx: Ctx, argv: List[str], timeout: Optional[float] = None, check: bool = True) -> Done:
    """Run argv without a shell; output goes to files so detached children cannot hold it."""
    limit = timeout if timeout is not None else ctx.command_timeout
    if ctx.deadline is not None:
        left = ctx.deadline - time.monotonic()
        if left <= 0:
            raise Failure(f"the step ran out of its time before `{os.path.basename(argv[0])}` could run")
        limit = min(limit, left)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            # A new session, so nodes a ctl script starts outlive the SSH channel.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=ctx.env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise Failure(f"cannot run {argv[0]}: {exc.strerror}") from None
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            # The whole group: a ctl script's JVM must not outlive the step that gave up on it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
            proc.wait()
            done = Done(argv, -9, _read_all(out), _read_all(err))
            raise Failure(f"{done.describe()} after the {limit:g}s timeout") from None
        done = Done(argv, code, _read_all(out), _read_all(err))
    if check and code != 0:
        raise Failure(done.describe())
    return done


def _read_all(stream: Any) -> str:
    """A command's output; past `_OUTPUT_LIMIT` its head and tail with a note between."""
    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    if size <= _OUTPUT_LIMIT:
        return str(stream.read().decode("utf-8", "replace"))
    half = _OUTPUT_LIMIT // 2
    head = stream.read(half)
    stream.seek(size - half)
    tail = stream.read(half)
    note = f"\n[scmflow: {size - 2 * half} bytes of output cut]\n".encode()
    return str((head + note + tail).decode("utf-8", "replace"))


def one_line(text: str) -> str:
    """Collapse a message onto one line."""
    return " ".join(text.split())


# ---------------------------------------------------------------- host side: files


def matches(base: str, pattern: str) -> List[str]:
    """Paths under `base` matching the glob `pattern`, sorted; literal chars in base stay literal."""
    return sorted(glob.glob(os.path.join(glob.escape(base), pattern)))


def remove_path(path: str) -> None:
    """Delete a file, link or tree; nothing when absent."""
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def copy_tree(src: str, dst: str) -> None:
    """Copy a file, link or tree exactly: owner, group, mode, links as links, mtimes (dirs last)."""
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
        keep_owner(st, dst)
        shutil.copystat(src, dst, follow_symlinks=False)
    elif stat.S_ISDIR(st.st_mode):
        os.mkdir(dst)
        for name in sorted(os.listdir(src)):
            copy_tree(os.path.join(src, name), os.path.join(dst, name))
        keep_owner(st, dst)
        shutil.copystat(src, dst)
    elif stat.S_ISREG(st.st_mode):
        shutil.copy2(src, dst)
        # chown clears set-id bits, so the mode is set again after it.
        if keep_owner(st, dst):
            os.chmod(dst, stat.S_IMODE(st.st_mode))


def keep_owner(st: os.stat_result, dst: str) -> bool:
    """Give `dst` (not following a link) the owner and group in `st`; whether it changed.

    A copy belongs to whoever made it, in that user's primary group; an install tree's
    group (InstallUserGroup) often differs, and a restore must bring it back too.
    """
    now = os.lstat(dst)
    uid = st.st_uid if st.st_uid != now.st_uid else -1
    gid = st.st_gid if st.st_gid != now.st_gid else -1
    if uid == -1 and gid == -1:
        return False
    try:
        os.chown(dst, uid, gid, follow_symlinks=False)
    except OSError as exc:
        raise Failure(
            f"cannot give {dst} the owner {st.st_uid}:{st.st_gid} that its original has: {exc.strerror}",
            "owner",
        ) from None
    return True


def merge_tree(src: str, dst: str) -> None:
    """Copy `src` over `dst`, keeping what only `dst` has."""
    if os.path.isdir(src) and not os.path.islink(src):
        if os.path.lexists(dst) and (os.path.islink(dst) or not os.path.isdir(dst)):
            remove_path(dst)
        if not os.path.isdir(dst):
            os.mkdir(dst)
        for name in sorted(os.listdir(src)):
            merge_tree(os.path.join(src, name), os.path.join(dst, name))
        keep_owner(os.lstat(src), dst)
        shutil.copystat(src, dst)
    else:
        remove_path(dst)
        copy_tree(src, dst)


def walk_size(path: str) -> int:
    """Bytes a copy of `path` takes, counting whole 4 KiB blocks per file."""
    total = 0
    for entry in _walk(path):
        st = os.lstat(entry)
        if stat.S_ISREG(st.st_mode):
            total += (st.st_size + 4095) // 4096 * 4096
        elif stat.S_ISDIR(st.st_mode):
            total += 4096
    return total


def _walk(path: str) -> Iterator[str]:
    yield path
    if os.path.isdir(path) and not os.path.islink(path):
        for name in os.listdir(path):
            yield from _walk(os.path.join(path, name))


def free_bytes(path: str) -> int:
    """Bytes free for an unprivileged user on the filesystem that holds (or will hold) path."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize


def require_space(ctx: Ctx, path: str, size: int) -> None:
    """Fail before anything changes when the filesystem of `path` cannot take `size` bytes."""
    need = size + size // 100 + _SPACE_MARGIN
    have = free_bytes(path)
    if have < need:
        raise Failure(f"not enough space on {ctx.host}:{path}: need {need}, have {have}", "space")


def write_atomic(path: str, data: bytes, mode: int = 0o666) -> None:
    """Write a file by rename, with the data and the directory entry fsynced.

    The temporary file's name is this writer's alone and it is created exclusively without
    following links: two writers never share it (a shared `path.tmp` let them interleave),
    and a link planted at a guessable name is never written through. `mode` goes through
    the umask, as with open().
    """
    tmp = f"{path}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path))


def fsync_dir(path: str) -> None:
    """Make a directory's entries durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str) -> Optional[Dict[str, Any]]:
    """A JSON object from a file, or None when absent or unreadable."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def version_of(name: str) -> str:
    """Version in a jar or tarball name (`x-3.2.2.jar`, `x-3.2.2-release.tar.gz`)."""
    base = name
    for suffix in (".tar.gz", ".tgz", ".jar"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    if base.endswith("-release"):
        base = base[: -len("-release")]
    version = base.rsplit("-", 1)[-1]
    if "-" not in base or not version[:1].isdigit():
        raise Failure(f"no version in file name '{name}'", "version")
    return version


def installed_version(ctx: Ctx) -> Optional[str]:
    """Version of the service's single version file; None when absent, Failure when several."""
    svc = ctx.service()
    found = matches(ctx.service_dir(), svc["version_file"])
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(os.path.basename(p) for p in found)
        where = ctx.service_dir()
        raise Failure(f"{svc['printed']} has several version files in {where}: {names}", "version")
    return version_of(os.path.basename(found[0]))


# ---------------------------------------------------------------- host side: nodes


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
    argv = _cmdline(pid)
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
        if not name.isdigit() or not _same_mount_namespace(int(name)):
            continue
        argv = _cmdline(int(name))
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


def process_running(command: Optional[List[str]]) -> Optional[int]:
    """Pid of a live process running `command`, or None."""
    if not command:
        return None
    want = " ".join(" ".join(command).split())
    skip = {os.getpid(), os.getppid()}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        if not _same_mount_namespace(int(name)):
            # The same install path in another mount namespace (a container) is another install.
            continue
        words = " ".join(_cmdline(int(name)) or []).split()
        # The cron shell that launched it also carries the command, after `nohup`.
        if words and "nohup" not in words and f" {want} " in f" {' '.join(words)} ":
            return int(name)
    return None


def _same_mount_namespace(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except OSError:
        # Not ours to inspect (another user's process): judge by the command line alone.
        return True


def _cmdline(pid: int) -> Optional[List[str]]:
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


def daemon_pid(ctx: Ctx) -> Optional[int]:
    """Pid of the running daemon, or None."""
    return process_running(daemon_command(ctx))


def pid_alive(pid: int) -> bool:
    """Whether a process (not a zombie) has this pid."""
    return _cmdline(pid) is not None


def wait_for(check: Callable[[], bool], seconds: float) -> bool:
    """Poll `check` until true or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


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
    if not wait_for(lambda: process_running(command) is None, wait):
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


def node_health(port: int, timeout: float = 5.0) -> Tuple[Optional[str], Optional[str]]:
    """(status, version) a node reports on its health endpoint on this host; (None, None) if none.

    SequoiaCM nodes answer `/internal/v1/health` (Spring Boot actuator style, `status`
    UP when ready); `/health` is asked when that path is unknown to the node.
    """
    for path in _HEALTH_PATHS:
        code, body = _http_get(port, path, timeout)
        if code == 404:
            continue
        if code != 200:
            return None, None
        try:
            answer = json.loads(body.decode("utf-8", "replace"))
        except ValueError:
            return None, None
        if not isinstance(answer, dict):
            return None, None
        version = answer.get("version")
        return str(answer.get("status") or ""), (str(version) if version is not None else None)
    return None, None


def _http_get(port: int, path: str, timeout: float) -> Tuple[int, bytes]:
    """Status code and body of GET http://127.0.0.1:port/path; (0, b"") when there is no answer."""
    request = f"GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(request)
            while len(data) < (1 << 20):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    words = head.split(b"\r\n", 1)[0].split()
    if len(words) < 2 or not words[0].startswith(b"HTTP/") or not words[1].isdigit():
        return 0, b""
    return int(words[1]), body


def node_problem(ctx: Ctx, port: int, running: Dict[int, int], version: Optional[str]) -> Optional[str]:
    """Why the node on `port` is not running the expected version and healthy, or None."""
    name = f"{ctx.service()['printed']}({port})"
    if port not in running:
        return f"{name} is not running"
    status, reported = node_health(port)
    if status is None:
        return f"{name} does not answer its health endpoint on port {port}"
    if status.upper() != "UP":
        return f"{name} reports status {status or 'none'}, not UP"
    if version is not None and reported is not None and reported != version:
        return f"{name} runs version {reported}, not {version}"
    return None


def wrong_version(port: int, version: Optional[str]) -> bool:
    """Whether the node on `port` answers UP with a version other than `version`."""
    if version is None:
        return False
    status, reported = node_health(port)
    return status is not None and status.upper() == "UP" and reported is not None and reported != version


def health_problems(
    ctx: Ctx, version: Optional[str], ports: List[int], daemon: bool, wait: float
) -> Tuple[List[str], Dict[str, Any]]:
    """What is wrong with the service's version and nodes (waiting up to `wait` for nodes)."""
    problems: List[str] = []
    found = installed_version(ctx)
    if found != version:
        problems.append(f"version on disk is {found or 'none'}, expected {version or 'none'}")
    state: Dict[str, Any] = {"version": found}

    healthy: Dict[str, float] = {}
    # A node that answers with another version will not change its mind: no use waiting.
    final: List[bool] = []

    def node_problems() -> List[str]:
        out: List[str] = []
        if ports:
            running = running_ports(ctx)
            state["pids"] = {str(p): running.get(p) for p in ports}
            for port in ports:
                problem = node_problem(ctx, port, running, version)
                if problem:
                    out.append(problem)
                    if wrong_version(port, version):
                        final.append(True)
                elif str(port) not in healthy:
                    healthy[str(port)] = seconds_since_start(running[port])
        if daemon:
            state["daemon_pid"] = daemon_pid(ctx)
            if state["daemon_pid"] is None:
                out.append("DAEMON is not running")
        return out

    nodes: List[str] = []

    def settled() -> bool:
        nodes[:] = node_problems()
        return not nodes or bool(final)

    # with the wrong files on disk no node can come up right: say so at once
    wait_for(settled, 0.0 if problems else wait)
    if ports:
        # how long each node took from its process start to its first healthy answer
        state["healthy_after_s"] = healthy
    return problems + nodes, state


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


# ---------------------------------------------------------------- host side: packages


def backup_paths(backup_dir: str) -> Tuple[str, str, str]:
    """(files dir, manifest, completion marker) of a pair's backup."""
    return (
        os.path.join(backup_dir, "files"),
        os.path.join(backup_dir, "manifest.json"),
        os.path.join(backup_dir, ".complete"),
    )


def complete_manifest(ctx: Ctx, backup_dir: str) -> Optional[Dict[str, Any]]:
    """The manifest of a complete backup, else None; Failure when it is damaged or not ours."""
    _, path, marker = backup_paths(backup_dir)
    if not os.path.exists(marker):
        return None
    manifest = read_json(path)
    if manifest is None:
        raise Failure(f"the backup {backup_dir} is marked complete but its manifest is unreadable")
    if "service" in ctx.spec and manifest.get("service") != ctx.service()["name"]:
        raise Failure(f"the backup {backup_dir} holds {manifest.get('service')}, not {ctx.service()['name']}")
    return manifest


def replaced_matches(ctx: Ctx) -> List[str]:
    """Service-dir-relative paths that the replace globs match now."""
    base = ctx.service_dir()
    found: List[str] = []
    for pattern in ctx.service()["replace"]:
        for path in matches(base, pattern):
            rel = os.path.relpath(path, base)
            if rel not in found:
                found.append(rel)
    return found


def relative_matches(base: str, patterns: List[str]) -> List[str]:
    """`base`-relative paths matching any of the globs."""
    found: List[str] = []
    for pattern in patterns:
        for path in matches(base, pattern):
            rel = os.path.relpath(path, base)
            if rel not in found:
                found.append(rel)
    return found


def same_tree(a: str, b: str) -> bool:
    """Whether two files, links or trees are equal in type, mode, link target and content."""
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    if sa.st_mode != sb.st_mode:  # type and permission bits
        return False
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(a) == os.readlink(b)
    if stat.S_ISDIR(sa.st_mode):
        names = sorted(os.listdir(a))
        return names == sorted(os.listdir(b)) and all(
            same_tree(os.path.join(a, n), os.path.join(b, n)) for n in names
        )
    if sa.st_size != sb.st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            block = fa.read(1 << 20)
            if block != fb.read(1 << 20):
                return False
            if not block:
                return True


def restored_by_mate(ctx: Ctx, backup_dir: str) -> List[str]:
    """Replace globs whose files a pair of the same dir, upgraded earlier, already restored.

    Services sharing a dir (the cloud services) each back up the shared files (bin/, *.py,
    the tools jar) as they were just before their own upgrade, so a later pair's copy holds
    the files the earlier pair's upgrade brought. When the earlier pair was rolled back
    first (out of reverse order: a skipped pair put right, or `--service` one at a time),
    the shared files already match its older copy; restoring the later copy over them
    would bring the newer files back.
    """
    svc = ctx.service()
    base = ctx.service_dir()
    mine = read_json(backup_paths(backup_dir)[2]) or {}
    parent = os.path.dirname(os.path.normpath(backup_dir))
    for name in sorted(os.listdir(parent)):
        other = os.path.join(parent, name)
        if other == os.path.normpath(backup_dir) or not os.path.isdir(other):
            continue
        files, manifest_path, marker = backup_paths(other)
        theirs, done = read_json(manifest_path), read_json(marker)
        if theirs is None or done is None or theirs.get("dir") != svc["dir"]:
            continue
        if float(done.get("time", 0)) >= float(mine.get("time", 0)):
            continue
        shared = [g for g in svc["replace"] if g in (theirs.get("replace") or [])]
        now, saved = relative_matches(base, shared), relative_matches(files, shared)
        if shared and sorted(now) == sorted(saved) and all(
            same_tree(os.path.join(base, rel), os.path.join(files, rel)) for rel in now
        ):
            return shared
    return []


def staging_dir(ctx: Ctx) -> str:
    """Where a package unpacks before its files move in (same filesystem as the install)."""
    return os.path.join(ctx.need("install_path"), _STAGING_PREFIX + ctx.service()["name"])


def checked_members(ctx: Ctx, tar: tarfile.TarFile) -> Tuple[List[tarfile.TarInfo], int]:
    """Members that unpack inside the staging dir, owned by us; Failure on any other; + size."""
    members = tar.getmembers()
    size = 0
    links = {_norm_member(m.name) for m in members if m.issym()}
    for member in members:
        _check_member(ctx, member)
        _check_not_through_link(ctx, member, links)
        member.uid, member.gid = os.getuid(), os.getgid()
        member.uname = member.gname = ""
        size += (member.size + 4095) // 4096 * 4096 if member.isfile() else 4096
    return members, size


def _check_member(ctx: Ctx, member: tarfile.TarInfo) -> None:
    package = ctx.need("package")
    top = ctx.service()["dir"]
    parts = [p for p in member.name.split("/") if p not in ("", ".")]
    if member.name.startswith("/") or ".." in parts:
        raise Failure(f"{package}: unsafe member '{member.name}'", "extract")
    if top and parts and parts[0] != top:
        raise Failure(f"{package}: member '{member.name}' is outside {top}/", "extract")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise Failure(f"{package}: member '{member.name}' is a special file", "extract")
    if member.issym() or member.islnk():
        base = os.path.dirname(member.name) if member.issym() else ""
        target = os.path.normpath(os.path.join(base, member.linkname)).split("/")
        inside = target[0] == top if top else target[0] not in ("..", "")
        if member.linkname.startswith("/") or ".." in target or not inside:
            message = f"{package}: link '{member.name}' -> '{member.linkname}' leaves the package"
            raise Failure(message, "extract")


def _norm_member(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _check_not_through_link(ctx: Ctx, member: tarfile.TarInfo, links: Set[str]) -> None:
    """Refuse members and link targets that pass through a symlink of the package.

    Paths are only checked as written; a chain like `a -> .` then `e -> a/a/../../x` would
    otherwise reach outside the staging dir once the links exist on disk.
    """
    package = ctx.need("package")
    parts = _norm_member(member.name).split("/")
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in links:
            message = f"{package}: member '{member.name}' lies under the symlink '{'/'.join(parts[:i])}'"
            raise Failure(message, "extract")
    if member.issym() or member.islnk():
        base = os.path.dirname(_norm_member(member.name)) if member.issym() else ""
        target = [p for p in os.path.join(base, member.linkname).split("/") if p not in ("", ".")]
        walked: List[str] = []
        for part in target:
            if part == "..":
                if walked:
                    walked.pop()
                continue
            walked.append(part)
            if "/".join(walked) in links and len(walked) < len(target):
                message = (
                    f"{package}: link '{member.name}' -> '{member.linkname}' goes through "
                    f"the symlink '{'/'.join(walked)}'"
                )
                raise Failure(message, "extract")


def stage_package(ctx: Ctx) -> str:
    """Unpack the package into a fresh staging dir; the service's files inside it."""
    package = ctx.need("package")
    staging = staging_dir(ctx)
    remove_path(staging)
    try:
        with tarfile.open(package, "r:*") as tar:
            members, size = checked_members(ctx, tar)
            require_space(ctx, ctx.need("install_path"), size)
            os.mkdir(staging, 0o700)
            kwargs: Dict[str, Any] = {}
            if hasattr(tarfile, "fully_trusted_filter"):
                # Members are checked above; keep the same behaviour on every Python.
                kwargs["filter"] = "fully_trusted"
            tar.extractall(staging, members=members, **kwargs)  # noqa: S202
    except (tarfile.TarError, EOFError) as exc:
        remove_path(staging)
        raise Failure(f"{package}: not a readable tarball: {one_line(str(exc))}", "extract") from None
    except OSError as exc:
        remove_path(staging)
        if exc.errno == errno.ENOSPC:
            message = f"no space left on {ctx.host}:{staging} while unpacking {package}"
            raise Failure(message, "extract") from None
        raise
    top = ctx.service()["dir"]
    staged = os.path.join(staging, top) if top else staging
    if not os.path.isdir(staged):
        remove_path(staging)
        raise Failure(f"{package} has no {top}/ directory", "extract")
    return staged


def swap_in(ctx: Ctx, staged: str, fresh: bool) -> List[str]:
    """Delete every match of the replace globs and move the staged matches in."""
    base = ctx.service_dir()
    os.makedirs(base, exist_ok=True)
    moved: List[str] = []
    for pattern in ctx.service()["replace"]:
        groups = {}
        for old in matches(base, pattern):
            groups[os.path.relpath(old, base)] = os.lstat(old).st_gid
            remove_path(old)
        for new in matches(staged, pattern):
            rel = os.path.relpath(new, staged)
            dst = os.path.join(base, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            remove_path(dst)
            os.rename(new, dst)
            # New files join the install tree's group (InstallUserGroup), not the user's own.
            adopt_group(dst, groups.get(rel, os.lstat(os.path.dirname(dst)).st_gid))
            moved.append(rel)
    if fresh:
        # The service was not on this host: it also needs the package's conf/ and the rest.
        for name in sorted(os.listdir(staged)):
            dst = os.path.join(base, name)
            if not os.path.lexists(dst):
                os.rename(os.path.join(staged, name), dst)
                adopt_group(dst, os.lstat(base).st_gid)
    return moved


def adopt_group(path: str, gid: int) -> None:
    """Give `path` and everything under it (links themselves) the group `gid`."""
    for entry in _walk(path):
        st = os.lstat(entry)
        if st.st_gid != gid:
            os.chown(entry, -1, gid, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(entry, stat.S_IMODE(st.st_mode))


# ---------------------------------------------------------------- ops


def op_probe(ctx: Ctx) -> Dict[str, Any]:
    """Java, the install path, free space, and every service's version and nodes."""
    spec = ctx.spec
    java_home = spec.get("java_home") or _profile_java_home(ctx, str(spec.get("profile") or "/etc/profile"))
    if java_home:
        use_java(ctx.env, java_home)
    ctx.step = "java"
    # The nodes run on the first java of the ctl tools' PATH: that is the one to check.
    java = shutil.which("java", path=ctx.env.get("PATH")) if java_home else None
    java_version = _java_version(ctx, java) if java else None
    install_path = ctx.need("install_path")
    free = {str(p): free_bytes(str(p)) for p in spec.get("df_paths") or []}
    services: Dict[str, Any] = {}
    probes: List[Ctx] = []
    for svc in spec.get("services") or []:
        one = Ctx(dict(spec, service=svc))
        one.env = ctx.env
        probes.append(one)
    ctx.step = "list nodes"
    listings = list_at_once(probes)
    for one in probes:
        svc = one.service()
        ctx.step = f"probe {svc['name']}"
        version = installed_version(one)
        nodes: List[Dict[str, Any]] = []
        if svc["node_kind"] == "port":
            nodes = list_nodes(one, listings)
        elif svc["node_kind"] == "daemon" and (version is not None or has_ctl(one)):
            pid = daemon_pid(one)
            nodes = [{"port": None, "pid": pid, "running": pid is not None}]
        services[svc["name"]] = {"version": version, "nodes": nodes}
    return {
        "java_home": java_home or None,
        "java": java,
        "java_version": java_version,
        "install_path_exists": os.path.isdir(install_path),
        "user": pwd.getpwuid(os.geteuid()).pw_name,
        "free": free,
        "services": services,
    }


def _profile_java_home(ctx: Ctx, profile: str) -> str:
    ctx.step = "profile"
    env = dict(ctx.env)
    env.pop("JAVA_HOME", None)
    saved, ctx.env = ctx.env, env
    try:
        done = run_command(ctx, ["bash", "-c", _PROFILE_JAVA_HOME, "scmflow-probe", profile], 60, check=False)
    finally:
        ctx.env = saved
    return done.out.strip()


def _java_version(ctx: Ctx, java: str) -> Optional[str]:
    try:
        done = run_command(ctx, [java, "-version"], 60, check=False)
    except Failure:
        return None
    m = _JAVA_VERSION.search(done.err + done.out)
    return m.group(1) if m else None


def op_backup(ctx: Ctx) -> Dict[str, Any]:
    """Copy what the upgrade will replace into the backup dir, then mark it complete."""
    backup_dir = ctx.need("backup_dir")
    files, manifest_path, marker = backup_paths(backup_dir)
    ctx.step = "check"
    done = complete_manifest(ctx, backup_dir)
    if done is not None:
        return {"already": True, "paths": done.get("paths", []), "version": done.get("version")}
    remove_path(backup_dir)
    base = ctx.service_dir()
    version = installed_version(ctx)
    rels = replaced_matches(ctx)
    size = sum(walk_size(os.path.join(base, rel)) for rel in rels)
    ctx.step = "space"
    require_space(ctx, backup_dir, size)
    ctx.step = "copy"
    try:
        os.makedirs(files, 0o750)
        for rel in rels:
            dst = os.path.join(files, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            copy_tree(os.path.join(base, rel), dst)
        manifest = {
            "service": ctx.service()["name"],
            "version": version,
            "paths": rels,
            "dir_existed": os.path.isdir(base),
            "bytes": size,
            # what a restore of a pair sharing the dir needs to know (see restored_by_mate)
            "dir": ctx.service()["dir"],
            "replace": list(ctx.service()["replace"]),
        }
        write_atomic(manifest_path, json.dumps(manifest, sort_keys=True).encode())
        # The copies must be on disk before the marker says they are.
        os.sync()
        ctx.step = "mark"
        write_atomic(marker, json.dumps({"time": time.time()}).encode())
    except OSError as exc:
        remove_path(backup_dir)
        if exc.errno == errno.ENOSPC:
            raise Failure(f"no space left on {ctx.host}:{backup_dir} during the backup", "copy") from None
        raise
    return {"already": False, "paths": rels, "version": version, "bytes": size}


def op_replace(ctx: Ctx) -> Dict[str, Any]:
    """Stop the nodes and swap the service's files for the package's; conf/ and data stay."""
    backup_dir = ctx.need("backup_dir")
    new_version = ctx.need("new_version")
    ctx.step = "check-backup"
    manifest = complete_manifest(ctx, backup_dir)
    if manifest is None:
        raise Failure(f"refusing to replace: the backup {backup_dir} is not complete", "check-backup")
    ctx.step = "extract"
    staged = stage_package(ctx)
    try:
        ctx.step = "stop"
        stopped = stop_service(ctx)
        ctx.step = "swap"
        moved = swap_in(ctx, staged, fresh=not manifest.get("dir_existed", True))
        ctx.step = "preserve"
        files = backup_paths(backup_dir)[0]
        for rel in ctx.service().get("preserve") or []:
            src = os.path.join(files, rel)
            if os.path.lexists(src):
                merge_tree(src, os.path.join(ctx.service_dir(), rel))
    finally:
        remove_path(staging_dir(ctx))
    ctx.step = "check-version"
    found = installed_version(ctx)
    if found != new_version:
        raise Failure(f"after the replace the version on disk is {found or 'none'}, not {new_version}")
    return {"stopped": stopped["stopped"], "replaced": moved, "version": found}


def op_restart(ctx: Ctx) -> Dict[str, Any]:
    """Start exactly the nodes that ran before the upgrade."""
    spec = ctx.spec
    ports = [int(p) for p in spec.get("ports") or []]
    return start_service(
        ctx, ports, bool(spec.get("daemon")), float(spec.get("timeout") or 300), bool(spec.get("nodes_down"))
    )


def op_verify(ctx: Ctx) -> Dict[str, Any]:
    """The new version is on disk once and every listed node runs and answers."""
    spec = ctx.spec
    ports = [int(p) for p in spec.get("ports") or []]
    problems, state = health_problems(
        ctx, spec.get("version"), ports, bool(spec.get("daemon")), float(spec.get("wait") or 60)
    )
    if problems:
        raise Failure("; ".join(problems), "verify")
    return state


def op_restore(ctx: Ctx) -> Dict[str, Any]:
    """Put the backup back exactly, restart the nodes that ran, verify the old version."""
    spec = ctx.spec
    backup_dir = ctx.need("backup_dir")
    manifest = complete_manifest(ctx, backup_dir)
    if manifest is None:
        # replace refuses to run without a complete backup, so nothing was replaced.
        remove_path(backup_dir)
        return {"restored": False}
    ctx.step = "check-backup"
    saved = restorable_paths(ctx, backup_paths(backup_dir)[0], manifest)
    ctx.step = "stop"
    stop_service(ctx)
    ctx.step = "restore"
    base = ctx.service_dir()
    files = backup_paths(backup_dir)[0]
    remove_path(staging_dir(ctx))
    kept = restored_by_mate(ctx, backup_dir)
    keep_now = set(relative_matches(base, kept))
    keep_saved = set(relative_matches(files, kept))
    if os.path.isdir(base):
        for rel in replaced_matches(ctx):
            if rel not in keep_now:
                remove_path(os.path.join(base, rel))
    for rel in saved:
        if rel in keep_saved:
            continue
        dst = os.path.join(base, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        copy_tree(os.path.join(files, rel), dst)
    if not manifest.get("dir_existed", True) and ctx.service()["dir"]:
        remove_path(base)
    ctx.step = "start"
    ports = [int(p) for p in spec.get("ports") or []]
    timeout = float(spec.get("timeout") or 300)
    started = start_service(ctx, ports, bool(spec.get("daemon")), timeout)
    ctx.step = "verify"
    problems, state = health_problems(
        ctx, spec.get("old_version"), ports, bool(spec.get("daemon")), min(timeout, 60.0)
    )
    if problems:
        raise Failure("after the restore: " + "; ".join(problems), "verify")
    return dict(state, restored=True, started=started["started"], kept=kept)


def restorable_paths(ctx: Ctx, files: str, manifest: Dict[str, Any]) -> List[str]:
    """The manifest's paths, each one the service's catalog says a backup holds; else Failure.

    Whoever can write the backup can write its manifest: a path that is absolute, climbs
    out with `..`, or is not one of the service's replaced paths is never restored.
    """
    wanted = set(relative_matches(files, list(ctx.service()["replace"])))
    paths = [str(p) for p in manifest.get("paths") or []]
    for rel in paths:
        parts = rel.split("/")
        if rel.startswith("/") or ".." in parts or os.path.normpath(rel) != rel or rel not in wanted:
            raise Failure(f"the backup's manifest names '{rel}', which the backup of "
                          f"{ctx.service()['printed']} never holds; refusing to restore", "restore")
    return paths


def op_abandon(ctx: Ctx) -> Dict[str, Any]:
    """Remove an incomplete backup; keep a complete one."""
    backup_dir = ctx.need("backup_dir")
    if complete_manifest(ctx, backup_dir) is not None:
        return {"removed": False}
    existed = os.path.lexists(backup_dir)
    remove_path(backup_dir)
    return {"removed": existed}


def op_prepare(ctx: Ctx) -> Dict[str, Any]:
    """Make each dir safely as whoever runs this (root): see `prepare_dir`."""
    created: List[str] = []
    for entry in ctx.spec.get("dirs") or []:
        path = str(entry["path"])
        ctx.step = f"mkdir {path}"
        fresh = bool(entry.get("fresh"))
        created.extend(prepare_dir(ctx, path, entry.get("owner"), entry.get("mode"), fresh))
    return {"created": created}


def prepare_dir(ctx: Ctx, path: str, owner: Any, mode: Any, fresh: bool) -> List[str]:
    """mkdir -p `path` without following a link or trusting what another user controls.

    Every directory above `path` must be a real directory owned by root (or by whoever
    runs this) and writable by no one else, unless sticky; missing ones are made so (0755).
    `path` itself goes to `owner` with `mode` (default: like its parents); `fresh` refuses
    one that exists. Ownership and mode are set on an open descriptor, never by name.
    """
    if not path.startswith("/") or os.path.normpath(path) != path or path == "/":
        raise Failure(f"{path}: not an absolute, normalised directory path", "prepare")
    uid, gid = _owner_ids(ctx, owner)
    parts = path.strip("/").split("/")
    created: List[str] = []
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        where = ""
        for i, name in enumerate(parts):
            where += "/" + name
            last = i == len(parts) - 1
            made = _make_dir_at(fd, name)
            if made:
                created.append(where)
            elif last and fresh:
                raise Failure(f"{where} already exists on {ctx.host}; a run never reuses it", "prepare")
            child = _open_dir_at(ctx, fd, name, where)
            os.close(fd)
            fd = child
            st = os.fstat(fd)
            if made or not last:
                _check_trusted(ctx, st, where, made)
            if last:
                _set_owner_mode(fd, st, uid, gid, mode)
            elif made:
                os.fchmod(fd, 0o755)
    finally:
        os.close(fd)
    return created


def _owner_ids(ctx: Ctx, owner: Any) -> Tuple[int, int]:
    if not owner:
        return os.geteuid(), os.getegid()
    try:
        user = pwd.getpwnam(str(owner))
    except KeyError:
        raise Failure(f"no user '{owner}' on {ctx.host}", "chown") from None
    return user.pw_uid, user.pw_gid


def _make_dir_at(fd: int, name: str) -> bool:
    """mkdir `name` in the directory `fd` (0700 until it is checked and set); whether it was made."""
    try:
        os.mkdir(name, 0o700, dir_fd=fd)
    except FileExistsError:
        return False
    return True


def _open_dir_at(ctx: Ctx, fd: int, name: str, where: str) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            message = f"{where} on {ctx.host} is a symbolic link or not a directory; refusing it"
            raise Failure(message, "prepare") from None
        raise


def _check_trusted(ctx: Ctx, st: os.stat_result, where: str, made: bool) -> None:
    """A directory above a run's dir must be root's (or ours) and writable by no one else."""
    if made:
        return
    if st.st_uid not in (0, os.geteuid()):
        owner = _user_name(st.st_uid)
        raise Failure(
            f"{where} on {ctx.host} belongs to {owner}, not root: another user could replace what "
            f"scmflow makes in it (chown root {where})",
            "prepare",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise Failure(
            f"{where} on {ctx.host} is writable by other users "
            f"(mode {stat.S_IMODE(st.st_mode):o}); refusing it",
            "prepare",
        )


def _set_owner_mode(fd: int, st: os.stat_result, uid: int, gid: int, mode: Any) -> None:
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.fchown(fd, uid, gid)
    if mode is not None:
        os.fchmod(fd, int(mode, 8) if isinstance(mode, str) else int(mode))
    elif stat.S_IMODE(st.st_mode) == 0o700 and uid == os.geteuid():
        os.fchmod(fd, 0o755)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def op_exists(ctx: Ctx) -> Dict[str, Any]:
    """Which of the given paths exist."""
    return {"exists": [str(p) for p in ctx.spec.get("paths") or [] if os.path.lexists(str(p))]}


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


# Attempts of op_lock when the lock file is released or replaced under it.
_LOCK_TRIES = 5
# A takeover holds the lock file's flock while it waits (`step_wait`) for the step lock.
_STEP_WAIT = 30.0
_LOCK_FILE_WAIT = 2 * _STEP_WAIT


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
    import hashlib

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


_OPS: Dict[str, Callable[[Ctx], Dict[str, Any]]] = {
    "probe": op_probe,
    "backup": op_backup,
    "replace": op_replace,
    "restart": op_restart,
    "verify": op_verify,
    "restore": op_restore,
    "abandon": op_abandon,
    "prepare": op_prepare,
    "exists": op_exists,
    "lock": op_lock,
    "unlock": op_unlock,
}
# These manage the run lock themselves, or change nothing.
_UNLOCKED_OPS = ("lock", "unlock", "probe", "prepare", "exists")


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


def main(argv: List[str]) -> int:
    """Run one op, or serve requests; print each JSON reply on its own stdout line.

    One op (`OP SPEC-JSON`) exits 0 on success, 1 on failure. `--serve` answers one
    request line (`{"op", "spec"}`) after another until stdin ends, then exits 0.
    """
    # Nothing relative may resolve in a directory that another user controls.
    os.chdir("/")
    if argv == [SERVE]:
        return serve(sys.stdin.buffer, sys.stdout)
    if len(argv) != 2:
        reply = {"ok": False, "error": "usage: agent OP SPEC-JSON | agent --serve", "step": "args"}
    else:
        reply = run_op(argv[0], argv[1])
    sys.stdout.write("\n" + json.dumps(reply, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0 if reply["ok"] else 1


def serve(requests: Any, replies: Any) -> int:
    """Greet, then answer request lines from `requests` on `replies` until end of input.

    The greeting proves that what reads the requests is this agent (not a sudo prompt
    or a shell); each reply names its request's id, so a reply cannot be taken for
    another request's.
    """
    replies.write(json.dumps({GREETING_KEY: PROTOCOL, "pid": os.getpid()}, sort_keys=True) + "\n")
    replies.flush()
    while True:
        line = requests.readline()
        if not line:
            return 0
        if not line.strip():
            continue
        request_id = None
        try:
            request = json.loads(line)
            request_id = request.get("id")
            op, spec = request["op"], request["spec"]
        except (ValueError, TypeError, KeyError, AttributeError):
            reply: Dict[str, Any] = {"ok": False, "error": "malformed request line", "step": "args"}
        else:
            reply = run_op(op, spec)
        reply["id"] = request_id
        replies.write(json.dumps(reply, sort_keys=True) + "\n")
        replies.flush()


def run_op(op: str, raw: Any) -> Dict[str, Any]:
    """Run one op on a spec (a dict or its JSON text); the reply, `ok` true or false."""
    ctx: Optional[Ctx] = None
    lock: Optional[int] = None
    try:
        handler = _OPS.get(op)
        if handler is None:
            raise Failure(f"unknown op '{op}'", "args")
        spec = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(spec, dict):
            raise Failure("the spec is not a JSON object", "args")
        ctx = Ctx(spec)
        lock = hold_step_lock(ctx, op)
        ctx.step = op
        reply: Dict[str, Any] = {"ok": True}
        reply.update(handler(ctx))
    except Failure as exc:
        reply = {"ok": False, "error": one_line(exc.message), "step": exc.step or _step(ctx)}
    except BaseException as exc:  # noqa: B036 - the control machine must always get a reply
        message = one_line(f"{type(exc).__name__}: {exc}")
        reply = {"ok": False, "error": message, "step": _step(ctx), "trace": traceback.format_exc()}
    finally:
        if lock is not None:
            os.close(lock)
    return reply


def _step(ctx: Optional[Ctx]) -> str:
    return ctx.step if ctx is not None else "args"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
