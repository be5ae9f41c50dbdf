"""The pair lifecycle from `states/pair.toml`, and the `transitions` machine that drives a pair.

Each pair gets its own small Machine: actions run inside transition callbacks, so a
shared machine would need one lock held across slow remote steps of every pair.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from transitions import EventData, Machine

from scmflow.errors import CatalogError
from scmflow.plan import Pair
from scmflow.resources import states_file

FAILED = "failed"
logging.getLogger("transitions").addHandler(logging.NullHandler())


@dataclass(frozen=True)
class TransitionSpec:
    """One declared edge: `trigger` from each of `source` to `dest`, performed by `action`."""

    trigger: str
    source: tuple[str, ...]
    dest: str
    action: str | None


@dataclass(frozen=True)
class Lifecycle:
    """The declared states and transitions of a pair."""

    initial: str
    states: dict[str, str]
    final: frozenset[str]
    transitions: tuple[TransitionSpec, ...]

    def edge(self, trigger: str, source: str) -> TransitionSpec | None:
        """The transition `trigger` takes from `source`, or None."""
        for t in self.transitions:
            if t.trigger == trigger and source in t.source:
                return t
        return None

    def actions(self) -> frozenset[str]:
        """Every action name the lifecycle binds."""
        return frozenset(t.action for t in self.transitions if t.action)


def load_lifecycle(path: Path | None = None) -> Lifecycle:
    """Load and validate `states/pair.toml`; CatalogError names what is wrong."""
    path = path or states_file("pair.toml")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: cannot load the pair lifecycle: {exc}") from exc
    states_raw = data.get("states")
    if not isinstance(states_raw, dict) or not states_raw:
        raise CatalogError(f"{path}: no [states.*] tables")
    states: dict[str, str] = {}
    final: set[str] = set()
    for name, body in states_raw.items():
        if not isinstance(body, dict) or not isinstance(body.get("description", ""), str):
            raise CatalogError(f"{path}: state '{name}' needs a description string")
        states[name] = body.get("description", "")
        if body.get("final", False) is True:
            final.add(name)
    initial = data.get("initial")
    if initial not in states:
        raise CatalogError(f"{path}: initial state '{initial}' is not declared")
    if FAILED not in states:
        raise CatalogError(f"{path}: the '{FAILED}' state must be declared")
    transitions = tuple(
        _transition(path, i, t, states) for i, t in enumerate(data.get("transitions") or [])
    )
    if not transitions:
        raise CatalogError(f"{path}: no [[transitions]]")
    lifecycle = Lifecycle(
        initial=str(initial), states=states, final=frozenset(final), transitions=transitions
    )
    _check_deterministic(path, lifecycle)
    return lifecycle


def _transition(path: Path, index: int, raw: Any, states: Mapping[str, str]) -> TransitionSpec:
    where = f"{path}: transition #{index + 1}"
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: not a table")
    unknown = set(raw) - {"trigger", "source", "dest", "action"}
    if unknown:
        raise CatalogError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    trigger, dest, action = raw.get("trigger"), raw.get("dest"), raw.get("action")
    source = raw.get("source")
    if isinstance(source, str):
        source = [source]
    if not isinstance(trigger, str) or not trigger.isidentifier():
        raise CatalogError(f"{where}: 'trigger' must be an identifier")
    if not isinstance(source, list) or not source or not all(s in states for s in source):
        raise CatalogError(f"{where} ({trigger}): 'source' must list declared states")
    if dest not in states:
        raise CatalogError(f"{where} ({trigger}): 'dest' '{dest}' is not a declared state")
    if action is not None and (not isinstance(action, str) or not action.isidentifier()):
        raise CatalogError(f"{where} ({trigger}): 'action' must be an identifier")
    return TransitionSpec(trigger=trigger, source=tuple(source), dest=str(dest), action=action)


def _check_deterministic(path: Path, lifecycle: Lifecycle) -> None:
    seen: set[tuple[str, str]] = set()
    for t in lifecycle.transitions:
        for s in t.source:
            if (t.trigger, s) in seen:
                raise CatalogError(f"{path}: trigger '{t.trigger}' is declared twice from '{s}'")
            seen.add((t.trigger, s))


def unreachable_states(lifecycle: Lifecycle) -> set[str]:
    """States no path of transitions reaches from the initial state."""
    reached = {lifecycle.initial}
    frontier = [lifecycle.initial]
    while frontier:
        state = frontier.pop()
        for t in lifecycle.transitions:
            if state in t.source and t.dest not in reached:
                reached.add(t.dest)
                frontier.append(t.dest)
    return set(lifecycle.states) - reached


def states_without_rollback(lifecycle: Lifecycle) -> set[str]:
    """Non-final states that have no `rollback` edge (must be empty)."""
    return {
        s
        for s in lifecycle.states
        if s not in lifecycle.final and lifecycle.edge("rollback", s) is None
    }


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
            transitions=[
                {
                    "trigger": t.trigger,
                    "source": list(t.source),
                    "dest": t.dest,
                    "prepare": "_begin",
                    "before": "_act",
                    "after": "_commit",
                }
                for t in lifecycle.transitions
            ],
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
        if not self.can(trigger):
            raise ValueError(f"{self.pair.key}: no '{trigger}' from state '{self.state}'")
        self.error = None
        self._result = {}
        # `trigger` is added to the model by transitions at run time.
        fire_event: Callable[[str], bool] = getattr(self, "trigger")  # noqa: B009
        fire_event(trigger)
        if self.error is not None:
            raise self.error
        return self._result

    def mark_failed(self, trigger: str, message: str) -> None:
        """Record that `trigger` was interrupted (found in the status file) and move to failed."""
        self._record(self._event("fail", trigger, self.state, FAILED, {"error": message}))
        self._machine.set_state(FAILED, model=self)

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

    def _on_exception(self, event: EventData) -> None:
        error = event.error
        self.error = error
        detail: dict[str, Any] = {
            "error": str(error) or type(error).__name__,
            "type": type(error).__name__,
        }
        stderr = getattr(error, "stderr", "")
        if stderr:
            detail["stderr"] = str(stderr)[-4000:]
        src = self.state
        self._record(self._event("fail", _name(event), src, FAILED, detail))
        self._machine.set_state(FAILED, model=self)


def _source(event: EventData) -> str:
    assert event.transition is not None  # set for every callback of a transition
    return str(event.transition.source)


def _name(event: EventData) -> str:
    assert event.event is not None
    return str(event.event.name)
