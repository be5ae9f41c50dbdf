"""The bad-input corpus (tests/badinput/cases.toml): its cases, recipes and checks.

Shared by tests/test_badinput.py (the cases refused before any host) and
tests/e2e/test_badinput_hosts.py (the cases that reach the test hosts).

A refusal is: exactly one `[ERROR]` line, on stderr and last there, containing the case's
text; the case's exit code; no traceback anywhere; and nothing changed: the case's own
directory (inputs, status dir) byte for byte, and, for cases that reach the test hosts,
every host's install, backup and upgrade directories and its running nodes. Files the
corpus cannot hold as text (status files, tarballs, release trees) are built at test time
by the recipes below.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import os
import random
import select
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest

from scmflow import sandbox
from scmflow.journal import Journal
from scmflow.statusformat import FORMAT
from scmflow.statuskey import StatusKey, load_or_create_key

REPO = Path(__file__).resolve().parents[1]

SCM = REPO / "scm.py"
CORPUS = Path(__file__).resolve().parent / "badinput"
# A run that reached the hosts has opened its log: sequoiacm-deploy/log/ under the release.
LOG_DIR_PART = "sequoiacm-deploy/log/"
LOG_PARENT = "sequoiacm-deploy"


@dataclass(frozen=True)
class Case:
    """One entry of cases.toml."""

    name: str
    argv: tuple[str, ...]
    exit: int
    error: str
    hosts: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    bug: str | None = None


def load_cases() -> list[Case]:
    """Every case of the manifest, checked for the fields it needs."""
    data = tomllib.loads((CORPUS / "cases.toml").read_text(encoding="utf-8"))
    cases = []
    for entry in data["case"]:
        unknown = set(entry) - {"name", "argv", "exit", "error", "hosts", "env", "bug"}
        assert not unknown, f"case {entry.get('name')}: unknown keys {unknown}"
        assert entry["exit"] != 0, f"case {entry['name']}: a refusal exits non-zero"
        cases.append(
            Case(
                name=entry["name"],
                argv=tuple(entry["argv"]),
                exit=entry["exit"],
                error=entry["error"],
                hosts=entry.get("hosts", False),
                env=entry.get("env", {}),
                bug=entry.get("bug"),
            )
        )
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


CASES = load_cases()


def params(*, hosts: bool) -> list[Any]:
    """pytest params for the host-free or the host-needing cases; known bugs as strict xfails."""
    out = []
    for case in CASES:
        if case.hosts != hosts:
            continue
        marks = [pytest.mark.xfail(reason=case.bug, strict=True)] if case.bug else []
        out.append(pytest.param(case, id=case.name, marks=marks))
    return out


# --- recipes: inputs the corpus cannot hold as text ---------------------------------------


@dataclass(frozen=True)
class RecipeContext:
    """Where a recipe builds, and the sandbox releases (host cases only)."""

    tmp: Path
    releases: Mapping[str, Path] | None = None

    def release(self, version: str) -> Path:
        """A sandbox release root built by the session fixture."""
        assert self.releases is not None, "this recipe needs the releases fixture (a hosts case)"
        return self.releases[version]


Recipe = Callable[[RecipeContext], Path]
RECIPES: dict[str, Recipe] = {}


def recipe(fn: Recipe) -> Recipe:
    """Register `fn` under its name for `{gen:NAME}`."""
    RECIPES[fn.__name__] = fn
    return fn


@recipe
def cfg_latin1(ctx: RecipeContext) -> Path:
    """A config saved as Latin-1: the é of a comment on line 7 is not UTF-8."""
    text = (CORPUS / "configs" / "good.cfg").read_text().splitlines()
    text.insert(6, "# host of the équipe")
    path = ctx.tmp / "latin1.cfg"
    path.write_bytes("\n".join(text).encode("latin-1"))
    return path


def status_header(*, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A realistic header for one gateway pair on 127.0.0.1 (port 1: nothing answers)."""
    header: dict[str, Any] = {
        "run_id": "0123456789abcdef0123456789abcdef",
        "stamp": "2026-01-01-00:00:00",
        "started": 1767225600.0,
        "tool": "scmflow",
        "tool_version": "0.1.0",
        "operator": "root",
        "control_host": "control",
        "argv": ["scm.py", "cluster", "--upgrade"],
        "parallel": 1,
        "layout": {
            "install_path": "/opt/sequoiacm",
            "install_user": "scmadmin",
            "upgrade_dir": "/opt/upgrade/sequoiacm/upgrade-2026-01-01-00:00:00",
            "backup_dir": "/opt/backup/sequoiacm/backup-2026-01-01-00:00:00",
            "start_timeout": 300,
            "admin_user": "root",
        },
        "hosts": [{"name": "127.0.0.1", "port": 1, "user": "root", "java_home": "/opt/java", "auth": "key"}],
        "release": {"root": "/nonexistent/sequoiacm", "version": "3.2.2", "packages": {}},
        "plan": [
            {
                "host": "127.0.0.1",
                "service": "gateway",
                "printed": "GATEWAY",
                "old_version": "3.1.2",
                "new_version": "3.2.2",
                "nodes": [{"port": 8080, "running": True}],
            }
        ],
    }
    for key in drop:
        del header[key]
    return header


