"""End-to-end: the operator's contract of `scm.py cluster` on two real sshd test hosts.

Exit codes mean one thing each; a dry run writes nothing; an option means the same in an
upgrade, a resume and a rollback; names are accepted as the tool prints them; a resume
neither undoes an operator's rollback nor trusts a stale picture of the hosts; every run
ends with a closing record; every printed path can be pasted.

Upgrades cost tens of seconds here, so the tests share two runs (module fixtures) on the
same two hosts and run in file order: `failed_run` (a content-server start fails on host1)
serves the tests up to the resumes, which carry that run to its end; `stuck_run` (a
content-server that starts in no version) then reinstalls the hosts for the last two tests.
Each test asserts the state it starts from, so a broken chain names its first broken link.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scmflow import sandbox
from scmflow.errors import JournalError
from scmflow.journalreader import read_journal
from scmflow.replay import replay
from tests.e2e.sandbox_cluster import (
    INSIDE_INSTALL,
    INSIDE_JAVA,
    Scenario,
    host_run,
    outer_install,
    pair_states,
    resume_args,
    rollback_args,
    small_topology,
    spawn,
)
from tests.hosts import TestCluster, TestHost

pytestmark = pytest.mark.e2e

CONTENT_JAR = "sequoiacm-content/lib/sequoiacm-content-server-*.jar"
GATEWAY_JAR = "sequoiacm-cloud/jars/sequoiacm-cloud-gateway-*.jar"
SC_JAR = "sequoiacm-cloud/jars/sequoiacm-cloud-servicecenter-*.jar"
DAEMON_JARS = "daemon/jars"
DRY_RUN = "[INFO ] Dry run: nothing was changed"
ROLLBACK_HINT = (
    "If you want to rollback successfully upgraded services, you need to specify the upgrade "
    "status file, file location:"
)


# -- helpers (copied from test_rollback.py, some adapted) -------------------------------------


def fresh_scenario(cluster: TestCluster, releases: dict[str, Path], work: Path) -> Scenario:
    """Both hosts emptied, then 3.1.2 with the small topology installed and running."""
    s = Scenario(cluster=cluster, releases=releases, work=work)
    cluster.home(s.home)
    s.cleanup()
    for host in cluster.hosts:
        s.install(host, "3.1.2", small_topology())
    s.config()
    return s


def wait_for_new_record(
    s: Scenario, known: set[Path], predicate: Callable[[dict[str, Any]], bool], timeout: float = 120.0
) -> Path:
    """Poll for a status file not in `known` until one of its records satisfies `predicate`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in set(s.status_files()) - known:
            try:
                records = read_journal(path).records
            except JournalError:
                continue
            if any(predicate(r) for r in records):
                return path
        time.sleep(0.05)
    raise AssertionError("no new status file recorded the awaited event")


def run_results(status: Path) -> list[tuple[str, str]]:
    """(action, result) of every `run` record, in order."""
    return [
        (str(r["detail"].get("action")), str(r["detail"].get("result")))
        for r in read_journal(status).records
        if r.get("kind") == "run"
    ]


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The `[ERROR]` lines of a run (stderr), and a check that nothing crashed."""
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert not any(line.startswith("[ERROR]") for line in done.stdout.splitlines()), done.stdout
    return [line for line in done.stderr.splitlines() if line.startswith("[ERROR]")]


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """`done`, asserted to have exited 0 without an error line."""
    assert done.returncode == 0, done.stdout + done.stderr
    assert error_lines(done) == [], done.stderr
    return done


def refused(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """The single `[ERROR]` line of a run that exited 2; it contains every one of `words`."""
    assert done.returncode == 2, done.stdout + done.stderr
    errors = error_lines(done)
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def write_config(s: Scenario, name: str, rows: list[str]) -> Path:
    """An upgrade.cfg like Scenario.config's, with the given host rows."""
    path = s.work / name
    path.write_text(
        "[installconfig]\nInstallPath, InstallUser\n/opt, scmadmin\n\n"
        "[host]\nHostName, SshPort, User, Password, JavaHome\n" + "\n".join(rows) + "\n\n"
        "[config]\n#service=\nupgradePackPath=/opt/upgrade/sequoiacm\nbackupPath=/opt/backup/sequoiacm\n"
    )
    return path


