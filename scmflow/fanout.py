"""Run one step on many hosts at once, a bounded number at a time (`--parallel-ssh`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from scmflow.errors import ScmflowError

T = TypeVar("T")


def map_hosts(
    hosts: Sequence[str], step: Callable[[str], T], *, parallel: int, what: str
) -> dict[str, T]:
    """`step(host)` for every host, at most `parallel` at once; their results by host.

    Every host is tried; if any failed, one ScmflowError names each failed host and why
    (operator errors keep their message, anything else is prefixed with the host).
    """
    results: dict[str, T] = {}
    errors: list[str] = []
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
            elif isinstance(exc, Exception):
                errors.append(f"[{host}] {type(exc).__name__}: {exc}")
            else:
                raise exc
    if errors:
        raise ScmflowError(f"{what} failed: " + "; ".join(errors))
    return results
