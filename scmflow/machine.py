"""The `transitions` machine that drives a pair through the lifecycle of `states/pair.toml`.

The lifecycle itself (its dataclass, loader and checks) lives in scmflow/lifecycle.py and
is re-exported here. Each pair gets its own small Machine: actions run inside transition
callbacks, so a shared machine would need one lock held across slow remote steps of every pair.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from transitions import EventData, Machine

from scmflow.lifecycle import (
    FAIL,
    Lifecycle,
    TransitionSpec,
    load_lifecycle,
    states_without_rollback,
    unreachable_states,
)
from scmflow.plan import Pair

__all__ = [
    "ActionRunner",
    "EventSink",
    "Lifecycle",
    "PairRun",
    "TransitionSpec",
    "load_lifecycle",
    "states_without_rollback",
    "unreachable_states",
]

logging.getLogger("transitions").addHandler(logging.NullHandler())


class ActionRunner(Protocol):
    """Performs an action of the lifecycle for a pair; returns details for the status file."""

    def __call__(self, action: str, pair: Pair) -> Mapping[str, Any]: ...


class EventSink(Protocol):
    """Receives the pair's journal events (begin, transition, fail) before it goes on."""

    def __call__(self, event: Mapping[str, Any]) -> object: ...


class PairRun:
    """One pair and its state machine; `fire` performs one trigger with journaling."""

    state: str

    def __init__(
        self,
        pair: Pair,
        lifecycle: Lifecycle,
        *,
        run_action: ActionRunner,
        record: EventSink,
        initial: str | None = None,
    ) -> None:
        self.pair = pair
        self.lifecycle = lifecycle
        self.error: BaseException | None = None
        self._run_action = run_action
        self._record = record
        self._result: Mapping[str, Any] = {}
        self._machine = Machine(
            model=self,
            states=list(lifecycle.states),
            transitions=[_machine_transition(t) for t in lifecycle.transitions],
            initial=initial or lifecycle.initial,
            auto_transitions=False,
            send_event=True,
            on_exception="_on_exception",
        )

    def can(self, trigger: str) -> bool:
        """Whether `trigger` is declared from the current state."""
        return self.lifecycle.edge(trigger, self.state) is not None

    def fire(self, trigger: str) -> Mapping[str, Any]:
        """Perform `trigger`; re-raises the action's error after recording `fail`."""
        if trigger == FAIL or not self.can(trigger):
            raise ValueError(f"{self.pair.key}: no '{trigger}' from state '{self.state}'")
        self.error = None
        self._result = {}
        self._trigger(trigger)
        if self.error is not None:
            raise self.error
        return self._result

    def mark_failed(self, trigger: str, message: str) -> None:
        """Record that `trigger` was interrupted (found in the status file) and move to failed."""
        self._fail(trigger, {"error": message})

    def _fail(self, trigger: str, detail: Mapping[str, Any]) -> None:
        """Fire the `fail` edge: records `fail` for `trigger` with `detail`, then moves to failed."""
        self._trigger(FAIL, failed_trigger=trigger, detail=dict(detail))

    def _trigger(self, trigger: str, **kwargs: Any) -> None:
        # `trigger` is added to the model by transitions at run time.
        fire_event: Callable[..., bool] = getattr(self, "trigger")  # noqa: B009
        fire_event(trigger, **kwargs)

    def _event(
        self, kind: str, trigger: str, src: str, dst: str | None, detail: Any
    ) -> dict[str, Any]:
        event: dict[str, Any] = {
            "kind": kind,
            "host": self.pair.host,
            "service": self.pair.service,
            "trigger": trigger,
            "src": src,
        }
        if dst is not None:
            event["dst"] = dst
        if detail is not None:
            event["detail"] = detail
        return event

    def _edge(self, event: EventData) -> TransitionSpec:
        edge = self.lifecycle.edge(_name(event), _source(event))
        assert edge is not None  # transitions only fires declared edges
        return edge

    def _begin(self, event: EventData) -> None:
        edge = self._edge(event)
        self._record(
            self._event("begin", edge.trigger, _source(event), edge.dest, {"action": edge.action})
        )

    def _act(self, event: EventData) -> None:
        edge = self._edge(event)
        if edge.action is not None:
            self._result = dict(self._run_action(edge.action, self.pair))

    def _commit(self, event: EventData) -> None:
        edge = self._edge(event)
        self._record(
            self._event(
                "transition",
                _name(event),
                _source(event),
                edge.dest,
                dict(self._result),
            )
        )

    def _record_fail(self, event: EventData) -> None:
        failed_trigger, detail = event.kwargs["failed_trigger"], event.kwargs["detail"]
        self._record(self._event("fail", failed_trigger, _source(event), self._edge(event).dest, detail))

    def _on_exception(self, event: EventData) -> None:
        error = event.error
        assert error is not None  # set for every on_exception callback
        if _name(event) == FAIL:
            raise error  # recording the failure itself failed: there is nothing left to record it in
        self.error = error
        detail: dict[str, Any] = {
            "error": str(error) or type(error).__name__,
            "type": type(error).__name__,
        }
        stderr = getattr(error, "stderr", "")
        if stderr:
            detail["stderr"] = str(stderr)[-4000:]
        self._fail(_name(event), detail)


def _machine_transition(spec: TransitionSpec) -> dict[str, Any]:
    """The `transitions` definition of an edge: `fail` records itself, the others journal begin/commit."""
    callbacks = (
        {"before": "_record_fail"}
        if spec.trigger == FAIL
        else {"prepare": "_begin", "before": "_act", "after": "_commit"}
    )
    return {"trigger": spec.trigger, "source": list(spec.source), "dest": spec.dest, **callbacks}


def _source(event: EventData) -> str:
    assert event.transition is not None  # set for every callback of a transition
    return str(event.transition.source)


def _name(event: EventData) -> str:
    assert event.event is not None
    return str(event.event.name)