def host_row(host: TestHost) -> str:
    """The config row Scenario.config writes for `host`."""
    return f"{host.address}, 22, root, , /opt/java"


@dataclass(frozen=True)
class Snapshot:
    """What a run that changes nothing must leave as it was, on the control machine."""

    sha256: str
    mtime_ns: int
    status_dir: tuple[str, ...]
    log_dir: tuple[str, ...] | None


def snapshot(s: Scenario, status: Path) -> Snapshot:
    """The status file's bytes and mtime, and the names in the status dir and its sibling log dir."""
    log_dir = status.parent.parent / "log"
    return Snapshot(
        sha256=hashlib.sha256(status.read_bytes()).hexdigest(),
        mtime_ns=status.stat().st_mtime_ns,
        status_dir=tuple(sorted(p.name for p in status.parent.iterdir())),
        log_dir=tuple(sorted(p.name for p in log_dir.iterdir())) if log_dir.is_dir() else None,
    )


def stop_node(host: TestHost, ctl: str, port: int) -> None:
    """Stop one node behind scmflow's back, as an operator would: `<ctl> stop -p PORT` as scmadmin."""
    host_run(host)([str(INSIDE_INSTALL / ctl), "stop", "-p", str(port)], sandbox.java_env(INSIDE_JAVA))


# -- fixtures ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailedRun:
    """An upgrade whose content-server failed to start on host1 (version 3.2.2 only)."""

    s: Scenario
    status: Path
    done: subprocess.CompletedProcess[str]
    before: dict[str, str]  # host digests before the upgrade
    running: dict[str, dict[int, str]]  # nodes answering before the upgrade
    content_before: dict[str, str]  # digest of each host's sequoiacm-content before
    after: dict[str, str]  # host digests right after the failed run


@pytest.fixture(scope="module")
def failed_run(
    cluster2: TestCluster, releases: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FailedRun]:
    """A failed upgrade of the small topology on both hosts; its fault is cleared afterwards."""
    s = fresh_scenario(cluster2, releases, tmp_path_factory.mktemp("contract"))
    try:
        h1 = s.cluster.hosts[0]
        before, running = s.digests(), s.running()
        content = {
            h.name: sandbox.tree_digest(outer_install(h) / "sequoiacm-content") for h in s.cluster.hosts
        }
        sandbox.set_fault(outer_install(h1), "content-server", "start-fail", version="3.2.2")
        try:
            done = s.scm(*s.upgrade_args("3.2.2", "--unattended"))
        finally:
            sandbox.clear_fault(outer_install(h1), "content-server", "start-fail")
        assert done.returncode == 1, done.stdout + done.stderr
        (status,) = s.status_files()
        yield FailedRun(s, status, done, before, running, content, s.digests())
    finally:
        s.cleanup()


# -- 1. exit codes -------------------------------------------------------------------------------


