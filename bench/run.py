"""scmflow against plain OpenSSH on real sshd test hosts; prints one `name: ratio` line per figure.

    sudo .venv/bin/python bench/run.py [--hosts 8] [--scale-hosts 32] [--pad-mb 200] [--repeat 3]

Needs root (tests/hosts.py gives each host its own network and mount namespace and sshd),
OpenSSH's ssh, scp and sshd, and the dev virtualenv. Figures, each scmflow / the baseline:

  send_1_host       distribute() of a --pad-mb release to one host / one `scp` of the same files
  send_H_hosts      the same to all H hosts / H `scp` at once
  upgrade_H_p1      `scm.py cluster --upgrade --unattended --allow-outage --parallel 1`, H hosts x
                    all services / bench/baseline.sh (the same remote steps over ssh, one at a time)
  upgrade_H_all     the same, all H hosts of a stage at once, against the baseline H at a time
  upgrade_S_all     the same with S hosts, all at once
  upgrade_S_p8      S hosts, 8 at a time on both sides
  check_H_vs_1      `--dry-run` (connect, check, plan) of H hosts / of one host
  memory_S_vs_H     peak RSS of the scm.py process upgrading S hosts / H hosts, all at once

Each upgrade figure is followed (on stderr) by a breakdown of both sides' time: scm.py's CPU
by thread and the host agents' CPU (bench/sampler.py), the rest of the hosts' CPU (sshd,
sudo, ctl scripts, nodes), and how long the cores sat idle.

Each line also gives the machine's CPU use, and for a figure the hosts' CPU may bound, the
floor that CPU alone sets (machine CPU seconds / cores, over the baseline): no tool doing
that work on this machine's cores can beat it. --profile adds, per timed run, the CPU of
every command that ended in it (process accounting), which says where that CPU went.

Every connection (scmflow's, and the ControlMaster that scp and the baseline multiplex over)
is opened before the clock starts for sends; upgrades and checks are timed as an operator
sees them (the whole command). Times are medians of --repeat runs (--upgrade-repeat for
upgrades); the hosts share this machine's CPUs with scmflow, so the machine must be idle.
Logins are as root, as in the vendor's upgrade.cfg; each host's /root/.bashrc is the stock
one (/etc/skel) unless --keep-root-bashrc, since a heavy one taxes every command of both sides.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import acct, cgroups, sampler  # noqa: E402
from scmflow import sandbox  # noqa: E402
from scmflow.actions import RemoteLayout  # noqa: E402
from scmflow.catalog import Catalog, load_catalog  # noqa: E402
from scmflow.distribute import distribute  # noqa: E402
from scmflow.fanout import DEFAULT_PARALLEL_SSH  # noqa: E402
from scmflow.plan import Pair  # noqa: E402
from scmflow.release import Release, load_release  # noqa: E402
from scmflow.sandbox import NodeSpec, Topology  # noqa: E402
from scmflow.sandbox.packs import ships  # noqa: E402
from scmflow.session.base import Session  # noqa: E402
from scmflow.session.ssh import connect_all  # noqa: E402
from scmflow.session.targets import SSHOptions, SSHTarget  # noqa: E402
from tests.e2e.sandbox_cluster import SCM, Scenario, outer_install  # noqa: E402
from tests.hosts import TestCluster, TestHost, missing_prerequisite, start_cluster  # noqa: E402

OLD, NEW = "3.1.2", "3.2.2"
BASELINE = Path(__file__).resolve().parent / "baseline.sh"
FIRST_PORT = 9100
TIME = "/usr/bin/time"


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Figure:
    """One printed line: ours / theirs, the raw values, and the target it must meet."""

    name: str
    ours: float
    theirs: float
    labels: tuple[str, str]
    target: float | None
    unit: str = "s"
    detail: str = ""

    @property
    def ratio(self) -> float:
        """ours / theirs."""
        return self.ours / self.theirs if self.theirs else float("inf")

    def line(self) -> str:
        """`name: ratio  (ours x, theirs y; target <= t: ok)`."""
        verdict = ""
        if self.target is not None:
            verdict = f"; target <= {self.target:g}: {'ok' if self.ratio <= self.target else 'MISSED'}"
        raw = f"{self.labels[0]} {self.ours:.3f} {self.unit}, {self.labels[1]} {self.theirs:.3f} {self.unit}"
        detail = f"; {self.detail}" if self.detail else ""
        return f"{self.name}: {self.ratio:.2f}  ({raw}{detail}{verdict})"


def note(message: str) -> None:
    """Progress on stderr; the figures go to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine_cpu_seconds() -> float:
    """CPU seconds all cores of this machine have spent busy since boot (/proc/stat).

    Test hosts, sshd and the sandbox nodes all run on this machine, so the change over a
    run is the whole cost of an upgrade on both sides, which the wall time alone hides.
    """
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_note(busy: float, seconds: float) -> str:
    """`machine CPU 5.1 s (85% of 2 cores)`."""
    cores = os.cpu_count() or 1
    return f"machine CPU {busy:.1f} s ({busy / (seconds * cores):.0%} of {cores} cores)"


