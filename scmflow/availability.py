"""The availability guard: how many hosts of a service may be down at once within its stage.

SequoiaCM keeps serving while one host's nodes restart, because gateways, content servers
and service centers run on several hosts. A stage therefore never has every host that ran
a node of its service stopped or unverified at the same moment, unless the operator says
an outage is acceptable (`--allow-outage`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scmflow.errors import UsageError
from scmflow.plan import Pair, group_stages

_LIMIT = re.compile(r"^\s*(\d+)\s*(%?)\s*$")


@dataclass(frozen=True)
class MaxUnavailable:
    """`--max-unavailable N` or `N%` (of the hosts that ran the service)."""

    value: int
    percent: bool = False

    def of(self, serving: int) -> int:
        """The cap for a service that ran on `serving` hosts; at least 1."""
        if self.percent:
            return max(1, serving * self.value // 100)
        return max(1, self.value)

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


def parse_max_unavailable(text: str) -> MaxUnavailable:
    """`N` or `N%` with N at least 1 (a percentage at most 100); UsageError otherwise."""
    match = _LIMIT.match(text)
    if match is None or int(match.group(1)) < 1 or (match.group(2) and int(match.group(1)) > 100):
        raise UsageError(
            f"--max-unavailable must be a number of hosts (1 or more) or a percentage (1%-100%), not {text!r}"
        )
    return MaxUnavailable(int(match.group(1)), percent=bool(match.group(2)))


@dataclass(frozen=True)
class Guard:
    """The knobs that bound a stage: `--parallel`, `--max-unavailable`, `--allow-outage`."""

    parallel: int = 1
    max_unavailable: MaxUnavailable | None = None
    allow_outage: bool = False

    def to_record(self) -> dict[str, Any]:
        """Plain data for the status file and JSON output."""
        limit = None if self.max_unavailable is None else str(self.max_unavailable)
        return {"parallel": self.parallel, "max_unavailable": limit, "allow_outage": self.allow_outage}


@dataclass(frozen=True)
class StageLimit:
    """How one service stage runs: its hosts, how many at once, and whether one node keeps serving."""

    service: str
    printed: str
    hosts: tuple[str, ...]
    # hosts on which a node of the service ran before the upgrade
    serving: tuple[str, ...]
    at_once: int

    @property
    def keeps_serving(self) -> bool:
        """Whether at least one host that ran the service stays up at every moment of the stage."""
        return len(self.serving) >= 2 and len(self.serving) > self.at_once

    def to_record(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return {
            "service": self.service,
            "printed": self.printed,
            "hosts": list(self.hosts),
            "serving_hosts": list(self.serving),
            "at_once": self.at_once,
            "keeps_serving": self.keeps_serving,
        }


def stage_limit(stage: Sequence[Pair], guard: Guard) -> StageLimit:
    """The cap of one stage: `--parallel`, bounded by `--max-unavailable` and by H - 1.

    H counts the stage's hosts that ran a node of the service on a port. Unless outages are
    allowed, at most H - 1 of them (at least 1) are down at once, so a service on two or
    more hosts always has a node answering.
    """
    # only nodes on ports serve requests; the daemon has none
    serving = tuple(p.host for p in stage if p.running_ports)
    cap = guard.parallel
    if guard.max_unavailable is not None:
        cap = min(cap, guard.max_unavailable.of(max(1, len(serving))))
    if not guard.allow_outage and serving:
        cap = min(cap, max(1, len(serving) - 1))
    first = stage[0]
    return StageLimit(
        service=first.service,
        printed=first.printed,
        hosts=tuple(p.host for p in stage),
        serving=serving,
        at_once=max(1, min(cap, len(stage))),
    )


def stage_limits(pairs: Sequence[Pair], guard: Guard) -> list[StageLimit]:
    """The limit of every stage of `pairs`, in upgrade order."""
    return [stage_limit(stage, guard) for stage in group_stages(pairs)]


def single_host_warnings(limits: Sequence[StageLimit]) -> list[str]:
    """A warning per service whose running nodes are all on one host: it goes dark while it restarts."""
    return [
        f"{limit.printed} runs on one host only ({limit.serving[0]}): unavailable while it restarts"
        for limit in limits
        if len(limit.serving) == 1
    ]


def describe(limit: StageLimit) -> str:
    """`Stage GATEWAY: 3 hosts, 2 at once, one node keeps serving` for the operator."""
    hosts = f"{len(limit.hosts)} host{'s' if len(limit.hosts) != 1 else ''}"
    if limit.keeps_serving:
        serving = "one node keeps serving"
    elif not limit.serving:
        serving = "no node ran before"
    else:
        serving = "every node may be down at once"
    return f"Stage {limit.printed}: {hosts}, {limit.at_once} at once, {serving}"
