"""The core's reporting helpers (scmflow/report.py): the run's debug log, JSON-ready values."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

from scmflow.report import json_ready, open_log


def test_json_ready_turns_bytes_and_tuples_into_json() -> None:
    value = {"digest": b"\x00\xff", 7: ("a", (1, b"\x10")), "nested": [{"k": None}], "f": 1.5}
    ready = json_ready(value)
    assert ready == {"digest": "00ff", "7": ["a", [1, "10"]], "nested": [{"k": None}], "f": 1.5}
    assert json.loads(json.dumps(ready)) == ready


def test_open_log_writes_a_private_debug_log(tmp_path: Path) -> None:
    logger = logging.getLogger("scmflow.test_report")
    path = tmp_path / "log" / "scmflow_run"
    handler = open_log(path, logger)
    try:
        logger.debug("secret-free debug line")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().rstrip().endswith("DEBUG scmflow.test_report secret-free debug line")
