"""End-to-end: auditor views (`scm.py status ...`) of status files written by real runs.

One module-scoped history on three real sshd test hosts writes a status file for every
outcome: a clean upgrade, the same file partly then wholly rolled back, a failed upgrade,
and an upgrade SIGKILLed mid-run. A copy of each file as that outcome left it goes to one
audit dir (the rolled-back file is one file at three moments). Every check reads them
through the real CLI as a subprocess, as an auditor would.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest

from scmflow import __version__, sandbox
from scmflow.errors import JournalError
from scmflow.journalreader import read_journal
from scmflow.replay import replay
from scmflow.sandbox import NodeSpec, Topology
from scmflow.statusformat import FILE_PREFIX, NAME_TIME_FORMAT, encode_record
from tests.e2e.sandbox_cluster import (
    SCM,
    Scenario,
    header_fields,
    outer_install,
)
from tests.e2e.test_rollback import rollback_args, spawn
from tests.hosts import TestCluster

pytestmark = pytest.mark.e2e

SERVICES = ("service-center", "gateway", "content-server", "daemon")
PACKAGES = ("sequoiacm-cloud", "sequoiacm-content", "daemon")  # what SERVICES ship in
PASSWORD = "Audit-Pw-7319"  # in upgrade.cfg; must never reach a status file
FAULT_STDERR = "ERROR: failed to start CONTENT-SERVER(15000): injected start failure"
SECRET_WORDS = ("password", "passwd", "secret", "token")
OUTCOMES = ("success", "partially rolled back", "rolled back", "failed", "interrupted")
WIDTH = 100
EVENT = re.compile(r"^  (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)  #(\d+)\s+(\w+)(?:\s+(.*))?$")
DURATION = re.compile(r"^(\d+\.\ds|\d+m\d\ds|\d+h\d\dm)$")


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


@dataclass(frozen=True)
class History:
    """The module's runs: each outcome's status file (a copy in `audit_dir`) and the command."""

    scenario: Scenario
    files: dict[str, Path]
    argv: list[str]  # every upgrade ran with these arguments
    began: float
    ended: float

    @property
    def audit_dir(self) -> Path:
        """The one dir holding every outcome's file."""
        return self.files["success"].parent

    @property
    def addresses(self) -> list[str]:
        """The test hosts' addresses, in config order."""
        return [h.address for h in self.scenario.cluster.hosts]


def snapshot(path: Path, audit_dir: Path) -> Path:
    """Copy a status file as it is now into `audit_dir`, named after the copy's time."""
    base = FILE_PREFIX + datetime.now().strftime(NAME_TIME_FORMAT)
    target = audit_dir / base
    number = 1
    while target.exists():
        number += 1
        target = audit_dir / f"{base}-{number}"
    shutil.copyfile(path, target)
    return target


def new_status_file(s: Scenario, before: set[Path]) -> Path:
    """The one status file written since `before`."""
    (path,) = set(s.status_files()) - before
    return path


def run_ok(s: Scenario, args: list[str]) -> None:
    """Run the CLI; it must succeed."""
    done = s.scm(*args)
    assert done.returncode == 0, done.stdout + done.stderr


