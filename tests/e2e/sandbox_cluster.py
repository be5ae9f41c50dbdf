"""A sandbox SequoiaCM installed on real SSH test hosts, and the operator's CLI run against it."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from scmflow import sandbox
from scmflow.journalreader import read_journal
from scmflow.replay import replay
from scmflow.sandbox import NodeSpec, Topology
from tests.hosts import INSTALL_GROUP, INSTALL_USER, TestCluster, TestHost

REPO = Path(__file__).resolve().parents[2]
SCM = REPO / "scm.py"
INSIDE_INSTALL = Path("/opt/sequoiacm")
INSIDE_JAVA = Path("/opt/java")
CONTENT = "sequoiacm-content"
# Customer files as customers leave them: not the installer's 0644/0755.
CUSTOMER_MODES = {
    "lib/hbase_transwarp": 0o750,
    "lib/hbase_transwarp/hbase-client-transwarp-5.2.3.jar": 0o640,
    "lib/hdfs_transwarp/hadoop-hdfs-transwarp-5.2.3.jar": 0o600,
}


def install_owner() -> tuple[int, int]:
    """(uid, gid) of a real install made with InstallUserGroup: scmadmin:scmadmin_group."""
    return pwd.getpwnam(INSTALL_USER).pw_uid, grp.getgrnam(INSTALL_GROUP).gr_gid


def host_run(host: TestHost) -> sandbox.RunFn:
    """A sandbox RunFn that runs argv inside `host` as the install user."""

    def run(argv: list[str], env: dict[str, str]) -> None:
        pairs = [f"{k}={v}" for k, v in env.items()]
        done = host.exec(["env", *pairs, *argv], user=INSTALL_USER, check=False, timeout=120)
        if done.returncode != 0:
            raise sandbox.SandboxError(f"{host.name}: {argv} failed: {done.stderr.strip()}")

    return run


def outer_install(host: TestHost) -> Path:
    """The host's /opt/sequoiacm as seen from the control machine."""
    return host.opt_dirs["/opt/sequoiacm"]


