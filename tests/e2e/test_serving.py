"""End-to-end: rolling upgrades that keep the cluster serving (issue 19), on three sshd test hosts.

The promise under test: while a service stage runs, a service that ran on several hosts
always has a node answering its health UP (the availability guard), unless the operator
allows an outage; a node that never reports UP fails its pair, which is rolled back; a run
can pause after N verified pairs and be resumed, in whole or for named pairs only.

Every host runs service-center (8810) and gateway (8080); content-server (15000) runs on
the first host only. The tests share one set of hosts (a module fixture) and reinstall
3.1.2 where they need a fresh cluster; each asserts the state it starts from.
A probe thread on the control side asks every node of the multi-host services for its
health every ~50 ms while an upgrade runs, judging each node from outside, over HTTP.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scmflow import sandbox
from scmflow.journalreader import read_journal
from scmflow.sandbox import NodeSpec, Topology
from tests.e2e.sandbox_cluster import (
    Scenario,
    header_fields,
    outer_install,
    pair_states,
    resume_args,
)
from tests.hosts import TestCluster, TestHost

pytestmark = pytest.mark.e2e

SC_PORT, GATEWAY_PORT, CONTENT_PORT = 8810, 8080, 15000
# the services that run on every host, and their node's port
MULTI_HOST = {"service-center": SC_PORT, "gateway": GATEWAY_PORT}
# a 3.2.2 node answers DOWN this long after it starts: restarts that run side by side overlap
SLOW_START = 3
PAIRS = 7  # 3 service-center + 3 gateway + 1 content-server


# -- helpers (copied from test_rollback.py / test_contract.py, some adapted) -------------------


def lean_topology(*, content: bool) -> Topology:
    """service-center and gateway; content-server too when `content`."""
    services = ("service-center", "gateway", *(("content-server",) if content else ()))
    nodes = [NodeSpec("service-center", SC_PORT), NodeSpec("gateway", GATEWAY_PORT)]
    if content:
        nodes.append(NodeSpec("content-server", CONTENT_PORT))
    return Topology(services=services, nodes=tuple(nodes))


def verified_count(status: Path) -> int:
    """How many pairs the status file records as verified."""
    return sum(1 for state in pair_states(status).values() if state == "verified")


def records(status: Path) -> list[dict[str, Any]]:
    """Every record of a status file, in order."""
    return list(read_journal(status).records)


def run_results(status: Path) -> list[tuple[str, str]]:
    """(action, result) of every `run` record, in order."""
    return [
        (str(r["detail"].get("action")), str(r["detail"].get("result")))
        for r in records(status)
        if r.get("kind") == "run"
    ]


def no_crash(done: subprocess.CompletedProcess[str]) -> None:
    """Nothing crashed."""
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """`done`, asserted to have exited 0 without an error line."""
    assert done.returncode == 0, done.stdout + done.stderr
    no_crash(done)
    assert not any(line.startswith("[ERROR]") for line in done.stderr.splitlines()), done.stderr
    return done


def new_status(s: Scenario, before: set[Path]) -> Path:
    """The one status file written since `before`."""
    (status,) = set(s.status_files()) - before
    return status


def outcome(s: Scenario, status: Path) -> str:
    """The Outcome `scm.py status show` gives the file."""
    done = ok(s.scm("status", "show", str(status)))
    return header_fields(done.stdout)["Outcome"]


def listed_outcome(s: Scenario, status: Path) -> str:
    """The outcome column `scm.py status list` gives the file."""
    done = ok(s.scm("status", "list", "--status-dir", str(s.status_dir)))
    (line,) = [line for line in done.stdout.splitlines() if status.name in line]
    return line.split()[2]


def everywhere(s: Scenario, version: str) -> dict[str, dict[int, str]]:
    """What every host's nodes should answer: all of them, `version`."""
    return {
        h.name: {
            SC_PORT: version,
            GATEWAY_PORT: version,
            **({CONTENT_PORT: version} if i == 0 else {}),
        }
        for i, h in enumerate(s.cluster.hosts)
    }


def max_in_flight(status: Path, service: str) -> int:
    """The most pairs of `service` the status file shows between their first step and verified."""
    in_flight: set[str] = set()
    most = 0
    for r in records(status):
        if r.get("service") != service or r.get("kind") == "probe" or "host" not in r:
            continue
        host = str(r["host"])
        if r.get("kind") == "transition" and r.get("dst") == "verified":
            in_flight.discard(host)
        elif r.get("trigger") == "backup":
            in_flight.add(host)
        most = max(most, len(in_flight))
    return most


# -- the probe ----------------------------------------------------------------------------------

UP, DOWN, UNKNOWN = "up", "down", "unknown"


