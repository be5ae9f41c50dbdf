"""The scheduler: stage order, bounded parallelism, failure and stop policies, rollback."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from scmflow.errors import RemoteError
from scmflow.machine import PairRun, load_lifecycle
from scmflow.plan import Pair, group_stages
from scmflow.scheduler import PairFailure, Scheduler, describe_failure, is_failed

LIFECYCLE = load_lifecycle()
WAIT = 10.0  # seconds a test thread waits for another before the test fails

Hook = Callable[[str, Pair], None]


def pair(host: str, service: str = "gateway", old: str | None = "3.1.2") -> Pair:
    return Pair(
        host=host,
        service=service,
        printed=service.upper().replace("-", "_"),
        old_version=old,
        new_version="3.2.2",
        nodes=(),
    )


class Cluster:
    """Fake actions for many pairs: records calls, tracks concurrency, runs per-call hooks."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.events: list[dict[str, Any]] = []
        self.hooks: dict[tuple[str, str, str], Hook] = {}
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def on(self, action: str, host: str, service: str = "gateway") -> Callable[[Hook], Hook]:
        def register(hook: Hook) -> Hook:
            self.hooks[(action, host, service)] = hook
            return hook

        return register

    def fail(self, action: str, host: str, service: str = "gateway", message: str = "boom") -> None:
        def hook(_action: str, p: Pair) -> None:
            raise RemoteError(p.host, f"{_action} failed: {message}")

        self.hooks[(action, host, service)] = hook

    def run_action(self, action: str, p: Pair) -> Mapping[str, Any]:
        with self._lock:
            self.calls.append((action, p.host, p.service))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            hook = self.hooks.get((action, p.host, p.service))
            if hook is not None:
                hook(action, p)
        finally:
            with self._lock:
                self.active -= 1
        return {}

    def record(self, event: Mapping[str, Any]) -> None:
        with self._lock:
            self.events.append(dict(event))

    def runs(
        self, pairs: Sequence[Pair], states: Mapping[str, str] | None = None
    ) -> dict[tuple[str, str], PairRun]:
        states = states or {}
        return {
            p.key: PairRun(
                p, LIFECYCLE, run_action=self.run_action, record=self.record, initial=states.get(p.host)
            )
            for p in pairs
        }

    def actions_of(self, host: str, service: str = "gateway") -> list[str]:
        return [a for a, h, s in self.calls if (h, s) == (host, service)]


UPGRADE = ["backup", "replace", "restart", "verify"]


def test_every_pair_is_upgraded_and_stages_run_in_order() -> None:
    cluster = Cluster()
    pairs = [pair(h, s) for s in ("config-server", "gateway", "daemon") for h in ("h1", "h2", "h3")]
    runs = cluster.runs(pairs)
    started: list[Pair] = []
    scheduler = Scheduler(runs, parallel=3, stop=threading.Event(), on_pair_start=started.append)
    result = scheduler.upgrade(group_stages(pairs))
    assert result.failures == [] and not result.interrupted
    assert sorted(result.completed, key=pairs.index) == pairs
    assert all(r.state == "verified" for r in runs.values())
    assert sorted(started, key=pairs.index) == pairs
    for p in pairs:
        assert cluster.actions_of(p.host, p.service) == UPGRADE
    services = [s for _, _, s in cluster.calls]
    # every action of a stage happens before any action of the next stage
    assert services == sorted(services, key=["config-server", "gateway", "daemon"].index)


def test_with_parallel_one_pairs_run_one_after_another_in_plan_order() -> None:
    cluster = Cluster()
    pairs = [pair(h) for h in ("h3", "h1", "h2")]
    Scheduler(cluster.runs(pairs), parallel=1, stop=threading.Event()).upgrade([pairs])
    assert cluster.max_active == 1
    assert [h for _, h, _ in cluster.calls] == ["h3"] * 4 + ["h1"] * 4 + ["h2"] * 4


