"""Real SSH test hosts on this machine: one network + mount namespace and one sshd each.

Every host gets its own network namespace, joined to the root namespace by a veth pair
(10.251.N.1 on the control side, 10.251.N.2 in the host), and its own mount namespace in
which /opt (a tmpfs) holds /opt/sequoiacm, /opt/backup and /opt/upgrade bind-mounted from
a per-host directory on the control machine, /opt/java (a sandbox JDK 1.8.0_221, read-only),
a per-host /etc/profile that exports JAVA_HOME=/opt/java, and a home of its own for root
(a fresh ~/.bashrc from /etc/skel, not this machine's root's). OpenSSH's sshd runs in both
namespaces, so everything started over SSH (and everything `TestHost.exec` starts) sees that
host's network and /opt only: several hosts share one install path and one set of ports
without colliding.

The hosts are hostile the way customer hosts are:
  - /usr/local/sbin and /usr/local/bin (first on every default PATH) are small tmpfs
    holding only a decoy `java` that answers -version as OpenJDK 17 and fails to run any
    jar, so whatever starts nodes without PATH=$JAVA_HOME/bin:$PATH fails here;
  - the install user scmadmin (primary group scmadmin) is also in scmadmin_group, the group
    the install tree belongs to (InstallUserGroup), so files created with the user's
    primary group stand out.

Needs root, iproute2, util-linux (nsenter, unshare, runuser), OpenSSH server and sudo.
Several test runs may use this machine at once: each claims its own N under a lock file,
and a run cleans only namespaces whose owning process has died.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from scmflow.sandbox import make_decoy_java, make_jdk

INSTALL_USER = "scmadmin"
INSTALL_GROUP = "scmadmin_group"
JDK_VERSION = "1.8.0_221"
# Mounted over these inside each host: empty but for the decoy java.
DECOY_DIRS = ("/usr/local/sbin", "/usr/local/bin")
OPS_USER = "scmops"
NETNS_PREFIX = "scmt-"
ALT_PORT = 2222
SSHD = "/usr/sbin/sshd"
STATE_DIR = Path("/run/scmflow-tests")
SUDOERS_FILE = Path("/etc/sudoers.d/scmflow-tests")
REQUIRED_TOOLS = ("ip", "nsenter", "unshare", "runuser", "sudo", "ssh-keygen", "useradd", "chpasswd")
# Routes that keep a cut link's packets on this machine (see `_fallback_route`).
_FALLBACK_METRIC = "4242"
_NETNS_RE = re.compile(rf"^{NETNS_PREFIX}(\d+)-(\d+)$")
_OPT_MOUNTS = ("sequoiacm", "backup", "upgrade")


class HostSetupError(RuntimeError):
    """A test host could not be started."""


def missing_prerequisite() -> str | None:
    """Why test hosts cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "test hosts need root (network and mount namespaces, sshd on port 22)"
    if not Path(SSHD).is_file():
        return f"OpenSSH server is not installed ({SSHD} missing: apt-get install openssh-server)"
    for tool in REQUIRED_TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = f"{NETNS_PREFIX}probe{os.getpid()}"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if added.returncode != 0:
        return f"network namespaces are unavailable: {added.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(argv: Sequence[str], *, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a setup command on the control machine; raise HostSetupError when it fails."""
    done = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise HostSetupError(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


@contextmanager
def _state_lock() -> Iterator[None]:
    """Serialise slot allocation and user setup between concurrent test runs."""
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    with open(STATE_DIR / "lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _our_namespaces() -> list[tuple[str, int, int]]:
    """(name, slot, owner pid) of every namespace with our prefix."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found = []
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NETNS_RE.match(name)
        if match:
            found.append((name, int(match.group(1)), int(match.group(2))))
    return found


def _netns_pids(netns: str) -> list[int]:
    listed = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    return [int(p) for p in listed.split() if p.isdigit()]


def _kill_netns_processes(netns: str) -> None:
    """TERM, then KILL, every process inside one of our namespaces."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _netns_pids(netns)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and _netns_pids(netns):
            time.sleep(0.02)


def _fallback_route(slot: int) -> list[str]:
    # With the control-side veth down its connected route vanishes; without this
    # lower-priority route, packets for the host would follow the default route off
    # this machine. "unreachable" drops them here, and new connections get
    # EHOSTUNREACH, as for a real host whose link is down.
    return ["unreachable", f"10.251.{slot}.0/30", "metric", _FALLBACK_METRIC]


def _remove_slot(netns: str, slot: int) -> None:
    """Remove everything one host slot created; safe to call twice."""
    _kill_netns_processes(netns)
    subprocess.run(["ip", "netns", "del", netns], capture_output=True)
    subprocess.run(["ip", "link", "del", f"scmv{slot}"], capture_output=True)
    subprocess.run(["ip", "route", "del", *_fallback_route(slot)], capture_output=True)


def remove_stale_hosts() -> None:
    """Remove namespaces, veths and routes left by test runs that died (caller holds the lock)."""
    live_slots = set()
    for name, slot, owner in _our_namespaces():
        if owner != os.getpid() and not _pid_alive(owner):
            _remove_slot(name, slot)
        else:
            live_slots.add(slot)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for slot_text in re.findall(r"^\d+: scmv(\d+)[@:]", links, flags=re.MULTILINE):
        if int(slot_text) not in live_slots:
            subprocess.run(["ip", "link", "del", f"scmv{slot_text}"], capture_output=True)
    for leftover in Path(tempfile.gettempdir()).glob("scmflow-hosts-*"):
        named = re.match(r"scmflow-hosts-(\d+)-", leftover.name)
        if named and int(named.group(1)) != os.getpid() and not _pid_alive(int(named.group(1))):
            shutil.rmtree(leftover, ignore_errors=True)
    routes = subprocess.run(["ip", "route", "show", "type", "unreachable"], capture_output=True, text=True)
    for slot_text in re.findall(r"10\.251\.(\d+)\.0/30", routes.stdout):
        if int(slot_text) not in live_slots:
            subprocess.run(["ip", "route", "del", *_fallback_route(int(slot_text))], capture_output=True)


def _ensure_user(name: str) -> None:
    exists = subprocess.run(["id", "-u", name], capture_output=True).returncode == 0
    if not exists:
        _run(["useradd", "--create-home", "--shell", "/bin/bash", name])
    status = _run(["passwd", "--status", name]).stdout.split()
    if len(status) > 1 and status[1] == "L":
        # sshd refuses even key logins to a locked ("!") account; "*" only rules out passwords
        _run(["usermod", "--password", "*", name])


def _ops_password() -> str:
    """The ops user's password, shared by all runs on this machine (kept root-only in /run)."""
    path = STATE_DIR / "ops-password"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(18))
    return path.read_text().strip()


def _ensure_group_member(group: str, user: str) -> None:
    """Create `group` if needed and make it one of `user`'s supplementary groups."""
    if subprocess.run(["getent", "group", group], capture_output=True).returncode != 0:
        _run(["groupadd", group])
    members = _run(["id", "-nG", user]).stdout.split()
    if group not in members:
        _run(["usermod", "--append", "--groups", group, user])


def ensure_users() -> str:
    """Create the install and ops users and the ops user's sudo rule; return its password."""
    _ensure_user(INSTALL_USER)
    _ensure_group_member(INSTALL_GROUP, INSTALL_USER)
    _ensure_user(OPS_USER)
    password = _ops_password()
    _run(["chpasswd"], input=f"{OPS_USER}:{password}\n")
    rule = f"# scmflow test hosts: remove when no test run is alive\n{OPS_USER} ALL=(ALL:ALL) ALL\n"
    if not SUDOERS_FILE.exists() or SUDOERS_FILE.read_text() != rule:
        staged = SUDOERS_FILE.with_name(".scmflow-tests.new")
        staged.write_text(rule)
        staged.chmod(0o440)
        _run(["visudo", "-c", "-q", "-f", str(staged)])
        staged.replace(SUDOERS_FILE)
    return password


def _claim_slot() -> tuple[int, str]:
    """Claim a free slot N: create its veth pair and namespace (caller holds the lock)."""
    used = {slot for _, slot, _ in _our_namespaces()}
    for slot in range(1, 255):
        if slot in used:
            continue
        created = subprocess.run(
            ["ip", "link", "add", f"scmv{slot}", "type", "veth", "peer", "name", f"scmp{slot}"],
            capture_output=True,
        )
        if created.returncode != 0:
            continue
        netns = f"{NETNS_PREFIX}{slot}-{os.getpid()}"
        added = subprocess.run(["ip", "netns", "add", netns], capture_output=True, text=True)
        if added.returncode != 0:
            subprocess.run(["ip", "link", "del", f"scmv{slot}"], capture_output=True)
            raise HostSetupError(f"ip netns add {netns} failed: {added.stderr.strip()}")
        return slot, netns
    raise HostSetupError("no free test-host slot (10.251.1-254.0/30 all in use)")


@dataclass
class TestHost:
    """One running test host."""

    __test__ = False  # not a pytest test class

    name: str
    slot: int
    netns: str
    address: str
    port: int
    alt_port: int
    root: Path
    host_key_path: Path
    host_public_key: str
    opt_dirs: dict[str, Path]
    profile: Path
    root_home: Path
    sshd_log: Path
    decoy_java: Path
    sshd_pid: int = 0
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def veth(self) -> str:
        """The control-side end of this host's link."""
        return f"scmv{self.slot}"

    def exec(
        self,
        argv: Sequence[str],
        user: str | None = None,
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside this host's namespaces (as `user` via runuser), without SSH."""
        command = ["nsenter", "-t", str(self.sshd_pid), "-n", "-m", "--"]
        if user is not None:
            command += ["runuser", "-u", user, "--"]
        done = subprocess.run(
            command + list(argv), input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise HostSetupError(
                f"{self.name}: {shlex.join(argv)} exited {done.returncode}: {done.stderr.strip()}"
            )
        return done

    def cut_link(self) -> None:
        """Take the control-side veth down: the host stops answering, silently."""
        _run(["ip", "link", "set", self.veth, "down"])

    def restore_link(self) -> None:
        """Bring the link back up (and its route with it)."""
        _run(["ip", "link", "set", self.veth, "up"])
        _run(["ip", "addr", "replace", f"10.251.{self.slot}.1/30", "dev", self.veth])

    def known_hosts_line(self, port: int | None = None) -> str:
        """This host's key as a plain OpenSSH known_hosts line."""
        port = self.port if port is None else port
        name = self.address if port == 22 else f"[{self.address}]:{port}"
        return f"{name} {self.host_public_key}\n"

    def accepted_connections(self) -> int:
        """How many TCP connections sshd has accepted so far (from its log)."""
        if not self.sshd_log.exists():
            return 0
        return self.sshd_log.read_text(errors="replace").count("Connection from ")

    def start_sshd(self, config: Path) -> None:
        """Start sshd -D in a fresh mount namespace inside this host's network namespace."""
        mounts = ["mount -t tmpfs -o mode=0755,size=64m scmflow-opt /opt"]
        for mount_point, source in self.opt_dirs.items():
            mounts.append(f"mkdir -p {shlex.quote(mount_point)}")
            mounts.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(mount_point)}")
        mounts.append("mount -o remount,bind,ro /opt/java")
        mounts.append(f"mount --bind {shlex.quote(str(self.profile))} /etc/profile")
        # root's own home: this machine's root may run tool managers from ~/.bashrc (which
        # bash reads when sshd starts it), and a host's root is not this machine's root.
        mounts.append(f"mount --bind {shlex.quote(str(self.root_home))} /root")
        for folder in DECOY_DIRS:
            mounts.append(f"mkdir -p {folder}")
            mounts.append(f"mount -t tmpfs -o mode=0755,size=1m scmflow-decoy {folder}")
            mounts.append(f"cp {shlex.quote(str(self.decoy_java))} {folder}/java")
            mounts.append(f"chmod 0755 {folder}/java")
        script = " && ".join(mounts) + f" && exec {SSHD} -D -f {shlex.quote(str(config))}"
        script += f" -E {shlex.quote(str(self.sshd_log))}"
        with open(self.root / "sshd.stderr", "wb") as errors:
            self._process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation", "private",
                 "--", "/bin/sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                start_new_session=True,
            )
        # ip, unshare and sh each exec the next, so this pid ends up being sshd's.
        self.sshd_pid = self._process.pid

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Poll sshd's port until it accepts connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                errors = (self.root / "sshd.stderr").read_text(errors="replace")
                log = self.sshd_log.read_text(errors="replace") if self.sshd_log.exists() else ""
                raise HostSetupError(f"{self.name}: sshd exited: {errors.strip()} {log.strip()}")
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5) as probe:
                    if probe.recv(4) == b"SSH-":
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise HostSetupError(f"{self.name}: sshd did not answer on {self.address}:{self.port}")

    def stop(self) -> None:
        """Kill everything in this host's namespaces and remove the namespace and link."""
        _remove_slot(self.netns, self.slot)
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _sshd_config(host: TestHost, authorized_dir: Path) -> str:
    return "\n".join([
        f"Port {host.port}",
        f"Port {host.alt_port}",
        f"HostKey {host.host_key_path}",
        f"PidFile {host.root / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized_dir}/%u",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication yes",
        "PubkeyAuthentication yes",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        # the fixture's directories live under /tmp, which StrictModes rejects
        "StrictModes no",
        "UseDNS no",
        "PrintMotd no",
        "LogLevel VERBOSE",
        "MaxStartups 200",
        "MaxSessions 64",
        "Subsystem sftp internal-sftp",
        "",
    ])