def node_state(address: str, port: int) -> str:
    """UP when the node answers its health UP; DOWN when it refuses or answers not UP; else UNKNOWN.

    A request that times out proves nothing about the node (this machine is busy): UNKNOWN.
    """
    try:
        answer = sandbox.health(address, port, timeout=3)
    except sandbox.SandboxError as exc:
        return UNKNOWN if isinstance(exc.__cause__, TimeoutError) else DOWN
    return UP if answer.get("status") == "UP" else DOWN


@dataclass
class Probe:
    """Asks every node of each multi-host service for its health, every ~50 ms, from this side."""

    hosts: Sequence[TestHost]
    services: dict[str, int] = field(default_factory=lambda: dict(MULTI_HOST))
    interval: float = 0.05
    # one per sample: service -> host name -> UP/DOWN/UNKNOWN
    samples: list[dict[str, dict[str, str]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def __enter__(self) -> Probe:
        self._thread = threading.Thread(target=self._loop, name="probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)
        if self._error is not None:
            raise AssertionError(f"the probe itself failed: {self._error!r}")

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                sample = {
                    service: {h.name: node_state(h.address, port) for h in self.hosts}
                    for service, port in self.services.items()
                }
                self.samples.append(sample)
                self._stop.wait(self.interval)
        except BaseException as exc:  # noqa: BLE001 - reported by __exit__
            self._error = exc

    def dark(self, service: str) -> list[int]:
        """Samples in which every node of `service` answered, and none of them UP."""
        return [i for i, s in enumerate(self.samples) if all(v == DOWN for v in s[service].values())]

    def unclear(self, service: str) -> list[int]:
        """Samples in which no node of `service` answered UP but some did not answer in time."""
        return [
            i
            for i, s in enumerate(self.samples)
            if UP not in s[service].values() and UNKNOWN in s[service].values()
        ]

    def with_a_node_down(self, service: str) -> list[int]:
        """Samples in which some node of `service` was down."""
        return [i for i, s in enumerate(self.samples) if DOWN in s[service].values()]

    def summary(self) -> str:
        """Enough to judge a failure: counts per service."""
        parts = [
            f"{svc}: {len(self.dark(svc))} dark, {len(self.unclear(svc))} unclear, "
            f"{len(self.with_a_node_down(svc))} with a node down"
            for svc in self.services
        ]
        return f"{len(self.samples)} samples; " + "; ".join(parts)


# -- the shared hosts ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene(
    cluster3: TestCluster, releases: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    """The three hosts of cluster3 for this module; each test installs what it starts from."""
    s = Scenario(cluster=cluster3, releases=releases, work=tmp_path_factory.mktemp("serving"))
    cluster3.home(s.home)
    s.cleanup()
    try:
        yield s
    finally:
        s.cleanup()


def reinstall(s: Scenario, *, slow: bool = False) -> None:
    """Fresh 3.1.2 on every host (content-server on the first only), all nodes answering.

    `slow`: every 3.2.2 node of the multi-host services answers DOWN for SLOW_START
    seconds after it starts.
    """
    s.cleanup()  # also drops the fault switches (they live in the install)
    s.install_all("3.1.2", [lean_topology(content=i == 0) for i in range(len(s.cluster.hosts))])
    s.config()
    if slow:
        for host in s.cluster.hosts:
            for service in MULTI_HOST:
                sandbox.set_fault(
                    outer_install(host), service, "start-slow", version="3.2.2", seconds=SLOW_START
                )
    assert s.running() == everywhere(s, "3.1.2")


def upgrade_under_probe(s: Scenario, *extra: str) -> tuple[subprocess.CompletedProcess[str], Probe, Path]:
    """An unattended upgrade with the probe running all along; its result, the probe, its file."""
    before = set(s.status_files())
    with Probe(s.cluster.hosts) as probe:
        done = s.scm(*s.upgrade_args("3.2.2", "--unattended", *extra))
    no_crash(done)
    return done, probe, new_status(s, before)


# -- the tests ------------------------------------------------------------------------------------


def test_the_plan_shows_the_guard(scene: Scenario) -> None:
    s = scene
    reinstall(s)
    h1 = s.cluster.hosts[0]
    before = set(s.status_files())

    done = ok(
        s.scm(
            *s.upgrade_args(
                "3.2.2", "--dry-run", "--output", "json", "--parallel", "3", "--max-unavailable", "50%"
            )
        )
    )

    stages = {stage["service"]: stage for stage in json.loads(done.stdout)["stages"]}
    addresses = [h.address for h in s.cluster.hosts]
    for service in MULTI_HOST:
        stage = stages[service]
        assert sorted(stage["hosts"]) == sorted(stage["serving_hosts"]) == sorted(addresses), stage
        # 50% of 3 serving hosts is 1 (below --parallel 3 and H - 1 = 2)
        assert stage["at_once"] == 1, stage
        assert stage["keeps_serving"] is True, stage
    content = stages["content-server"]
    assert content["serving_hosts"] == [h1.address], content
    assert content["at_once"] == 1 and content["keeps_serving"] is False, content
    assert stages["gateway"]["printed"] == "GATEWAY"

    done = ok(s.scm(*s.upgrade_args("3.2.2", "--dry-run", "--parallel", "3")))
    assert (
        f"[WARN ] CONTENT_SERVER runs on one host only ({h1.address}): unavailable while it restarts"
    ) in done.stdout, done.stdout
    assert "[INFO ] Stage SERVICE_CENTER: 3 hosts, 2 at once, one node keeps serving" in done.stdout
    assert "[INFO ] Stage GATEWAY: 3 hosts, 2 at once, one node keeps serving" in done.stdout
    assert "[INFO ] Stage CONTENT_SERVER: 1 host, 1 at once, every node may be down at once" in done.stdout
    assert done.stdout.count("runs on one host only") == 1, done.stdout
    # a dry run changes nothing
    assert set(s.status_files()) == before
    assert s.running() == everywhere(s, "3.1.2")


def test_one_node_of_each_service_answers_throughout_the_upgrade(scene: Scenario) -> None:
    s = scene
    reinstall(s, slow=True)

    # --parallel 3 would take every host at once; the guard keeps one serving
    done, probe, status = upgrade_under_probe(s, "--parallel", "3")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "[INFO ] Stage GATEWAY: 3 hosts, 2 at once, one node keeps serving" in done.stdout
    assert "[INFO ] Stage SERVICE_CENTER: 3 hosts, 2 at once, one node keeps serving" in done.stdout
    assert s.running() == everywhere(s, "3.2.2")
    assert set(pair_states(status).values()) == {"verified"}
    # the probe watched long enough, and nodes did go down under it
    assert len(probe.samples) > 20, probe.summary()
    for service in MULTI_HOST:
        assert probe.with_a_node_down(service), probe.summary()
        assert probe.dark(service) == [], probe.summary()
        # a timed-out request is no proof either way; there should hardly be any
        assert len(probe.unclear(service)) <= len(probe.samples) // 10, probe.summary()
        # two hosts did run side by side (the guard's cap, not one at a time)
        assert max_in_flight(status, service) == 2, records(status)


def test_allow_outage_lets_every_node_go_down_and_the_probe_sees_it(scene: Scenario) -> None:
    s = scene
    reinstall(s, slow=True)

    done, probe, status = upgrade_under_probe(s, "--parallel", "3", "--allow-outage")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "[INFO ] Stage GATEWAY: 3 hosts, 3 at once, every node may be down at once" in done.stdout
    assert s.running() == everywhere(s, "3.2.2")
    assert set(pair_states(status).values()) == {"verified"}
    assert len(probe.samples) > 20, probe.summary()
    for service in MULTI_HOST:
        assert max_in_flight(status, service) == 3, records(status)
    # the same probe that saw a node serving throughout above sees the outage here
    assert any(probe.dark(service) for service in MULTI_HOST), probe.summary()


def test_a_node_that_never_reports_up_fails_the_pair_and_is_rolled_back(scene: Scenario) -> None:
    s = scene
    reinstall(s)
    h1, h2, h3 = s.cluster.hosts
    sandbox.set_fault(outer_install(h2), "gateway", "health-down", version="3.2.2")
    before = set(s.status_files())

    # one pair at a time (--parallel 1): exactly the pairs before the failing one are verified
    done = s.scm(*s.upgrade_args("3.2.2", "--unattended", "--start-timeout", "5"))

    no_crash(done)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"[{h2.address}]:GATEWAY: verify failed" in done.stderr, done.stderr
    assert "it was rolled back to 3.1.2" in done.stderr, done.stderr
    status = new_status(s, before)
    recs = records(status)
    fails = [r for r in recs if r.get("kind") == "fail"]
    failed = [(r["host"], r["service"], r["trigger"]) for r in fails]
    assert failed == [(h2.address, "gateway", "verify")], fails
    states = pair_states(status)
    assert states[(h2.address, "gateway")] == "rolled_back"
    # the old node answers again; the pairs verified before keep their new version
    now = s.running()
    assert now[h2.name][GATEWAY_PORT] == "3.1.2", now
    assert now[h1.name][GATEWAY_PORT] == "3.2.2", now
    assert {now[h.name][SC_PORT] for h in s.cluster.hosts} == {"3.2.2"}, now
    assert now[h3.name][GATEWAY_PORT] == "3.1.2", now  # never started
    assert states[(h3.address, "gateway")] == states[(h1.address, "content-server")] == "pending"
    assert run_results(status)[-1] == ("upgrade", "failed")
    # every pair verified before the failure says how long each node took to be healthy
    verified = [
        r
        for r in recs
        if r.get("kind") == "transition" and r.get("trigger") == "verify" and r.get("dst") == "verified"
    ]
    assert {(r["host"], r["service"]) for r in verified} == {
        (h.address, "service-center") for h in s.cluster.hosts
    } | {(h1.address, "gateway")}, verified
    for r in verified:
        healthy = r["detail"]["healthy_after_s"]
        port = MULTI_HOST[r["service"]]
        assert set(healthy) == {str(port)}, r
        assert isinstance(healthy[str(port)], int | float) and healthy[str(port)] >= 0, r


PAUSED_LINE = re.compile(
    r"^\[INFO \] Paused after (\d+) of (\d+) pairs; resume with: "
    r"scm\.py cluster --upgrade --upgrade-status-path (\S+)$",
    re.MULTILINE,
)


def test_pause_then_resume_then_partial_resume(scene: Scenario) -> None:
    s = scene
    reinstall(s)
    h1, h2, h3 = s.cluster.hosts
    before = set(s.status_files())

    # a canary: one pair, then a clean stop
    done = ok(s.scm(*s.upgrade_args("3.2.2", "--unattended", "--pause-after", "1")))
    status = new_status(s, before)
    paused = (
        f"[INFO ] Paused after 1 of {PAIRS} pairs; resume with: scm.py cluster --upgrade "
        f"--upgrade-status-path {status}"
    )
    assert paused in done.stdout.splitlines(), done.stdout
    assert PAUSED_LINE.search(done.stdout) is not None, done.stdout
    assert verified_count(status) == 1
    assert pair_states(status)[(h1.address, "service-center")] == "verified"
    assert run_results(status)[-1] == ("upgrade", "paused")
    assert outcome(s, status) == "paused"
    assert listed_outcome(s, status) == "paused"
    now = s.running()
    assert now[h1.name][SC_PORT] == "3.2.2" and now[h2.name][SC_PORT] == "3.1.2", now

    # a partial resume: only the named service advances
    done = ok(s.scm(*resume_args(s, status, "--unattended", "--service", "service-center")))
    states = pair_states(status)
    assert {k: v for k, v in states.items() if k[1] == "service-center"} == {
        (h.address, "service-center"): "verified" for h in s.cluster.hosts
    }, states
    assert {v for k, v in states.items() if k[1] != "service-center"} == {"pending"}, states
    now = s.running()
    assert {now[h.name][SC_PORT] for h in s.cluster.hosts} == {"3.2.2"}, now
    assert {now[h.name][GATEWAY_PORT] for h in s.cluster.hosts} == {"3.1.2"}, now
    assert now[h1.name][CONTENT_PORT] == "3.1.2", now
    # the rest is left on purpose: the file reads paused, not failed
    assert outcome(s, status) == "paused"

    # a partial resume by host (names as printed): only host3's gateway advances
    ok(s.scm(*resume_args(s, status, "--unattended", "--host", h3.address, "--service", "GATEWAY")))
    states = pair_states(status)
    assert states[(h3.address, "gateway")] == "verified", states
    assert states[(h1.address, "gateway")] == states[(h2.address, "gateway")] == "pending", states
    now = s.running()
    assert now[h3.name][GATEWAY_PORT] == "3.2.2" and now[h1.name][GATEWAY_PORT] == "3.1.2", now

    # still resumable: a plain resume that pauses again after two more pairs
    done = ok(s.scm(*resume_args(s, status, "--unattended", "--pause-after", "2")))
    assert verified_count(status) == 6, pair_states(status)
    assert run_results(status)[-1] == ("resume", "paused")
    match = PAUSED_LINE.search(done.stdout)
    assert match is not None, done.stdout
    assert match.group(3) == str(status)
    # checked at the end, so that a wrong count does not hide how the rest of the chain went
    second_pause = match.group(0), (int(match.group(1)), int(match.group(2)))
    assert outcome(s, status) == "paused"
    states = pair_states(status)
    assert states[(h1.address, "gateway")] == states[(h2.address, "gateway")] == "verified", states
    assert states[(h3.address, "gateway")] == "verified", states
    assert states[(h1.address, "content-server")] == "pending", states

    # and a plain resume finishes the upgrade
    done = ok(s.scm(*resume_args(s, status, "--unattended")))
    assert "Upgrade service success" in done.stdout
    assert set(pair_states(status).values()) == {"verified"}
    assert run_results(status)[-1] == ("resume", "success")
    assert outcome(s, status) == "success"
    assert s.running() == everywhere(s, "3.2.2")

    # the resume's pause line counts the whole file: 6 of its 7 pairs verified
    line, counts = second_pause
    assert counts == (6, PAIRS), line
