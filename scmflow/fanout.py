"""Run one step on many hosts at once, a bounded number at a time (`--parallel-ssh`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from scmflow.errors import ScmflowError

T = TypeVar("T")

# Hosts worked on side by side unless `--parallel-ssh` says otherwise.
DEFAULT_PARALLEL_SSH = 16


class HostsFailed(ScmflowError):
    """One or more hosts failed a step run on many hosts; the exit code is the step's."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
    if not hosts:
        return results
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(hosts)))) as pool:
        futures = {host: pool.submit(step, host) for host in hosts}
        for host, future in futures.items():
            exc = future.exception()
            if exc is None:
                results[host] = future.result()
            elif isinstance(exc, ScmflowError):
                errors.append(exc.message)
                codes.append(exc.exit_code)
            elif isinstance(exc, Exception):
                errors.append(f"[{host}] {type(exc).__name__}: {exc}")
            else:
                raise exc
    if errors:
        raise HostsFailed(f"{what} failed: " + "; ".join(errors), exit_code or max(codes))
    return results
