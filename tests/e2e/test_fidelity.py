"""End-to-end fidelity: upgrade and roll back on hosts as hostile as customers' hosts, and
judge the result only from outside, by the reference's facts.

Two test hosts (tests/hosts.py) each hold a sandbox SequoiaCM 3.1.2 owned by
scmadmin:scmadmin_group with customer jars in unusual modes, a JDK 8 at /opt/java and a
decoy OpenJDK 17 first on PATH. One real `scm.py cluster --upgrade` to 3.2.2, then one
`cluster --rollback` from its status file. After each, from the control side:
  - every node that ran before answers GET http://<host>:<port>/internal/v1/health with
    status UP and the expected version, and every node that was stopped stays stopped;
  - after the upgrade, the customer jars (content-server lib/hbase_transwarp/ and
    lib/hdfs_transwarp/) are byte, owner, group and mode identical;
  - after the rollback, each host's whole install tree (read directly from the per-host
    directory bind-mounted as /opt/sequoiacm) equals what it was before the upgrade, owner,
    group and mode included, runtime state aside (named in RUNTIME).
The run happens once per module; each fact is its own test, so a report names every
broken fact, not just the first.
"""

from __future__ import annotations

import grp
import http.client
import json
import pwd
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from scmflow.sandbox import HEALTH_PATH, Topology
from tests.e2e.sandbox_cluster import (
    INSIDE_INSTALL,
    INSIDE_JAVA,
    STANDARD_PORTS,
    Scenario,
    outer_install,
    standard_topology,
)
from tests.hosts import INSTALL_GROUP, INSTALL_USER, TestCluster, TestHost
from tests.treedigest import Digest, describe_diff, subtree, tree_digest

pytestmark = pytest.mark.e2e

OLD, NEW = "3.1.2", "3.2.2"
# Runtime state, the only thing allowed to differ after a rollback: each pack's log/ (node
# logs and pid files, the daemon's pid file) and the sandbox's fault switches.
RUNTIME = ("*/log", ".sandbox-faults")
CUSTOMER_DIRS = ("sequoiacm-content/lib/hbase_transwarp", "sequoiacm-content/lib/hdfs_transwarp")
CONFIG_OPTION = "--spring.config.location="
CONTENT_JAR = "sequoiacm-content/lib/sequoiacm-content-server"

# Health per port: the JSON of a 200 answer, `None` when nothing answers, or the HTTP status
Health = dict[int, Any]


@dataclass
class Journey:
    """What was seen before the upgrade, after it and after the rollback, per host name."""

    scenario: Scenario
    health_before: dict[str, Health] = field(default_factory=dict)
    digest_before: dict[str, Digest] = field(default_factory=dict)
    upgrade: CompletedProcess[str] | None = None
    health_upgraded: dict[str, Health] = field(default_factory=dict)
    digest_upgraded: dict[str, Digest] = field(default_factory=dict)
    cmdlines_upgraded: dict[str, dict[int, tuple[list[str], int]]] = field(default_factory=dict)
    rollback: CompletedProcess[str] | None = None
    health_rolled_back: dict[str, Health] = field(default_factory=dict)
    digest_rolled_back: dict[str, Digest] = field(default_factory=dict)

    @property
    def hosts(self) -> list[TestHost]:
        """The test hosts."""
        return self.scenario.cluster.hosts

    def ran_before(self, host: TestHost) -> list[int]:
        """Ports whose node answered before the upgrade."""
        return sorted(p for p, h in self.health_before[host.name].items() if isinstance(h, dict))


def topologies() -> list[Topology]:
    """host1: gateway 8081 stopped; host2: every node running."""
    return [standard_topology(STANDARD_PORTS), standard_topology(STANDARD_PORTS, stopped_gateway=False)]


def node_health(host: TestHost, port: int) -> Any:
    """GET /internal/v1/health of one node from the control side: the JSON of a 200, None
    when nothing answers, else the HTTP status."""
    conn = http.client.HTTPConnection(host.address, port, timeout=3)
    try:
        conn.request("GET", HEALTH_PATH)
        resp = conn.getresponse()
        body = resp.read()
    except OSError:
        return None
    finally:
        conn.close()
    if resp.status != 200:
        return resp.status
    try:
        return json.loads(body)
    except ValueError:
        return f"not JSON: {body[:80]!r}"


def all_health(s: Scenario) -> dict[str, Health]:
    """Health of every configured port node of every host."""
    return {
        host.name: {
            node.port: node_health(host, node.port)
            for node in s.topologies[host.name].nodes if node.port is not None
        }
        for host in s.cluster.hosts
    }


def digests(s: Scenario) -> dict[str, Digest]:
    """Tree digest of every host's install, runtime state aside."""
    return {h.name: tree_digest(outer_install(h), RUNTIME) for h in s.cluster.hosts}


