"""Replaying a status file's records into each pair's state, action in flight and history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scmflow.errors import JournalError
from scmflow.journalreader import JournalContents
from scmflow.lifecycle import Lifecycle, load_lifecycle
from scmflow.statusformat import PAIR_KINDS


@dataclass(frozen=True)
class PairReplay:
    """One pair's state as the status file tells it."""

    host: str
    service: str
    old_version: str | None
    new_version: str | None
    state: str
    in_flight: str | None
    last_error: str | None
    history: tuple[dict[str, Any], ...]
    in_plan: bool = True
    # The action of the run in which the pair was last rolled back: "rollback" when an
    # operator asked for it, "upgrade" or "resume" when a failure did; None if never.
    rolled_back_by: str | None = None
    # The nodes (as in the plan's records) the last `probe` found, when resume re-read them.
    probed_nodes: tuple[dict[str, Any], ...] | None = None

    @property
    def key(self) -> tuple[str, str]:
        """(host, service)."""
        return (self.host, self.service)

    @property
    def never_started(self) -> bool:
        """Whether no step of this pair ever began: it is as the upgrade found it."""
        return not any(r.get("kind") in PAIR_KINDS for r in self.history)

    @property
    def started(self) -> float | None:
        """Epoch of the pair's first `begin`."""
        return next((_epoch(r) for r in self.history if r.get("kind") == "begin"), None)

    @property
    def finished(self) -> float | None:
        """Epoch of the pair's last `transition` or `fail`."""
        settled = [r for r in self.history if r.get("kind") in ("transition", "fail")]
        return _epoch(settled[-1]) if settled else None

    @property
    def duration(self) -> float | None:
        """Seconds from `started` to `finished`; None unless both are known."""
        started, finished = self.started, self.finished
        if started is None or finished is None:
            return None
        return max(0.0, finished - started)


def replay(
    contents: JournalContents, lifecycle: Lifecycle | None = None
) -> dict[tuple[str, str], PairReplay]:
    """Each planned pair's committed state, action in flight and history, in plan order.

    A pair starts in the lifecycle's initial state (states/pair.toml, loaded when not
    given), takes the `dst` of each `transition` record and the failed state on `fail`.
    """
    lifecycle = lifecycle or load_lifecycle()
    pairs: dict[tuple[str, str], _PairProgress] = {}
    for entry in _plan_entries(contents):
        key = (entry["host"], entry["service"])
        pairs[key] = _PairProgress(
            lifecycle, entry["host"], entry["service"], entry.get("old_version"), entry.get("new_version")
        )
    action: str | None = None
    for record in contents.records:
        if record.get("kind") == "run":
            detail = record.get("detail")
            if isinstance(detail, Mapping) and detail.get("result") == "started":
                action = str(detail.get("action"))
        host, service = record.get("host"), record.get("service")
        if not isinstance(host, str) or not isinstance(service, str):
            continue
        progress = pairs.get((host, service))
        if progress is None:
            progress = _PairProgress(lifecycle, host, service, None, None, in_plan=False)
            pairs[(host, service)] = progress
        progress.apply(record, action)
    return {key: progress.freeze() for key, progress in pairs.items()}


class _PairProgress:
    """Mutable accumulator behind `replay`."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        host: str,
        service: str,
        old_version: Any,
        new_version: Any,
        *,
        in_plan: bool = True,
    ) -> None:
        self.host = host
        self.service = service
        self.old_version = None if old_version is None else str(old_version)
        self.new_version = None if new_version is None else str(new_version)
        self.in_plan = in_plan
        self.lifecycle = lifecycle
        self.state = lifecycle.initial
        self.in_flight: str | None = None
        self.last_error: str | None = None
        self.history: list[dict[str, Any]] = []
        self.rolled_back_by: str | None = None
        self.probed_nodes: tuple[dict[str, Any], ...] | None = None

    def apply(self, record: dict[str, Any], action: str | None) -> None:
        self.history.append(record)
        kind = record.get("kind")
        if kind == "begin":
            self.in_flight = str(record.get("trigger"))
        elif kind == "transition":
            self.state = str(record.get("dst"))
            self.in_flight = None
            if self.state == self.lifecycle.rolled_back:
                self.rolled_back_by = action
        elif kind == "probe":
            self._apply_probe(record.get("detail"))
        elif kind == "fail":
            self.state = self.lifecycle.failed
            self.in_flight = None
            self.last_error = error_text(record.get("detail"))

    def freeze(self) -> PairReplay:
        return PairReplay(
            host=self.host,
            service=self.service,
            old_version=self.old_version,
            new_version=self.new_version,
            state=self.state,
            in_flight=self.in_flight,
            last_error=self.last_error,
            history=tuple(self.history),
            in_plan=self.in_plan,
            rolled_back_by=self.rolled_back_by,
            probed_nodes=self.probed_nodes,
        )

    def _apply_probe(self, detail: Any) -> None:
        nodes = detail.get("nodes") if isinstance(detail, Mapping) else None
        if isinstance(nodes, list) and all(_valid_node(n) for n in nodes):
            self.probed_nodes = tuple(dict(n) for n in nodes)


def _valid_node(node: Any) -> bool:
    """A node record as the plan writes it: a port (int or None) and whether it ran."""
    if not isinstance(node, Mapping) or not isinstance(node.get("running"), bool):
        return False
    port = node.get("port")
    return port is None or (isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535)


def error_text(detail: Any) -> str:
    """The error message of a `fail` record's detail (a dict with `error`, or a string)."""
    if isinstance(detail, Mapping):
        error = detail.get("error")
        return str(error) if error is not None else str(dict(detail))
    return "" if detail is None else str(detail)


def _plan_entries(contents: JournalContents) -> list[dict[str, Any]]:
    plan = contents.header.get("plan", [])
    if not isinstance(plan, list):
        raise JournalError(f"{contents.path}: the header's plan is not a list")
    for index, entry in enumerate(plan):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("host"), str)
            and isinstance(entry.get("service"), str)
        ):
            raise JournalError(f"{contents.path}: plan entry {index} has no host and service")
    return plan


def _epoch(record: Mapping[str, Any]) -> float | None:
    value = record.get("epoch")
    return float(value) if isinstance(value, int | float) else None
