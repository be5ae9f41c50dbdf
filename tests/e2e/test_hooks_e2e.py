"""End-to-end: operator hooks (issue 19) around the pairs of a real upgrade on two sshd hosts.

The hook is one Python script on the control machine. Each call appends a JSON line to a
log: its argv, its phase, every `SCM_*` variable, which secret-looking variables it could
see, and what each of the pair's ports answered on /health at that moment (so a line
proves that pre_stop ran while the old nodes still served and post_verify after the new
ones did). A control file of rules (phase, host, service) makes a call exit non-zero,
print a last line, or sleep after starting a background child.

The tests share one install of 3.1.2 (small topology) on cluster2 and run in file order;
each starts by checking the hosts are as installed, reinstalling them if not, so one
broken test does not break the next.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scmflow import sandbox
from scmflow.journalreader import read_journal
from scmflow.replay import replay
from scmflow.sandbox import NodeSpec, Topology
from tests.e2e.sandbox_cluster import Scenario
from tests.hosts import TestCluster

pytestmark = pytest.mark.e2e

OLD, NEW = "3.1.2", "3.2.2"
SERVICES = ("service-center", "gateway", "content-server", "daemon")
RUNNING_PORTS = {"service-center": "8810", "gateway": "8080", "content-server": "15000", "daemon": ""}
# Variables of the operator's environment: the secret-looking ones must not reach a hook.
SECRETS = {"MY_DB_PASSWORD": "hunter2-db", "API_TOKEN": "tok-123", "my_app_passwd": "pw-lower"}
VISIBLE = {"SCMTEST_VISIBLE": "yes"}
OPERATOR_ENV = {**SECRETS, **VISIBLE}

HOOK_SCRIPT = r"""
import http.client, json, os, subprocess, sys, time

log, control = sys.argv[1], sys.argv[2]
env = os.environ
phase, host, service = env.get("SCM_PHASE"), env.get("SCM_HOST"), env.get("SCM_SERVICE")

health = {}
for port in filter(None, env.get("SCM_PORTS", "").split(",")):
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=3)
        conn.request("GET", "/internal/v1/health")
        answer = conn.getresponse()
        body = json.loads(answer.read()) if answer.status == 200 else {}
        health[port] = {"version": body.get("version"), "pid": body.get("pid")}
        conn.close()
    except Exception as exc:
        health[port] = {"error": str(exc)}

rule = {}
with open(control) as f:
    for candidate in json.load(f):
        facts = (("phase", phase), ("host", host), ("service", service))
        if all(candidate.get(k) in (None, v) for k, v in facts):
            rule = candidate
            break

entry = {
    "argv": sys.argv[3:],
    "scm": {k: v for k, v in env.items() if k.startswith("SCM_")},
    "secrets_seen": sorted(k for k in SECRET_NAMES if k in env),
    "visible": env.get("SCMTEST_VISIBLE"),
    "health": health,
    "stdin": sys.stdin.read(),
}
with open(log, "a") as f:
    f.write(json.dumps(entry) + "\n")