def cpu_floor(busy: float) -> float:
    """Seconds that `busy` CPU seconds take at the least on this machine's cores."""
    return busy / (os.cpu_count() or 1)


@dataclass(frozen=True)
class Measured:
    """One command run to completion: its result, wall and machine CPU seconds, and profile."""

    done: subprocess.CompletedProcess[Any]
    seconds: float
    machine_cpu: float
    profile: acct.Profile | None
    command_cpu: float | None = None
    hosts_cpu: float | None = None


@dataclass
class Reading:
    """CPU seconds a block used, once it has ended (None: not measured)."""

    seconds: float | None = None


@dataclass(frozen=True)
class Meters:
    """What each timed run measures beyond its wall time: process accounting into the file
    `account` (--profile), and the CPU of the group `hosts` holding every host's sshd."""

    account: Path | None = None
    hosts: cgroups.CpuGroup | None = None

    def accounting(self) -> AbstractContextManager[acct.Recorder | None]:
        """Process accounting for the block, if asked for."""
        return acct.accounting(self.account) if self.account is not None else nullcontext()

    @contextmanager
    def hosts_cpu(self) -> Iterator[Reading]:
        """The hosts' CPU over the block."""
        reading = Reading()
        before = self.hosts.cpu_seconds() if self.hosts is not None else None
        yield reading
        if self.hosts is not None and before is not None:
            reading.seconds = self.hosts.cpu_seconds() - before


NO_METERS = Meters()


@dataclass
class Block:
    """What `measured` saw over its block; filled in when the block ends."""

    preexec: Callable[[], None]
    seconds: float = 0.0
    machine_cpu: float = 0.0
    command_cpu: float | None = None
    hosts_cpu: float | None = None
    profile: acct.Profile | None = None


@contextmanager
def measured(meters: Meters, name: str) -> Iterator[Block]:
    """Time the block, with the machine's CPU over it, the CPU of the command started with
    `preexec_fn=block.preexec` (and all it starts), the hosts' CPU, and process accounting
    when `meters` asks for it."""
    command = cgroups.make_group(name)
    block = Block(functools.partial(cgroups.join, command))
    try:
        with meters.accounting() as recorder, meters.hosts_cpu() as hosts:
            busy = machine_cpu_seconds()
            started = time.monotonic()
            yield block
            block.seconds = time.monotonic() - started
            block.machine_cpu = machine_cpu_seconds() - busy
        block.command_cpu = command.cpu_seconds() if command is not None else None
        block.hosts_cpu = hosts.seconds
        if recorder is not None:
            block.profile = dataclasses.replace(recorder.profile, machine_cpu=block.machine_cpu)
    finally:
        if command is not None:
            command.remove()


