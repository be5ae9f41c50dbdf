"""What the operator is told: the Reporter protocol, plan rendering, dry-run steps, the log."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from scmflow.actions import RemoteLayout
from scmflow.catalog import Catalog
from scmflow.events import Event
from scmflow.plan import Pair, Plan


class Reporter(Protocol):
    """Receives the core's events (scmflow/events.py): the CLI renders them, tests collect them."""

    def emit(self, event: Event) -> None:
        """One thing the operator is to be told."""
        ...


def plan_warnings(plan: Plan) -> list[str]:
    """The original's warnings: services absent from the cluster, and ones not older."""
    lines = []
    if plan.absent:
        lines.append(
            f"The following specified service do not exist in the cluster:[{', '.join(plan.absent)}]"
        )
    if plan.not_newer:
        items = ", ".join(f"[{s.host}]:{s.printed}:{s.version}" for s in plan.not_newer)
        lines.append(
            "The following services are not older than the upgrade version "
            f"{plan.release_version} and will not be upgraded:[{items}]"
        )
    return lines


def plan_lines(pairs: Sequence[Pair], *, reverse: bool = False) -> list[str]:
    """`[host]:SERVICE:old to new` per pair."""
    return [p.label(reverse=reverse) for p in pairs]


def dry_run_steps(pair: Pair, catalog: Catalog, layout: RemoteLayout, package: str) -> list[str]:
    """The remote steps a pair would take, as the operator should read them."""
    service = catalog.get(pair.service)
    svc_dir = f"{layout.install_path}/{service.dir}".rstrip("/")
    backup = layout.pair_backup_dir(pair.service)
    replaced = ", ".join(service.replace)
    steps = [f"backup:  copy {replaced} from {svc_dir} to {backup}"]
    stop = ""
    if service.ctl:
        stop = f"stop nodes ({service.ctl} {' '.join(service.stop_args)}), "
    steps.append(
        f"replace: {stop}swap {replaced} for the contents of {layout.package_path(package)}"
        + (f", keeping {', '.join(service.preserve)}" if service.preserve else "")
    )
    steps.append(_restart_step(pair, service.ctl, layout))
    checks = [f"version {pair.new_version} on disk"]
    if pair.running_ports:
        checks.append(f"nodes answer on {', '.join(str(p) for p in pair.running_ports)}")
    if pair.daemon_running:
        checks.append("daemon process runs")
    steps.append(f"verify:  {'; '.join(checks)}")
    return steps


def rollback_steps(pair: Pair, catalog: Catalog, layout: RemoteLayout, action: str) -> list[str]:
    """The remote steps rolling back a pair would take; `action` is the lifecycle's (abandon, restore)."""
    service = catalog.get(pair.service)
    backup = layout.pair_backup_dir(pair.service)
    if action != "restore":
        return [f"{action}: remove the incomplete backup {backup}; the install was not changed"]
    svc_dir = f"{layout.install_path}/{service.dir}".rstrip("/")
    stop = f"stop nodes ({service.ctl} {' '.join(service.stop_args)}), " if service.ctl else ""
    return [
        f"restore: {stop}put back {', '.join(service.replace)} in {svc_dir} from {backup}",
        _restart_step(pair, service.ctl, layout),
    ]


def _restart_step(pair: Pair, ctl: str | None, layout: RemoteLayout) -> str:
    starts = [f"{ctl} start --timeout {layout.start_timeout} -p {p}" for p in pair.running_ports]
    if pair.daemon_running:
        starts.append(f"{ctl} start")
    return f"restart: {'; '.join(starts) if starts else 'nothing to start'}"


def open_log(path: Path, logger: logging.Logger) -> logging.Handler:
    """Attach a DEBUG file handler writing to `path` (mode 0600) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return handler


def json_ready(value: Any) -> Any:
    """Values made JSON-friendly (bytes as hex, tuples as lists)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value
