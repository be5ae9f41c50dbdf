"""Auditor views: show, JSON export, lifecycle diagram, listing with outcomes."""

from __future__ import annotations

import json
import tomllib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scmflow.errors import CatalogError
from scmflow.journal import Journal
from scmflow.journalreader import read_journal
from scmflow.lifecyclediagram import render_diagram
from scmflow.outcome import never_started_count
from scmflow.replay import replay
from scmflow.resources import states_file
from scmflow.statusexport import EXPORT_SCHEMA, export_json
from scmflow.statuskey import StatusKey
from scmflow.statuslist import list_status_files, render_list
from scmflow.statusview import format_duration, render_show
from scmflow.trustview import trusted_values

START = datetime(2024, 5, 1, 8, 0, 0)
PLAN = [
    {"host": "scmServer-a", "service": "gateway", "printed": "GATEWAY",
     "old_version": "3.2.1", "new_version": "3.2.2"},
    {"host": "scmServer-b", "service": "gateway", "printed": "GATEWAY",
     "old_version": "3.2.1", "new_version": "3.2.2"},
    {"host": "scmServer-a", "service": "non-service", "printed": "NON_SERVICE",
     "old_version": None, "new_version": "3.2.2"},
]
STEPS = [
    ("backup", "pending", "backed_up"),
    ("replace", "backed_up", "replaced"),
    ("restart", "replaced", "restarted"),
    ("verify", "restarted", "verified"),
]
LONG_ERROR = "[scmServer-b] replace failed: " + " ".join(f"word{n}" for n in range(60))


class Ticker:
    def __init__(self, start: datetime, step: float = 2.0) -> None:
        self.now = start.timestamp() - step
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def header() -> dict[str, Any]:
    return {
        "run_id": "20240501-080000-ab12",
        "tool_version": "0.1.0",
        "operator": "root",
        "control_host": "ctl-1",
        "argv": ["scm.py", "cluster", "--upgrade", "--upgrade-conf", "/opt/conf/upgrade.cfg", "--unattended"],
        "install_path": "/opt/sequoiacm",
        "install_user": "scmadmin",
        "hosts": [
            {"name": "scmServer-a", "port": 22, "user": "root", "java_home": "/opt/jdk"},
            {"name": "scmServer-b", "port": 2222, "user": "root", "java_home": None},
        ],
        "remote_pack_dir": "/opt/upgrade/sequoiacm/upgrade-2024-05-01-08:00:00",
        "remote_backup_dir": "/opt/backup/sequoiacm/backup-2024-05-01-08:00:00",
        "release": {
            "version": "3.2.2",
            "packages": [{"name": "sequoiacm-cloud-3.2.2-release.tar.gz", "sha256": "ab" * 32}],
        },
        "plan": PLAN,
    }


def pair_event(kind: str, pair: dict[str, Any], trigger: str, src: str, dst: str, detail: Any = None):
    event = {"kind": kind, "host": pair["host"], "service": pair["service"],
             "trigger": trigger, "src": src, "dst": dst}
    if detail is not None:
        event["detail"] = detail
    return event


def run(journal: Journal, action: str, result: str) -> None:
    journal.append({"kind": "run", "detail": {"action": action, "result": result}})


def upgrade(journal: Journal, pair: dict[str, Any], steps=STEPS) -> None:
    for trigger, src, dst in steps:
        journal.append(pair_event("begin", pair, trigger, src, dst, {"action": trigger}))
        journal.append(pair_event("transition", pair, trigger, src, dst, {"nodes": [8080]}))


def fail(journal: Journal, pair: dict[str, Any], trigger: str, src: str) -> None:
    journal.append(pair_event("begin", pair, trigger, src, "replaced"))
    journal.append(
        pair_event("fail", pair, trigger, src, "failed",
                   {"error": LONG_ERROR, "type": "RemoteError", "stderr": "cp: disk full\nline two"})
    )


