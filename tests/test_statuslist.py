"""`status list`: every status file, newest first, with its outcome."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from scmflow.journal import Journal
from scmflow.statuslist import list_status_files, render_list
from tests.statusscenarios import PLAN, START, header, roll_back, run, upgrade, write_scenario


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