def test_one_case_of_each_exit_code(failed_run: FailedRun) -> None:
    s, status = failed_run.s, failed_run.status
    h1, h2 = s.cluster.hosts

    helped = ok(s.scm("cluster", "--help"))
    table = helped.stdout.split("Exit codes:", 1)[1]
    for code in ("0", "1", "2", "130"):
        assert re.search(rf"^\s+{code}\s+\S", table, re.MULTILINE), table

    # 1: a pair failed; the file records it and that pair is as before on its host
    done = failed_run.done
    errors = error_lines(done)
    assert errors and any(f"[{h1.address}]:CONTENT_SERVER" in e for e in errors), done.stderr
    assert f"{ROLLBACK_HINT}{status}" in done.stdout
    replayed = replay(read_journal(status))
    content = replayed[(h1.address, "content-server")]
    assert content.state == "rolled_back" and content.rolled_back_by == "upgrade"
    assert content.last_error
    assert replayed[(h1.address, "gateway")].state == replayed[(h2.address, "gateway")].state == "verified"
    assert replayed[(h2.address, "content-server")].state == "pending"  # nothing new started
    assert run_results(status)[-1] == ("upgrade", "failed")
    for host in (h1, h2):
        assert (
            sandbox.tree_digest(outer_install(host) / "sequoiacm-content")
            == failed_run.content_before[host.name]
        )
        assert s.version_on(host, CONTENT_JAR) == ["sequoiacm-content-server-3.1.2.jar"]
        assert s.running()[host.name][15000] == "3.1.2"
    after, running = s.digests(), s.running()
    assert after == failed_run.after
    files = set(s.status_files())

    # 0: a dry run, no status file
    dry = ok(s.scm(*s.upgrade_args("3.2.2", "--dry-run")))
    assert DRY_RUN in dry.stdout
    assert set(s.status_files()) == files
    assert s.digests() == after

    # 2: refused before any host changed (an extra host that refuses connections)
    bad = write_config(s, "refused.cfg", [*map(host_row, s.cluster.hosts), "127.0.0.1, 1, root, , /opt/java"])
    args = s.upgrade_args("3.2.2", "--unattended")
    args[args.index("--upgrade-conf") + 1] = str(bad)
    refused(s.scm(*args), "127.0.0.1")
    assert set(s.status_files()) == files
    assert s.digests() == after

    # 130: Ctrl-C while an upgrade runs (of the pairs still at 3.1.2)
    proc = spawn(s, s.upgrade_args("3.2.2", "--unattended"))
    try:
        interrupted = wait_for_new_record(s, files, lambda r: r.get("kind") == "begin")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err
    assert f"{ROLLBACK_HINT}{interrupted}" in out
    assert run_results(interrupted)[-1] == ("upgrade", "interrupted")
    states = pair_states(interrupted)
    assert "pending" in states.values() and set(states.values()) != {"pending"}, states
    # the interrupted run's own file puts the hosts back
    ok(s.scm(*rollback_args(s, interrupted, "--unattended")))
    assert s.digests() == after
    assert s.running() == running
    assert pair_states(status) == {k: r.state for k, r in replayed.items()}  # the failed run's file untouched


# -- 2. dry runs write nothing -------------------------------------------------------------------


def test_dry_runs_write_nothing(failed_run: FailedRun) -> None:
    s, status = failed_run.s, failed_run.status
    intact = status.stat().st_size
    with status.open("ab") as f:
        f.write(b"\x93\xc4")  # a torn last record, as a crash mid-write leaves it
    try:
        assert read_journal(status).torn_tail
        first = snapshot(s, status)
        for args in (
            rollback_args(s, status, "--dry-run", "--unattended"),
            resume_args(s, status, "--dry-run", "--unattended"),
        ):
            done = ok(s.scm(*args))
            assert DRY_RUN in done.stdout
            assert snapshot(s, status) == first
        assert s.digests() == failed_run.after
    finally:
        os.truncate(status, intact)
    assert not read_journal(status).torn_tail


# -- 3. options mean the same everywhere ---------------------------------------------------------


