"""`scm.py cluster --upgrade --upgrade-conf FILE`: read the config, check, show the plan, confirm, run."""

from __future__ import annotations

import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from scmflow.availability import stage_limits
from scmflow.catalog import Catalog
from scmflow.cli.cluster_flow import (
    ClusterFlow,
    print_limits,
    print_steps,
    report_outcome,
    report_run_error,
    run_settings,
    stage_warnings,
)
from scmflow.cli.cluster_login import resolve_passwords, ssh_connector
from scmflow.cli.options import ClusterOptions
from scmflow.cli.plan_text import dry_run_steps, plan_lines, plan_warnings
from scmflow.cli.ui import Printer, confirm, echo_json, open_run_log
from scmflow.compatibility import load_compatibility
from scmflow.config import UpgradeConfig, load_config, select_hosts, select_services
from scmflow.errors import EXIT_OK
from scmflow.hooks import dry_run_hook_lines
from scmflow.lifecycle import load_lifecycle
from scmflow.locks import run_locks
from scmflow.runstate import HostEntry, RunFailed, RunInterrupted, RunOutcome
from scmflow.statuskey import StatusKey, key_path, load_or_create_key
from scmflow.upgrade import CheckedCluster, Connector, Target, check_cluster, execute_upgrade, make_layout


def upgrade(flow: ClusterFlow) -> int:
    """A new upgrade from --upgrade-conf over SSH: the exit code."""
    options, printer = flow.options, flow.printer
    config = _load(options, printer, flow.catalog)
    target = _target(config, options, flow.catalog)
    selected = [config.host(h.name) for h in target.hosts]
    passwords = resolve_passwords(selected, config.path)
    endpoints = {h.name: (h.port if h.port_given else None, h.user, passwords[h.name]) for h in selected}
    if not options.dry_run:
        open_run_log(options.status_dir, printer)
    with tempfile.TemporaryDirectory(prefix="scmflow-") as work:
        try:
            outcome = upgrade_target(
                target,
                ssh_connector(endpoints, options),
                flow,
                work_dir=Path(work),
                # made on first use: every record of the status file is signed with it
                status_key=lambda: load_or_create_key(key_path(options.status_key)),
                argv=sys.argv,
            )
        except (RunFailed, RunInterrupted) as exc:
            return report_run_error(printer, exc)
    return EXIT_OK if outcome is None else report_outcome(printer, outcome)


def upgrade_target(
    target: Target,
    connect: Connector,
    flow: ClusterFlow,
    *,
    work_dir: Path,
    status_key: Callable[[], StatusKey],
    argv: Sequence[str],
) -> RunOutcome | None:
    """Check `target`, show the plan, confirm, then upgrade it; None when nothing was run.

    RunFailed or RunInterrupted when the run did not end well: the caller says what next.
    """
    options, printer = flow.options, flow.printer
    compatibility = load_compatibility(catalog=flow.catalog)
    checked = check_cluster(
        target,
        release_dir=options.release_dir,
        catalog=flow.catalog,
        compatibility=compatibility,
        connect=connect,
        reporter=printer,
        work_dir=work_dir,
        parallel_ssh=options.parallel_ssh,
    )
    try:
        olds = [p.old_version for p in checked.plan.pairs if p.old_version]
        for notice in compatibility.notices_for(olds, checked.plan.release_version):
            printer.warn(f"Upgrade note: {notice}")
        if not _show_plan(checked, flow):
            return None
        run_id = uuid.uuid4().hex
        key = status_key()
        locks = run_locks(
            options.status_dir,
            {h: checked.sessions[h] for h in checked.plan.hosts()},
            upgrade_pack_path=target.upgrade_pack_path,
            admin_user=target.admin_user,
            login_users={h.name: h.user for h in target.hosts},
            run_id=run_id,
            force=options.break_lock,
            install_path=target.install_path,
            on_event=printer.emit,
            parallel=options.parallel_ssh,
        )
        with locks, flow.interrupts() as stop:
            return execute_upgrade(
                checked,
                run_id=run_id,
                status_dir=options.status_dir,
                argv=argv,
                catalog=flow.catalog,
                lifecycle=load_lifecycle(),
                settings=run_settings(options, options.upgrade_start_timeout),
                reporter=printer,
                stop=stop,
                status_key=key,
            )
    finally:
        checked.close()


def _load(options: ClusterOptions, printer: Printer, catalog: Catalog) -> UpgradeConfig:
    printer.info("Parsing the upgrade configuration...")
    assert options.upgrade_conf is not None
    config = load_config(options.upgrade_conf, catalog)
    for warning in config.warnings:
        printer.warn(warning)
    printer.info("Parse the upgrade configuration success")
    return config


def _target(config: UpgradeConfig, options: ClusterOptions, catalog: Catalog) -> Target:
    hosts = select_hosts(",".join(options.hosts), config) if options.hosts else config.hosts
    services = select_services(",".join(options.services), catalog) if options.services else config.services
    return Target(
        install_path=config.install_path,
        install_user=config.install_user,
        hosts=tuple(
            HostEntry(
                name=h.name,
                port=h.port if h.port_given else None,
                user=h.user,
                java_home=h.java_home,
                password_auth=h.password_source != "none",
            )
            for h in hosts
        ),
        services=services,
        upgrade_pack_path=config.upgrade_pack_path,
        backup_path=config.backup_path,
        config=config.file,
        hooks=config.hooks,
        secret_names=tuple(h.password_env for h in config.hosts if h.password_env),
    )


def _show_plan(checked: CheckedCluster, flow: ClusterFlow) -> bool:
    """Print warnings and the plan; True when the operator wants it run."""
    options, printer = flow.options, flow.printer
    plan = checked.plan
    limits = stage_limits(plan.pairs, run_settings(options, 0).guard)
    for warning in plan_warnings(plan) + stage_warnings(flow, limits):
        printer.warn(warning)
    if options.output == "json":
        document = {
            "action": "upgrade",
            **plan.to_record(),
            "start_timeout": options.upgrade_start_timeout,
            "stages": [limit.to_record() for limit in limits],
            "pause_after": options.pause_after,
        }
        if options.dry_run:
            document["steps"] = _steps(checked, flow.catalog, options)
        echo_json(document)
    if not plan.pairs:
        printer.info("No service need to upgrade")
        return False
    # the stages first: the vendor's plan block (order, pairs, question) stays in one piece
    print_limits(flow, limits)
    printer.info("Prepare to upgrade services in this order")
    for line in plan_lines(plan.pairs):
        printer.info(line)
    if options.dry_run:
        if options.output == "text":
            print_steps(printer, _steps(checked, flow.catalog, options))
        printer.info("Dry run: nothing was changed")
        return False
    if options.unattended:
        return True
    if not confirm(printer, "Whether to upgrade?"):
        printer.info("Upgrade cancelled, nothing was changed")
        return False
    return True


def _steps(checked: CheckedCluster, catalog: Catalog, options: ClusterOptions) -> dict[str, list[str]]:
    layout = make_layout(checked.target, "<timestamp>", options.upgrade_start_timeout)
    hooks = checked.target.hooks
    return {
        pair.label(): dry_run_hook_lines(hooks, "pre_stop")
        + dry_run_steps(pair, catalog, layout, checked.release.package_for(pair.service).name)
        + dry_run_hook_lines(hooks, "post_verify")
        for pair in checked.plan.pairs
    }
