"""`status export`: the whole status file as JSON."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from scmflow.journalreader import read_journal
from scmflow.statusexport import EXPORT_SCHEMA, export_json
from tests.statusscenarios import LONG_ERROR, PLAN, START, write_scenario


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