def test_options_mean_the_same_everywhere(failed_run: FailedRun) -> None:
    s, status = failed_run.s, failed_run.status
    first = snapshot(s, status)

    done = ok(s.scm(*resume_args(s, status, "--dry-run", "--unattended")))
    assert (
        "[INFO ] Node start timeout: 300 s, as the run recorded it (--start-timeout changes it)"
        in done.stdout
    )
    assert "start --timeout 300" in done.stdout
    done = ok(s.scm(*resume_args(s, status, "--dry-run", "--unattended", "--start-timeout", "77")))
    assert "[INFO ] Node start timeout: 77 s (--start-timeout; the run recorded 300 s)" in done.stdout
    assert "start --timeout 77" in done.stdout and "--timeout 300" not in done.stdout
    done = ok(s.scm(*s.upgrade_args("3.2.2", "--dry-run", "--start-timeout", "55")))
    assert "start --timeout 55" in done.stdout and "--timeout 300" not in done.stdout

    for action, args in (
        ("rollback", rollback_args(s, status, "--dry-run", "--unattended", "--output", "json")),
        ("resume", resume_args(s, status, "--dry-run", "--unattended", "--output", "json")),
    ):
        done = ok(s.scm(*args))
        document = json.loads(done.stdout)
        assert document["action"] == action
        assert document["status_file"] == str(status)
        assert document["start_timeout"] == 300
        assert document["pairs"], document
        assert all({"host", "service", "state"} <= set(p) for p in document["pairs"])
        assert document["steps"], document
        assert DRY_RUN in done.stderr
        if action == "rollback":
            assert {p["service"] for p in document["pairs"]} == {"service-center", "gateway"}
            assert {p["state"] for p in document["pairs"]} == {"verified"}
        else:
            assert {p["service"] for p in document["pairs"]} == {"content-server", "daemon"}

    # asked on stderr, so stdout stays one JSON document; "n" changes nothing
    done = ok(s.scm(*rollback_args(s, status, "--output", "json"), stdin="n\n"))
    document = json.loads(done.stdout)
    assert document["action"] == "rollback" and "steps" not in document
    assert "Please enter (y/n) confirm:" in done.stderr
    assert "Rollback cancelled, nothing was changed" in done.stderr

    assert snapshot(s, status) == first
    assert s.digests() == failed_run.after


# -- 5. a resume with a config -------------------------------------------------------------------


def test_resume_with_a_config_takes_only_its_passwords(failed_run: FailedRun) -> None:
    s, status = failed_run.s, failed_run.status
    h1, h2 = s.cluster.hosts
    first = snapshot(s, status)
    config = s.work / "upgrade.cfg"

    done = ok(s.scm(*resume_args(s, status, "--upgrade-conf", str(config), "--dry-run", "--unattended")))
    assert (
        f"[INFO ] Resuming the run recorded in {status}; {config} only supplies the SSH passwords"
        in done.stdout
    )
    assert DRY_RUN in done.stdout

    other = write_config(s, "one-host.cfg", [host_row(h1)])
    error = refused(
        s.scm(*resume_args(s, status, "--upgrade-conf", str(other), "--unattended")),
        "is not the config of the run",
        h2.address,
    )
    assert str(other) in error
    assert snapshot(s, status) == first
    assert s.digests() == failed_run.after


# -- 4. names as typed -----------------------------------------------------------------------------


def test_names_are_accepted_as_printed(failed_run: FailedRun) -> None:
    s, status = failed_run.s, failed_run.status
    h1, h2 = s.cluster.hosts
    assert s.digests() == failed_run.after, "the failed run's hosts changed before this test"

    first = snapshot(s, status)
    refused(s.scm(*rollback_args(s, status, "--unattended", "--service", "nosuch")), "nosuch")
    assert snapshot(s, status) == first
    done = ok(s.scm(*s.upgrade_args("3.2.2", "--dry-run", "--service", "GATEWAY,CONTENT_SERVER")))
    assert f"[INFO ] [{h2.address}]:CONTENT_SERVER:3.1.2 to 3.2.2" in done.stdout
    assert DRY_RUN in done.stdout
    assert s.digests() == failed_run.after

    ok(s.scm(*rollback_args(s, status, "--unattended", "--service", "GATEWAY")))
    replayed = replay(read_journal(status))
    for host in (h1, h2):
        assert replayed[(host.address, "gateway")].state == "rolled_back"
        assert replayed[(host.address, "gateway")].rolled_back_by == "rollback"
        assert replayed[(host.address, "service-center")].state == "verified"
        assert s.version_on(host, GATEWAY_JAR) == ["sequoiacm-cloud-gateway-3.1.2.jar"]
        assert s.running()[host.name] == {8810: "3.2.2", 8080: "3.1.2", 15000: "3.1.2"}

    ok(s.scm(*rollback_args(s, status, "--unattended", "--service", "SERVICE_CENTER")))
    states = pair_states(status)
    for host in (h1, h2):
        assert states[(host.address, "service-center")] == "rolled_back"
        assert s.version_on(host, SC_JAR) == ["sequoiacm-cloud-servicecenter-3.1.2.jar"]
    # all that the failed run changed is undone: the hosts are as before it
    assert s.digests() == failed_run.before
    assert s.running() == failed_run.running


