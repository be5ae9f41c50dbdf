"""The status file's event records, one builder per kind (the pair events come from machine.py).

docs/status-file.md defines each kind; building them here keeps every writer to one shape.
"""

from __future__ import annotations

from typing import Any

from scmflow.plan import Pair


def run_record(action: str, result: str, **detail: Any) -> dict[str, Any]:
    """A `run` record: an upgrade, resume or rollback `started`, or how it ended."""
    return {"kind": "run", "detail": {"action": action, "result": result, **detail}}


def note_record(**detail: Any) -> dict[str, Any]:
    """A `note`: a fact worth keeping that changes no pair's state."""
    return {"kind": "note", "detail": detail}


def probe_record(pair: Pair) -> dict[str, Any]:
    """A `probe`: the version and nodes a resume found on a pair's host before redoing it."""
    nodes = [{"port": n.port, "running": n.running} for n in pair.nodes]
    return {
        "kind": "probe",
        "host": pair.host,
        "service": pair.service,
        "detail": {"version": pair.old_version, "nodes": nodes},
    }


def hook_record(pair: Pair, detail: dict[str, Any]) -> dict[str, Any]:
    """A `hook`: one operator hook run for a pair (its HookResult's record)."""
    return {"kind": "hook", "host": pair.host, "service": pair.service, "detail": detail}