def roll_back(journal: Journal, pair: dict[str, Any], src: str) -> None:
    journal.append(pair_event("begin", pair, "rollback", src, "rolled_back"))
    journal.append(pair_event("transition", pair, "rollback", src, "rolled_back"))


def write_scenario(status_dir: Path, outcome: str, start: datetime) -> Path:
    """A status file whose history leads to `outcome`."""
    a, b, c = PLAN
    with Journal.create(status_dir, header(), now=start, clock=Ticker(start)) as journal:
        run(journal, "upgrade", "started")
        if outcome == "success":
            for pair in PLAN:
                upgrade(journal, pair)
            run(journal, "upgrade", "success")
        elif outcome == "interrupted":
            upgrade(journal, a)
            journal.append(pair_event("begin", b, "backup", "pending", "backed_up"))
        else:
            upgrade(journal, a)
            upgrade(journal, b, STEPS[:1])
            fail(journal, b, "replace", "backed_up")
            run(journal, "upgrade", "failed")
        path = journal.path
    if outcome in ("rolled back", "partially rolled back"):
        with Journal.open_for_append(path, clock=Ticker(start + timedelta(minutes=5))) as journal:
            run(journal, "rollback", "started")
            roll_back(journal, b, "failed")
            if outcome == "rolled back":
                roll_back(journal, a, "verified")
                roll_back(journal, c, "pending")
            run(journal, "rollback", "success")
    return path


# --- show -----------------------------------------------------------------------------


def test_show_summarises_the_run_and_tabulates_pairs(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, "failed", START)
    text = render_show(read_journal(path))
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    assert "  Operator  root on ctl-1" in lines
    assert any(line.startswith("  Command   scm.py cluster --upgrade --upgrade-conf") for line in lines)
    assert "  Tool      scmflow 0.1.0" in lines
    assert "  Release   3.2.2" in lines
    assert any("sequoiacm-cloud-3.2.2-release.tar.gz sha256" in line for line in lines)
    assert "  Hosts     scmServer-a:22 (root), scmServer-b:2222 (root)" in lines
    assert "  Install   /opt/sequoiacm as scmadmin" in lines
    assert "  Outcome   failed" in lines
    assert "  Pairs     1 of 3 never started" in lines
    start_line = next(line for line in lines if line.startswith("  Started"))
    assert start_line.split()[-1] == read_journal(path).header["time"]

    table = lines[lines.index(next(line for line in lines if line.startswith("HOST"))):]
    assert table[0].split() == ["HOST", "SERVICE", "OLD", "->", "NEW", "STATE", "DURATION"]
    # records are 2 s apart: 8 records span 14 s; backup, replace begun, fail span 6 s
    assert table[1].split() == ["scmServer-a", "gateway", "3.2.1", "->", "3.2.2", "verified", "14.0s"]
    assert table[2].split() == ["scmServer-b", "gateway", "3.2.1", "->", "3.2.2", "failed", "6.0s"]
    assert table[3].split() == ["scmServer-a", "non-service", "none", "->", "3.2.2", "pending", "-"]
    assert "Errors:" in lines
    assert "[scmServer-b] gateway: [scmServer-b] replace failed: word0" in text
    assert "Timeline:" not in text


def test_show_timeline_lists_every_event_with_full_errors(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, "failed", START)
    contents = read_journal(path)
    text = render_show(contents, timeline=True)
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    timeline = lines[lines.index("Timeline:") + 1:]
    heads = [line for line in timeline if line.startswith("  20")]
    assert len(heads) == len(contents.records)
    for record, line in zip(contents.records, heads, strict=True):
        assert line.split()[:3] == [record["time"], f"#{record['seq']}", record["kind"]]
    assert "#1    run         upgrade started" in heads[0]
    assert heads[1].endswith("[scmServer-a] gateway: backup (pending -> backed_up)")
    assert heads[2].endswith("[scmServer-a] gateway: backup: pending -> backed_up")
    fail_index = timeline.index(next(line for line in heads if " fail " in line))
    next_head = timeline.index(heads[heads.index(timeline[fail_index]) + 1])
    fail_block = " ".join(line.strip() for line in timeline[fail_index + 1: next_head])
    assert f"error: {LONG_ERROR}" in fail_block  # nothing of the error is cut
    assert "stderr: cp: disk full line two" in fail_block
    assert "type: RemoteError" in fail_block