# -- 6 and 7. resume: an operator's rollback stays, and the hosts are probed again -----------------


def test_resume_keeps_an_operators_rollback_and_probes_the_hosts_again(failed_run: FailedRun) -> None:
    s, status = failed_run.s, failed_run.status
    h1, h2 = s.cluster.hosts
    replayed = replay(read_journal(status))
    assert {r.rolled_back_by for k, r in replayed.items() if k[1] in ("gateway", "service-center")} == {
        "rollback"
    }, "test_names_are_accepted_as_printed must run first"
    before = s.digests()

    # a pending pair's version changed behind the tool's back: refused, nothing changed
    jars = outer_install(h2) / DAEMON_JARS
    (jars / "sequoiacm-daemon-tools-3.1.2.jar").rename(jars / "sequoiacm-daemon-tools-3.1.3.jar")
    try:
        records = len(read_journal(status).records)
        changed = s.digests()
        refused(s.scm(*resume_args(s, status, "--unattended")), f"[{h2.address}]:DAEMON", "3.1.3")
        assert len(read_journal(status).records) == records
        assert s.digests() == changed
    finally:
        (jars / "sequoiacm-daemon-tools-3.1.3.jar").rename(jars / "sequoiacm-daemon-tools-3.1.2.jar")
    assert s.digests() == before

    # a pending pair's node stopped behind the tool's back: the resume does not start it again
    stop_node(h2, "sequoiacm-content/bin/scmctl.sh", 15000)
    assert 15000 not in s.running()[h2.name]

    done = ok(s.scm(*resume_args(s, status, "--unattended")))

    for host in (h1, h2):
        for printed in ("SERVICE_CENTER", "GATEWAY"):
            assert (
                "[INFO ] Kept rolled back by --rollback (name it with --host/--service to redo it): "
                f"[{host.address}]:{printed}:3.1.2 to 3.2.2"
            ) in done.stdout
    states = pair_states(status)
    for host in (h1, h2):
        assert states[(host.address, "gateway")] == states[(host.address, "service-center")] == "rolled_back"
        assert states[(host.address, "content-server")] == states[(host.address, "daemon")] == "verified"
        assert s.version_on(host, GATEWAY_JAR) == ["sequoiacm-cloud-gateway-3.1.2.jar"]
        assert s.version_on(host, CONTENT_JAR) == ["sequoiacm-content-server-3.2.2.jar"]
    assert s.running() == {
        h1.name: {8810: "3.1.2", 8080: "3.1.2", 15000: "3.2.2"},
        h2.name: {8810: "3.1.2", 8080: "3.1.2"},
    }
    probes = [
        r
        for r in read_journal(status).records
        if r.get("kind") == "probe" and (r.get("host"), r.get("service")) == (h2.address, "content-server")
    ]
    assert probes, "the resume recorded no probe of host2's content-server"
    assert probes[-1]["detail"]["nodes"] == [{"port": 15000, "running": False}]
    assert replay(read_journal(status))[(h2.address, "content-server")].probed_nodes == (
        {"port": 15000, "running": False},
    )
    assert run_results(status)[-1] == ("resume", "success")


def test_resume_redoes_a_rollback_it_is_told_to(failed_run: FailedRun) -> None:
    s, status = failed_run.s, failed_run.status
    h1, h2 = s.cluster.hosts
    states = pair_states(status)
    assert states[(h1.address, "gateway")] == "rolled_back", "the resume tests above must run first"

    done = ok(s.scm(*resume_args(s, status, "--unattended", "--service", "gateway,SERVICE_CENTER")))

    assert "Kept rolled back" not in done.stdout
    assert set(pair_states(status).values()) == {"verified"}
    assert s.running() == {
        h1.name: {8810: "3.2.2", 8080: "3.2.2", 15000: "3.2.2"},
        h2.name: {8810: "3.2.2", 8080: "3.2.2"},
    }
    for host in (h1, h2):
        assert s.version_on(host, GATEWAY_JAR) == ["sequoiacm-cloud-gateway-3.2.2.jar"]

    # a dry-run resume of the finished run leaves its file byte-identical
    first = snapshot(s, status)
    done = ok(s.scm(*resume_args(s, status, "--dry-run", "--unattended")))
    assert "is already upgraded; nothing to resume" in done.stdout
    assert snapshot(s, status) == first


