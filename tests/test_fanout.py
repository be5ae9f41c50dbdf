"""fanout: every host tried, at most `parallel` at once; each host's outcome, failures named per host."""

from __future__ import annotations

import threading
import time

import pytest

from scmflow import fanout
from scmflow.errors import RemoteError, ScmflowError
from scmflow.fanout import HostsFailed, map_hosts

HOSTS = [f"h{i}" for i in range(7)]


class Gauge:
    """Counts steps running at the same time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.seen: list[str] = []

    def step(self, host: str) -> str:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.seen.append(host)
        time.sleep(0.05)
        with self.lock:
            self.now -= 1
        return host.upper()


@pytest.mark.parametrize("parallel", [1, 3, 16])
def test_results_by_host_with_at_most_parallel_at_once(parallel: int) -> None:
    gauge = Gauge()
    assert map_hosts(HOSTS, gauge.step, parallel=parallel, what="x") == {h: h.upper() for h in HOSTS}
    assert gauge.most == min(parallel, len(HOSTS))
    assert sorted(gauge.seen) == sorted(HOSTS)


def test_every_host_is_tried_and_each_failure_is_named() -> None:
    tried: list[str] = []

    def step(host: str) -> int:
        tried.append(host)
        if host == "h1":
            raise RemoteError(host, "connection reset by the host")
        if host == "h4":
            raise KeyError("services")
        return 1

    with pytest.raises(ScmflowError) as caught:
        map_hosts(HOSTS, step, parallel=2, what="host check")
    assert str(caught.value) == (
        "host check failed: [h1] connection reset by the host; [h4] KeyError: 'services'"
    )
    assert sorted(tried) == HOSTS


def test_no_hosts_no_work() -> None:
    assert map_hosts([], lambda h: 1 / 0, parallel=4, what="x") == {}


def test_an_interrupt_is_not_swallowed() -> None:
    def step(host: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        map_hosts(HOSTS[:2], step, parallel=2, what="x")


def test_a_check_that_changes_nothing_refuses_with_its_own_exit_code() -> None:
    def step(host: str) -> str:
        raise ScmflowError(f"[{host}] unreachable")

    with pytest.raises(HostsFailed) as refused:
        map_hosts(HOSTS[:2], step, parallel=2, what="host check", exit_code=2)
    assert refused.value.exit_code == 2
    with pytest.raises(HostsFailed) as failed:
        map_hosts(HOSTS[:2], step, parallel=2, what="x")
    assert failed.value.exit_code == 1


def test_each_host_gives_every_hosts_result_or_error_in_host_order() -> None:
    def step(host: str) -> int:
        if host == "b":
            raise ValueError("b broke")
        return len(host)

    outcomes = fanout.each_host(["ccc", "b", "a"], step, parallel=2)
    assert list(outcomes) == ["ccc", "b", "a"]
    assert outcomes["ccc"].result == 3 and outcomes["ccc"].error is None
    assert isinstance(outcomes["b"].error, ValueError) and outcomes["b"].result is None
    assert fanout.each_host([], step, parallel=4) == {}


def test_each_host_runs_at_most_parallel_at_once_and_raises_ctrl_c_after_all_ended() -> None:
    running = 0
    peak = 0
    ended: list[str] = []
    lock = threading.Lock()

    def step(host: str) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
            ended.append(host)
        if host == "h2":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fanout.each_host([f"h{n}" for n in range(6)], step, parallel=3)
    assert peak == 3
    assert sorted(ended) == [f"h{n}" for n in range(6)]