def test_show_reports_a_torn_tail_without_failing(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, "interrupted", START)
    path.write_bytes(path.read_bytes()[:-7])
    text = render_show(read_journal(path), timeline=True)
    assert "Warning: the last record (seq" in text
    assert "was ignored" in text
    assert "  Outcome   interrupted" in text
    assert "not recorded (last record at" in text


def test_show_fits_narrow_widths_and_long_names(tmp_path: Path) -> None:
    long_plan = [{"host": "h" * 70, "service": "content-server", "old_version": "3.1.0",
                  "new_version": "3.2.2"}]
    with Journal.create(tmp_path, {"plan": long_plan, "argv": ["x" * 150]}, now=START) as journal:
        path = journal.path
    for width in (60, 100):
        lines = render_show(read_journal(path), timeline=True, width=width).splitlines()
        assert all(len(line) <= width for line in lines), (width, max(lines, key=len))
        row = next(line for line in lines if line.startswith("hhh"))
        assert "..." in row and "pending" in row


def test_format_duration() -> None:
    assert [format_duration(s) for s in (None, 0.04, 59.9, 65, 3725)] == [
        "-", "0.0s", "59.9s", "1m05s", "1h02m"
    ]


# --- export ---------------------------------------------------------------------------


def test_export_is_json_with_the_documented_fields(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, "partially rolled back", START)
    contents = read_journal(path)
    exported = json.loads(json.dumps(export_json(contents)))
    assert exported["schema"] == EXPORT_SCHEMA == "scmflow-status-export/1"
    assert exported["file"] == str(path)
    assert exported["torn_tail"] is False and exported["problems"] == []
    assert exported["outcome"] == "partially rolled back"
    assert exported["header"]["run_id"] == "20240501-080000-ab12"
    assert exported["header"]["plan"] == PLAN
    assert len(exported["records"]) == len(contents.records)
    assert len(exported["digests"]) == contents.count
    for record in exported["records"]:
        assert record["prev"] == exported["digests"][record["seq"] - 1]
        assert isinstance(record["time"], str) and record["time"].endswith("Z")
    states = {(p["host"], p["service"]): p for p in exported["pairs"]}
    assert states[("scmServer-a", "gateway")]["state"] == "verified"
    assert states[("scmServer-b", "gateway")]["state"] == "rolled_back"
    assert states[("scmServer-b", "gateway")]["last_error"] == LONG_ERROR
    assert states[("scmServer-a", "non-service")]["state"] == "pending"
    done = states[("scmServer-a", "gateway")]
    assert done["duration_seconds"] == 14.0
    assert datetime.fromisoformat(done["finished"]) - datetime.fromisoformat(done["started"]) == timedelta(
        seconds=14
    )
    assert done["events"] == list(range(2, 10))


def test_export_of_a_torn_file(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, "success", START)
    path.write_bytes(path.read_bytes()[:-3])
    exported = json.loads(json.dumps(export_json(read_journal(path))))
    assert exported["torn_tail"] is True
    assert exported["problems"] and "incomplete" in exported["problems"][0]
    assert exported["outcome"] == "interrupted"  # the closing run record was the torn one


# --- diagram --------------------------------------------------------------------------


