"""Replaying a status file: each pair's state, action in flight, history and who rolled it back."""

from __future__ import annotations

from dataclasses import replace as with_roles
from pathlib import Path

import pytest

from scmflow.errors import JournalError
from scmflow.journal import Journal
from scmflow.journalreader import read_journal
from scmflow.lifecycle import load_lifecycle
from scmflow.replay import replay
from tests.journals import NOW, PLAN, STEPS, Ticker, header, pair_event, run_steps, sample_journal


def test_replay_gives_states_in_flight_actions_and_errors(tmp_path: Path) -> None:
    with Journal.create(tmp_path, header(), now=NOW, clock=Ticker()) as journal:
        run_steps(journal, "h1", "gateway")
        run_steps(journal, "h2", "gateway", STEPS[:1])
        journal.append(pair_event("begin", "h2", "gateway", "replace", "backed_up", "replaced"))
        run_steps(journal, "h1", "content-server", STEPS[:2])
        journal.append(pair_event("begin", "h1", "content-server", "restart", "replaced", "restarted"))
        journal.append(
            pair_event(
                "fail", "h1", "content-server", "restart", "replaced", "failed",
                detail={"error": "[h1] node 15000 did not start", "type": "RemoteError"},
            )
        )
        path = journal.path

    pairs = replay(read_journal(path))
    assert list(pairs) == [(p["host"], p["service"]) for p in PLAN]
    done = pairs[("h1", "gateway")]
    assert (done.state, done.in_flight, done.last_error) == ("verified", None, None)
    assert [r["kind"] for r in done.history] == ["begin", "transition"] * 4
    assert done.started == pytest.approx(1714550400.25)
    assert done.finished == pytest.approx(1714550400.25 + 7 * 0.25)
    crashed = pairs[("h2", "gateway")]
    assert (crashed.state, crashed.in_flight) == ("backed_up", "replace")
    failed = pairs[("h1", "content-server")]
    assert (failed.state, failed.in_flight) == ("failed", None)
    assert failed.last_error == "[h1] node 15000 did not start"
    untouched = pairs[("h2", "content-server")]
    assert (untouched.state, untouched.in_flight, untouched.history) == ("pending", None, ())
    assert untouched.old_version is None and untouched.new_version == "3.2.2"


def test_replay_follows_a_later_rollback(tmp_path: Path) -> None:
    path = sample_journal(tmp_path)
    with Journal.open_for_append(path) as journal:
        journal.append(pair_event("begin", "h1", "gateway", "rollback", "verified", "rolled_back"))
        journal.append(pair_event("transition", "h1", "gateway", "rollback", "verified", "rolled_back"))
        journal.append(pair_event("begin", "h2", "gateway", "rollback", "pending", "rolled_back"))
    pairs = replay(read_journal(path))
    assert pairs[("h1", "gateway")].state == "rolled_back"
    assert (pairs[("h2", "gateway")].state, pairs[("h2", "gateway")].in_flight) == ("pending", "rollback")


def test_replay_says_which_run_rolled_a_pair_back_and_what_a_resume_probed(tmp_path: Path) -> None:
    def run(journal: Journal, action: str, result: str) -> None:
        journal.append({"kind": "run", "detail": {"action": action, "result": result}})

    with Journal.create(tmp_path, header(), now=NOW) as journal:
        run(journal, "upgrade", "started")
        journal.append(pair_event("transition", "h1", "gateway", "rollback", "failed", "rolled_back"))
        run(journal, "upgrade", "failed")
        run(journal, "rollback", "started")
        journal.append(pair_event("transition", "h2", "gateway", "rollback", "verified", "rolled_back"))
        run(journal, "rollback", "success")
        run(journal, "resume", "started")
        nodes = [{"port": 8080, "running": False}, {"port": 8081, "running": True}]
        probe = {"kind": "probe", "host": "h2", "service": "content-server", "detail": {"nodes": nodes}}
        journal.append(probe)
        with pytest.raises(JournalError, match="'probe' record needs 'host'"):
            journal.append({"kind": "probe", "service": "gateway"})
    pairs = replay(read_journal(journal.path))
    assert pairs[("h1", "gateway")].rolled_back_by == "upgrade"
    assert pairs[("h2", "gateway")].rolled_back_by == "rollback"
    assert pairs[("h1", "content-server")].rolled_back_by is None
    assert pairs[("h2", "content-server")].probed_nodes == tuple(nodes)
    assert pairs[("h2", "content-server")].never_started
    assert not pairs[("h2", "gateway")].never_started


def test_replay_keeps_pairs_missing_from_the_plan(tmp_path: Path) -> None:
    with Journal.create(tmp_path, header(), now=NOW) as journal:
        journal.append(pair_event("transition", "h9", "om-server", "backup", "pending", "backed_up"))
    pairs = replay(read_journal(journal.path))
    stray = pairs[("h9", "om-server")]
    assert stray.state == "backed_up" and not stray.in_plan


def test_replay_refuses_a_malformed_plan(tmp_path: Path) -> None:
    with Journal.create(tmp_path, header(plan=[{"host": "h1"}]), now=NOW) as journal:
        path = journal.path
    with pytest.raises(JournalError, match="plan entry 0"):
        replay(read_journal(path))


def test_replay_takes_the_initial_failed_and_rolled_back_states_from_the_lifecycle(tmp_path: Path) -> None:
    with Journal.create(tmp_path, header(), now=NOW, clock=Ticker()) as journal:
        journal.append(
            pair_event("fail", "h1", "gateway", "backup", "pending", "failed", detail={"error": "x"})
        )
        journal.append({"kind": "run", "detail": {"action": "rollback", "result": "started"}})
        journal.append(pair_event("transition", "h2", "gateway", "rollback", "pending", "rolled_back"))
        path = journal.path
    contents = read_journal(path)
    default = replay(contents)
    assert [default[k].state for k in (("h1", "gateway"), ("h2", "gateway"), ("h1", "content-server"))] == [
        "failed",
        "rolled_back",
        "pending",
    ]
    assert default[("h2", "gateway")].rolled_back_by == "rollback"
    renamed = with_roles(load_lifecycle(), initial="planned", failed="broken", rolled_back="pending")
    pairs = replay(contents, renamed)
    assert pairs[("h1", "gateway")].state == "broken"
    assert pairs[("h1", "content-server")].state == "planned"
    assert pairs[("h2", "gateway")].rolled_back_by is None  # "rolled_back" is not the rolled-back state here