# -- 8 and 9: a run whose rollback fails too; printed paths ---------------------------------------


@dataclass(frozen=True)
class StuckRun:
    """An upgrade run from s.work with `--status-dir status-rel` whose content-server on host1
    starts in no version (so its automatic rollback fails too); the fault stays on."""

    s: Scenario
    done: subprocess.CompletedProcess[str]
    status_dir: Path


@pytest.fixture(scope="module")
def stuck_run(
    cluster2: TestCluster, releases: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StuckRun]:
    """Reinstalls both hosts (after the tests of `failed_run`), then runs the upgrade."""
    s = fresh_scenario(cluster2, releases, tmp_path_factory.mktemp("contract-stuck"))
    h1 = s.cluster.hosts[0]
    try:
        sandbox.set_fault(outer_install(h1), "content-server", "start-fail")
        done = s.scm(
            "cluster",
            "--upgrade",
            "--upgrade-conf",
            "upgrade.cfg",
            "--release-dir",
            str(releases["3.2.2"]),
            "--status-dir",
            "status-rel",
            "--unattended",
        )
        yield StuckRun(s, done, s.work / "status-rel")
    finally:
        sandbox.clear_faults(outer_install(h1))
        s.cleanup()


def test_printed_paths_are_absolute(stuck_run: StuckRun) -> None:
    done, s = stuck_run.done, stuck_run.s
    assert done.returncode == 1, done.stdout + done.stderr
    (status,) = stuck_run.status_dir.glob("upgrade_status_*")
    lines = done.stdout.splitlines()
    created = [
        line for line in lines if line.startswith("[INFO ] Created upgrade status file, file location:")
    ]
    logs = [line for line in lines if line.startswith("[INFO ] Log file location:")]
    hints = [line for line in lines if ROLLBACK_HINT in line]
    assert len(created) == len(logs) == len(hints) == 1, done.stdout
    for line in (*created, *hints):
        path = line.split("file location:", 1)[1]
        assert path.startswith("/") and Path(path) == status, line
    log = Path(logs[0].split("Log file location:", 1)[1])
    assert str(log).startswith("/") and log.is_file() and log.parent == s.work / "log", logs[0]


def test_every_run_ends_with_a_closing_record(stuck_run: StuckRun) -> None:
    s, done = stuck_run.s, stuck_run.done
    h1, h2 = s.cluster.hosts
    assert done.returncode == 1, done.stdout + done.stderr
    (status,) = stuck_run.status_dir.glob("upgrade_status_*")
    assert pair_states(status)[(h1.address, "content-server")] == "failed"
    assert run_results(status)[-1] == ("upgrade", "failed")

    # the fault is still on: the rollback before the redo fails, and the run says so and ends
    done = s.scm("cluster", "--upgrade", "--upgrade-status-path", str(status), "--unattended")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{ROLLBACK_HINT}{status}" in done.stdout + done.stderr
    errors = error_lines(done)
    assert len(errors) == 1 and "rolling back a pair before redoing it failed" in errors[0], done.stderr
    assert run_results(status)[-1] == ("resume", "failed")
    assert pair_states(status)[(h1.address, "content-server")] == "failed"
    ok(s.scm("status", "verify", str(status)))

    sandbox.clear_fault(outer_install(h1), "content-server", "start-fail")
    ok(s.scm("cluster", "--upgrade", "--upgrade-status-path", str(status), "--unattended"))
    assert set(pair_states(status).values()) == {"verified"}
    assert run_results(status)[-1] == ("resume", "success")
    assert all(v == "3.2.2" for ports in s.running().values() for v in ports.values())
    assert {h: set(p) for h, p in s.running().items()} == {h.name: {8810, 8080, 15000} for h in (h1, h2)}