def run_measured(argv: Sequence[str], meters: Meters, **popen: Any) -> Measured:
    """subprocess.run(argv), measured (see `measured`)."""
    with measured(meters, "command") as block:
        done = subprocess.run(argv, preexec_fn=block.preexec, **popen)
    return Measured(done, block.seconds, block.machine_cpu, block.profile, block.command_cpu, block.hosts_cpu)


def note_profile(what: str, profile: acct.Profile | None) -> None:
    """One `profile` line on stderr, when there is a profile."""
    if profile is not None:
        note(f"  profile of {what}: {profile.line()}")


def median_time(action: Callable[[], None], repeat: int) -> float:
    """Median wall time of `repeat` calls."""
    times = []
    for _ in range(repeat):
        started = time.monotonic()
        action()
        times.append(time.monotonic() - started)
    return statistics.median(times)


# --------------------------------------------------------------------------- set-up


@dataclass(frozen=True)
class Releases:
    """The unpacked releases the benchmark uses."""

    old: Path
    new: Path
    big: Path


def build_releases(work: Path, pad_mb: int) -> Releases:
    """3.1.2, 3.2.2, and a 3.2.2 whose service tarballs carry `pad_mb` MB of filler in all."""
    base = work / "releases"
    base.mkdir(mode=0o755)
    return Releases(
        old=sandbox.build_release(base / "old", OLD),
        new=sandbox.build_release(base / "new", NEW),
        big=sandbox.build_release(base / "big", NEW, pad_bytes=pad_mb * 1024 * 1024),
    )


def full_topology(catalog: Catalog) -> Topology:
    """Every service that 3.1.2 ships, one running node per port service, the daemon."""
    services = [s for s in catalog.ordered() if ships(s, OLD)]
    nodes: list[NodeSpec] = []
    for service in services:
        if service.node_kind == "port":
            nodes.append(NodeSpec(service.name, FIRST_PORT + len(nodes)))
        elif service.node_kind == "daemon":
            nodes.append(NodeSpec(service.name, None))
    return Topology(services=tuple(s.name for s in services), nodes=tuple(nodes))


def use_stock_bashrc(cluster: TestCluster) -> None:
    """Give root logins on the hosts Debian's stock .bashrc (in their own mount namespaces)."""
    for host in cluster.hosts:
        host.exec(["mount", "--bind", "/etc/skel/.bashrc", "/root/.bashrc"])


def subset(cluster: TestCluster, count: int) -> TestCluster:
    """The first `count` hosts, as a cluster object (never closed itself)."""
    return dataclasses.replace(cluster, hosts=cluster.hosts[:count])


def scenario(cluster: TestCluster, releases: Releases, work: Path) -> Scenario:
    """An operator's working dir (HOME, upgrade.cfg, status dir) for these hosts."""
    work.mkdir(parents=True)
    s = Scenario(cluster=cluster, releases={OLD: releases.old, NEW: releases.new}, work=work)
    cluster.home(s.home)
    s.config()
    return s


def reinstall(s: Scenario, topology: Topology) -> None:
    """Wipe the hosts and install 3.1.2 with `topology`, nodes running, all hosts at once."""
    s.cleanup()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda h: s.install(h, OLD, topology), s.cluster.hosts))


def check_upgraded(s: Scenario, topology: Topology) -> None:
    """Every node that ran before runs again and reports 3.2.2 (else the run did not count)."""
    expected = {n.port for n in topology.nodes if n.running and n.port is not None}
    for host, ports in s.running().items():
        if set(ports) != expected or any(v != NEW for v in ports.values()):
            raise SystemExit(f"bench: {host} is not upgraded: {ports}")


# --------------------------------------------------------------------------- running things


@dataclass(frozen=True)
class Run:
    """One scm.py run: wall time, and the CPU time and peak RSS of the scm.py process itself."""

    seconds: float
    cpu_seconds: float
    max_rss_mb: float
    code: int
    output: str
    machine_cpu: float = 0.0
    profile: acct.Profile | None = None
    usage: sampler.Usage | None = None
    command_cpu: float | None = None
    hosts_cpu: float | None = None


