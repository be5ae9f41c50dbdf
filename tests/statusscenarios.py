"""Status files whose histories lead to each outcome, for the tests of the auditor views."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from scmflow.journal import Journal

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
