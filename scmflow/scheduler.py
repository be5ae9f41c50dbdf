"""Drives pairs through their lifecycle: stages in service order, hosts in parallel.

Failure policy (the original's, made precise): a failed pair is rolled back on the
spot; no new pair starts; pairs already in flight finish; the run then ends failed.
An operator interrupt (the `stop` event) lets the step in flight finish and starts nothing
new, leaving every pair in a state the status file records exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from scmflow.errors import ScmflowError
from scmflow.hooks import HookFailed, PairHooks
from scmflow.hooks import describe as describe_hook
from scmflow.lifecycle import ROLLBACK
from scmflow.machine import PairRun
from scmflow.plan import Pair


@dataclass
class PairFailure:
    """A pair whose step failed, and what its automatic rollback did."""

    pair: Pair
    trigger: str
    error: BaseException
    rollback_error: BaseException | None = None


@dataclass
class StageResult:
    """What a scheduler run did."""

    failures: list[PairFailure] = field(default_factory=list)
    interrupted: bool = False
    completed: list[Pair] = field(default_factory=list)
    # `pause_after` pairs were verified and pairs are left: the run stopped there on purpose
    paused: bool = False


class Scheduler:
    """Runs one action sequence over pairs, stage by stage, with bounded host parallelism."""

    def __init__(
        self,
        runs: Mapping[tuple[str, str], PairRun],
        *,
        parallel: int,
        stop: threading.Event,
        on_pair_start: Callable[[Pair], None] | None = None,
        stage_cap: Callable[[Sequence[Pair]], int] | None = None,
        pause_after: int | None = None,
        hooks: PairHooks | None = None,
    ) -> None:
        self.runs = runs
        self.parallel = max(1, parallel)
        self.stop = stop
        self.on_pair_start = on_pair_start
        # pairs of a stage in flight at once (the availability guard); default: `parallel`
        self.stage_cap = stage_cap
        self.pause_after = pause_after
        self.hooks = hooks
        self._halt = threading.Event()
        self._pause = threading.Event()
        self._lock = threading.Lock()

    def upgrade(self, stages: Sequence[Sequence[Pair]]) -> StageResult:
        """Upgrade every pair not yet verified; roll back a failed pair on the spot."""
        return self._run_stages(stages, self._upgrade_pair)

    def rollback(self, stages: Sequence[Sequence[Pair]]) -> StageResult:
        """Roll back every given pair (stages already in rollback order); go on past failures."""
        return self._run_stages(stages, self._rollback_pair, halt_on_failure=False)

    def _run_stages(
        self,
        stages: Sequence[Sequence[Pair]],
        work: Callable[[Pair, StageResult], None],
        *,
        halt_on_failure: bool = True,
    ) -> StageResult:
        result = StageResult()
        for stage in stages:
            if self._halt.is_set() or self.stop.is_set() or self._pause.is_set():
                break
            cap = self.stage_cap(stage) if self.stage_cap is not None else self.parallel
            workers = max(1, min(cap, len(stage)))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pair") as pool:
                futures = [pool.submit(self._guarded, work, pair, result) for pair in stage]
                for future in futures:
                    future.result()
            if result.failures and halt_on_failure:
                self._halt.set()
        result.interrupted = self.stop.is_set()
        left = any(not _done(self.runs[p.key]) for stage in stages for p in stage)
        result.paused = self._pause.is_set() and left and not result.failures and not result.interrupted
        return result

    def _guarded(self, work: Callable[[Pair, StageResult], None], pair: Pair, result: StageResult) -> None:
        if self._halt.is_set() or self.stop.is_set() or self._pause.is_set():
            return
        work(pair, result)

    def _upgrade_pair(self, pair: Pair, result: StageResult) -> None:
        run = self.runs[pair.key]
        if _done(run):
            return
        if self.on_pair_start is not None:
            self.on_pair_start(pair)
        # before the pair's nodes stop (the lifecycle's `stops_nodes` trigger): a drain from the load balancer
        if run.state in run.lifecycle.before_stop() and not self._hook_passed(run, pair, "pre_stop", result):
            return
        for trigger in run.lifecycle.upgrade:
            if not run.can(trigger):
                continue
            if self.stop.is_set():
                return
            try:
                run.fire(trigger)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and rolled back
                self._record_failure(result, self._rollback_failed(run, pair, trigger, exc))
                return
        if _done(run) and not self._hook_passed(run, pair, "post_verify", result):
            return
        if _done(run):
            with self._lock:
                result.completed.append(pair)
                # pairs already in flight finish; no new one starts
                if self.pause_after is not None and len(result.completed) >= self.pause_after:
                    self._pause.set()

    def _hook_passed(self, run: PairRun, pair: Pair, phase: str, result: StageResult) -> bool:
        """Run `phase`'s hook; a failure fails the pair, which is rolled back like any failure."""
        if self.hooks is None:
            return True
        outcome = self.hooks.run(phase, pair)
        if outcome is None or outcome.ok:
            return True
        error = HookFailed(describe_hook(outcome))
        run.mark_failed(phase, error.message)
        self._record_failure(result, self._rollback_failed(run, pair, phase, error))
        return False

    def _rollback_failed(self, run: PairRun, pair: Pair, trigger: str, exc: BaseException) -> PairFailure:
        self._halt.set()
        failure = PairFailure(pair=pair, trigger=trigger, error=exc)
        try:
            run.fire(ROLLBACK)
        except Exception as rb_exc:  # noqa: BLE001 - reported with the original failure
            failure.rollback_error = rb_exc
        else:
            self._after_rollback(pair)
        return failure

    def _after_rollback(self, pair: Pair) -> None:
        """The post_rollback hook: a failure is recorded and said, and the rollback goes on."""
        if self.hooks is not None:
            self.hooks.run("post_rollback", pair)

    def _rollback_pair(self, pair: Pair, result: StageResult) -> None:
        run = self.runs[pair.key]
        if run.state == run.lifecycle.rolled_back or not run.can(ROLLBACK):
            return
        if self.on_pair_start is not None:
            self.on_pair_start(pair)
        try:
            run.fire(ROLLBACK)
        except Exception as exc:  # noqa: BLE001 - recorded; the other pairs still roll back
            self._record_failure(result, PairFailure(pair=pair, trigger=ROLLBACK, error=exc))
            return
        self._after_rollback(pair)
        with self._lock:
            result.completed.append(pair)

    def _record_failure(self, result: StageResult, failure: PairFailure) -> None:
        with self._lock:
            result.failures.append(failure)


def describe_failure(failure: PairFailure) -> str:
    """One line naming host, service, step and cause."""
    error = failure.error
    message = error.message if isinstance(error, ScmflowError) else str(error) or type(error).__name__
    line = f"[{failure.pair.host}]:{failure.pair.printed}: {failure.trigger} failed: {message}"
    if failure.rollback_error is not None:
        line += f"; rolling it back also failed: {failure.rollback_error}"
    elif failure.trigger != ROLLBACK:
        line += f"; it was rolled back to {failure.pair.old_version or 'none'}"
    return line


def is_failed(run: PairRun) -> bool:
    """Whether the pair is in the failed state."""
    return run.state == run.lifecycle.failed


def _done(run: PairRun) -> bool:
    """Whether the pair has reached the lifecycle's done state (verified)."""
    return run.state == run.lifecycle.done