def test_diagram_has_every_state_and_transition() -> None:
    with open(states_file("pair.toml"), "rb") as handle:
        lifecycle = tomllib.load(handle)
    diagram = render_diagram()
    lines = [line.strip() for line in diagram.splitlines()]
    assert lines[0] == "stateDiagram-v2"
    assert f"[*] --> {lifecycle['lifecycle']['initial']}" in lines
    for name, spec in lifecycle["states"].items():
        assert f"note right of {name}" in lines
        if spec.get("final"):
            assert f"{name} --> [*]" in lines
        else:
            assert f"{name} --> [*]" not in lines
    arrows = [line for line in lines if "-->" in line and "[*]" not in line]
    expected = 0
    for transition in lifecycle["transitions"]:
        for source in transition["source"]:
            expected += 1
            matching = [line for line in arrows if line.startswith(f"{source} --> {transition['dest']} : ")]
            assert any(transition["trigger"] in line for line in matching), (source, transition)
    assert len(arrows) == expected
    assert lines.count("end note") == len(lifecycle["states"])
    assert "replaced --> rolled_back : rollback (restore)" in lines
    assert "pending --> rolled_back : rollback (abandon)" in lines


def test_diagram_of_another_lifecycle_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "pair.toml"
    lifecycle = (
        '[lifecycle]\ninitial = "a"\nupgrade = ["go"]\nstops_nodes = "go"\ndone = "b"\nfailed = "f"\n'
        'rolled_back = "r"\n'
        '[states.a]\ndescription = "start"\n[states.b]\nfinal = true\n[states.f]\n[states.r]\nfinal = true\n'
        '[[transitions]]\ntrigger = "go"\nsource = "a"\ndest = "b"\n'
        '[[transitions]]\ntrigger = "fail"\nsource = ["a", "b", "f", "r"]\ndest = "f"\n'
        '[[transitions]]\ntrigger = "rollback"\nsource = ["a", "f"]\ndest = "r"\naction = "undo"\n'
        '[[transitions]]\ntrigger = "retry"\nsource = "r"\ndest = "a"\n'
    )
    path.write_text(lifecycle)
    assert render_diagram(path).splitlines() == [
        "stateDiagram-v2",
        "    [*] --> a",
        "    a --> b : go",
        "    a --> f : fail",
        "    b --> f : fail",
        "    f --> f : fail",
        "    r --> f : fail",
        "    a --> r : rollback (undo)",
        "    f --> r : rollback (undo)",
        "    r --> a : retry",
        "    b --> [*]",
        "    r --> [*]",
        "    note right of a",
        "        start",
        "    end note",
    ]
    # the diagram uses the one lifecycle loader, with its checks and messages
    path.write_text(lifecycle.replace('initial = "a"', 'initial = "x"'))
    with pytest.raises(CatalogError, match="initial state 'x'"):
        render_diagram(path)
    path.write_text(lifecycle.replace('dest = "b"', 'dest = "z"'))
    with pytest.raises(CatalogError, match="transition #1"):
        render_diagram(path)
    path.write_text(lifecycle.replace('source = ["a", "f"]', 'source = ["a"]'))
    with pytest.raises(CatalogError, match="without a 'rollback' edge to 'r': f"):
        render_diagram(path)
    path.write_text("initial = ")
    with pytest.raises(CatalogError):
        render_diagram(path)
    with pytest.raises(CatalogError, match="cannot load the pair lifecycle"):
        render_diagram(tmp_path / "missing.toml")


# --- listing --------------------------------------------------------------------------


