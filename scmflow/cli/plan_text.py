"""The plan, its warnings and a dry run's remote steps, as the operator reads them."""

from __future__ import annotations

from collections.abc import Sequence

from scmflow.actions import RemoteLayout
from scmflow.catalog import Catalog
from scmflow.plan import Pair, Plan


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
