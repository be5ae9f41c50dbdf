"""The pair lifecycle declared in `states/pair.toml`: the one loader, and the checks it runs.

Everything that needs a state or trigger name of the lifecycle (the pair machines, the
scheduler, the status-file replay, the views, the diagram) takes it from the Lifecycle
this module loads, so the TOML file is the only place the lifecycle is written down.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scmflow.errors import CatalogError
from scmflow.resources import states_file

# Triggers the code fires by name; pair.toml must declare them (checked on load).
FAIL = "fail"
ROLLBACK = "rollback"
RETRY = "retry"

_TOP_KEYS = frozenset({"lifecycle", "states", "transitions"})
_ROLE_KEYS = ("initial", "done", "failed", "rolled_back")
_LIFECYCLE_KEYS = frozenset({*_ROLE_KEYS, "upgrade", "stops_nodes"})


@dataclass(frozen=True)
class TransitionSpec:
    """One declared edge: `trigger` from each of `source` to `dest`, performed by `action`."""

    trigger: str
    source: tuple[str, ...]
    dest: str
    action: str | None


@dataclass(frozen=True)
class Lifecycle:
    """The declared states and transitions of a pair, and the roles some of them play."""

    initial: str
    states: dict[str, str]
    final: frozenset[str]
    transitions: tuple[TransitionSpec, ...]
    # the happy path: the triggers that take a pair from `initial` to `done`, in order
    upgrade: tuple[str, ...]
    # the upgrade trigger whose action stops the pair's nodes (the pre_stop hook runs before it)
    stops_nodes: str
    done: str
    failed: str
    rolled_back: str

    def edge(self, trigger: str, source: str) -> TransitionSpec | None:
        """The transition `trigger` takes from `source`, or None."""
        for t in self.transitions:
            if t.trigger == trigger and source in t.source:
                return t
        return None

    def actions(self) -> frozenset[str]:
        """Every action name the lifecycle binds."""
        return frozenset(t.action for t in self.transitions if t.action)

    def upgrade_path(self) -> tuple[str, ...]:
        """The states of the happy path, `initial` first and `done` last."""
        path = [self.initial]
        for trigger in self.upgrade:
            edge = self.edge(trigger, path[-1])
            assert edge is not None  # load_lifecycle checked the chain
            path.append(edge.dest)
        return tuple(path)

    def before_stop(self) -> tuple[str, ...]:
        """States of the happy path in which the pair's nodes have not been stopped yet."""
        return self.upgrade_path()[: self.upgrade.index(self.stops_nodes) + 1]

    def after_stop(self) -> tuple[str, ...]:
        """States of the happy path once `stops_nodes` ran: the pair's files are the new version's."""
        return self.upgrade_path()[len(self.before_stop()) :]

    def clean(self) -> tuple[str, ...]:
        """States in which nothing of the upgrade is left half done: a pair there is redone from scratch."""
        return (self.initial, self.rolled_back)


def load_lifecycle(path: Path | None = None) -> Lifecycle:
    """Load and validate `states/pair.toml`; CatalogError names the file and what is wrong."""
    path = path or states_file("pair.toml")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: cannot load the pair lifecycle: {exc}") from exc
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise CatalogError(f"{path}: unknown top-level keys {', '.join(sorted(unknown))}")
    states, final = _states(path, data.get("states"))
    roles = _roles(path, data, states)
    transitions = tuple(
        _transition(path, i, t, states) for i, t in enumerate(data.get("transitions") or [])
    )
    if not transitions:
        raise CatalogError(f"{path}: no [[transitions]]")
    lifecycle = Lifecycle(states=states, final=frozenset(final), transitions=transitions, **roles)
    _check_deterministic(path, lifecycle)
    _check_graph(path, lifecycle)
    return lifecycle


def _states(path: Path, raw: Any) -> tuple[dict[str, str], set[str]]:
    if not isinstance(raw, dict) or not raw:
        raise CatalogError(f"{path}: no [states.*] tables")
    states: dict[str, str] = {}
    final: set[str] = set()
    for name, body in raw.items():
        if not isinstance(body, dict) or not isinstance(body.get("description", ""), str):
            raise CatalogError(f"{path}: state '{name}' needs a description string")
        states[name] = body.get("description", "")
        if body.get("final", False) is True:
            final.add(name)
    return states, final