def test_list_gives_each_outcome_newest_first(tmp_path: Path) -> None:
    outcomes = ["success", "failed", "interrupted", "rolled back", "partially rolled back"]
    for minutes, outcome in enumerate(outcomes):
        write_scenario(tmp_path, outcome, START + timedelta(hours=minutes))
    garbage = tmp_path / "upgrade_status_2024-05-01-13:00:00"
    garbage.write_bytes(b"\x00\x01 not a status file")
    (tmp_path / "unrelated.txt").write_text("ignored")

    summaries = list_status_files(tmp_path)
    assert [s.outcome for s in summaries] == ["unreadable", *reversed(outcomes)]
    assert [s.created for s in summaries] == [
        f"2024-05-01 {hour}:00:00" for hour in (13, 12, 11, 10, "09", "08")
    ]
    by_outcome = {s.outcome: s for s in summaries}
    assert "is not an scmflow upgrade status file" in by_outcome["unreadable"].detail
    assert by_outcome["success"].states == {"verified": 3}
    assert by_outcome["rolled back"].actions == ("upgrade", "rollback")
    assert by_outcome["rolled back"].states == {"rolled_back": 3}
    assert by_outcome["partially rolled back"].states == {"verified": 1, "rolled_back": 1, "pending": 1}
    assert by_outcome["failed"].release_version == "3.2.2"
    assert by_outcome["failed"].pair_count == 3

    text = render_list(summaries)
    lines = text.splitlines()
    assert len(lines) == len(summaries)
    for summary, line in zip(summaries, lines, strict=True):
        assert line.startswith(summary.created)
        assert summary.outcome in line and summary.path.name in line


def test_outcome_when_a_run_claims_success_but_a_pair_is_not_verified(tmp_path: Path) -> None:
    with Journal.create(tmp_path, header(), now=START) as journal:
        run(journal, "upgrade", "started")
        upgrade(journal, PLAN[0])
        run(journal, "upgrade", "success")
    assert [s.outcome for s in list_status_files(tmp_path)] == ["failed"]


def test_interrupted_rollback_is_interrupted(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, "failed", START)
    with Journal.open_for_append(path) as journal:
        run(journal, "rollback", "started")
        roll_back(journal, PLAN[1], "failed")
    assert [s.outcome for s in list_status_files(tmp_path)] == ["interrupted"]


def test_suffixed_files_sort_after_their_base(tmp_path: Path) -> None:
    for _ in range(3):
        write_scenario(tmp_path, "success", START)
    names = [s.path.name for s in list_status_files(tmp_path)]
    base = "upgrade_status_2024-05-01-08:00:00"
    assert names == [f"{base}-3", f"{base}-2", base]


def test_empty_or_missing_status_dir(tmp_path: Path) -> None:
    assert list_status_files(tmp_path / "none") == []
    assert render_list([]) == "No upgrade status files found.\n"


def test_show_reads_the_scheduler_layout_record_and_packages_by_service(tmp_path: Path) -> None:
    scheduler_header = {
        key: value for key, value in header().items()
        if key not in ("install_path", "install_user", "remote_pack_dir", "remote_backup_dir", "release")
    }
    scheduler_header["layout"] = {
        "install_path": "/data/sequoiacm",
        "install_user": "scmadmin",
        "upgrade_dir": "/opt/upgrade/sequoiacm/upgrade-x",
        "backup_dir": "/opt/backup/sequoiacm/backup-x",
    }
    scheduler_header["release"] = {
        "version": "3.2.2",
        "packages": {"gateway": {"name": "sequoiacm-cloud-3.2.2-release.tar.gz", "sha256": "cd" * 32}},
    }
    with Journal.create(tmp_path, scheduler_header, now=START) as journal:
        path = journal.path
    lines = render_show(read_journal(path)).splitlines()
    assert "  Install   /data/sequoiacm as scmadmin" in lines
    assert "  Remote    pack /opt/upgrade/sequoiacm/upgrade-x, backup /opt/backup/sequoiacm/backup-x" in lines
    assert "            sequoiacm-cloud-3.2.2-release.tar.gz sha256" in lines
    assert "            " + "cd" * 32 in lines