@dataclass
class TestCluster:
    """K running test hosts and what an operator needs to reach them."""

    __test__ = False  # not a pytest test class

    base: Path
    hosts: list[TestHost]
    client_key: Path
    known_hosts: Path
    ops_user: str
    ops_password: str
    install_user: str = INSTALL_USER

    def home(self, tmp: Path) -> Path:
        """Write an operator HOME (.ssh/id_ed25519 and known_hosts) under tmp and return it."""
        ssh_dir = tmp / ".ssh"
        ssh_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        key = ssh_dir / "id_ed25519"
        shutil.copyfile(self.client_key, key)
        key.chmod(0o600)
        shutil.copyfile(self.client_key.with_suffix(".pub"), ssh_dir / "id_ed25519.pub")
        shutil.copyfile(self.known_hosts, ssh_dir / "known_hosts")
        return tmp

    def host(self, name: str) -> TestHost:
        """The host called `name`."""
        for candidate in self.hosts:
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    def close(self) -> None:
        """Stop every host and remove the cluster's files."""
        for host in self.hosts:
            host.stop()
        self.hosts = []
        shutil.rmtree(self.base, ignore_errors=True)
        with _state_lock():
            if not [ns for ns, _, owner in _our_namespaces() if _pid_alive(owner)]:
                SUDOERS_FILE.unlink(missing_ok=True)

    def __enter__(self) -> TestCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _keygen(path: Path, comment: str) -> None:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def _public_key(path: Path) -> str:
    """'type base64' of a public key file, without the comment."""
    fields = path.with_suffix(".pub").read_text().split()
    return f"{fields[0]} {fields[1]}"