@dataclass
class Scenario:
    """One cluster state for a test: what is installed where, and how to run the CLI on it."""

    cluster: TestCluster
    releases: Mapping[str, Path]
    work: Path
    topologies: dict[str, Topology] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        """The operator's HOME, with the client key and known_hosts."""
        return self.work / "home"

    @property
    def status_dir(self) -> Path:
        """Where this scenario's status files go."""
        return self.work / "status"

    def install(
        self, host: TestHost, version: str, topology: Topology, *, customer_jars: bool = False
    ) -> None:
        """Install `version` with `topology` on `host` and start its running nodes.

        The tree belongs to scmadmin:scmadmin_group; customer jars get customers' modes.
        """
        self.install_all(version, [topology], hosts=[host], customer_jars=customer_jars)

    def install_all(
        self,
        version: str,
        topologies: Topology | Sequence[Topology],
        *,
        hosts: Sequence[TestHost] | None = None,
        customer_jars: bool | Sequence[bool] = False,
    ) -> None:
        """`install` on each of `hosts` (default: every host of the cluster), the hosts' nodes
        started at the same time, each host's in service order as `install` starts them.

        `topologies` and `customer_jars` are one for every host or one per host.
        """
        targets = list(self.cluster.hosts if hosts is None else hosts)
        per_host = [topologies] * len(targets) if isinstance(topologies, Topology) else list(topologies)
        jars = [customer_jars] * len(targets) if isinstance(customer_jars, bool) else list(customer_jars)
        if not len(per_host) == len(jars) == len(targets):
            raise ValueError("give one topology and one customer_jars per host, or one for all")
        for host, topology, with_jars in zip(targets, per_host, jars, strict=True):
            target = outer_install(host)
            sandbox.install(
                self.releases[version],
                target,
                topology,
                owner=install_owner(),
                customer_jars=with_jars,
            )
            if with_jars:
                for rel, mode in CUSTOMER_MODES.items():
                    (target / CONTENT / rel).chmod(mode)

        def start(host: TestHost, topology: Topology) -> None:
            sandbox.start_topology(INSIDE_INSTALL, topology, java_home=INSIDE_JAVA, run=host_run(host))

        if len(targets) == 1:
            start(targets[0], per_host[0])
        else:
            # each host's starts wait on subprocesses: starting the hosts side by side uses
            # both cores and changes nothing a host sees
            with ThreadPoolExecutor(max_workers=len(targets)) as pool:
                for future in [pool.submit(start, h, t) for h, t in zip(targets, per_host, strict=True)]:
                    future.result()
        for host, topology in zip(targets, per_host, strict=True):
            self.topologies[host.name] = topology

    def config(
        self,
        *,
        user: str = "root",
        password: str = "",
        services: str | None = None,
        install_group: str | None = None,
    ) -> Path:
        """Write an upgrade.cfg for every host of the cluster and return its path.

        `install_group` adds the InstallUserGroup column real configs carry.
        """
        rows = "\n".join(f"{h.address}, 22, {user}, {password}, /opt/java" for h in self.cluster.hosts)
        service_line = f"service={services}" if services else "#service="
        install = "InstallPath, InstallUser\n/opt, scmadmin"
        if install_group:
            install = f"InstallPath, InstallUser, InstallUserGroup\n/opt, scmadmin, {install_group}"
        text = (
            f"[installconfig]\n{install}\n\n"
            "[host]\nHostName, SshPort, User, Password, JavaHome\n"
            f"{rows}\n\n[config]\n{service_line}\n"
            "upgradePackPath=/opt/upgrade/sequoiacm\nbackupPath=/opt/backup/sequoiacm\n"
        )
        path = self.work / "upgrade.cfg"
        path.write_text(text)
        return path

    def scm(
        self,
        *args: str,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """Run `scm.py` as the operator would (HOME with the key and known_hosts)."""
        full_env = {
            "HOME": str(self.home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(REPO),
            **(env or {}),
        }
        return subprocess.run(
            [sys.executable, str(SCM), *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            cwd=self.work,
        )

    def upgrade_args(self, version: str = "3.2.2", *extra: str) -> list[str]:
        """`cluster --upgrade` arguments for this scenario's config and release."""
        return [
            "cluster",
            "--upgrade",
            "--upgrade-conf",
            str(self.work / "upgrade.cfg"),
            "--release-dir",
            str(self.releases[version]),
            "--status-dir",
            str(self.status_dir),
            *extra,
        ]

    def status_files(self) -> list[Path]:
        """Status files written so far, oldest first."""
        if not self.status_dir.is_dir():
            return []
        return sorted(self.status_dir.glob("upgrade_status_*"))

    def digests(self) -> dict[str, str]:
        """Tree digest of every host's install (runtime files ignored)."""
        return {h.name: sandbox.tree_digest(outer_install(h)) for h in self.cluster.hosts}

    def running(self) -> dict[str, dict[int, str]]:
        """Per host, each port that answers /health and the version it reports."""
        out: dict[str, dict[int, str]] = {}
        for host in self.cluster.hosts:
            ports: dict[int, str] = {}
            for node in self.topologies.get(host.name, Topology(services=())).nodes:
                if node.port is None:
                    continue
                try:
                    ports[node.port] = str(sandbox.health(host.address, node.port, timeout=2)["version"])
                except Exception:  # noqa: BLE001 - a node that does not answer is simply not running
                    continue
            out[host.name] = ports
        return out

    def daemon_running(self, host: TestHost) -> bool:
        """Whether the host's daemon runs, asked through its own scmd.sh."""
        done = host.exec(
            ["env", f"JAVA_HOME={INSIDE_JAVA}", f"{INSIDE_INSTALL}/daemon/bin/scmd.sh", "status"],
            user=INSTALL_USER,
            check=False,
        )
        return done.returncode == 0

    def version_on(self, host: TestHost, rel_glob: str) -> list[str]:
        """Names of files matching a glob under the host's install."""
        return sorted(p.name for p in outer_install(host).glob(rel_glob))

    def cleanup(self) -> None:
        """Kill every node of every host and empty their /opt dirs."""
        for host in self.cluster.hosts:
            sandbox.kill_nodes(outer_install(host))
            for key in ("/opt/sequoiacm", "/opt/backup", "/opt/upgrade"):
                base = host.opt_dirs[key]
                for child in base.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        time.sleep(0.05)


def standard_topology(ports: Sequence[int], *, stopped_gateway: bool = True) -> Topology:
    """A realistic host: cloud services, config, schedule, content, om, daemon, scmsystools."""
    sc, auth, gw, gw2, admin, conf, sched, content, om = ports[:9]
    nodes = [
        NodeSpec("service-center", sc),
        NodeSpec("auth-server", auth),
        NodeSpec("gateway", gw),
        NodeSpec("gateway", gw2, running=not stopped_gateway),
        NodeSpec("admin-server", admin),
        NodeSpec("config-server", conf),
        NodeSpec("schedule-server", sched),
        NodeSpec("content-server", content),
        NodeSpec("om-server", om),
        NodeSpec("daemon", None),
    ]
    services = (
        "service-center",
        "auth-server",
        "gateway",
        "admin-server",
        "config-server",
        "schedule-server",
        "content-server",
        "om-server",
        "daemon",
    )
    return Topology(services=services, nodes=tuple(nodes))


STANDARD_PORTS = (8810, 8830, 8080, 8081, 8870, 8840, 8860, 15000, 9980)


# --- the operator's command lines, shared by the end-to-end tests ---------------------------


def small_topology() -> Topology:
    """A lean host: service-center, two gateways (8081 stopped), content-server, daemon."""
    return Topology(
        services=("service-center", "gateway", "content-server", "daemon"),
        nodes=(
            NodeSpec("service-center", 8810),
            NodeSpec("gateway", 8080),
            NodeSpec("gateway", 8081, running=False),
            NodeSpec("content-server", 15000),
            NodeSpec("daemon", None),
        ),
    )


def rollback_args(s: Scenario, status: Path, *extra: str) -> list[str]:
    """`cluster --rollback` arguments for one status file."""
    return [
        "cluster",
        "--rollback",
        "--upgrade-status-path",
        str(status),
        "--status-dir",
        str(s.status_dir),
        *extra,
    ]


def resume_args(s: Scenario, status: Path, *extra: str) -> list[str]:
    """`cluster --upgrade` arguments that continue the run a status file records."""
    return [
        "cluster",
        "--upgrade",
        "--upgrade-status-path",
        str(status),
        "--status-dir",
        str(s.status_dir),
        *extra,
    ]


def spawn(s: Scenario, args: list[str]) -> subprocess.Popen[str]:
    """Start `scm.py` in the background, as Scenario.scm runs it."""
    env = {
        "HOME": str(s.home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
    }
    return subprocess.Popen(
        [sys.executable, str(SCM), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=s.work,
    )


def pair_states(status: Path) -> dict[tuple[str, str], str]:
    """Each pair's replayed state."""
    return {key: r.state for key, r in replay(read_journal(status)).items()}


def header_fields(text: str) -> dict[str, str]:
    """The labelled summary of `status show`, continuation lines joined with a space."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  Run "))
    fields: dict[str, str] = {}
    label = ""
    for line in lines[start:]:
        if not line:
            break
        if line.startswith(" " * 12):
            fields[label] += " " + line.strip()
        else:
            label, value = line[:12].strip(), line[12:].strip()
            fields[label] = value
    return fields