def run_scm(s: Scenario, args: Sequence[str], meters: Meters = NO_METERS) -> Run:
    """Run scm.py as Scenario.scm does, under /usr/bin/time, measured as `meters` says,
    sampling the CPU of its threads and of the host agents as it goes (bench/sampler.py).

    Not wait4() on a direct child: a child forked from this (large) process starts with our
    RSS as its high-water mark; /usr/bin/time forks scm.py from a small process.
    """
    env = {"HOME": str(s.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        usage_file = Path(tmp) / "usage"
        argv = [TIME, "-f", "%M %U %S", "-o", str(usage_file), sys.executable, str(SCM), *args]
        with measured(meters, "scm") as block:
            with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env=env, cwd=s.work,
                                  preexec_fn=block.preexec) as proc:
                with sampler.sampling(scm_pid(proc.pid)) as seen:
                    out = proc.communicate()[0]
        # the last line: /usr/bin/time puts "Command exited with non-zero status" before it
        rss_kb, user, system = usage_file.read_text().split("\n")[-2].split()
    return Run(
        block.seconds, float(user) + float(system), int(rss_kb) / 1024, proc.returncode,
        out.decode(errors="replace"), block.machine_cpu, block.profile, seen.usage(),
        block.command_cpu, block.hosts_cpu,
    )


def scm_pid(time_pid: int, wait: float = 5.0) -> int:
    """The pid of the scm.py that /usr/bin/time `time_pid` started (once it has)."""
    children = Path(f"/proc/{time_pid}/task/{time_pid}/children")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            listed = children.read_text().split()
        except FileNotFoundError:
            break
        if listed:
            return int(listed[0])
        time.sleep(0.005)
    return time_pid


def scm_ok(s: Scenario, args: Sequence[str], meters: Meters = NO_METERS) -> Run:
    """run_scm that must succeed."""
    run = run_scm(s, args, meters)
    if run.code != 0:
        raise SystemExit(f"bench: scm.py {shlex.join(args)} failed ({run.code}):\n{run.output[-3000:]}")
    return run


def ssh_base(cluster: TestCluster, mux: Path) -> list[str]:
    """ssh/scp options: the cluster's key and known_hosts, multiplexed through `mux`."""
    return ["-i", str(cluster.client_key), "-o", f"UserKnownHostsFile={cluster.known_hosts}",
            "-o", "BatchMode=yes", "-o", f"ControlPath={mux}/%h"]


@contextmanager
def ssh_masters(cluster: TestCluster, hosts: Sequence[TestHost]) -> Iterator[list[str]]:
    """One ControlMaster connection per host, open for the block; yields the ssh options."""
    mux = Path(tempfile.mkdtemp(prefix="scmflow-bench-mux-"))
    options = ssh_base(cluster, mux)
    try:
        for host in hosts:
            subprocess.run(["ssh", *options, "-o", "ControlMaster=yes", "-o", "ControlPersist=yes",
                            "-fN", f"root@{host.address}"], check=True)
        yield options
    finally:
        for host in hosts:
            subprocess.run(["ssh", *options, "-O", "exit", f"root@{host.address}"], capture_output=True)
        shutil.rmtree(mux, ignore_errors=True)


def empty_upgrade_dirs(hosts: Sequence[TestHost]) -> None:
    """Remove everything sent to the hosts' /opt/upgrade and /opt/backup."""
    for host in hosts:
        for key in ("/opt/upgrade", "/opt/backup"):
            for child in host.opt_dirs[key].iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()


# --------------------------------------------------------------------------- 1, 2: package send


def host_pairs(hosts: Sequence[TestHost], topology: Topology, catalog: Catalog) -> dict[str, list[Pair]]:
    """Every service of the topology on every host, as plan pairs."""
    return {
        h.address: [Pair(h.address, s, catalog.get(s).printed, OLD, NEW, ()) for s in topology.services]
        for h in hosts
    }


def time_distribute(
    sessions: dict[str, Session], pairs: dict[str, list[Pair]], release: Release, repeat: int
) -> float:
    """Median time of distribute() into a fresh upgrade dir (connections already open)."""
    hosts = list(pairs)
    runs = iter(range(repeat))

    def send() -> None:
        n = next(runs)
        layout = RemoteLayout(
            install_path="/opt/sequoiacm", install_user="scmadmin",
            upgrade_dir=f"/opt/upgrade/bench/send-{n}", backup_dir=f"/opt/backup/bench/send-{n}",
        )
        distribute(
            {h: sessions[h] for h in hosts}, pairs, release, layout,
            login_users=dict.fromkeys(hosts, "root"), fresh=True, parallel=16,
            on_host_start=lambda host: None,
        )

    return median_time(send, repeat)


def time_scp(options: list[str], files: dict[str, list[Path]], repeat: int) -> float:
    """Median time of `ssh mkdir` then one scp per host, all hosts at once, into a fresh directory."""
    timings = []
    for n in range(repeat):
        target = f"/opt/upgrade/scp-{n}"
        started = time.monotonic()
        copies = [
            subprocess.Popen(
                f"ssh {shlex.join(options)} root@{host} 'mkdir -p {target}' && "
                f"scp -q {shlex.join(options)} {shlex.join(map(str, paths))} root@{host}:{target}/",
                shell=True,
            )
            for host, paths in files.items()
        ]
        if any(c.wait() != 0 for c in copies):
            raise SystemExit("bench: scp failed")
        timings.append(time.monotonic() - started)
    return statistics.median(timings)


def measure_sends(
    cluster: TestCluster, hosts: Sequence[TestHost], releases: Releases, work: Path, repeat: int
) -> tuple[float, float]:
    """(scmflow, scp) median seconds to send every host the big release's packages."""
    catalog = load_catalog()
    topology = full_topology(catalog)
    release = load_release(releases.big, catalog, topology.services, work_dir=work / "big-nonservice")
    pairs = host_pairs(hosts, topology, catalog)
    files = {h: sorted({release.package_for(p.service).path for p in ps}) for h, ps in pairs.items()}
    options = SSHOptions(
        known_hosts=(cluster.known_hosts,), key_filenames=(cluster.client_key,), use_agent=False
    )
    sessions = connect_all([SSHTarget(h.address) for h in hosts], options)
    try:
        ours = time_distribute(sessions, pairs, release, repeat)
    finally:
        for session in sessions.values():
            session.close()
    empty_upgrade_dirs(hosts)
    with ssh_masters(cluster, hosts) as ssh_options:
        theirs = time_scp(ssh_options, files, repeat)
    empty_upgrade_dirs(hosts)
    return ours, theirs


# --------------------------------------------------------------------------- 3: full upgrade


def baseline_plan(hosts: Sequence[TestHost], topology: Topology, release: Release, catalog: Catalog) -> str:
    """bench/baseline.sh's plan: one line per pair, stage by stage (service by service)."""
    lines = []
    for index, service in enumerate(catalog.ordered()):
        if service.name not in topology.services:
            continue
        nodes = [n for n in topology.nodes_of(service.name) if n.running]
        ports = " ".join(str(n.port) for n in nodes if n.port is not None)
        daemon = "1" if any(n.port is None for n in nodes) else "0"
        for host in hosts:
            fields = [
                f"{index:02d}", host.address, service.name, service.dir, service.ctl or "",
                " ".join(service.stop_args), ports, daemon, str(release.package_for(service.name).path),
                " ".join(service.replace), service.version_file, NEW,
            ]
            lines.append("|".join(fields))
    return "\n".join(lines) + "\n"


def run_baseline(s: Scenario, plan: Path, parallel: int, meters: Meters = NO_METERS) -> Run:
    """bench/baseline.sh's wall and machine CPU seconds (and profile); it must succeed."""
    argv = ["bash", str(BASELINE), str(plan), str(parallel), str(s.cluster.client_key),
            str(s.cluster.known_hosts)]
    m = run_measured(argv, meters, capture_output=True, text=True)
    if m.done.returncode != 0:
        output = m.done.stdout[-2000:] + m.done.stderr[-2000:]
        raise SystemExit(f"bench: baseline failed ({m.done.returncode}):\n{output}")
    return Run(m.seconds, 0.0, 0.0, 0, "", m.machine_cpu, m.profile, None, m.command_cpu, m.hosts_cpu)


@dataclass(frozen=True)
class Timing:
    """Medians over repeated runs of one thing, and the last run's profile and CPU breakdown."""

    seconds: float
    cpu_seconds: float
    machine_cpu: float
    profile: acct.Profile | None = None
    connections: tuple[int, ...] = ()
    max_rss_mb: float = 0.0
    usage: sampler.Usage | None = None
    command_cpu: float | None = None
    hosts_cpu: float | None = None

    def breakdown(self) -> str:
        """Where the run's time went: the control side, the hosts (the agents among them), and
        the time left over, which is waiting (or CPU that other work on this machine took)."""
        cores = os.cpu_count() or 1
        parts = [f"wall {self.seconds:.1f} s"]
        if self.command_cpu is not None:
            parts.append(f"control side CPU {self.command_cpu:.1f} s")
        if self.usage is not None:
            parts.append(self.usage.line())
        if self.hosts_cpu is not None:
            parts.append(f"hosts CPU {self.hosts_cpu:.1f} s (sshd, sudo, agents, ctl, nodes)")
        if self.command_cpu is not None and self.hosts_cpu is not None:
            busy = self.command_cpu + self.hosts_cpu
            parts.append(f"both sides {busy:.1f} s = at least {busy / cores:.1f} s on {cores} cores, "
                         f"so {max(self.seconds - busy / cores, 0.0):.1f} s or more of waiting")
        else:
            parts.append(f"machine CPU {self.machine_cpu:.1f} s")
        return "; ".join(parts)


def medians(runs: Sequence[Run], connections: Sequence[int] = ()) -> Timing:
    """Median wall, scm.py CPU and machine CPU of `runs`; the last one's profile, RSS and usage."""
    return Timing(
        statistics.median(r.seconds for r in runs),
        statistics.median(r.cpu_seconds for r in runs),
        statistics.median(r.machine_cpu for r in runs),
        runs[-1].profile,
        tuple(connections),
        max(r.max_rss_mb for r in runs),
        runs[-1].usage,
        _median_of(r.command_cpu for r in runs),
        _median_of(r.hosts_cpu for r in runs),
    )


def _median_of(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def time_upgrade(
    s: Scenario, topology: Topology, parallel: int, repeat: int, meters: Meters
) -> Timing:
    """An unattended upgrade from a fresh 3.1.2 install; also SSH connections per host.

    `--allow-outage`: the baseline takes `parallel` hosts of a stage at once whatever they
    serve, and so does scmflow here (its availability guard would keep one node serving).
    `--parallel-ssh`: at least `parallel`, since the baseline opens every host's connection
    and sends every host its packages at once (scmflow's default is 16 hosts at a time).
    """
    runs = []
    connections: list[int] = []
    for _ in range(repeat):
        reinstall(s, topology)
        before = [h.accepted_connections() for h in s.cluster.hosts]
        args = s.upgrade_args(NEW, "--unattended", "--allow-outage", "--parallel", str(parallel),
                              "--parallel-ssh", str(max(parallel, DEFAULT_PARALLEL_SSH)))
        runs.append(scm_ok(s, args, meters))
        connections = [h.accepted_connections() - b for h, b in zip(s.cluster.hosts, before, strict=True)]
        check_upgraded(s, topology)
    return medians(runs, connections)


def time_baseline(
    s: Scenario, topology: Topology, plan: Path, parallel: int, repeat: int, meters: Meters
) -> Timing:
    """bench/baseline.sh from a fresh 3.1.2 install."""
    runs = []
    for _ in range(repeat):
        reinstall(s, topology)
        runs.append(run_baseline(s, plan, parallel, meters))
        check_upgraded(s, topology)
    return medians(runs)


@dataclass(frozen=True)
class UpgradeCase:
    """One upgrade figure: H hosts, scmflow and the baseline each `parallel` pairs at a time."""

    hosts: int
    parallel: int
    target: float | None

    @property
    def name(self) -> str:
        """`upgrade_8_p1`, `upgrade_32_all`."""
        at_once = "all" if self.parallel >= self.hosts else f"p{self.parallel}"
        return f"upgrade_{self.hosts}_{at_once}"


def upgrade_cases(hosts: int, scale: int) -> list[UpgradeCase]:
    """H hosts one at a time and all at once; S hosts all at once and 8 at a time."""
    cases = [UpgradeCase(hosts, 1, 1.1), UpgradeCase(hosts, hosts, 1.1)]
    if scale:
        cases.append(UpgradeCase(scale, scale, 1.2))
    if scale > 8:
        cases.append(UpgradeCase(scale, 8, None))
    return cases


def measure_upgrade(
    s: Scenario, case: UpgradeCase, topology: Topology, release: Release, repeat: int,
    meters: Meters,
) -> tuple[Figure, Timing]:
    """scmflow and the baseline side by side for `case`; the figure and scmflow's timing."""
    catalog = load_catalog()
    plan = s.work / "baseline.plan"
    plan.write_text(baseline_plan(s.cluster.hosts, topology, release, catalog))
    theirs = time_baseline(s, topology, plan, case.parallel, repeat, meters)
    note_profile(f"baseline, {case.name}", theirs.profile)
    ours = time_upgrade(s, topology, case.parallel, repeat, meters)
    note_profile(f"scmflow, {case.name}", ours.profile)
    note(f"  breakdown of scmflow, {case.name}: {ours.breakdown()}")
    note(f"  breakdown of the baseline, {case.name}: {theirs.breakdown()}")
    figure = Figure(
        case.name, ours.seconds, theirs.seconds,
        (f"scmflow --parallel {case.parallel}", f"baseline {case.parallel} at a time"), case.target,
        detail=f"scm.py's own CPU {ours.cpu_seconds:.2f} s, peak RSS {ours.max_rss_mb:.0f} MB; "
               f"{cpu_note(ours.machine_cpu, ours.seconds)} vs "
               f"{cpu_note(theirs.machine_cpu, theirs.seconds)}",
    )
    return figure, ours


# --------------------------------------------------------------------------- 4: check + plan


def time_check(s: Scenario, repeat: int, meters: Meters) -> Timing:
    """`--dry-run` (connect, check, plan, print)."""
    return medians([scm_ok(s, s.upgrade_args(NEW, "--dry-run"), meters) for _ in range(repeat)])


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=8, help="H: the send, check and upgrade figures' hosts")
    parser.add_argument("--scale-hosts", type=int, default=32, help="S: the scale figures' hosts (0: skip)")
    parser.add_argument("--pad-mb", type=int, default=200, help="size of the release sent by send_*")
    parser.add_argument("--repeat", type=int, default=3, help="runs per send and check figure")
    parser.add_argument("--upgrade-repeat", type=int, default=1, help="runs per upgrade figure")
    parser.add_argument("--keep-root-bashrc", action="store_true", help="log in with /root/.bashrc as it is")
    parser.add_argument("--only", default="send,check,upgrade,scale", help="figures to measure")
    parser.add_argument("--profile", action="store_true",
                        help="print the CPU of every command that ended in each timed run (acct(2))")
    return parser.parse_args(argv)


def measure(cluster: TestCluster, args: argparse.Namespace, work: Path, meters: Meters) -> list[Figure]:
    """Every figure asked for, in order; each is printed to stderr as soon as it is known."""
    only = set(args.only.split(","))
    h = args.hosts
    hosts = cluster.hosts[:h]
    releases = build_releases(work, args.pad_mb if "send" in only else 0)
    note(f"releases built in {work / 'releases'}")
    figures: list[Figure] = []

    def add(figure: Figure) -> None:
        figures.append(figure)
        note(figure.line())

    if "send" in only:
        ours, theirs = measure_sends(cluster, hosts[:1], releases, work, args.repeat)
        add(Figure("send_1_host", ours, theirs, ("scmflow", "scp"), 1.5))
        ours, theirs = measure_sends(cluster, hosts, releases, work, args.repeat)
        add(Figure(f"send_{h}_hosts", ours, theirs, ("scmflow", f"{h} x scp"), 1.5))
    catalog = load_catalog()
    topology = full_topology(catalog)
    if "check" in only:
        full = scenario(subset(cluster, h), releases, work / "check")
        reinstall(full, topology)
        one = scenario(subset(cluster, 1), releases, work / "one")
        many = time_check(full, args.repeat, meters)
        single = time_check(one, args.repeat, meters)
        add(Figure(f"check_{h}_vs_1", many.seconds, single.seconds, (f"{h} hosts", "1 host"), 2.0,
                   detail=f"scm.py's own CPU {many.cpu_seconds:.2f} s vs {single.cpu_seconds:.2f} s; "
                          f"{cpu_note(many.machine_cpu, many.seconds)} vs "
                          f"{cpu_note(single.machine_cpu, single.seconds)}; "
                          f"floor set by CPU {cpu_floor(many.machine_cpu) / single.seconds:.2f}"))
        note_profile(f"check, {h} hosts", many.profile)
        note_profile("check, 1 host", single.profile)
    cases = [c for c in upgrade_cases(h, args.scale_hosts)
             if ("upgrade" in only and c.hosts == h) or ("scale" in only and c.hosts != h)]
    if not cases:
        return figures
    release = load_release(releases.new, catalog, topology.services, work_dir=work / "new-nonservice")
    all_at_once: dict[int, Timing] = {}
    for case in cases:
        s = scenario(subset(cluster, case.hosts), releases, work / case.name)
        figure, timing = measure_upgrade(s, case, topology, release, args.upgrade_repeat, meters)
        add(figure)
        if case.parallel >= case.hosts:
            all_at_once[case.hosts] = timing
    if len(all_at_once) == 2:
        (small, small_run), (large, large_run) = sorted(all_at_once.items())
        add(Figure(f"memory_{large}_vs_{small}", large_run.max_rss_mb, small_run.max_rss_mb,
                   (f"{large} hosts", f"{small} hosts"), 1.5, unit="MB",
                   detail="peak RSS of scm.py upgrading all hosts at once"))
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    """Bring up the hosts, measure, print the figures; 1 when a target was missed."""
    args = parse_args(argv)
    reason = missing_prerequisite()
    if reason is not None:
        print(f"bench: test hosts cannot run here: {reason}", file=sys.stderr)
        return 2
    count = max(args.hosts, args.scale_hosts if "scale" in args.only else 0)
    work = Path(tempfile.mkdtemp(prefix="scmflow-bench-"))
    work.chmod(0o755)
    note(f"starting {count} test hosts")
    cluster = start_cluster(count)
    hosts = cgroups.make_group("hosts")
    try:
        if hosts is not None:
            for host in cluster.hosts:
                hosts.add(host.sshd_pid)
        if not args.keep_root_bashrc:
            use_stock_bashrc(cluster)
        meters = Meters(work / "acct" if args.profile else None, hosts)
        figures = measure(cluster, args, work, meters)
    finally:
        if hosts is not None:
            hosts.remove()
        for host in cluster.hosts:
            sandbox.kill_nodes(outer_install(host))
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    for figure in figures:
        print(figure.line())
    return 1 if any(f.target is not None and f.ratio > f.target for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
