"""The pair lifecycle file (states/pair.toml) and the PairRun state machine driving one pair."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from scmflow.errors import CatalogError, RemoteError
from scmflow.machine import (
    Lifecycle,
    PairRun,
    load_lifecycle,
    states_without_rollback,
    unreachable_states,
)
from scmflow.plan import Pair, PlannedNode
from scmflow.resources import states_file

PAIR = Pair(
    host="h1",
    service="gateway",
    printed="GATEWAY",
    old_version="3.1.2",
    new_version="3.2.2",
    nodes=(PlannedNode(port=8080, running=True),),
)

# A small valid lifecycle; the bad-file tests each break one thing in it.
GOOD = """
[lifecycle]
initial = "pending"
upgrade = ["work"]
stops_nodes = "work"
done = "done"
failed = "failed"
rolled_back = "rolled_back"

[states.pending]
description = "planned"

[states.done]
description = "done"
final = true

[states.failed]
description = "failed"

[states.rolled_back]
description = "rolled back"
final = true

[[transitions]]
trigger = "work"
source = ["pending"]
dest = "done"
action = "work"

[[transitions]]
trigger = "rollback"
source = ["pending", "failed"]
dest = "rolled_back"
action = "undo"

[[transitions]]
trigger = "fail"
source = ["pending", "done", "failed", "rolled_back"]
dest = "failed"

