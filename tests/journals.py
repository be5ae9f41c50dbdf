"""Status files for the journal and replay tests: a plan, its header, pair events, a ticking clock."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from scmflow.journal import Journal

NOW = datetime(2024, 5, 1, 8, 0, 0)
PLAN = [
    {"host": "h1", "service": "gateway", "old_version": "3.2.1", "new_version": "3.2.2"},
    {"host": "h2", "service": "gateway", "old_version": "3.2.1", "new_version": "3.2.2"},
    {"host": "h1", "service": "content-server", "old_version": "3.2.0", "new_version": "3.2.2"},
    {"host": "h2", "service": "content-server", "old_version": None, "new_version": "3.2.2"},
]
STEPS = [
    ("backup", "pending", "backed_up"),
    ("replace", "backed_up", "replaced"),
    ("restart", "replaced", "restarted"),
    ("verify", "restarted", "verified"),
]


class Ticker:
    """A clock that advances by `step` seconds at every reading."""

    def __init__(self, start: float = 1714550400.0, step: float = 0.25) -> None:
        self.now = start - step
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def header(**extra: Any) -> dict[str, Any]:
    return {
        "run_id": "run-1",
        "operator": "root",
        "argv": ["scm.py", "cluster", "--upgrade"],
        "hosts": [{"name": "h1", "port": 22, "user": "root", "java_home": "/opt/jdk"}],
        "plan": PLAN,
        **extra,
    }


def pair_event(kind: str, host: str, service: str, trigger: str, src: str, dst: str, **extra: Any):
    return {
        "kind": kind,
        "host": host,
        "service": service,
        "trigger": trigger,
        "src": src,
        "dst": dst,
        **extra,
    }


def run_steps(journal: Journal, host: str, service: str, steps=STEPS) -> None:
    for trigger, src, dst in steps:
        journal.append(pair_event("begin", host, service, trigger, src, dst, detail={"action": trigger}))
        journal.append(pair_event("transition", host, service, trigger, src, dst, detail={"ok": True}))


def sample_journal(tmp_path: Path) -> Path:
    """Header plus a run record and eight pair events plus a closing run record."""
    with Journal.create(tmp_path / "status", header(), now=NOW, clock=Ticker()) as journal:
        journal.append({"kind": "run", "detail": {"action": "upgrade", "result": "started"}})
        run_steps(journal, "h1", "gateway")
        journal.append({"kind": "run", "detail": {"action": "upgrade", "result": "success"}})
        return journal.path