@pytest.mark.parametrize("parallel", [2, 3])
def test_a_stage_runs_exactly_parallel_pairs_at_once(parallel: int) -> None:
    cluster = Cluster()
    pairs = [pair(f"h{i}") for i in range(2 * parallel)]
    # Each backup waits until `parallel` pairs are in their backup together: the stage
    # cannot finish unless that many run at once.
    barrier = threading.Barrier(parallel, timeout=WAIT)
    for p in pairs:
        cluster.on("backup", p.host)(lambda _a, _p: barrier.wait() and None)
    result = Scheduler(cluster.runs(pairs), parallel=parallel, stop=threading.Event()).upgrade([pairs])
    assert result.failures == []
    assert cluster.max_active == parallel


def test_parallelism_never_exceeds_the_bound() -> None:
    cluster = Cluster()
    pairs = [pair(f"h{i}") for i in range(8)]
    gate = threading.Event()
    entered = threading.Semaphore(0)

    def hold(_a: str, _p: Pair) -> None:
        entered.release()
        gate.wait(WAIT)

    for p in pairs:
        cluster.on("backup", p.host)(hold)
    scheduler = Scheduler(cluster.runs(pairs), parallel=3, stop=threading.Event())
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(scheduler.upgrade([pairs])))
    worker.start()
    for _ in range(3):
        assert entered.acquire(timeout=WAIT)
    # three pairs are held in backup: a fourth must not be able to start
    assert not entered.acquire(timeout=0.2)
    assert cluster.active == 3
    gate.set()
    worker.join(WAIT)
    assert done and done[0].failures == []
    assert cluster.max_active == 3


def test_a_failed_pair_is_rolled_back_in_flight_pairs_finish_and_nothing_new_starts() -> None:
    cluster = Cluster()
    stage1 = [pair(h) for h in ("h1", "h2", "h3", "h4")]
    stage2 = [pair(h, "content-server") for h in ("h1", "h2")]
    h2_in_backup = threading.Event()
    h1_failed = threading.Event()

    @cluster.on("backup", "h2")
    def _h2_backup(_a: str, _p: Pair) -> None:
        h2_in_backup.set()
        # stay in flight until h1 has failed and been rolled back
        assert h1_failed.wait(WAIT)

    @cluster.on("replace", "h1")
    def _h1_replace(_a: str, p: Pair) -> None:
        assert h2_in_backup.wait(WAIT)
        raise RemoteError(p.host, "replace failed: no space left on device")

    @cluster.on("restore", "h1")
    def _h1_restore(_a: str, _p: Pair) -> None:
        h1_failed.set()

    runs = cluster.runs(stage1 + stage2)
    started: list[str] = []
    scheduler = Scheduler(
        runs, parallel=2, stop=threading.Event(), on_pair_start=lambda p: started.append(p.host)
    )
    result = scheduler.upgrade([stage1, stage2])

    assert cluster.actions_of("h1") == ["backup", "replace", "restore"]
    assert runs[("h1", "gateway")].state == "rolled_back"
    # h2 was in flight: it finished its whole upgrade
    assert cluster.actions_of("h2") == UPGRADE
    assert runs[("h2", "gateway")].state == "verified"
    # no new pair started, in this stage or later ones
    assert sorted(started) == ["h1", "h2"]
    for key in [("h3", "gateway"), ("h4", "gateway"), ("h1", "content-server"), ("h2", "content-server")]:
        assert runs[key].state == "pending"
    assert {(h, s) for _, h, s in cluster.calls} == {("h1", "gateway"), ("h2", "gateway")}
    assert [(f.pair.host, f.trigger, f.rollback_error) for f in result.failures] == [("h1", "replace", None)]
    assert result.completed == [stage1[1]]
    assert not result.interrupted


def test_a_failure_in_the_last_pair_of_a_stage_stops_the_later_stages() -> None:
    cluster = Cluster()
    stage1 = [pair("h1"), pair("h2")]
    stage2 = [pair("h1", "daemon")]
    cluster.fail("verify", "h2")
    runs = cluster.runs(stage1 + stage2)
    result = Scheduler(runs, parallel=1, stop=threading.Event()).upgrade([stage1, stage2])
    assert runs[("h1", "gateway")].state == "verified"
    assert runs[("h2", "gateway")].state == "rolled_back"
    assert cluster.actions_of("h2") == UPGRADE + ["restore"]
    assert cluster.actions_of("h1", "daemon") == []
    assert [f.trigger for f in result.failures] == ["verify"]