[[transitions]]
trigger = "retry"
source = ["rolled_back"]
dest = "pending"
"""
FAILED = load_lifecycle().failed


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pair.toml"
    path.write_text(text, encoding="utf-8")
    return path


class Recorder:
    """Collects journal events and action calls; `fail_on` names actions that raise."""

    def __init__(self, fail_on: Mapping[str, BaseException] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.actions: list[str] = []
        self.fail_on = dict(fail_on or {})

    def record(self, event: Mapping[str, Any]) -> None:
        self.events.append(dict(event))

    def run_action(self, action: str, pair: Pair) -> Mapping[str, Any]:
        self.actions.append(action)
        if action in self.fail_on:
            raise self.fail_on[action]
        return {"did": action, "host": pair.host}

    def kinds(self) -> list[tuple[str, str, str, str | None]]:
        return [(e["kind"], e["trigger"], e["src"], e.get("dst")) for e in self.events]


def make_run(recorder: Recorder, initial: str | None = None) -> PairRun:
    return PairRun(
        PAIR,
        load_lifecycle(),
        run_action=recorder.run_action,
        record=recorder.record,
        initial=initial,
    )


# ------------------------------------------------------------------- the declared lifecycle


def test_real_lifecycle_loads_with_its_states_and_finals() -> None:
    lifecycle = load_lifecycle()
    assert lifecycle.initial == "pending"
    assert (lifecycle.done, lifecycle.failed, lifecycle.rolled_back) == ("verified", "failed", "rolled_back")
    assert lifecycle.upgrade == ("backup", "replace", "restart", "verify")
    assert lifecycle.upgrade_path() == ("pending", "backed_up", "replaced", "restarted", "verified")
    assert lifecycle.before_stop() == ("pending", "backed_up")
    assert lifecycle.after_stop() == ("replaced", "restarted", "verified")
    assert lifecycle.clean() == ("pending", "rolled_back")
    assert list(lifecycle.states) == [
        "pending",
        "backed_up",
        "replaced",
        "restarted",
        "verified",
        "failed",
        "rolled_back",
    ]
    assert lifecycle.final == frozenset({"verified", "rolled_back"})
    assert lifecycle.actions() == frozenset({"backup", "replace", "restart", "verify", "abandon", "restore"})


def test_real_lifecycle_has_no_unreachable_state() -> None:
    assert unreachable_states(load_lifecycle()) == set()


def test_every_non_final_real_state_has_a_rollback_edge() -> None:
    lifecycle = load_lifecycle()
    assert states_without_rollback(lifecycle) == set()
    # `failed` is not final, so the check above covers it: only rollback leaves it for
    # another state (`fail` loops on it when a rollback of a failed pair fails).
    assert "failed" not in lifecycle.final
    leaving = {(t.trigger, t.dest) for t in lifecycle.transitions if "failed" in t.source}
    assert leaving == {("rollback", "rolled_back"), ("fail", "failed")}


def test_every_real_state_has_a_fail_edge_to_failed() -> None:
    lifecycle = load_lifecycle()
    for state in lifecycle.states:
        edge = lifecycle.edge("fail", state)
        assert edge is not None and edge.dest == "failed" and edge.action is None, state


def test_the_checks_catch_an_unreachable_state_without_rollback(tmp_path: Path) -> None:
    good = load_lifecycle(write(tmp_path, GOOD))
    broken = dataclasses.replace(good, states={**good.states, "orphan": "nobody goes here"})
    assert unreachable_states(broken) == {"orphan"}
    assert states_without_rollback(broken) == {"orphan"}
    assert unreachable_states(good) == states_without_rollback(good) == set()


def test_edge_finds_the_transition_of_a_trigger_from_a_state() -> None:
    lifecycle = load_lifecycle()
    edge = lifecycle.edge("rollback", "replaced")
    assert edge is not None and edge.action == "restore" and edge.dest == "rolled_back"
    assert lifecycle.edge("backup", "replaced") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace('initial = "pending"', ""), "initial state 'None' is not declared"),
        (
            lambda t: t.replace('initial = "pending"', 'initial = "nowhere"'),
            "initial state 'nowhere' is not declared",
        ),
        (
            lambda t: t.replace('dest = "done"', 'dest = "heaven"'),
            "transition #1 (work): 'dest' 'heaven' is not a declared state",
        ),
        (
            lambda t: t.replace('source = ["pending"]', 'source = ["pending", "ghost"]'),
            "transition #1 (work): 'source' must list declared states",
        ),
        (
            lambda t: t + '\n[[transitions]]\ntrigger = "work"\nsource = "pending"\ndest = "failed"\n',
            "trigger 'work' is declared twice from 'pending'",
        ),
        (
            lambda t: t.replace('action = "undo"', 'action = "undo it"'),
            "transition #2 (rollback): 'action' must be an identifier",
        ),
        (
            lambda t: t.replace('trigger = "work"', 'trigger = "do-work"'),
            "transition #1: 'trigger' must be an identifier",
        ),
        (
            lambda t: t.replace('action = "work"', 'action = "work"\nretries = 3'),
            "transition #1: unknown keys retries",
        ),
        (
            lambda t: t.replace('[states.failed]\ndescription = "failed"\n', ""),
            "[lifecycle] failed state 'failed' is not declared",
        ),
        (lambda t: t.split("[[transitions]]")[0], "no [[transitions]]"),
        (lambda t: t.split("[states.pending]")[0], "no [states.*] tables"),
        (lambda t: 'initial = "pending"\n' + t, "unknown top-level keys initial"),
        (lambda t: "[states.pending]" + t.split("[states.pending]")[1], "no [lifecycle] table"),
        (
            lambda t: t.replace('done = "done"', 'done = "done"\nretries = 3'),
            "[lifecycle]: unknown keys retries",
        ),
        (
            lambda t: t.replace('"work"]\nstops_nodes = "work"', '"retry"]\nstops_nodes = "retry"'),
            "[lifecycle] upgrade: no 'retry' transition from 'pending'",
        ),
        (
            lambda t: t.replace('"work"]\nstops_nodes = "work"', '"rollback"]\nstops_nodes = "rollback"'),
            "[lifecycle] upgrade ends in 'rolled_back', not in the done state 'done'",
        ),
        (lambda t: t.replace('upgrade = ["work"]', "upgrade = []"), "'upgrade' must list the triggers"),
        (
            lambda t: t.replace('stops_nodes = "work"', 'stops_nodes = "rollback"'),
            "'stops_nodes' 'rollback' is not a trigger of 'upgrade'",
        ),
        (
            lambda t: t.replace('description = "done"\nfinal = true', 'description = "done"'),
            "the done state 'done' must be final",
        ),
        (
            lambda t: t + '\n[states.orphan]\ndescription = "nobody goes here"\n',
            "states not reachable from 'pending': orphan",
        ),
        (
            lambda t: t.replace('"rolled_back"]\ndest = "failed"', '"rolled_back", "limbo"]\ndest = "failed"')
            + '\n[states.limbo]\ndescription = "reached, never left"\n'
            + '\n[[transitions]]\ntrigger = "stall"\nsource = "pending"\ndest = "limbo"\n',
            "non-final states without a 'rollback' edge to 'rolled_back': limbo",
        ),
        (
            lambda t: t.replace('"failed", "rolled_back"]\ndest = "failed"', '"failed"]\ndest = "failed"'),
            "states without a 'fail' edge to 'failed' (an action or hook can fail in each): rolled_back",
        ),
        (
            lambda t: t.replace('trigger = "retry"', 'trigger = "again"'),
            "no 'retry' edge from 'rolled_back' to 'pending'",
        ),
        (
            lambda t: t.replace('description = "done"', "description = 7"),
            "state 'done' needs a description string",
        ),
        (lambda t: t + "\n[[[broken", "cannot load the pair lifecycle"),
    ],
    ids=[
        "missing-initial",
        "undeclared-initial",
        "unknown-dest",
        "unknown-source",
        "duplicate-trigger",
        "non-identifier-action",
        "non-identifier-trigger",
        "unknown-key",
        "no-failed-state",
        "no-transitions",
        "no-states",
        "top-level-initial",
        "no-lifecycle-table",
        "unknown-lifecycle-key",
        "upgrade-not-a-chain",
        "upgrade-not-ending-done",
        "empty-upgrade",
        "stops-nodes-off-path",
        "done-not-final",
        "unreachable-state",
        "state-without-rollback",
        "state-without-fail",
        "no-retry",
        "bad-description",
        "bad-toml",
    ],
)
def test_a_broken_lifecycle_file_is_refused_with_a_clear_message(
    tmp_path: Path, change: Any, message: str
) -> None:
    path = write(tmp_path, change(GOOD))
    with pytest.raises(CatalogError) as caught:
        load_lifecycle(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ")
    assert message in text
    assert "\n" not in text


def test_the_good_sample_itself_loads(tmp_path: Path) -> None:
    lifecycle = load_lifecycle(write(tmp_path, GOOD))
    assert isinstance(lifecycle, Lifecycle)
    assert lifecycle.edge("rollback", "failed") is not None


def test_a_missing_lifecycle_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot load the pair lifecycle"):
        load_lifecycle(tmp_path / "absent.toml")


# ------------------------------------------------------------------------------ PairRun


def test_a_step_journals_begin_then_transition_with_the_action_result() -> None:
    recorder = Recorder()
    run = make_run(recorder)
    result = run.fire("backup")
    assert result == {"did": "backup", "host": "h1"}
    assert run.state == "backed_up"
    assert recorder.actions == ["backup"]
    assert recorder.events == [
        {
            "kind": "begin",
            "host": "h1",
            "service": "gateway",
            "trigger": "backup",
            "src": "pending",
            "dst": "backed_up",
            "detail": {"action": "backup"},
        },
        {
            "kind": "transition",
            "host": "h1",
            "service": "gateway",
            "trigger": "backup",
            "src": "pending",
            "dst": "backed_up",
            "detail": {"did": "backup", "host": "h1"},
        },
    ]


def test_the_whole_upgrade_journals_every_step_in_order() -> None:
    recorder = Recorder()
    run = make_run(recorder)
    for trigger in ("backup", "replace", "restart", "verify"):
        run.fire(trigger)
    assert run.state == "verified"
    assert recorder.kinds() == [
        ("begin", "backup", "pending", "backed_up"),
        ("transition", "backup", "pending", "backed_up"),
        ("begin", "replace", "backed_up", "replaced"),
        ("transition", "replace", "backed_up", "replaced"),
        ("begin", "restart", "replaced", "restarted"),
        ("transition", "restart", "replaced", "restarted"),
        ("begin", "verify", "restarted", "verified"),
        ("transition", "verify", "restarted", "verified"),
    ]


def test_a_raising_action_leaves_the_pair_failed_and_re_raises() -> None:
    error = RemoteError("h1", "replace failed: disk full", stderr="line1\nno space left")
    recorder = Recorder(fail_on={"replace": error})
    run = make_run(recorder, initial="backed_up")
    with pytest.raises(RemoteError) as caught:
        run.fire("replace")
    assert caught.value is error
    assert run.state == FAILED
    assert run.error is error
    assert recorder.kinds() == [
        ("begin", "replace", "backed_up", "replaced"),
        ("fail", "replace", "backed_up", "failed"),
    ]
    detail = recorder.events[-1]["detail"]
    assert detail["type"] == "RemoteError"
    assert detail["error"] == str(error)
    assert detail["stderr"] == "line1\nno space left"


def test_an_error_without_text_is_named_by_its_type() -> None:
    recorder = Recorder(fail_on={"backup": RuntimeError()})
    run = make_run(recorder)
    with pytest.raises(RuntimeError):
        run.fire("backup")
    assert recorder.events[-1]["detail"] == {"error": "RuntimeError", "type": "RuntimeError"}


def test_only_rollback_leaves_failed() -> None:
    recorder = Recorder()
    run = make_run(recorder, initial="failed")
    for trigger in ("backup", "replace", "restart", "verify", "retry"):
        assert not run.can(trigger)
        with pytest.raises(ValueError, match=f"no '{trigger}' from state 'failed'"):
            run.fire(trigger)
    assert recorder.events == [] and recorder.actions == []
    run.fire("rollback")
    assert run.state == "rolled_back"


@pytest.mark.parametrize(
    ("state", "action"),
    [
        ("pending", "abandon"),
        ("backed_up", "abandon"),
        ("replaced", "restore"),
        ("restarted", "restore"),
        ("verified", "restore"),
        ("failed", "restore"),
    ],
)
def test_rollback_from_each_state_runs_the_declared_action(state: str, action: str) -> None:
    declared = load_lifecycle().edge("rollback", state)
    assert declared is not None and declared.action == action
    recorder = Recorder()
    run = make_run(recorder, initial=state)
    run.fire("rollback")
    assert recorder.actions == [action]
    assert run.state == "rolled_back"
    assert recorder.kinds() == [
        ("begin", "rollback", state, "rolled_back"),
        ("transition", "rollback", state, "rolled_back"),
    ]


def test_rolled_back_has_no_rollback_and_retry_returns_to_pending_without_an_action() -> None:
    recorder = Recorder()
    run = make_run(recorder, initial="rolled_back")
    assert not run.can("rollback")
    run.fire("retry")
    assert run.state == "pending"
    assert recorder.actions == []
    assert recorder.kinds() == [
        ("begin", "retry", "rolled_back", "pending"),
        ("transition", "retry", "rolled_back", "pending"),
    ]
    assert recorder.events[0]["detail"] == {"action": None}


@pytest.mark.parametrize("state", ["replaced", "failed"])
def test_a_failing_rollback_leaves_the_pair_failed(state: str) -> None:
    # from failed, the declared `fail` edge loops back on failed
    recorder = Recorder(fail_on={"restore": RemoteError("h1", "restore failed: gone")})
    run = make_run(recorder, initial=state)
    with pytest.raises(RemoteError):
        run.fire("rollback")
    assert run.state == FAILED
    assert recorder.kinds() == [
        ("begin", "rollback", state, "rolled_back"),
        ("fail", "rollback", state, "failed"),
    ]


def test_mark_failed_records_the_interrupted_step_and_moves_to_failed() -> None:
    recorder = Recorder()
    run = make_run(recorder, initial="backed_up")
    run.mark_failed("replace", "interrupted")
    assert run.state == FAILED
    assert recorder.events == [
        {
            "kind": "fail",
            "host": "h1",
            "service": "gateway",
            "trigger": "replace",
            "src": "backed_up",
            "dst": "failed",
            "detail": {"error": "interrupted"},
        }
    ]
    assert recorder.actions == []


def test_pair_runs_do_not_share_state() -> None:
    first, second = Recorder(), Recorder()
    a, b = make_run(first), make_run(second)
    a.fire("backup")
    assert (a.state, b.state) == ("backed_up", "pending")
    assert second.events == []


def test_the_real_file_is_the_one_loaded_by_default() -> None:
    raw = tomllib.loads(states_file("pair.toml").read_text(encoding="utf-8"))
    assert load_lifecycle().initial == raw["lifecycle"]["initial"]
    assert len(load_lifecycle().transitions) == len(raw["transitions"])


@pytest.mark.parametrize("state", ["failed", "rolled_back", "verified"])
def test_mark_failed_fires_the_declared_fail_edge_from_any_state(state: str) -> None:
    # failed: a rollback of a failed pair was interrupted; rolled_back: a retry was
    recorder = Recorder()
    run = make_run(recorder, initial=state)
    run.mark_failed("rollback", "interrupted")
    assert run.state == FAILED
    assert recorder.kinds() == [("fail", "rollback", state, "failed")]
    assert recorder.events[0]["detail"] == {"error": "interrupted"}


def test_a_journal_error_while_recording_fail_propagates_and_keeps_the_state() -> None:
    def refuse(event: Mapping[str, Any]) -> None:
        raise OSError("disk full")

    recorder = Recorder()
    run = PairRun(PAIR, load_lifecycle(), run_action=recorder.run_action, record=refuse, initial="backed_up")
    with pytest.raises(OSError, match="disk full"):
        run.mark_failed("replace", "interrupted")
    assert run.state == "backed_up"


def test_fail_is_not_fired_by_name() -> None:
    recorder = Recorder()
    run = make_run(recorder)
    with pytest.raises(ValueError, match="no 'fail' from state 'pending'"):
        run.fire("fail")
    assert recorder.events == []