print(f"hook {phase} for {service} on {host}", flush=True)
if "child" in rule:
    child = subprocess.Popen(["sleep", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(rule["child"], "w") as f:
        f.write(str(child.pid))
if "sleep" in rule:
    print("sleeping", flush=True)
    time.sleep(rule["sleep"])
if rule.get("say"):
    print(rule["say"], flush=True)
sys.exit(rule.get("exit", 0))
""".replace("SECRET_NAMES", repr(tuple(SECRETS)))


def small_topology() -> Topology:
    """service-center, two gateways (8081 stopped), content-server, daemon."""
    return Topology(
        services=SERVICES,
        nodes=(
            NodeSpec("service-center", 8810),
            NodeSpec("gateway", 8080),
            NodeSpec("gateway", 8081, running=False),
            NodeSpec("content-server", 15000),
            NodeSpec("daemon", None),
        ),
    )


@dataclass
class Hooked:
    """The shared hosts, the hook script, its log and its control file."""

    s: Scenario
    log: Path
    control: Path
    # the hook command's words: python, the script, the log, the control file, two words
    # a shell would have mangled
    argv: list[str]
    before: dict[str, str] = field(default_factory=dict)  # host digests as installed
    answering: dict[str, dict[int, str]] = field(default_factory=dict)  # ports and versions

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def install(self) -> None:
        self.s.cleanup()
        for host in self.s.cluster.hosts:
            self.s.install(host, OLD, small_topology())
        self.before, self.answering = self.s.digests(), self.s.running()
        assert all(v == OLD for ports in self.answering.values() for v in ports.values())
        assert all(set(ports) == {8810, 8080, 15000} for ports in self.answering.values())

    def reset(self, rules: list[dict[str, Any]] | None = None) -> None:
        """Hosts as installed (reinstalled if a test left them otherwise), an empty log."""
        if self.s.digests() != self.before or self.s.running() != self.answering:
            self.install()
        self.rules(rules or [])
        self.log.write_text("")

    def rules(self, rules: list[dict[str, Any]]) -> None:
        self.control.write_text(json.dumps(rules))

    def configure(self, *, timeout: int | None = None, hooks: bool = True) -> Path:
        """Scenario.config's upgrade.cfg, with all three hooks (and hookTimeout) under [config]."""
        path = self.s.config()
        text = path.read_text()
        assert text.count("[config]\n") == 1, text
        lines = ""
        if hooks:
            lines = "".join(
                f"{key}={self.command} {phase}\n"
                for key, phase in (
                    ("hookPreStop", "pre_stop"),
                    ("hookPostVerify", "post_verify"),
                    ("hookPostRollback", "post_rollback"),
                )
            )
        if timeout is not None:
            lines += f"hookTimeout={timeout}\n"
        path.write_text(text.replace("[config]\n", "[config]\n" + lines))
        return path

    def calls(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.s.scm(*args, env=OPERATOR_ENV)

    def new_status(self, known: set[Path]) -> Path:
        (status,) = set(self.s.status_files()) - known
        return status


@pytest.fixture(scope="module")
def hooked(
    cluster2: TestCluster, releases: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hooked]:
    work = tmp_path_factory.mktemp("hooks")
    s = Scenario(cluster=cluster2, releases=releases, work=work)
    cluster2.home(s.home)
    hook_dir = work / "hook dir"  # a space: the config line must quote it, and shlex split it
    hook_dir.mkdir()
    script = hook_dir / "hook.py"
    script.write_text(HOOK_SCRIPT)
    h = Hooked(
        s=s,
        log=hook_dir / "calls.jsonl",
        control=hook_dir / "control.json",
        argv=[
            sys.executable,
            str(script),
            str(hook_dir / "calls.jsonl"),
            str(hook_dir / "control.json"),
            "two words",
            "$HOME;|*",
        ],
    )
    try:
        h.install()
        yield h
    finally:
        s.cleanup()


# -- helpers ----------------------------------------------------------------------------------


def rollback_args(s: Scenario, status: Path, *extra: str) -> list[str]:
    return [
        "cluster",
        "--rollback",
        "--upgrade-status-path",
        str(status),
        "--status-dir",
        str(s.status_dir),
        *extra,
    ]


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith("[ERROR]")]


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, done.stdout + done.stderr
    assert error_lines(done) == [], done.stderr
    return done


def failed(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 1, done.stdout + done.stderr
    errors = error_lines(done)
    assert errors, done.stderr
    return errors


def hook_records(status: Path) -> list[dict[str, Any]]:
    return [r for r in read_journal(status).records if r.get("kind") == "hook"]


def who(call: dict[str, Any]) -> tuple[str, str, str]:
    """(phase, host, service) of a logged hook call."""
    return call["scm"]["SCM_PHASE"], call["scm"]["SCM_HOST"], call["scm"]["SCM_SERVICE"]


def record_who(record: dict[str, Any]) -> tuple[str, str, str]:
    return record["detail"]["phase"], record["host"], record["service"]


def plan_order(status: Path) -> list[tuple[str, str]]:
    return [(p["host"], p["service"]) for p in read_journal(status).header["plan"]]


def assert_call_env(h: Hooked, call: dict[str, Any], status: Path, run_id: str) -> None:
    """The SCM_* facts of one call, and nothing secret in its environment."""
    phase, host, service = who(call)
    env = call["scm"]
    assert env["SCM_SSH_PORT"] == "22", env
    assert env["SCM_OLD_VERSION"] == OLD and env["SCM_NEW_VERSION"] == NEW, env
    assert env["SCM_PORTS"] == RUNNING_PORTS[service], env
    assert env["SCM_STATUS_FILE"] == str(status), env
    assert env["SCM_RUN_ID"] == run_id, env
    assert call["argv"] == ["two words", "$HOME;|*", phase], call  # no shell in between
    assert call["secrets_seen"] == [], call
    assert call["visible"] == "yes", call
    assert call["stdin"] == "", call


def assert_health(call: dict[str, Any], version: str) -> None:
    """Every port of the call's pair answered `version` while the hook ran."""
    ports = [p for p in call["scm"]["SCM_PORTS"].split(",") if p]
    assert sorted(call["health"]) == sorted(ports), call
    assert all(answer.get("version") == version for answer in call["health"].values()), call


def pids(s: Scenario) -> dict[tuple[str, int], int]:
    """The pid behind every port answering /health, per (host, port)."""
    out: dict[tuple[str, int], int] = {}
    for host in s.cluster.hosts:
        for port in s.running()[host.name]:
            out[(host.name, port)] = int(sandbox.health(host.address, port, timeout=3)["pid"])
    return out


# -- 1. every pair, in order, with the right facts ---------------------------------------------


def test_hooks_run_around_every_pair_in_order(hooked: Hooked) -> None:
    h = hooked
    s = h.s
    h.reset()
    h1, h2 = s.cluster.hosts
    h.configure()
    known = set(s.status_files())

    # a dry run lists the hooks of each pair and runs none of them
    dry = ok(h.run(*s.upgrade_args(NEW, "--dry-run")))
    for phase in ("pre_stop", "post_verify"):
        line = f"hook:    {phase}: {h.command} {phase} (on the control machine)"
        assert dry.stdout.count(line) == 2 * len(SERVICES), dry.stdout
    assert "post_rollback" not in dry.stdout
    assert h.calls() == [] and set(s.status_files()) == known

    done = ok(h.run(*s.upgrade_args(NEW, "--unattended")))
    status = h.new_status(known)
    journal = read_journal(status)
    run_id = str(journal.header["run_id"])
    assert journal.header["hooks"] == {
        phase: [*h.argv, phase] for phase in ("pre_stop", "post_verify", "post_rollback")
    } | {"timeout": 300}
    order = plan_order(status)
    assert sorted(order) == sorted((host.address, svc) for host in (h1, h2) for svc in SERVICES)
    assert [svc for _, svc in order[::2]] == list(dict.fromkeys(svc for _, svc in order))  # by service

    calls = h.calls()
    expected = [(phase, host, svc) for host, svc in order for phase in ("pre_stop", "post_verify")]
    assert [who(c) for c in calls] == expected
    for call in calls:
        assert_call_env(h, call, status, run_id)
        # pre_stop while the old nodes still serve, post_verify once the new ones do
        assert_health(call, OLD if call["scm"]["SCM_PHASE"] == "pre_stop" else NEW)
    for phase, host, svc in expected:
        printed = svc.upper().replace("-", "_")
        assert f"[INFO ] Running the {phase} hook for {printed} on {host}: {h.command} {phase}" in done.stdout

    # one record per call, in the same order, each between the pair's own steps
    records = hook_records(status)
    assert [record_who(r) for r in records] == expected
    for record in records:
        detail = record["detail"]
        assert detail["argv"] == [*h.argv, detail["phase"]]
        assert detail["exit_code"] == 0 and detail["timed_out"] is False and detail["error"] is None, detail
        assert detail["duration"] >= 0
        assert f"hook {detail['phase']} for {record['service']} on {record['host']}" in detail["output_tail"]
    for host, svc in order:
        # pre_stop before the pair's first step (backup), post_verify after its last (verify)
        mine = [
            r.get("trigger") or r["detail"]["phase"]
            for r in journal.records
            if (r.get("host"), r.get("service")) == (host, svc) and r.get("kind") in ("hook", "begin")
        ]
        assert mine == ["pre_stop", "backup", "replace", "restart", "verify", "post_verify"], (svc, mine)
    for host in (h1, h2):
        assert s.running()[host.name] == {8810: NEW, 8080: NEW, 15000: NEW}

    # --rollback without the config: the header's hooks run, post_rollback once per pair
    h.configure(hooks=False)  # the config no longer names a hook: it is not read anyway
    h.log.write_text("")
    done = ok(h.run(*rollback_args(s, status, "--unattended")))
    calls = h.calls()
    assert sorted(who(c) for c in calls) == sorted(("post_rollback", host, svc) for host, svc in order)
    # services in reverse upgrade order
    services_seen = list(dict.fromkeys(who(c)[2] for c in calls))
    assert services_seen == list(dict.fromkeys(svc for _, svc in order))[::-1]
    for call in calls:
        assert_call_env(h, call, status, run_id)
        assert_health(call, OLD)  # after the pair was rolled back and started again
    records = hook_records(status)[len(expected) :]
    assert [record_who(r) for r in records] == [who(c) for c in calls]
    assert all(r["detail"]["exit_code"] == 0 for r in records)
    assert {r.state for r in replay(read_journal(status)).values()} == {"rolled_back"}
    assert s.digests() == h.before
    assert s.running() == h.answering


# -- 2. a failing pre_stop: nothing on the host changed -----------------------------------------


def test_a_failing_pre_stop_leaves_the_host_untouched(hooked: Hooked) -> None:
    h = hooked
    s = h.s
    h1, h2 = s.cluster.hosts
    h.reset(
        [
            {
                "phase": "pre_stop",
                "host": h1.address,
                "service": "gateway",
                "exit": 3,
                "say": "the load balancer refused the drain",
            }
        ]
    )
    h.configure()
    known = set(s.status_files())
    before_pids = pids(s)

    # the gateway of host 1 is the run's first pair
    done = h.run(*s.upgrade_args(NEW, "--unattended", "--service", "gateway"))
    errors = failed(done)
    status = h.new_status(known)
    assert plan_order(status) == [(h1.address, "gateway"), (h2.address, "gateway")]
    assert any(
        f"[{h1.address}]:GATEWAY: pre_stop failed: pre_stop hook {sys.executable} exited 3" in e
        and "the load balancer refused the drain" in e
        for e in errors
    ), errors

    # the hook ran, failed, and the pair's no-op rollback ran post_rollback; host 2 never started
    assert [who(c) for c in h.calls()] == [
        ("pre_stop", h1.address, "gateway"),
        ("post_rollback", h1.address, "gateway"),
    ]
    journal = read_journal(status)
    records = hook_records(status)
    assert [(record_who(r), r["detail"]["exit_code"]) for r in records] == [
        (("pre_stop", h1.address, "gateway"), 3),
        (("post_rollback", h1.address, "gateway"), 0),
    ]
    assert "the load balancer refused the drain" in records[0]["detail"]["output_tail"]
    fails = [r for r in journal.records if r.get("kind") == "fail"]
    assert [(r["host"], r["service"], r["trigger"]) for r in fails] == [(h1.address, "gateway", "pre_stop")]
    # no step of the pair began (no backup, no stop); its rollback restored nothing
    steps = [
        (r["kind"], r["trigger"], r.get("detail"))
        for r in journal.records
        if r.get("kind") in ("begin", "transition") and r.get("service") == "gateway"
    ]
    assert steps == [
        ("begin", "rollback", {"action": "restore"}),
        ("transition", "rollback", {"restored": False}),
    ], steps
    replayed = replay(journal)
    assert replayed[(h1.address, "gateway")].state == "rolled_back"
    assert replayed[(h2.address, "gateway")].state == "pending"

    # the nodes kept running all along: same processes, old version, same files
    assert s.digests() == h.before
    assert s.running() == h.answering
    assert pids(s) == before_pids
    assert [c["health"] for c in h.calls()][0] == {
        "8080": {"version": OLD, "pid": before_pids[(h1.name, 8080)]}
    }


# -- 3. a failing post_verify: the pair is rolled back ------------------------------------------


def test_a_failing_post_verify_rolls_the_pair_back(hooked: Hooked) -> None:
    h = hooked
    s = h.s
    h1, h2 = s.cluster.hosts
    h.reset(
        [
            {
                "phase": "post_verify",
                "host": h2.address,
                "service": "content-server",
                "exit": 1,
                "say": "smoke test failed",
            }
        ]
    )
    h.configure()
    known = set(s.status_files())

    done = h.run(*s.upgrade_args(NEW, "--unattended", "--service", "content-server"))
    errors = failed(done)
    status = h.new_status(known)
    assert any(
        f"[{h2.address}]:CONTENT_SERVER: post_verify failed: post_verify hook" in e
        and "smoke test failed" in e
        for e in errors
    ), errors

    calls = h.calls()
    expected = [
        ("pre_stop", h1.address, "content-server"),
        ("post_verify", h1.address, "content-server"),
        ("pre_stop", h2.address, "content-server"),
        ("post_verify", h2.address, "content-server"),
        ("post_rollback", h2.address, "content-server"),
    ]
    assert [who(c) for c in calls] == expected
    assert_health(calls[3], NEW)  # the hook saw the new node it refused
    assert_health(calls[4], OLD)  # and post_rollback the old one back

    journal = read_journal(status)
    records = hook_records(status)
    assert [(record_who(r), r["detail"]["exit_code"]) for r in records] == list(
        zip(expected, [0, 0, 0, 1, 0], strict=True)
    )
    # post_verify's failure, then the pair's rollback, then post_rollback
    tagged = [
        (r.get("kind"), r.get("trigger") or (r.get("detail") or {}).get("phase"))
        for r in journal.records
        if (r.get("host"), r.get("service")) == (h2.address, "content-server")
    ]
    failed_at = tagged.index(("fail", "post_verify"))
    assert tagged.index(("hook", "post_verify")) < failed_at < tagged.index(("hook", "post_rollback"))
    assert any(kind != "hook" and trigger == "rollback" for kind, trigger in tagged[failed_at:]), tagged
    replayed = replay(journal)
    assert replayed[(h2.address, "content-server")].state == "rolled_back"
    assert replayed[(h2.address, "content-server")].rolled_back_by == "upgrade"
    assert replayed[(h1.address, "content-server")].state == "verified"
    assert s.running()[h1.name][15000] == NEW
    assert s.running()[h2.name][15000] == OLD

    # an explicit rollback of the rest: a failing post_rollback is recorded, the rollback goes on
    h.rules(
        [
            {
                "phase": "post_rollback",
                "host": h1.address,
                "service": "content-server",
                "exit": 5,
                "say": "could not re-enable",
            }
        ]
    )
    h.log.write_text("")
    done = ok(h.run(*rollback_args(s, status, "--unattended")))
    assert [who(c) for c in h.calls()] == [("post_rollback", h1.address, "content-server")]
    last = hook_records(status)[-1]
    assert record_who(last) == ("post_rollback", h1.address, "content-server")
    assert last["detail"]["exit_code"] == 5 and "could not re-enable" in last["detail"]["output_tail"]
    assert pair_state(status, h1.address, "content-server") == "rolled_back"
    assert s.digests() == h.before
    assert s.running() == h.answering


def pair_state(status: Path, host: str, service: str) -> str:
    return replay(read_journal(status))[(host, service)].state


# -- 4. a hook that outlives hookTimeout is killed, its children too ----------------------------


def test_a_hook_that_times_out_is_killed(hooked: Hooked) -> None:
    h = hooked
    s = h.s
    h1, _ = s.cluster.hosts
    child_file = h.log.parent / "child.pid"
    child_file.unlink(missing_ok=True)
    h.reset(
        [
            {
                "phase": "pre_stop",
                "host": h1.address,
                "service": "gateway",
                "sleep": 60,
                "child": str(child_file),
            }
        ]
    )
    h.configure(timeout=2)
    known = set(s.status_files())

    done = h.run(*s.upgrade_args(NEW, "--unattended", "--service", "gateway"))
    errors = failed(done)
    status = h.new_status(known)
    assert read_journal(status).header["hooks"]["timeout"] == 2
    assert any(
        f"[{h1.address}]:GATEWAY: pre_stop failed: pre_stop hook" in e and "timed out" in e for e in errors
    ), errors

    first = hook_records(status)[0]
    assert record_who(first) == ("pre_stop", h1.address, "gateway")
    detail = first["detail"]
    assert detail["timed_out"] is True and detail["exit_code"] is None, detail
    assert 2 <= detail["duration"] < 55, detail  # killed, not waited for
    assert "sleeping" in detail["output_tail"]
    assert [r["trigger"] for r in read_journal(status).records if r.get("kind") == "fail"] == ["pre_stop"]

    # the hook's background child died with it (a zombie awaiting its reaper counts as gone)
    child = int(child_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and alive(child):
        time.sleep(0.1)
    assert not alive(child), f"the hook's child {child} outlived the timeout"
    assert s.digests() == h.before
    assert s.running() == h.answering


def alive(pid: int) -> bool:
    """Whether `pid` runs (not a zombie) and is still the `sleep 60` the hook started."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and cmdline.startswith(b"sleep\0")


# -- 5. a failing post_rollback is said, not only recorded ---------------------------------------


def test_a_failing_post_rollback_is_said(hooked: Hooked) -> None:
    h = hooked
    s = h.s
    h1, _ = s.cluster.hosts
    h.reset()
    h.configure()
    known = set(s.status_files())
    ok(h.run(*s.upgrade_args(NEW, "--unattended", "--service", "gateway", "--host", h1.address)))
    status = h.new_status(known)
    h.rules([{"phase": "post_rollback", "exit": 5, "say": "could not put the node back"}])
    done = ok(h.run(*rollback_args(s, status, "--unattended")))  # the rollback itself succeeded
    assert hook_records(status)[-1]["detail"]["exit_code"] == 5
    assert s.digests() == h.before
    said = done.stdout + done.stderr
    assert f"post_rollback hook {sys.executable} exited 5" in said, said
    assert "[WARN ]" in said and "the rollback goes on" in said, said
