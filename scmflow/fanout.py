"""Run one step on many hosts at once, a bounded number at a time (`--parallel-ssh`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

from scmflow.errors import ScmflowError

T = TypeVar("T")

# Hosts worked on side by side unless `--parallel-ssh` says otherwise.
DEFAULT_PARALLEL_SSH = 16


class HostsFailed(ScmflowError):
    """One or more hosts failed a step run on many hosts; the exit code is the step's."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class HostOutcome(Generic[T]):
    """What a step did on one host: its result, or the exception it raised."""

    result: T | None = None
    error: Exception | None = None


def each_host(hosts: Sequence[str], step: Callable[[str], T], *, parallel: int) -> dict[str, HostOutcome[T]]:
    """`step(host)` for every host, at most `parallel` at once; each host's outcome, in host order.

    Every host is tried whatever the others did. An exception that is not an `Exception`
    (Ctrl-C) is raised once every step has ended.
    """
    outcomes: dict[str, HostOutcome[T]] = {}
    if not hosts:
        return outcomes
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(hosts)))) as pool:
        futures = {host: pool.submit(step, host) for host in hosts}
        for host, future in futures.items():
            exc = future.exception()
            if exc is None:
                outcomes[host] = HostOutcome(result=future.result())
            elif isinstance(exc, Exception):
                outcomes[host] = HostOutcome(error=exc)
            else:
                raise exc
    return outcomes


def map_hosts(
    hosts: Sequence[str],
    step: Callable[[str], T],
    *,
    parallel: int,
    what: str,
    exit_code: int | None = None,
) -> dict[str, T]:
    """`step(host)` for every host, at most `parallel` at once; their results by host.

    Every host is tried; if any failed, one HostsFailed names each failed host and why
    (operator errors keep their message, anything else is prefixed with the host). Its
    exit code is `exit_code` when given (a check that changes nothing refuses with 2,
    whatever stopped a host), else the highest of the hosts' own.
    """
    results: dict[str, T] = {}
    errors: list[str] = []
    codes = [1]
    for host, outcome in each_host(hosts, step, parallel=parallel).items():
        exc = outcome.error
        if exc is None:
            results[host] = cast(T, outcome.result)
        elif isinstance(exc, ScmflowError):
            errors.append(exc.message)
            codes.append(exc.exit_code)
        else:
            errors.append(f"[{host}] {type(exc).__name__}: {exc}")
    if errors:
        raise HostsFailed(f"{what} failed: " + "; ".join(errors), exit_code or max(codes))
    return results
