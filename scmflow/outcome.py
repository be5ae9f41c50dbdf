"""A status file's outcome: how its last run ended and where that left the pairs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scmflow.journalreader import JournalContents
from scmflow.lifecycle import Lifecycle, load_lifecycle
from scmflow.replay import PairReplay

SUCCESS = "success"
FAILED = "failed"
INTERRUPTED = "interrupted"
ROLLED_BACK = "rolled back"
PARTIALLY_ROLLED_BACK = "partially rolled back"
UNREADABLE = "unreadable"
PAUSED = "paused"
OUTCOMES = (SUCCESS, FAILED, INTERRUPTED, PAUSED, ROLLED_BACK, PARTIALLY_ROLLED_BACK, UNREADABLE)

# `run` record results that close a run; "started" opens one.
CLOSING_RESULTS = frozenset({"success", "failed", "interrupted", "paused"})
# Pair records that mean an action was at least attempted on the pair.
_ACTION_KINDS = frozenset({"begin", "transition", "fail"})


def run_records(contents: JournalContents) -> list[dict[str, Any]]:
    """The `run` records (start and end of each upgrade, rollback or resume)."""
    return [r for r in contents.records if r.get("kind") == "run"]


def never_started(pair: PairReplay) -> bool:
    """Whether nothing was ever done to the pair: nothing in flight, no action recorded.

    Such a pair is still in the lifecycle's initial state: only those records move a pair.
    """
    return pair.in_flight is None and not any(r.get("kind") in _ACTION_KINDS for r in pair.history)


def never_started_count(pairs: Mapping[tuple[str, str], PairReplay]) -> int:
    """How many pairs were never started (see `never_started`)."""
    return sum(1 for p in pairs.values() if never_started(p))


def outcome_of(
    contents: JournalContents,
    pairs: Mapping[tuple[str, str], PairReplay],
    lifecycle: Lifecycle | None = None,
) -> str:
    """The file's outcome; rules in order, first match wins (see docs/status-file.md)."""
    lifecycle = lifecycle or load_lifecycle()
    runs = run_records(contents)
    last = run_detail(runs[-1]) if runs else {}
    last_result = last.get("result")
    if last_result not in CLOSING_RESULTS or last_result == INTERRUPTED:
        return INTERRUPTED
    if last_result == PAUSED:
        return PAUSED
    states = [p.state for p in pairs.values()]
    rolled_back = sum(1 for s in states if s == lifecycle.rolled_back)
    # A crash can stop an upgrade before it reaches some pairs; a rollback then leaves them
    # pending, yet they are exactly as they were before the upgrade, like a rolled-back pair.
    as_before = rolled_back + never_started_count(pairs)
    # A failed upgrade puts its failed pair back on the spot: that is a failure, not a rollback.
    if last.get("action") == "rollback" and states and as_before == len(states):
        return ROLLED_BACK
    if last.get("action") == "rollback" and rolled_back:
        return PARTIALLY_ROLLED_BACK
    if last_result == SUCCESS and all(s == lifecycle.done for s in states):
        return SUCCESS
    # a resume narrowed by --host/--service that did all it was asked: the rest is left on
    # purpose, still pending, and a later resume carries on
    left_on_purpose = set(states) <= {lifecycle.done, lifecycle.initial}
    if last_result == SUCCESS and last.get("action") == "resume" and left_on_purpose:
        return PAUSED
    return FAILED


def run_detail(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """A `run` record's detail (action, result, ...); empty when it holds none."""
    detail = record.get("detail")
    return detail if isinstance(detail, Mapping) else {}