def operator_key(ctx: RecipeContext) -> StatusKey:
    """The status key scm.py finds in the HOME the case runs with (tmp/home)."""
    return load_or_create_key(ctx.tmp / "home" / ".config" / "scmflow" / "status.key")


def write_status(ctx: RecipeContext, directory: Path, header: dict[str, Any]) -> Path:
    """A status file with the header and a gateway pair backed up, then replaced.

    Signed with the operator's key, so that what is refused is refused for the case's reason.
    """
    pair = {"host": "127.0.0.1", "service": "gateway"}
    with Journal.create(directory, header, key=operator_key(ctx)) as journal:
        for trigger, src, dst in (("backup", "pending", "backed_up"), ("replace", "backed_up", "replaced")):
            journal.append({"kind": "begin", **pair, "trigger": trigger})
            journal.append({"kind": "transition", **pair, "trigger": trigger, "src": src, "dst": dst})
        return journal.path


@recipe
def status_good(ctx: RecipeContext) -> Path:
    """An intact status file of one pair, replaced (so rollback and resume both have work)."""
    return write_status(ctx, ctx.tmp / "good", status_header())


@recipe
def status_empty(ctx: RecipeContext) -> Path:
    """A status file truncated to 0 bytes."""
    path = ctx.tmp / "upgrade_status_2026-01-01-00:00:00"
    path.write_bytes(b"")
    return path


@recipe
def status_random(ctx: RecipeContext) -> Path:
    """4 KiB of (seeded) random bytes."""
    path = ctx.tmp / "upgrade_status_2026-01-01-00:00:00"
    path.write_bytes(random.Random(20260101).randbytes(4096))
    return path


@recipe
def status_text(ctx: RecipeContext) -> Path:
    """The vendor tool's own text status file: not ours, whatever its name says."""
    path = ctx.tmp / "upgrade_status_2026-01-01-00:00:00"
    path.write_text(
        "HostName,SshPort,User,Password,Service,OldVersion,NewVersion,BackupPath\n"
        "192.168.16.195,22,root,sequoiadb,GATEWAY,3.1.2,3.2.2,/opt/backup/sequoiacm/backup-x\n"
    )
    return path


@recipe
def status_newer(ctx: RecipeContext) -> Path:
    """A status file whose header says format version 3 (a future scmflow wrote it)."""
    header = {"format": FORMAT, "format_version": 3, "seq": 0, "time": "2026-01-01T00:00:00.000Z",
              "epoch": 1767225600.0, **status_header()}
    payload = msgpack.packb(header, use_bin_type=True)
    frame = msgpack.packb([payload, hashlib.sha256(payload).digest()], use_bin_type=True)
    path = ctx.tmp / "upgrade_status_2026-01-01-00:00:00"
    path.write_bytes(frame)
    return path


@recipe
def status_tampered(ctx: RecipeContext) -> Path:
    """An intact status file with one byte changed in the middle: record 2 says backed_uP."""
    path = write_status(ctx, ctx.tmp / "tampered", status_header())
    data = bytearray(path.read_bytes())
    at = data.index(b"backed_up") + len("backed_u")
    assert 0.2 < at / len(data) < 0.8, "the changed byte should be in the middle of the file"
    data[at] = ord("P")
    path.write_bytes(bytes(data))
    return path


@recipe
def status_rewritten(ctx: RecipeContext) -> Path:
    """An intact, signed status file whose header was rewritten (install user root), every digest
    and `prev` recomputed, the MACs left as they were: the chain is intact, the MACs are not."""
    path = write_status(ctx, ctx.tmp / "rewritten", status_header())
    out, prev = [], b""
    for seq, frame in enumerate(msgpack.Unpacker(io.BytesIO(path.read_bytes()), raw=False)):
        record = msgpack.unpackb(frame[0], raw=False)
        if seq == 0:
            record["layout"]["install_user"] = "root"
        else:
            record["prev"] = prev
        body = msgpack.packb(record, use_bin_type=True)
        prev = hashlib.sha256(body).digest()
        out.append(msgpack.packb([body, prev, frame[2]], use_bin_type=True))
    path.write_bytes(b"".join(out))
    return path