def cmdlines(health: dict[str, Health]) -> dict[str, dict[int, tuple[list[str], int]]]:
    """(argv, uid) of each answering node's process; test hosts share our PID namespace."""
    out: dict[str, dict[int, tuple[list[str], int]]] = {}
    for name, ports in health.items():
        out[name] = {}
        for port, answer in ports.items():
            if isinstance(answer, dict) and isinstance(answer.get("pid"), int):
                proc = Path(f"/proc/{answer['pid']}")
                try:
                    argv = (proc / "cmdline").read_bytes().decode().rstrip("\0").split("\0")
                    uid = proc.stat().st_uid
                except OSError:
                    continue
                out[name][port] = (argv, uid)
    return out


def output(done: CompletedProcess[str] | None) -> str:
    """A run's output for an assertion message."""
    if done is None:
        return "(did not run)"
    return f"exit {done.returncode}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def journey(
    cluster2: TestCluster, releases: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Journey]:
    """Install, upgrade, roll back, looking at everything in between."""
    s = Scenario(cluster=cluster2, releases=releases, work=tmp_path_factory.mktemp("fidelity"))
    cluster2.home(s.home)
    s.cleanup()
    j = Journey(scenario=s)
    try:
        s.install_all(OLD, topologies(), customer_jars=True)
        s.config(install_group=INSTALL_GROUP)
        j.health_before = all_health(s)
        j.digest_before = digests(s)
        j.upgrade = s.scm(*s.upgrade_args(NEW, "--unattended"))
        j.health_upgraded = all_health(s)
        j.digest_upgraded = digests(s)
        j.cmdlines_upgraded = cmdlines(j.health_upgraded)
        status = s.status_files()
        if status:
            j.rollback = s.scm(
                "cluster", "--rollback", "--upgrade-status-path", str(status[-1]),
                "--status-dir", str(s.status_dir), "--unattended",
            )
            j.health_rolled_back = all_health(s)
            j.digest_rolled_back = digests(s)
        yield j
    finally:
        s.cleanup()


# ---------------------------------------------------------------- the hosts are hostile


def test_hosts_put_a_wrong_java_first_on_path(journey: Journey) -> None:
    for host in journey.hosts:
        login = host.exec(["bash", "-lc", "command -v java; java -version"], user=INSTALL_USER,
                          check=False)
        assert login.stdout.splitlines()[0] in ("/usr/local/bin/java", "/usr/local/sbin/java")
        assert 'openjdk version "17.0.15"' in login.stderr
        jdk = host.exec([f"{INSIDE_JAVA}/bin/java", "-version"], check=False)
        assert jdk.stderr.splitlines()[0] == 'java version "1.8.0_221"'
        profile = host.exec(["bash", "-lc", "echo $JAVA_HOME"], user=INSTALL_USER)
        assert profile.stdout.strip() == str(INSIDE_JAVA)


def test_hosts_root_has_a_home_of_its_own(journey: Journey) -> None:
    # bash started by sshd reads ~/.bashrc: this machine's root's (tool managers, PATH
    # changes) must not run on, or change the python3 of, a host's root.
    skeleton = Path("/etc/skel/.bashrc")
    for host in journey.hosts:
        inside = host.exec(["stat", "-c", "%d:%i", "/root"]).stdout.strip()
        st = Path("/root").stat()
        assert inside != f"{st.st_dev}:{st.st_ino}"
        if skeleton.is_file():
            bashrc = host.exec(["cat", "/root/.bashrc"]).stdout
            assert bashrc == skeleton.read_text()


def test_sandbox_is_installed_as_real_installs_with_a_group(journey: Journey) -> None:
    uid = pwd.getpwnam(INSTALL_USER).pw_uid
    for host in journey.hosts:
        st = outer_install(host).stat()
        assert (st.st_uid, st.st_gid) == (uid, _gid(INSTALL_GROUP))
        digest = journey.digest_before[host.name]
        assert digest["sequoiacm-content/lib/hbase_transwarp"][1] == 0o750
        assert digest["sequoiacm-content/lib/hdfs_transwarp/hadoop-hdfs-transwarp-5.2.3.jar"][1] == 0o600
        assert pwd.getpwuid(uid).pw_gid != _gid(INSTALL_GROUP)  # not the user's primary group


def test_nodes_ran_before_as_the_topology_says(journey: Journey) -> None:
    for host in journey.hosts:
        topology = journey.scenario.topologies[host.name]
        running = sorted(n.port for n in topology.nodes if n.port is not None and n.running)
        assert journey.ran_before(host) == running
        for port in running:
            answer = journey.health_before[host.name][port]
            assert answer["status"] == "UP" and answer["version"] == OLD, (host.name, port, answer)
        stopped = [n.port for n in topology.nodes if n.port is not None and not n.running]
        assert all(journey.health_before[host.name][p] is None for p in stopped)