def test_a_failed_first_step_is_rolled_back_from_failed_with_restore() -> None:
    cluster = Cluster()
    cluster.fail("backup", "h1")
    runs = cluster.runs([pair("h1")])
    result = Scheduler(runs, parallel=1, stop=threading.Event()).upgrade([[pair("h1")]])
    # the pair went pending -> failed; rollback from failed restores (the declared edge)
    assert cluster.actions_of("h1") == ["backup", "restore"]
    assert runs[("h1", "gateway")].state == "rolled_back"
    assert result.failures[0].trigger == "backup"


def test_a_rollback_that_fails_too_is_reported_with_the_original_failure() -> None:
    cluster = Cluster()
    cluster.fail("restart", "h1", message="node 8080 did not start")
    cluster.fail("restore", "h1", message="backup is gone")
    runs = cluster.runs([pair("h1")])
    result = Scheduler(runs, parallel=1, stop=threading.Event()).upgrade([[pair("h1")]])
    failure = result.failures[0]
    assert failure.trigger == "restart"
    assert str(failure.error) == "[h1] restart failed: node 8080 did not start"
    assert str(failure.rollback_error) == "[h1] restore failed: backup is gone"
    assert is_failed(runs[("h1", "gateway")])
    assert describe_failure(failure) == (
        "[h1]:GATEWAY: restart failed: [h1] restart failed: node 8080 did not start; "
        "rolling it back also failed: [h1] restore failed: backup is gone"
    )


def test_the_stop_event_lets_the_step_in_flight_finish_and_starts_nothing_more() -> None:
    cluster = Cluster()
    stop = threading.Event()
    stage1 = [pair("h1"), pair("h2")]
    stage2 = [pair("h1", "daemon")]
    cluster.on("replace", "h1")(lambda _a, _p: stop.set())
    runs = cluster.runs(stage1 + stage2)
    result = Scheduler(runs, parallel=1, stop=stop).upgrade([stage1, stage2])
    assert result.interrupted
    assert result.failures == [] and result.completed == []
    assert runs[("h1", "gateway")].state == "replaced"  # the step in flight completed
    assert cluster.actions_of("h1") == ["backup", "replace"]
    assert runs[("h2", "gateway")].state == "pending"
    assert runs[("h1", "daemon")].state == "pending"
    assert len(cluster.calls) == 2


def test_a_stop_before_the_run_starts_does_nothing() -> None:
    cluster = Cluster()
    stop = threading.Event()
    stop.set()
    result = Scheduler(cluster.runs([pair("h1")]), parallel=1, stop=stop).upgrade([[pair("h1")]])
    assert result.interrupted and cluster.calls == []


def test_upgrade_skips_verified_pairs_and_continues_from_the_recorded_state() -> None:
    cluster = Cluster()
    pairs = [pair("h1"), pair("h2"), pair("h3")]
    runs = cluster.runs(pairs, states={"h1": "verified", "h2": "replaced"})
    started: list[str] = []
    result = Scheduler(
        runs, parallel=1, stop=threading.Event(), on_pair_start=lambda p: started.append(p.host)
    ).upgrade([pairs])
    assert cluster.actions_of("h1") == []
    assert cluster.actions_of("h2") == ["restart", "verify"]
    assert cluster.actions_of("h3") == UPGRADE
    assert started == ["h2", "h3"]
    assert [p.host for p in result.completed] == ["h2", "h3"]


def test_rollback_goes_on_past_failures_across_stages() -> None:
    cluster = Cluster()
    stage1 = [pair("h1", "daemon"), pair("h2", "daemon")]
    stage2 = [pair("h1"), pair("h2")]
    cluster.fail("restore", "h1", "daemon", message="cannot start scmd")
    runs = cluster.runs(stage1 + stage2, states={"h1": "verified", "h2": "verified"})
    result = Scheduler(runs, parallel=1, stop=threading.Event()).rollback([stage1, stage2])
    assert [(f.pair.host, f.pair.service, f.trigger) for f in result.failures] == [
        ("h1", "daemon", "rollback")
    ]
    assert runs[("h1", "daemon")].state == "failed"
    for key in [("h2", "daemon"), ("h1", "gateway"), ("h2", "gateway")]:
        assert runs[key].state == "rolled_back"
    assert [(p.host, p.service) for p in result.completed] == [
        ("h2", "daemon"),
        ("h1", "gateway"),
        ("h2", "gateway"),
    ]
    assert describe_failure(result.failures[0]) == (
        "[h1]:DAEMON: rollback failed: [h1] restore failed: cannot start scmd"
    )