def _roles(path: Path, data: Mapping[str, Any], states: Mapping[str, str]) -> dict[str, Any]:
    """The [lifecycle] table: which states play which role, and the happy path."""
    table = data.get("lifecycle")
    if not isinstance(table, dict):
        keys = "initial, upgrade, stops_nodes, done, failed, rolled_back"
        raise CatalogError(f"{path}: no [lifecycle] table ({keys})")
    unknown = set(table) - _LIFECYCLE_KEYS
    if unknown:
        raise CatalogError(f"{path}: [lifecycle]: unknown keys {', '.join(sorted(unknown))}")
    roles: dict[str, Any] = {}
    for role in _ROLE_KEYS:
        name = table.get(role)
        if name not in states:
            raise CatalogError(f"{path}: [lifecycle] {role} state '{name}' is not declared")
        roles[role] = str(name)
    upgrade = table.get("upgrade")
    if not isinstance(upgrade, list) or not upgrade or not all(isinstance(t, str) for t in upgrade):
        raise CatalogError(f"{path}: [lifecycle] 'upgrade' must list the triggers from initial to done")
    roles["upgrade"] = tuple(upgrade)
    stops_nodes = table.get("stops_nodes")
    if stops_nodes not in upgrade:
        raise CatalogError(f"{path}: [lifecycle] 'stops_nodes' '{stops_nodes}' is not a trigger of 'upgrade'")
    roles["stops_nodes"] = str(stops_nodes)
    return roles


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


def _check_graph(path: Path, lifecycle: Lifecycle) -> None:
    """The upgrade path is a chain of edges, every state is reachable and can fail and roll back."""
    _check_upgrade_path(path, lifecycle)
    if lifecycle.done not in lifecycle.final:
        raise CatalogError(f"{path}: the done state '{lifecycle.done}' must be final")
    if lifecycle.failed in lifecycle.final:
        raise CatalogError(f"{path}: the failed state '{lifecycle.failed}' must not be final")
    unreachable = unreachable_states(lifecycle)
    if unreachable:
        raise CatalogError(f"{path}: states not reachable from '{lifecycle.initial}': {_names(unreachable)}")
    no_rollback = states_without_rollback(lifecycle)
    if no_rollback:
        raise CatalogError(
            f"{path}: non-final states without a '{ROLLBACK}' edge to '{lifecycle.rolled_back}': "
            f"{_names(no_rollback)}"
        )
    cannot_fail = {s for s in lifecycle.states if _dest(lifecycle, FAIL, s) != lifecycle.failed}
    if cannot_fail:
        raise CatalogError(
            f"{path}: states without a '{FAIL}' edge to '{lifecycle.failed}' "
            f"(an action or hook can fail in each): {_names(cannot_fail)}"
        )
    if _dest(lifecycle, RETRY, lifecycle.rolled_back) != lifecycle.initial:
        raise CatalogError(
            f"{path}: no '{RETRY}' edge from '{lifecycle.rolled_back}' to '{lifecycle.initial}'"
        )


def _check_upgrade_path(path: Path, lifecycle: Lifecycle) -> None:
    state = lifecycle.initial
    for trigger in lifecycle.upgrade:
        edge = lifecycle.edge(trigger, state)
        if edge is None:
            raise CatalogError(f"{path}: [lifecycle] upgrade: no '{trigger}' transition from '{state}'")
        state = edge.dest
    if state != lifecycle.done:
        raise CatalogError(
            f"{path}: [lifecycle] upgrade ends in '{state}', not in the done state '{lifecycle.done}'"
        )


def _dest(lifecycle: Lifecycle, trigger: str, source: str) -> str | None:
    edge = lifecycle.edge(trigger, source)
    return None if edge is None else edge.dest


def _names(states: set[str]) -> str:
    return ", ".join(sorted(states))


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
    """Non-final states that have no `rollback` edge to the rolled-back state (must be empty)."""
    return {
        s
        for s in lifecycle.states
        if s not in lifecycle.final and _dest(lifecycle, ROLLBACK, s) != lifecycle.rolled_back
    }