# ---------------------------------------------------------------- upgrade


def test_upgrade_succeeds(journey: Journey) -> None:
    assert journey.upgrade is not None and journey.upgrade.returncode == 0, output(journey.upgrade)


def test_every_node_that_ran_answers_the_new_version(journey: Journey) -> None:
    wrong = _wrong_versions(journey, journey.health_upgraded, NEW)
    assert not wrong, f"{wrong}\n{output(journey.upgrade)}"


def test_upgraded_nodes_run_the_new_jar_as_the_install_user(journey: Journey) -> None:
    uid = pwd.getpwnam(INSTALL_USER).pw_uid
    problems = []
    for host in journey.hosts:
        for port in journey.ran_before(host):
            seen = journey.cmdlines_upgraded.get(host.name, {}).get(port)
            if seen is None:
                problems.append(f"{host.name}:{port}: no node process")
                continue
            argv, owner = seen
            jar = argv[argv.index("-jar") + 1] if "-jar" in argv else ""
            config = [a for a in argv if a.startswith(CONFIG_OPTION)]
            if not (jar.startswith(f"{INSIDE_INSTALL}/") and jar.endswith(f"-{NEW}.jar")):
                problems.append(f"{host.name}:{port}: jar {jar!r}")
            if not (config and config[-1].endswith(f"/{port}/application.properties")):
                problems.append(f"{host.name}:{port}: config {config}")
            if owner != uid:
                problems.append(f"{host.name}:{port}: runs as uid {owner}, not {INSTALL_USER}")
    assert not problems, "\n".join(problems)


def test_customer_jars_survive_the_upgrade_exactly(journey: Journey) -> None:
    for host in journey.hosts:
        # only an upgraded content-server proves the jars were carried over
        upgraded = journey.digest_upgraded[host.name]
        assert f"{CONTENT_JAR}-{NEW}.jar" in upgraded, (
            f"{host.name}: content-server was not upgraded\n{output(journey.upgrade)}"
        )
        for folder in CUSTOMER_DIRS:
            before = subtree(journey.digest_before[host.name], folder)
            after = subtree(journey.digest_upgraded[host.name], folder)
            assert len(before) == 2, before  # the directory and its jar
            assert after == before, f"{host.name}:{folder}: {describe_diff(before, after)}"


# ---------------------------------------------------------------- rollback


def test_rollback_succeeds(journey: Journey) -> None:
    assert journey.rollback is not None and journey.rollback.returncode == 0, (
        f"upgrade: {output(journey.upgrade)}\nrollback: {output(journey.rollback)}"
    )


def test_every_node_that_ran_answers_the_old_version_after_rollback(journey: Journey) -> None:
    assert journey.rollback is not None, "no rollback ran (no status file)"
    wrong = _wrong_versions(journey, journey.health_rolled_back, OLD)
    assert not wrong, f"{wrong}\n{output(journey.rollback)}"


def test_rollback_restores_the_whole_install_tree(journey: Journey) -> None:
    assert journey.rollback is not None, "no rollback ran (no status file)"
    for host in journey.hosts:
        before = journey.digest_before[host.name]
        after = journey.digest_rolled_back[host.name]
        assert after == before, f"{host.name}: {describe_diff(before, after)}"


def _wrong_versions(journey: Journey, health: dict[str, Health], version: str) -> list[str]:
    """Nodes that ran before and do not answer UP with `version`, or stopped ones that run."""
    wrong = []
    for host in journey.hosts:
        for port, answer in health.get(host.name, {}).items():
            ran = port in journey.ran_before(host)
            if ran and not (
                isinstance(answer, dict) and answer.get("status") == "UP"
                and answer.get("version") == version and answer.get("port") == port
            ):
                wrong.append(f"{host.name}:{port} answers {answer!r}, expected UP {version}")
            if not ran and answer is not None:
                wrong.append(f"{host.name}:{port} was stopped and now answers {answer!r}")
    return wrong


def _gid(group: str) -> int:
    return grp.getgrnam(group).gr_gid


def test_digests_leave_out_runtime_state_only(journey: Journey) -> None:
    """RUNTIME hides each pack's log/ and the fault switches, nothing else."""
    for host in journey.hosts:
        full = tree_digest(outer_install(host))
        left_out = set(full) - set(tree_digest(outer_install(host), RUNTIME))
        assert left_out, "the nodes' pid files and logs should exist"
        assert all(
            rel.split("/")[1:2] == ["log"] or rel.split("/")[0] == ".sandbox-faults"
            for rel in left_out
        ), sorted(left_out)
