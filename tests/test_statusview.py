"""`status show`, and the outcomes and never-started pairs every view reports alike."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from scmflow.journal import Journal
from scmflow.journalreader import read_journal
from scmflow.outcome import never_started_count
from scmflow.replay import replay
from scmflow.statusexport import export_json
from scmflow.statuskey import StatusKey
from scmflow.statuslist import list_status_files, render_list
from scmflow.statusview import format_duration, render_show
from tests.statusscenarios import (
    LONG_ERROR,
    PLAN,
    START,
    STEPS,
    Ticker,
    header,
    pair_event,
    roll_back,
    run,
    upgrade,
    write_scenario,
)

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