def _prepare_host(base: Path, index: int, slot: int, netns: str, java_version: str) -> TestHost:
    """Lay out one host's files and network; sshd is not started yet."""
    name = f"host{index}"
    root = base / name
    root.mkdir(mode=0o755)
    opt_dirs: dict[str, Path] = {}
    for mount in _OPT_MOUNTS:
        source = root / f"opt-{mount}"
        source.mkdir(mode=0o755)
        if mount == "sequoiacm":
            shutil.chown(source, INSTALL_USER, INSTALL_GROUP)
        # /opt/backup and /opt/upgrade stay root's, as on a real host: scmflow refuses to
        # make its run dirs under a directory another user could swap things in.
        opt_dirs[f"/opt/{mount}"] = source
    # The JDK SequoiaCM runs on: a sandbox JDK, never this machine's own java.
    opt_dirs["/opt/java"] = make_jdk(root / "opt-java", java_version)
    decoy = make_decoy_java(root / "decoy-bin")
    profile = root / "profile"
    system_profile = Path("/etc/profile")
    text = system_profile.read_text() if system_profile.exists() else ""
    profile.write_text(text + "\nexport JAVA_HOME=/opt/java\n")
    profile.chmod(0o644)
    root_home = root / "root-home"
    root_home.mkdir(mode=0o700)
    skeleton = Path("/etc/skel")
    for dotfile in (".bashrc", ".profile"):
        if (skeleton / dotfile).is_file():
            shutil.copy(skeleton / dotfile, root_home / dotfile)
    key_path = root / "ssh_host_ed25519_key"
    _keygen(key_path, name)
    host = TestHost(
        name=name,
        slot=slot,
        netns=netns,
        address=f"10.251.{slot}.2",
        port=22,
        alt_port=ALT_PORT,
        root=root,
        host_key_path=key_path,
        host_public_key=_public_key(key_path),
        opt_dirs=opt_dirs,
        profile=profile,
        root_home=root_home,
        sshd_log=root / "sshd.log",
        decoy_java=decoy,
    )
    veth, peer = f"scmv{slot}", f"scmp{slot}"
    _run(["ip", "link", "set", peer, "netns", netns])
    _run(["ip", "addr", "add", f"10.251.{slot}.1/30", "dev", veth])
    _run(["ip", "link", "set", veth, "up"])
    _run(["ip", "route", "add", *_fallback_route(slot)])
    _run(["ip", "-n", netns, "addr", "add", f"{host.address}/30", "dev", peer])
    _run(["ip", "-n", netns, "link", "set", peer, "up"])
    _run(["ip", "-n", netns, "link", "set", "lo", "up"])
    return host