def wait_for_begin(s: Scenario, before: set[Path], timeout: float = 120.0) -> Path:
    """Poll for a new status file until it records a pair's `begin`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in set(s.status_files()) - before:
            try:
                records = read_journal(path).records
            except JournalError:
                continue
            if any(r.get("kind") == "begin" for r in records):
                return path
        time.sleep(0.02)
    raise AssertionError("the run never recorded a begin")


@pytest.fixture(scope="module")
def history(
    cluster3: TestCluster, releases: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[History]:
    """Five outcomes written by real runs; see the module docstring."""
    work = tmp_path_factory.mktemp("status-e2e")
    s = Scenario(cluster=cluster3, releases=releases, work=work)
    cluster3.home(s.home)
    s.cleanup()
    audit = work / "audit"
    audit.mkdir()
    h2 = cluster3.hosts[1]
    files: dict[str, Path] = {}
    began = time.time()
    try:
        s.install_all("3.1.2", small_topology())
        s.config(password=PASSWORD)

        # a clean upgrade, then part of it rolled back, then all of it: one file, three moments
        upgrade = s.upgrade_args("3.2.2", "--unattended")
        before = set(s.status_files())
        run_ok(s, upgrade)
        upgraded = new_status_file(s, before)
        files["success"] = snapshot(upgraded, audit)
        # the hosts logged in with a password once: a rollback takes it from the config again
        again = ("--unattended", "--upgrade-conf", str(work / "upgrade.cfg"))
        run_ok(s, rollback_args(s, upgraded, *again, "--service", "gateway"))
        files["partially rolled back"] = snapshot(upgraded, audit)
        run_ok(s, rollback_args(s, upgraded, *again))
        files["rolled back"] = snapshot(upgraded, audit)
        time.sleep(1)  # the next run's stamp (and remote dirs) must differ by a second

        # a start failure on one host: that pair is put back on the spot and the run stops
        sandbox.set_fault(outer_install(h2), "content-server", "start-fail", version="3.2.2")
        before = set(s.status_files())
        done = s.scm(*upgrade)
        assert done.returncode == 1, done.stdout + done.stderr
        sandbox.clear_fault(outer_install(h2), "content-server", "start-fail")
        files["failed"] = snapshot(new_status_file(s, before), audit)
        time.sleep(1)

        # the pairs still on 3.1.2, SIGKILLed as soon as one of them has begun a step
        before = set(s.status_files())
        proc = spawn(s, upgrade)
        try:
            killed = wait_for_begin(s, before)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        files["interrupted"] = snapshot(killed, audit)
        ended = time.time()
        time.sleep(1)  # let the host's agent finish the step the kill left in flight
        yield History(scenario=s, files=files, argv=upgrade, began=began, ended=ended)
    finally:
        s.cleanup()


# --- helpers reading the CLI's output -------------------------------------------------


def status(h: History, *args: str) -> subprocess.CompletedProcess[str]:
    """`scm.py status ...` as a subprocess."""
    return h.scenario.scm("status", *args)


def show(h: History, path: Path, *extra: str) -> str:
    """`status show`'s output; it must succeed and fit 100 columns."""
    done = status(h, "show", str(path), *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    too_wide = [line for line in done.stdout.splitlines() if len(line) > WIDTH]
    assert not too_wide, too_wide
    return done.stdout


def table_rows(text: str) -> list[list[str]]:
    """The pair table of `status show`, as cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("HOST "))
    assert re.split(r"\s{2,}", lines[start]) == ["HOST", "SERVICE", "OLD -> NEW", "STATE", "DURATION"]
    rows = []
    for line in lines[start + 1 :]:
        if not line:
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def timeline(text: str) -> list[tuple[str, int, str, str]]:
    """(time, seq, kind, headline with its wrapped part and details) of each event, in order."""
    lines = text.splitlines()
    start = lines.index("Timeline:")
    events: list[list[Any]] = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        match = EVENT.match(line)
        if match:
            events.append([match[1], int(match[2]), match[3], match[4] or ""])
        else:
            events[-1][3] += " " + line.strip()
    return [(t, seq, kind, body) for t, seq, kind, body in events]


def one_error(done: subprocess.CompletedProcess[str]) -> str:
    """The single `[ERROR]` line of a refused command (which printed nothing else)."""
    assert done.returncode != 0
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("[ERROR] "), done.stderr
    return lines[0]


def record_count(h: History, path: Path) -> int:
    """N of `status verify`'s `chain: intact, N records`; the file must be authentic too."""
    done = status(h, "verify", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.fullmatch(
        r"chain:     intact, (\d+) records\n"
        r"authentic: yes, every record's MAC is valid with status key [0-9a-f]{16} \(.+\)\n",
        done.stdout,
    )
    assert match, done.stdout
    return int(match[1])


def verify_error(done: subprocess.CompletedProcess[str]) -> str:
    """The single `[ERROR]` line of a `status verify` that failed (after its two fact lines)."""
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == ["chain", "authentic"]
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("[ERROR] "), done.stderr
    return lines[0]


def frame_starts(data: bytes) -> list[int]:
    """Byte offset of every record frame of a status file, and its size at the end."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=0)
    unpacker.feed(data)
    starts = [0]
    for _ in unpacker:
        starts.append(unpacker.tell())
    assert starts[-1] == len(data)
    return starts


def expected_states(h: History, outcome: str) -> list[tuple[str, str, str]]:
    """(host, service, final state) of each pair, in plan order (service by service)."""
    h1, h2, h3 = h.addresses
    if outcome == "interrupted":
        # the kill may land in any step of the first pair: its state is what the file says
        pairs = replay(read_journal(h.files[outcome]))
        keys = [(h2, "content-server"), (h3, "content-server")] + [(x, "daemon") for x in (h1, h2, h3)]
        return [(host, service, pairs[(host, service)].state) for host, service in keys]
    # the failed run: host1's content-server went through, host2's failed and was put back
    failed = {
        **{(x, "content-server"): s for x, s in ((h1, "verified"), (h2, "rolled_back"), (h3, "pending"))},
        **{(x, "daemon"): "pending" for x in (h1, h2, h3)},
    }
    out = []
    for service in SERVICES:
        for host in (h1, h2, h3):
            state = {
                "success": "verified",
                "rolled back": "rolled_back",
                "partially rolled back": "rolled_back" if service == "gateway" else "verified",
                "failed": failed.get((host, service), "verified"),
            }[outcome]
            out.append((host, service, state))
    return out


def secret_keys(value: Any, where: str = "") -> list[str]:
    """Every key at any depth named like a secret."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}"
            if any(word in key.lower() for word in SECRET_WORDS):
                found.append(path)
            found.extend(secret_keys(item, path))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(secret_keys(item, f"{where}[{index}]"))
    return found


# --- show -----------------------------------------------------------------------------


def test_show_header_names_who_when_what_and_where(history: History) -> None:
    packages = history.scenario.releases["3.2.2"] / "package"
    shipped = {
        prefix: f"{prefix}-3.2.2-release.tar.gz sha256 "
        + hashlib.sha256((packages / f"{prefix}-3.2.2-release.tar.gz").read_bytes()).hexdigest()
        for prefix in PACKAGES
    }
    runs = {
        "success": "upgrade started, upgrade success",
        "partially rolled back": "upgrade started, upgrade success, rollback started, rollback success",
        "rolled back": "upgrade started, upgrade success, rollback started, rollback success, "
        "rollback started, rollback success",
        "failed": "upgrade started, upgrade failed",
        "interrupted": "upgrade started",
    }
    for outcome, path in history.files.items():
        text = show(history, path)
        title = text.split("\n  Run ", 1)[0]
        assert " ".join(title.split()) == f"Upgrade status file {path}"
        fields = header_fields(text)
        assert fields["Operator"] == f"{getpass.getuser()} on {socket.gethostname()}"
        assert fields["Command"] == " ".join([str(SCM), *history.argv])
        started = datetime.fromisoformat(fields["Started"]).timestamp()
        assert history.began <= started <= history.ended
        assert fields["Tool"] == f"scmflow {__version__}"
        # every package the plan needs, named once, with the digest of the very file shipped
        needed = PACKAGES[1:] if outcome == "interrupted" else PACKAGES
        assert fields["Release"] == " ".join(["3.2.2", *(shipped[p] for p in needed)])
        assert fields["Hosts"] == ", ".join(f"{a}:22 (root)" for a in history.addresses)
        assert fields["Install"] == "/opt/sequoiacm as scmadmin"
        assert fields["Runs"] == runs[outcome]
        assert fields["Outcome"] == outcome
        if outcome == "interrupted":
            assert fields["Ended"].startswith("not recorded (last record at ")
        else:
            ended = datetime.fromisoformat(fields["Ended"]).timestamp()
            assert started < ended <= history.ended
        assert PASSWORD not in text


def test_show_tabulates_every_pair_with_its_final_state_and_duration(history: History) -> None:
    for outcome, path in history.files.items():
        rows = table_rows(show(history, path))
        in_flight = {key: p.in_flight for key, p in replay(read_journal(path)).items()}
        expected = expected_states(history, outcome)
        assert [(r[0], r[1]) for r in rows] == [(host, service) for host, service, _ in expected]
        for row, (host, service, state) in zip(rows, expected, strict=True):
            assert row[2] == "3.1.2 -> 3.2.2"
            flight = in_flight[(host, service)]
            assert row[3] == (state if flight is None else f"{state}, {flight} in flight"), (outcome, row)
            if state == "pending":
                assert row[4] == "-", (outcome, row)
            else:
                assert DURATION.match(row[4]), (outcome, row)


def test_timeline_lists_events_in_order_with_the_failed_steps_error_in_full(history: History) -> None:
    for outcome, path in history.files.items():
        events = timeline(show(history, path, "--timeline"))
        count = record_count(history, path)
        assert [seq for _, seq, _, _ in events] == list(range(1, count))
        times = [t for t, _, _, _ in events]
        assert times == sorted(times)
        kinds = [kind for _, _, kind, _ in events]
        assert kinds == [r["kind"] for r in read_journal(path).records]
        assert kinds[0] == "run" and "begin" in kinds
        assert ("fail" in kinds) == (outcome == "failed")
    h2 = history.addresses[1]
    events = timeline(show(history, history.files["failed"], "--timeline"))
    mine = [(kind, body) for _, _, kind, body in events if body.startswith(f"[{h2}] content-server:")]
    assert [kind for kind, _ in mine] == [
        "begin", "transition", "begin", "transition", "begin", "fail", "begin", "transition"
    ]
    fail_body = mine[5][1]
    assert fail_body.startswith(f"[{h2}] content-server: restart: replaced -> failed")
    # the ctl's own stderr, whole, however the lines were wrapped
    assert FAULT_STDERR in fail_body
    assert "scmctl.sh start --timeout 300 -p 15000" in fail_body
    assert mine[6][1].startswith(f"[{h2}] content-server: rollback (failed -> rolled_back)")
    assert mine[7][1].startswith(f"[{h2}] content-server: rollback: failed -> rolled_back")
    # without --timeline, the errors section still names the failure
    plain = show(history, history.files["failed"])
    errors = plain.split("\nErrors:\n", 1)[1].split("\n\n")[0]
    assert FAULT_STDERR in " ".join(line.strip() for line in errors.splitlines())


def test_killed_run_and_a_torn_copy_are_rendered_with_the_tear_reported(
    history: History, tmp_path: Path
) -> None:
    killed = history.files["interrupted"]
    contents = read_journal(killed)
    text = show(history, killed, "--timeline")
    assert header_fields(text)["Outcome"] == "interrupted"
    assert ("Warning: the last record" in text) == contents.torn_tail
    events = timeline(text)
    assert events[-1][1] == contents.count - 1
    first = replay(contents)[(history.addresses[1], "content-server")]
    assert first.history and first.history[0]["kind"] == "begin"

    # a crash in the middle of a write: cut the copy half-way into its last record
    data = killed.read_bytes()
    starts = frame_starts(data)
    last = len(starts) - 2
    torn = tmp_path / killed.name
    torn.write_bytes(data[: starts[last] + (starts[last + 1] - starts[last]) // 2])
    text = show(history, torn, "--timeline")
    warning = " ".join(text.split("Warning: ", 1)[1].split())
    assert warning.startswith(f"the last record (seq {last}, byte offset {starts[last]},")
    assert "left by an interrupted write; it was ignored" in warning
    assert timeline(text)[-1][1] == last - 1
    error = verify_error(status(history, "verify", str(torn)))
    assert f"{last} records intact; the last record (seq {last}, byte offset {starts[last]})" in error
    assert "is incomplete, left by an interrupted write" in error
    exported = json.loads(status(history, "export", str(torn)).stdout)
    assert exported["torn_tail"] is True and len(exported["records"]) == last - 1
    assert exported["outcome"] == "interrupted"
    listed = status(history, "list", "--status-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].endswith("last record torn)")


# --- export ---------------------------------------------------------------------------


def test_export_is_the_documented_json_without_secrets(history: History) -> None:
    for outcome, path in history.files.items():
        done = status(history, "export", str(path), "--format", "json")
        assert done.returncode == 0, done.stderr
        document = json.loads(done.stdout)
        assert document["schema"] == "scmflow-status-export/1"
        assert document["file"] == str(path)
        assert document["outcome"] == outcome
        assert document["torn_tail"] is False and document["problems"] == []
        header = document["header"]
        assert header["format"] == "scmflow-status" and header["format_version"] == 2
        assert document["authenticity"]["authentic"] is True
        assert header["operator"] == getpass.getuser()
        assert header["control_host"] == socket.gethostname()
        assert header["argv"] == [str(SCM), *history.argv]
        assert header["tool_version"] == __version__
        assert header["release"]["version"] == "3.2.2"
        assert [h["name"] for h in header["hosts"]] == history.addresses
        count = record_count(history, path)
        assert len(document["records"]) + 1 == count == len(document["digests"])
        for record in document["records"]:
            assert record["prev"] == document["digests"][record["seq"] - 1]
        assert [(p["host"], p["service"], p["state"]) for p in document["pairs"]] == expected_states(
            history, outcome
        )
        for pair in document["pairs"]:
            assert (pair["duration_seconds"] is None) == (pair["state"] == "pending")
        assert secret_keys(document) == []
        assert PASSWORD not in done.stdout
        assert PASSWORD.encode() not in path.read_bytes()


# --- verify ---------------------------------------------------------------------------


def test_verify_passes_intact_files(history: History) -> None:
    for path in history.files.values():
        assert record_count(history, path) == read_journal(path).count


def test_verify_names_the_first_bad_record_of_a_flipped_byte(history: History, tmp_path: Path) -> None:
    original = history.files["success"]
    data = bytearray(original.read_bytes())
    middle = len(data) // 2
    starts = frame_starts(bytes(data))
    seq = max(i for i, start in enumerate(starts) if start <= middle)
    trailer = starts[seq + 1] - 2 * (2 + 32)  # where the record's digest and MAC begin
    if middle >= trailer:
        middle = starts[seq] + 8  # a byte of the record itself, not of its digest or MAC
    # a changed MAC leaves the chain intact: only the key can tell
    mac_changed = bytearray(data)
    mac_changed[starts[seq + 1] - 1] ^= 0x01
    copy = tmp_path / "mac" / original.name
    copy.parent.mkdir()
    copy.write_bytes(bytes(mac_changed))
    error = verify_error(status(history, "verify", str(copy)))
    assert error.startswith(f"[ERROR] {copy} is not authentic: record {seq}'s MAC is not valid with ")
    data[middle] ^= 0x01
    copy = tmp_path / original.name
    copy.write_bytes(bytes(data))
    error = verify_error(status(history, "verify", str(copy)))
    assert error.startswith(f"[ERROR] {copy} is damaged or was tampered with: record {seq} ")
    assert f"(byte offset {starts[seq]})" in error
    for command in ("show", "export"):
        assert f"record {seq} " in one_error(status(history, command, str(copy)))
    listed = status(history, "list", "--status-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    assert "unreadable" in listed.stdout and f"record {seq} " in listed.stdout


# --- list -----------------------------------------------------------------------------


def test_list_gives_one_line_per_file_newest_first_with_its_outcome(history: History) -> None:
    done = status(history, "list", "--status-dir", str(history.audit_dir))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.rstrip("\n").splitlines()
    newest_first = list(reversed(OUTCOMES))
    assert len(lines) == len(newest_first)
    pairs = {"interrupted": 5}
    for line, outcome in zip(lines, newest_first, strict=True):
        path = history.files[outcome]
        assert line[:19] == datetime.strptime(path.name[len(FILE_PREFIX) :], NAME_TIME_FORMAT).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
        assert line[21:42].rstrip() == outcome, line
        assert f"{pairs.get(outcome, 12):>3} pairs" in line
        assert path.name in line and " 3.2.2 " in line
        actions = "upgrade+rollback" if "rolled back" in outcome else "upgrade"
        assert f"  {actions} " in line


# --- refusals -------------------------------------------------------------------------


def test_newer_format_and_non_status_files_are_refused_with_one_error(
    history: History, tmp_path: Path
) -> None:
    original = history.files["success"]
    data = original.read_bytes()
    starts = frame_starts(data)
    payload = msgpack.unpackb(data[: starts[1]], raw=False)[0]
    header = msgpack.unpackb(payload, raw=False)
    header["format_version"] = 3
    _, frame = encode_record(header)
    newer = tmp_path / f"{FILE_PREFIX}2030-01-01-00:00:00"
    newer.write_bytes(frame + data[starts[1] :])
    # the run's own log file: real, and not a status file
    log = sorted((history.scenario.work / "log").iterdir())[0]
    alien = tmp_path / f"{FILE_PREFIX}2030-01-01-00:00:01"
    shutil.copyfile(log, alien)

    for command in ("show", "verify", "export"):
        assert one_error(status(history, command, str(newer))) == (
            f"[ERROR] {newer} was written by a newer scmflow (status format version 3; "
            "this scmflow reads up to version 2)"
        )
        assert one_error(status(history, command, str(alien))) == (
            f"[ERROR] {alien} is not an scmflow upgrade status file"
        )
        assert one_error(status(history, command, str(log))) == (
            f"[ERROR] {log} is not an scmflow upgrade status file"
        )
    listed = status(history, "list", "--status-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.rstrip("\n").splitlines()
    assert len(lines) == 2
    assert all(line[21:42].rstrip() == "unreadable" for line in lines)
    assert "newer scmflow (status format version 3" in lines[1]
    assert "is not an scmflow upgrade status file" in lines[0]