def test_rollback_uses_the_action_each_state_declares_and_skips_rolled_back_pairs() -> None:
    cluster = Cluster()
    pairs = [pair("h1"), pair("h2"), pair("h3")]
    runs = cluster.runs(pairs, states={"h1": "backed_up", "h2": "rolled_back", "h3": "failed"})
    result = Scheduler(runs, parallel=2, stop=threading.Event()).rollback([pairs])
    assert cluster.actions_of("h1") == ["abandon"]
    assert cluster.actions_of("h2") == []
    assert cluster.actions_of("h3") == ["restore"]
    assert result.failures == []
    assert sorted(p.host for p in result.completed) == ["h1", "h3"]


def test_rollback_stops_between_pairs_on_the_stop_event() -> None:
    cluster = Cluster()
    stop = threading.Event()
    pairs = [pair("h1"), pair("h2")]
    cluster.on("restore", "h1")(lambda _a, _p: stop.set())
    runs = cluster.runs(pairs, states={"h1": "verified", "h2": "verified"})
    result = Scheduler(runs, parallel=1, stop=stop).rollback([pairs])
    assert result.interrupted
    assert runs[("h1", "gateway")].state == "rolled_back"
    assert runs[("h2", "gateway")].state == "verified"


def test_describe_failure_says_what_the_pair_was_rolled_back_to() -> None:
    error = RemoteError("h9", "verify failed: port 8080 does not answer")
    assert describe_failure(PairFailure(pair("h9"), "verify", error)) == (
        "[h9]:GATEWAY: verify failed: [h9] verify failed: port 8080 does not answer; "
        "it was rolled back to 3.1.2"
    )
    new = PairFailure(pair("h9", "non-service", old=None), "replace", OSError())
    assert describe_failure(new) == ("[h9]:NON_SERVICE: replace failed: OSError; it was rolled back to none")


def test_a_stage_cap_bounds_a_stage_below_parallel() -> None:
    cluster = Cluster()
    pairs = [pair(f"h{i}") for i in range(4)]
    gate = threading.Event()
    entered = threading.Semaphore(0)

    def hold(_a: str, _p: Pair) -> None:
        entered.release()
        gate.wait(WAIT)

    for p in pairs:
        cluster.on("replace", p.host)(hold)
    scheduler = Scheduler(cluster.runs(pairs), parallel=4, stop=threading.Event(), stage_cap=lambda stage: 2)
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(scheduler.upgrade([pairs])))
    worker.start()
    for _ in range(2):
        assert entered.acquire(timeout=WAIT)
    # two hosts are down in their replace: the guard keeps a third from starting
    assert not entered.acquire(timeout=0.2)
    gate.set()
    worker.join(WAIT)
    assert done and done[0].failures == []
    assert cluster.max_active == 2


def test_pause_after_lets_pairs_in_flight_finish_and_starts_no_more() -> None:
    cluster = Cluster()
    pairs = [pair(f"h{i}") for i in range(5)]
    runs = cluster.runs(pairs)
    result = Scheduler(runs, parallel=1, stop=threading.Event(), pause_after=2).upgrade([pairs])
    assert result.paused and result.failures == [] and not result.interrupted
    assert [p.host for p in result.completed] == ["h0", "h1"]
    assert [r.state for r in runs.values()] == ["verified"] * 2 + ["pending"] * 3

    # a pause at or past the last pair is no pause: the run simply ends
    again = Scheduler(cluster.runs(pairs), parallel=2, stop=threading.Event(), pause_after=5)
    done = again.upgrade([pairs])
    assert not done.paused and len(done.completed) == 5