def start_cluster(k: int, *, java_version: str = JDK_VERSION) -> TestCluster:
    """Start k test hosts in parallel, each with a sandbox JDK `java_version` at /opt/java and
    a decoy java first on PATH; the caller must close() the cluster."""
    base = Path(tempfile.mkdtemp(prefix=f"scmflow-hosts-{os.getpid()}-"))
    # sshd reads authorized_keys as the logging-in user, so the tree must be traversable.
    base.chmod(0o755)
    cluster = TestCluster(
        base=base, hosts=[], client_key=base / "id_ed25519", known_hosts=base / "known_hosts",
        ops_user=OPS_USER, ops_password="",
    )
    slots: list[tuple[int, str]] = []
    try:
        with _state_lock():
            remove_stale_hosts()
            cluster.ops_password = ensure_users()
            for _ in range(k):
                slots.append(_claim_slot())
        # sshd's privilege-separation directory; a service manager would normally make it
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        _keygen(cluster.client_key, "scmflow-tests")
        authorized = base / "authorized_keys"
        authorized.mkdir(mode=0o755)
        client_public = cluster.client_key.with_suffix(".pub").read_text()
        for user in ("root", INSTALL_USER, OPS_USER):
            (authorized / user).write_text(client_public)
            (authorized / user).chmod(0o644)
        with ThreadPoolExecutor(max_workers=max(1, k)) as pool:
            futures = [
                pool.submit(_prepare_host, base, index + 1, slot, netns, java_version)
                for index, (slot, netns) in enumerate(slots)
            ]
            cluster.hosts = [future.result() for future in futures]
        for host in cluster.hosts:
            config = host.root / "sshd_config"
            config.write_text(_sshd_config(host, authorized))
            host.start_sshd(config)
        with ThreadPoolExecutor(max_workers=max(1, k)) as pool:
            list(pool.map(lambda h: h.wait_ready(), cluster.hosts))
        cluster.known_hosts.write_text("".join(h.known_hosts_line() for h in cluster.hosts))
    except BaseException:
        for slot, netns in slots:
            _remove_slot(netns, slot)
        cluster.close()
        raise
    return cluster
