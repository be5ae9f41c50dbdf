"""The availability guard: how many hosts of a service stage may be down at once."""

from __future__ import annotations

import pytest

from scmflow.availability import (
    Guard,
    MaxUnavailable,
    describe,
    parse_max_unavailable,
    single_host_warnings,
    stage_limit,
    stage_limits,
)
from scmflow.errors import UsageError
from scmflow.plan import Pair, PlannedNode


def pair(host: str, service: str = "gateway", *, running: bool = True, port: int | None = 8080) -> Pair:
    return Pair(
        host=host,
        service=service,
        printed=service.upper().replace("-", "_"),
        old_version="3.1.2",
        new_version="3.2.2",
        nodes=(PlannedNode(port=port, running=running),),
    )


THREE = [pair("h1"), pair("h2"), pair("h3")]


def test_by_default_one_host_that_ran_the_service_stays_up() -> None:
    limit = stage_limit(THREE, Guard(parallel=3))
    assert (limit.at_once, limit.keeps_serving) == (2, True)
    assert describe(limit) == "Stage GATEWAY: 3 hosts, 2 at once, one node keeps serving"
    assert stage_limit(THREE, Guard(parallel=1)).at_once == 1


def test_allow_outage_lets_parallel_alone_decide() -> None:
    limit = stage_limit(THREE, Guard(parallel=3, allow_outage=True))
    assert (limit.at_once, limit.keeps_serving) == (3, False)
    assert describe(limit).endswith("every node may be down at once")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", 1), ("2", 2), ("50%", 1), ("67%", 2), ("100%", 2), ("10", 2)],
)
def test_max_unavailable_caps_further_but_never_below_one(text: str, expected: int) -> None:
    guard = Guard(parallel=3, max_unavailable=parse_max_unavailable(text))
    assert stage_limit(THREE, guard).at_once == expected


@pytest.mark.parametrize("text", ["0", "0%", "101%", "-1", "x", "1.5", ""])
def test_a_bad_max_unavailable_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="--max-unavailable"):
        parse_max_unavailable(text)


def test_hosts_whose_nodes_were_stopped_do_not_count_as_serving() -> None:
    stage = [pair("h1"), pair("h2", running=False), pair("h3", running=False)]
    limit = stage_limit(stage, Guard(parallel=3))
    assert limit.serving == ("h1",)
    assert limit.at_once == 1 and not limit.keeps_serving
    warning = "GATEWAY runs on one host only (h1): unavailable while it restarts"
    assert single_host_warnings([limit]) == [warning]


def test_a_portless_daemon_is_not_held_back() -> None:
    daemons = [pair(h, "daemon", port=None) for h in ("h1", "h2", "h3")]
    limit = stage_limit(daemons, Guard(parallel=3))
    assert limit.at_once == 3 and limit.serving == ()
    assert single_host_warnings([limit]) == []


def test_limits_follow_the_stages_and_render_as_records() -> None:
    pairs = [*THREE, pair("h1", "content-server", port=15000)]
    limits = stage_limits(pairs, Guard(parallel=2, max_unavailable=MaxUnavailable(50, percent=True)))
    assert [limit.service for limit in limits] == ["gateway", "content-server"]
    assert limits[0].to_record() == {
        "service": "gateway",
        "printed": "GATEWAY",
        "hosts": ["h1", "h2", "h3"],
        "serving_hosts": ["h1", "h2", "h3"],
        "at_once": 1,
        "keeps_serving": True,
    }
    assert Guard(parallel=2, max_unavailable=MaxUnavailable(50, percent=True)).to_record() == {
        "parallel": 2,
        "max_unavailable": "50%",
        "allow_outage": False,
    }
