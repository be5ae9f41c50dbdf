"""The test bed: releases, the installed topology and an operator's working dir on the test
hosts, and running scm.py and ssh against them."""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import acct, sampler
from bench.figures import NO_METERS, Meters, measured
from scmflow import sandbox
from scmflow.catalog import Catalog
from scmflow.sandbox import NodeSpec, Topology
from scmflow.sandbox.packs import ships
from tests.e2e.sandbox_cluster import SCM, Scenario
from tests.hosts import TestCluster, TestHost

REPO = Path(__file__).resolve().parents[1]  # scm.py must import this checkout's scmflow
OLD, NEW = "3.1.2", "3.2.2"
FIRST_PORT = 9100
TIME = "/usr/bin/time"


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
