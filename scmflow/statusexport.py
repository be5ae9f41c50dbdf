"""A status file as one JSON document, schema `scmflow-status-export/1` (docs/status-file.md)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgpack

from scmflow.authenticity import Authenticity
from scmflow.journalreader import JournalContents
from scmflow.lifecycle import load_lifecycle
from scmflow.outcome import never_started_count, outcome_of
from scmflow.replay import PairReplay, replay
from scmflow.statusformat import format_time

EXPORT_SCHEMA = "scmflow-status-export/1"


def export_json(contents: JournalContents) -> dict[str, Any]:
    """The whole file as JSON-ready data, schema `scmflow-status-export/1`."""
    lifecycle = load_lifecycle()
    pairs = replay(contents, lifecycle)
    return {
        "schema": EXPORT_SCHEMA,
        "file": str(contents.path),
        "header": _jsonable(contents.header),
        "records": [_jsonable(r) for r in contents.records],
        "digests": [d.hex() for d in contents.digests],
        "torn_tail": contents.torn_tail,
        "problems": list(contents.problems),
        "outcome": outcome_of(contents, pairs, lifecycle),
        "never_started": never_started_count(pairs),
        "pairs": [_pair_export(p) for p in pairs.values()],
        "authenticity": _authenticity_export(contents.authenticity),
    }


def _authenticity_export(authenticity: Authenticity) -> dict[str, Any]:
    return {
        "authentic": authenticity.ok,
        "state": authenticity.state,
        "first_bad_seq": authenticity.first_bad_seq,
        "key_id": authenticity.key.key_id if authenticity.key is not None else None,
        "file_key_id": authenticity.file_key_id,
        "reason": authenticity.reason,
    }


def _pair_export(pair: PairReplay) -> dict[str, Any]:
    started, finished = pair.started, pair.finished
    return {
        "host": pair.host,
        "service": pair.service,
        "old_version": pair.old_version,
        "new_version": pair.new_version,
        "state": pair.state,
        "in_flight": pair.in_flight,
        "last_error": pair.last_error,
        "in_plan": pair.in_plan,
        "started": None if started is None else format_time(started),
        "finished": None if finished is None else format_time(finished),
        "duration_seconds": pair.duration,
        "events": [r.get("seq") for r in pair.history],
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, msgpack.Timestamp):
        return value.to_datetime().isoformat()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, msgpack.ExtType):
        return {"ext_type": value.code, "data": value.data.hex()}
    return value