@recipe
def status_unsigned(ctx: RecipeContext) -> Path:
    """An intact status file without MACs (format version 1, as scmflow wrote them before)."""
    pair = {"host": "127.0.0.1", "service": "gateway"}
    with Journal.create(ctx.tmp / "unsigned", status_header()) as journal:
        event = {"kind": "transition", **pair, "trigger": "backup", "src": "pending", "dst": "backed_up"}
        journal.append(event)
        return journal.path


@recipe
def status_no_layout(ctx: RecipeContext) -> Path:
    """An intact status file whose header lacks its remote layout."""
    return write_status(ctx, ctx.tmp / "nolayout", status_header(drop=("layout",)))


@recipe
def status_no_plan(ctx: RecipeContext) -> Path:
    """An intact status file whose header lacks its plan."""
    return write_status(ctx, ctx.tmp / "noplan", status_header(drop=("plan",)))


@recipe
def release_empty_dir(ctx: RecipeContext) -> Path:
    """An empty directory given as the release."""
    path = ctx.tmp / "release-empty"
    path.mkdir()
    return path


@recipe
def release_no_tarballs(ctx: RecipeContext) -> Path:
    """A release tree whose package/ is empty (its driver/ still names the version)."""
    root = copy_release(ctx, "3.2.2", "release-no-tarballs")
    for tarball in (root / "package").iterdir():
        tarball.unlink()
    return root


@recipe
def release_mixed(ctx: RecipeContext) -> Path:
    """A 3.2.2 release whose config-server package is 3.1.2's."""
    root = copy_release(ctx, "3.2.2", "release-mixed")
    (root / "package" / "sequoiacm-config-3.2.2-release.tar.gz").unlink()
    old = ctx.release("3.1.2") / "package" / "sequoiacm-config-3.1.2-release.tar.gz"
    shutil.copy2(old, root / "package" / old.name)
    return root