def test_show_and_export_say_whether_the_file_is_authentic(tmp_path: Path) -> None:
    key = StatusKey.generate(tmp_path / "status.key")
    with Journal.create(tmp_path / "signed", header(), now=START, key=key) as journal:
        run(journal, "upgrade", "started")
    signed = journal.path
    with Journal.create(tmp_path / "unsigned", header(), now=START) as journal:
        run(journal, "upgrade", "started")
    unsigned = journal.path

    def authentic_line(path: Path, with_key: StatusKey | None) -> str:
        text = render_show(read_journal(path, key=with_key), width=400, key_path=tmp_path / "status.key")
        return next(line for line in text.splitlines() if line.startswith("  Authentic "))

    assert authentic_line(signed, key) == (
        f"  Authentic yes, every record's MAC is valid with status key {key.key_id} "
        f"({tmp_path / 'status.key'})"
    )
    assert authentic_line(signed, None) == (
        f"  Authentic unknown, there is no status key to check its MACs with (the file names status key "
        f"{key.key_id}); there is none at {tmp_path / 'status.key'} (--status-key FILE gives the key of the "
        "machine that wrote it)"
    )
    assert authentic_line(signed, StatusKey.generate()).startswith(
        "  Authentic NO, record 0's MAC is not valid with status key "
    )
    assert authentic_line(unsigned, key) == (
        "  Authentic unknown, it is in status format version 1, whose records carry no MAC"
    )
    exported = export_json(read_journal(signed, key=key))["authenticity"]
    assert (exported["authentic"], exported["state"], exported["key_id"]) == (True, "authentic", key.key_id)
    exported = export_json(read_journal(unsigned))["authenticity"]
    assert (exported["authentic"], exported["state"], exported["file_key_id"]) == (False, "unsigned", None)


def test_trusted_values_name_every_host_user_and_path() -> None:
    layout = {"install_path": "/opt/sequoiacm", "install_user": "scmadmin", "admin_user": "root",
              "upgrade_dir": "/opt/upgrade/sequoiacm/upgrade-s",
              "backup_dir": "/opt/backup/sequoiacm/backup-s"}
    lines = trusted_values({**header(), "layout": layout})
    assert lines == [
        "host        scmServer-a:22 as root, JAVA_HOME /opt/jdk",
        "host        scmServer-b:2222 as root, JAVA_HOME (from /etc/profile)",
        "install     /opt/sequoiacm, run as scmadmin (directories made by root)",
        "upgrade dir /opt/upgrade/sequoiacm/upgrade-s",
        "backup dir  /opt/backup/sequoiacm/backup-s",
        "release     3.2.2 from None",
        "config      none recorded",
    ]


# --- pairs never started --------------------------------------------------------------


def crashed_then_rolled_back(status_dir: Path, *, touched: bool = True) -> Path:
    """An upgrade killed after one pair and a half (no closing record), then rolled back.

    The third pair was never reached; with `touched=False` the rollback rolls back nothing.
    """
    a, b, _ = PLAN
    with Journal.create(status_dir, header(), now=START, clock=Ticker(START)) as journal:
        run(journal, "upgrade", "started")
        if touched:
            upgrade(journal, a)
            upgrade(journal, b, STEPS[:1])
        path = journal.path
    with Journal.open_for_append(path, clock=Ticker(START + timedelta(minutes=5))) as journal:
        run(journal, "rollback", "started")
        if touched:
            roll_back(journal, b, "backed_up")
            roll_back(journal, a, "verified")
        run(journal, "rollback", "success")
    return path


def test_a_crashed_run_rolled_back_in_full_reads_rolled_back(tmp_path: Path) -> None:
    path = crashed_then_rolled_back(tmp_path)
    contents = read_journal(path)
    lines = render_show(contents).splitlines()
    assert "  Outcome   rolled back" in lines
    assert "  Pairs     1 of 3 never started" in lines
    assert lines.index("  Pairs     1 of 3 never started") == lines.index("  Outcome   rolled back") + 1
    exported = json.loads(json.dumps(export_json(contents)))
    assert (exported["outcome"], exported["never_started"]) == ("rolled back", 1)
    [summary] = list_status_files(tmp_path)
    assert (summary.outcome, summary.never_started) == ("rolled back", 1)
    assert summary.states == {"rolled_back": 2, "pending": 1}
    assert render_list([summary]).rstrip("\n").endswith("[1 pending, 2 rolled_back] (1 never started)")