class FakeHooks:
    """Stands in for PairHooks: records each phase run, fails the phases told to."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, str]] = []
        self.failing = failing

    def run(self, phase: str, p: Pair) -> Any:
        from scmflow.hooks import HookResult

        self.calls.append((phase, p.host))
        code = 3 if phase in self.failing else 0
        return HookResult(phase=phase, argv=("hook",), exit_code=code, duration=0.0, output_tail="drain: no")


def test_hooks_run_around_each_pair_and_a_failing_pre_stop_leaves_the_pair_untouched() -> None:
    cluster = Cluster()
    pairs = [pair("h1"), pair("h2")]
    hooks = FakeHooks()
    result = Scheduler(cluster.runs(pairs), parallel=1, stop=threading.Event(), hooks=hooks).upgrade([pairs])  # type: ignore[arg-type]
    assert result.failures == []
    assert hooks.calls == [
        ("pre_stop", "h1"),
        ("post_verify", "h1"),
        ("pre_stop", "h2"),
        ("post_verify", "h2"),
    ]

    cluster = Cluster()
    failing = FakeHooks(failing=("pre_stop",))
    runs = cluster.runs(pairs)
    result = Scheduler(runs, parallel=1, stop=threading.Event(), hooks=failing).upgrade([pairs])  # type: ignore[arg-type]
    (failure,) = result.failures
    assert failure.trigger == "pre_stop" and "exited 3" in str(failure.error)
    # nothing ran on the host but the restore of a pair that never backed up (a no-op there)
    assert cluster.calls == [("restore", "h1", "gateway")]
    assert runs[("h1", "gateway")].state == "rolled_back"
    assert failing.calls == [("pre_stop", "h1"), ("post_rollback", "h1")]
    assert [e["kind"] for e in cluster.events][:1] == ["fail"]


def test_a_failing_post_verify_rolls_the_pair_back_and_post_rollback_failures_go_on() -> None:
    cluster = Cluster()
    pairs = [pair("h1")]
    hooks = FakeHooks(failing=("post_verify", "post_rollback"))
    runs = cluster.runs(pairs)
    result = Scheduler(runs, parallel=1, stop=threading.Event(), hooks=hooks).upgrade([pairs])  # type: ignore[arg-type]
    (failure,) = result.failures
    assert failure.trigger == "post_verify" and failure.rollback_error is None
    assert cluster.actions_of("h1") == [*UPGRADE, "restore"]
    assert runs[("h1", "gateway")].state == "rolled_back"
    assert hooks.calls[-1] == ("post_rollback", "h1")


SHORT_LIFECYCLE = """
[lifecycle]
initial = "new"
upgrade = ["swap", "check"]
stops_nodes = "swap"
done = "ok"
failed = "broken"
rolled_back = "undone"

[states.new]
[states.swapped]
[states.ok]
final = true
[states.broken]
[states.undone]
final = true

[[transitions]]
trigger = "swap"
source = "new"
dest = "swapped"
action = "swap"

[[transitions]]
trigger = "check"
source = "swapped"
dest = "ok"
action = "check"

[[transitions]]
trigger = "fail"
source = ["new", "swapped", "ok", "broken", "undone"]
dest = "broken"

[[transitions]]
trigger = "rollback"
source = ["new", "swapped", "broken"]
dest = "undone"
action = "undo"

[[transitions]]
trigger = "retry"
source = "undone"
dest = "new"
"""


def test_the_happy_path_and_its_state_names_come_from_the_lifecycle_file(tmp_path: Any) -> None:
    path = tmp_path / "pair.toml"
    path.write_text(SHORT_LIFECYCLE, encoding="utf-8")
    lifecycle = load_lifecycle(path)
    cluster = Cluster()
    cluster.fail("check", "h2")
    pairs = [pair("h1"), pair("h2")]
    runs = {
        p.key: PairRun(p, lifecycle, run_action=cluster.run_action, record=cluster.record) for p in pairs
    }
    result = Scheduler(runs, parallel=1, stop=threading.Event()).upgrade([pairs])
    assert cluster.actions_of("h1") == ["swap", "check"]
    assert cluster.actions_of("h2") == ["swap", "check", "undo"]
    assert [p.host for p in result.completed] == ["h1"]
    assert (runs[("h1", "gateway")].state, runs[("h2", "gateway")].state) == ("ok", "undone")
    assert [e["kind"] for e in cluster.events if e["host"] == "h2"][-3:] == ["fail", "begin", "transition"]
    assert not is_failed(runs[("h2", "gateway")])