def _file_member(name: str, data: bytes = b"escaped\n") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link_member(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


@recipe
def release_dotdot(ctx: RecipeContext) -> Path:
    """The cloud package carries a member climbing out with `..`."""
    return release_with_member(ctx, "release-dotdot", *_file_member("sequoiacm-cloud/../../escaped.txt"))


@recipe
def release_absolute(ctx: RecipeContext) -> Path:
    """The cloud package carries a member with an absolute path."""
    return release_with_member(
        ctx, "release-absolute", *_file_member("/opt/sequoiacm/sequoiacm-cloud/escaped.txt")
    )


@recipe
def release_symlink(ctx: RecipeContext) -> Path:
    """The cloud package carries a symlink pointing out of the package."""
    return release_with_member(
        ctx, "release-symlink", *_link_member("sequoiacm-cloud/jars/etc", "../../../etc", tarfile.SYMTYPE)
    )


@recipe
def release_hardlink(ctx: RecipeContext) -> Path:
    """The cloud package carries a hard link to a file outside the package."""
    return release_with_member(
        ctx, "release-hardlink", *_link_member("sequoiacm-cloud/jars/passwd", "/etc/passwd", tarfile.LNKTYPE)
    )


@recipe
def release_corrupt(ctx: RecipeContext) -> Path:
    """The cloud package cut to its first 300 bytes (a download that died)."""
    root = copy_release(ctx, "3.2.2", "release-corrupt")
    tarball = root / "package" / "sequoiacm-cloud-3.2.2-release.tar.gz"
    tarball.write_bytes(tarball.read_bytes()[:300])
    return root


@recipe
def release_400(ctx: RecipeContext) -> Path:
    """A well-formed release 4.0.0: no upgrade path leads there from 3.1.x."""
    return sandbox.build_release(ctx.tmp / "release-400", "4.0.0")


def copy_release(ctx: RecipeContext, version: str, name: str) -> Path:
    """A private copy of a sandbox release root, to spoil."""
    target = ctx.tmp / name / "sequoiacm"
    shutil.copytree(ctx.release(version), target, symlinks=True)
    return target


def release_with_member(ctx: RecipeContext, name: str, info: tarfile.TarInfo, data: bytes) -> Path:
    """A 3.2.2 release whose cloud package holds every real member plus `info`."""
    root = copy_release(ctx, "3.2.2", name)
    tarball = root / "package" / "sequoiacm-cloud-3.2.2-release.tar.gz"
    spoiled = tarball.with_name("spoiled.tar.gz")
    with tarfile.open(tarball, "r:gz") as source, tarfile.open(spoiled, "w:gz") as out:
        for member in source.getmembers():
            out.addfile(member, source.extractfile(member) if member.isfile() else None)
        out.addfile(info, _bytes_io(data) if info.isfile() else None)
    spoiled.replace(tarball)
    return root


def _bytes_io(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


# --- running a case -------------------------------------------------------------------------


def expand(case: Case, ctx: RecipeContext, extra: Mapping[str, str]) -> list[str]:
    """The case's argv with every placeholder replaced (recipes run once per name)."""
    built: dict[str, Path] = {}
    out = []
    for arg in case.argv:
        while "{gen:" in arg:
            start = arg.index("{gen:")
            end = arg.index("}", start)
            name = arg[start + 5 : end]
            assert name in RECIPES, f"case {case.name}: no recipe {name}"
            if name not in built:
                built[name] = RECIPES[name](ctx)
            arg = arg[:start] + str(built[name]) + arg[end + 1 :]
        for key, value in {"corpus": str(CORPUS), "tmp": str(ctx.tmp), **extra}.items():
            arg = arg.replace("{" + key + "}", value)
        assert "{" not in arg or "}" not in arg, f"case {case.name}: unexpanded placeholder in {arg}"
        out.append(arg)
    return out


def scm_env(home: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The environment scm.py runs with: HOME given, this PATH, UTF-8, the checkout importable."""
    return {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
        **env,
    }


def run_scm(
    argv: list[str], *, cwd: Path, home: Path, env: Mapping[str, str], forked: bool = True
) -> subprocess.CompletedProcess[str]:
    """scm.py as an operator runs it: no terminal, empty stdin, HOME given.

    `forked` runs it in a process forked from a Python that has already imported scm.py's
    third-party libraries (see ForkedScm), not in a fresh `python scm.py`: the same process
    from scm.py's first line on, without half a second of imports per case.
    """
    full_env = scm_env(home, env)
    if forked and ForkedScm.can_run(full_env):
        return forked_scm().run(argv, cwd=cwd, env=full_env, timeout=300)
    return subprocess.run(
        [sys.executable, str(SCM), *argv],
        input="",
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
    )


# The forking server. It imports what every scm.py run imports first and takes most of its
# start-up time (paramiko and cryptography, click, msgpack, transitions, scmflow's CLI: none
# of them reads the environment or the cwd when imported), then for each request
# forks; the child drops out of the loop and becomes `python scm.py ARGS`: its own cwd,
# environment and standard streams, scm.py run as __main__, and the interpreter's exit
# (exit status, uncaught traceback, threads joined, atexit, streams flushed).
_SERVER = r"""
import json, os, sys
import click, msgpack, paramiko, transitions
import scmflow.cli
import gc
gc.freeze()  # what is imported stays put: runs copy no page of it for the collector

requests = os.fdopen(int(sys.argv[1]), "r")
replies = os.fdopen(int(sys.argv[2]), "w")
for line in requests:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        break
    replies.write(json.dumps({"pid": pid}) + "\n")
    replies.flush()
    _, status = os.waitpid(pid, 0)
    replies.write(json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n")
    replies.flush()
else:
    sys.exit(0)
requests.close()
replies.close()
os.chdir(request["cwd"])
os.environ.clear()
os.environ.update(request["env"])
for fd, (path, flags) in enumerate(
    ((os.devnull, os.O_RDONLY), (request["stdout"], os.O_WRONLY), (request["stderr"], os.O_WRONLY))
):
    opened = os.open(path, flags)
    os.dup2(opened, fd)
    os.close(opened)
if "random" in sys.modules:
    sys.modules["random"].seed()
sys.argv = [request["scm"], *request["argv"]]
sys.path[0] = os.path.dirname(request["scm"])
del json, line, requests, replies, pid, fd, path, flags, opened
import atexit, runpy, threading
try:
    runpy.run_path(request["scm"], run_name="__main__")
    code = 0
except SystemExit as stop:
    # as the interpreter ends on SystemExit: None is 0, an int the status, else printed, 1
    code = stop.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
except BaseException:
    sys.excepthook(*sys.exc_info())
    code = 1
# The interpreter's own exit, but for tearing down every module this server imported (a
# fifth of a second, the same in every run): wait for threads, run atexit (logging's
# flush, finalizers), flush the standard streams.
threading._shutdown()
atexit._run_exitfuncs()
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except (OSError, ValueError):
        pass
os._exit(code)
"""


class ForkedScm:
    """scm.py runs forked from one server process (see _SERVER); one run at a time."""

    # What the server's interpreter was started with and a child cannot change: stdio's
    # encoding, sys.path, sys.flags. Runs that set any of these get a fresh process.
    FIXED = ("LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH")

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.work = Path(tempfile.mkdtemp(prefix="scmflow-forked-scm-"))
        request_read, self._requests = os.pipe()
        self._replies, reply_write = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(request_read), str(reply_write)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.env,
            cwd="/",
            pass_fds=(request_read, reply_write),
        )
        os.close(request_read)
        os.close(reply_write)
        self._pending = b""

    @classmethod
    def can_run(cls, env: Mapping[str, str]) -> bool:
        """Whether a run with `env` behaves as in a fresh process when forked from the server."""
        base = scm_env(Path("/"), {})
        return all(env.get(k) == base.get(k) for k in cls.FIXED) and not any(
            k.startswith("PYTHON") and k != "PYTHONPATH" for k in env
        )

    def run(
        self, argv: list[str], *, cwd: Path, env: Mapping[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run scm.py with argv; its exit code and decoded output, as subprocess.run gives them."""
        out, err = self.work / "stdout", self.work / "stderr"
        out.write_bytes(b"")
        err.write_bytes(b"")
        request = {"scm": str(SCM), "argv": argv, "cwd": str(cwd), "env": dict(env),
                   "stdout": str(out), "stderr": str(err)}
        os.write(self._requests, (json.dumps(request) + "\n").encode())
        pid = self._reply(60.0)["pid"]
        try:
            code = self._reply(timeout)["code"]
        except subprocess.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
            self._reply(60.0)
            raise subprocess.TimeoutExpired([str(SCM), *argv], timeout) from None
        return subprocess.CompletedProcess(
            [sys.executable, str(SCM), *argv], code, _text(out.read_bytes()), _text(err.read_bytes())
        )

    def _reply(self, timeout: float) -> dict[str, Any]:
        """The server's next reply line, read from the pipe itself (no buffer to hide it)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            ready, _, _ = select.select([self._replies], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise subprocess.TimeoutExpired(["scm.py fork server"], timeout)
            chunk = os.read(self._replies, 4096)
            if not chunk:
                raise RuntimeError("the scm.py fork server exited")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        reply = json.loads(line)
        assert isinstance(reply, dict)
        return reply

    def close(self) -> None:
        """Stop the server (it exits when its request pipe closes)."""
        os.close(self._requests)
        os.close(self._replies)
        self.process.wait(timeout=30)
        shutil.rmtree(self.work, ignore_errors=True)


def _text(data: bytes) -> str:
    """Output decoded as subprocess.run(text=True) decodes it: UTF-8, universal newlines."""
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


_FORKED: list[ForkedScm] = []


def forked_scm() -> ForkedScm:
    """The session's forking server, started on first use and stopped at exit."""
    if not _FORKED:
        _FORKED.append(ForkedScm(scm_env(Path("/"), {})))
        atexit.register(_FORKED[0].close)
    return _FORKED[0]


def snapshot(root: Path, *, ignore_logs: bool = False) -> dict[str, str]:
    """Every path under root with its type, mode and content hash (the run's log optionally left out)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            log_parent = stat.S_ISDIR(st.st_mode) and path.name == LOG_PARENT
            if ignore_logs and (LOG_DIR_PART in rel + "/" or log_parent):
                continue
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link " + os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = f"dir {stat.S_IMODE(st.st_mode):o}"
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = f"file {stat.S_IMODE(st.st_mode):o} {digest}"
    return out


def assert_refused(case: Case, argv: list[str], done: subprocess.CompletedProcess[str]) -> None:
    """One [ERROR] line, last on stderr, with the case's text; the exit code; no traceback."""
    shown = f"scm.py {shlex.join(argv)}\n--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
    assert "Traceback" not in done.stdout + done.stderr, shown
    errors = [line for line in done.stderr.splitlines() if line.startswith("[ERROR]")]
    assert len(errors) == 1, shown
    assert done.stderr.rstrip("\n").splitlines()[-1] == errors[0], shown
    assert "[ERROR]" not in done.stdout, shown
    assert case.error in errors[0], shown
    assert done.returncode == case.exit, shown