def test_a_rollback_of_a_run_that_reached_no_pair_reads_rolled_back(tmp_path: Path) -> None:
    contents = read_journal(crashed_then_rolled_back(tmp_path, touched=False))
    assert never_started_count(replay(contents)) == 3
    assert export_json(contents)["outcome"] == "rolled back"
    assert "  Pairs     3 of 3 never started" in render_show(contents).splitlines()


def test_a_pair_with_an_action_begun_or_failed_was_started(tmp_path: Path) -> None:
    a, b, c = PLAN
    with Journal.create(tmp_path, header(), now=START, clock=Ticker(START)) as journal:
        run(journal, "upgrade", "started")
        upgrade(journal, a)
        # killed while b's backup ran: b is still pending, but something may have been done
        journal.append(pair_event("begin", b, "backup", "pending", "backed_up"))
        # a note names c: still, nothing was done to it
        journal.append({"kind": "note", "host": c["host"], "service": c["service"], "detail": "checked"})
        path = journal.path
    with Journal.open_for_append(path, clock=Ticker(START + timedelta(minutes=5))) as journal:
        run(journal, "rollback", "started")
        roll_back(journal, a, "verified")
        run(journal, "rollback", "success")
    contents = read_journal(path)
    pairs = replay(contents)
    assert pairs[(b["host"], b["service"])].state == "pending"
    assert never_started_count(pairs) == 1
    exported = export_json(contents)
    assert (exported["outcome"], exported["never_started"]) == ("partially rolled back", 1)


def test_pairs_never_started_do_not_make_a_failed_upgrade_a_success_or_a_rollback(tmp_path: Path) -> None:
    for outcome in ("success", "failed", "interrupted"):
        contents = read_journal(write_scenario(tmp_path / outcome, outcome, START))
        exported = export_json(contents)
        expected = {"success": 0, "failed": 1, "interrupted": 1}[outcome]
        assert (exported["outcome"], exported["never_started"]) == (outcome, expected)


# --- escapes --------------------------------------------------------------------------

RED = "\x1b[31m"


def test_show_and_list_escape_control_characters_from_the_file(tmp_path: Path) -> None:
    hostile = header()
    hostile["argv"] = ["scm.py", "cluster", f"--upgrade{RED}", "--unattended"]
    hostile["operator"] = "root\r\x07"
    hostile["release"] = {"version": f"3.2.2{RED}", "packages": []}
    plan = [{**PLAN[0], "host": "scmServer-a\nFAKE verified"}, *PLAN[1:]]
    hostile["plan"] = plan
    with Journal.create(tmp_path, hostile, now=START, clock=Ticker(START)) as journal:
        run(journal, "upgrade", "started")
        journal.append(pair_event("begin", PLAN[1], "backup", "pending", "backed_up"))
        journal.append(pair_event("fail", PLAN[1], "backup", "pending", "failed",
                                  {"error": f"disk {RED}full\u202e", "stderr": f"cp: {RED}no space"}))
        run(journal, "upgrade", "failed")
        path = journal.path

    text = render_show(read_journal(path), timeline=True)
    printed = text.replace("\n", "")  # the renderer's own line breaks
    assert all(ch.isprintable() for ch in printed), [ch for ch in printed if not ch.isprintable()]
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    assert "  Command   scm.py cluster --upgrade\\x1b[31m --unattended" in lines
    assert "  Operator  root\\r\\x07 on ctl-1" in lines
    assert any(line.startswith("  Release   3.2.2\\x1b[31m") for line in lines)
    assert "  [scmServer-b] gateway: disk \\x1b[31mfull\\u202e" in lines
    assert "stderr: cp: \\x1b[31mno space" in text
    # a newline in a host name does not start a row of its own
    assert any(line.startswith("scmServer-a\\nFAKE verified ") for line in lines)
    assert not any(line.startswith("FAKE") for line in lines)

    listed = render_list(list_status_files(tmp_path))
    assert all(ch.isprintable() for ch in listed.rstrip("\n"))
    assert " 3.2.2\\x1b[31m  " in listed
