"""`scm.py demo`: the `cluster` command's own upgrade and rollback flow, on a sandbox on this machine.

No SSH server, root or cluster is needed: a sandbox 3.1.2 with real node processes is
installed under a temporary directory (demo_sandbox) and reached through a `LocalSession`;
the same flow functions as `scm.py cluster` (cluster_upgrade, cluster_rollback) upgrade
it to 3.2.2 and roll it back.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import click

from scmflow import sandbox
from scmflow.catalog import Catalog, load_catalog
from scmflow.cli.cluster_flow import ClusterFlow, SessionOpener, report_outcome, report_rollback
from scmflow.cli.cluster_rollback import roll_back_state
from scmflow.cli.cluster_upgrade import upgrade_target
from scmflow.cli.demo_sandbox import (
    DEMO_SERVICES,
    NEW_VERSION,
    OLD_VERSION,
    START_TIMEOUT,
    DemoPaths,
    build_sandbox,
    check_back,
    clean_sandbox,
    demo_target,
    local_connector,
    make_root,
    node_states,
    say_kept,
    show_customer_jars,
    show_nodes,
)
from scmflow.cli.options import ClusterOptions
from scmflow.cli.ui import Printer, cleanup_interrupts, fail
from scmflow.errors import EXIT_FAILED, EXIT_OK, Interrupted, ScmflowError, UsageError
from scmflow.journalreader import read_journal
from scmflow.runstate import ResumeState, RunFailed, RunInterrupted, open_run
from scmflow.statuskey import StatusKey
from scmflow.statusview import render_show


@dataclass(frozen=True)
class DemoOptions:
    """The `demo` command's options."""

    keep: bool = False
    fail_service: str | None = None
    workdir: Path | None = None


@click.command(
    "demo",
    epilog="""\b
Examples:
  scm.py demo                              upgrade 3.1.2 -> 3.2.2, show the status, roll back
  scm.py demo --fail content-server        watch a failed pair being rolled back on the spot
  scm.py demo --keep                       leave the sandbox in place to look around
""",
)
@click.option("--keep", is_flag=True, help="Keep the sandbox (files and running nodes) afterwards.")
@click.option("--fail", "fail_service", metavar="SERVICE", help="Make SERVICE's new nodes fail to start.")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where to build the sandbox [default: a new temporary directory].",
)
def demo_command(keep: bool, fail_service: str | None, workdir: Path | None) -> None:
    """Run the real upgrade and rollback on a local sandbox SequoiaCM (no SSH, root or cluster)."""
    printer = Printer()
    try:
        code = run_demo(DemoOptions(keep=keep, fail_service=fail_service, workdir=workdir), printer)
    except ScmflowError as exc:
        fail(printer, exc)
    sys.exit(code)


def run_demo(options: DemoOptions, printer: Printer) -> int:
    """Install, upgrade, show, roll back and check a sandbox; the exit code."""
    catalog = load_catalog()
    _check_options(options)
    paths = make_root(options.workdir)
    with cleanup_interrupts(printer) as interrupts:
        try:
            return _run(paths, options, catalog, printer, interrupts.stop)
        except (RunInterrupted, KeyboardInterrupt):
            where = f"; the sandbox is kept in {paths.root}" if options.keep else ""
            raise Interrupted(f"demo interrupted{where}") from None
        finally:
            interrupts.cleaning.set()
            if options.keep:
                say_kept(paths, catalog, printer)
            else:
                clean_sandbox(paths, printer)


def _check_options(options: DemoOptions) -> None:
    if options.fail_service is not None and options.fail_service not in DEMO_SERVICES:
        raise UsageError(f"--fail {options.fail_service}: the demo runs only {', '.join(DEMO_SERVICES)}")
    workdir = options.workdir
    if workdir is not None and workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise UsageError(f"--workdir {workdir} must be an empty directory or not exist yet")
    if workdir is not None and " " in str(workdir.resolve()):
        raise UsageError(f"--workdir {workdir}: the sandbox daemon cannot run under a path with spaces")


def _run(
    paths: DemoPaths, options: DemoOptions, catalog: Catalog, printer: Printer, stop: threading.Event
) -> int:
    printer.info(
        f"Demo: a sandbox SequoiaCM {OLD_VERSION} on this machine, upgraded to {NEW_VERSION} and rolled "
        "back by the same flow as `scm.py cluster` (a local session stands in for SSH)"
    )
    topology = build_sandbox(paths, printer)
    _check_stop(stop)
    before_digest = sandbox.tree_digest(paths.install)
    before_nodes = node_states(paths, topology, catalog)
    show_nodes(printer, before_nodes)
    if options.fail_service is not None:
        sandbox.set_fault(paths.install, options.fail_service, "start-fail", version=NEW_VERSION)
        printer.info(
            f"Demo: {catalog.get(options.fail_service).printed} {NEW_VERSION} will fail to start "
            "(--fail): watch that pair being rolled back on the spot"
        )
    _check_stop(stop)
    # The demo signs its status file as the cluster command does, with a key that lives in
    # memory only: the demo leaves no file behind.
    key = StatusKey.generate()
    flow = _flow(paths, catalog, printer, stop)
    status_path, upgraded = _upgrade(paths, options, flow, key)
    printer.info("Demo: after the upgrade:" if upgraded else "Demo: after the failed upgrade:")
    show_nodes(printer, node_states(paths, topology, catalog))
    show_customer_jars(paths, catalog, printer)
    _show_status(status_path, printer, key)
    _check_stop(stop)
    rolled_back = _rollback(status_path, flow, key)
    _show_status(status_path, printer, key)
    back = check_back(paths, topology, catalog, printer, before_digest=before_digest, before=before_nodes)
    expected_failure = options.fail_service is not None
    return EXIT_OK if back and rolled_back and upgraded != expected_failure else EXIT_FAILED


def _check_stop(stop: threading.Event) -> None:
    if stop.is_set():
        raise KeyboardInterrupt


@dataclass(frozen=True)
class LocalAccess:
    """The demo's HostAccess: every host is this machine, through a local session; no password."""

    def login(self, state: ResumeState, hosts: Sequence[str], *, ask: bool = True) -> SessionOpener:
        """Open local sessions to `hosts` when called."""
        return lambda: local_connector()(hosts)


def _flow(paths: DemoPaths, catalog: Catalog, printer: Printer, stop: threading.Event) -> ClusterFlow:
    """The cluster flow as `scm.py cluster --upgrade --unattended` runs it, on the sandbox."""
    options = ClusterOptions(
        upgrade=True,
        rollback=False,
        upgrade_conf=None,
        status_path=None,
        release_dir=paths.release(NEW_VERSION),
        hosts=None,
        services=None,
        unattended=True,
        dry_run=False,
        output="text",
        parallel=1,
        parallel_ssh=1,
        status_dir=paths.status_dir,
        start_timeout=START_TIMEOUT,
        accept_new_host_keys=False,
        break_lock=False,
    )
    # The demo's Ctrl-C handler is installed for the whole demo (it also cleans up), so a
    # run only receives its stop event; the run's log would be one more file to remove.
    return ClusterFlow(
        options=options,
        printer=printer,
        catalog=catalog,
        access=LocalAccess(),
        interrupts=lambda: nullcontext(stop),
        run_log=False,
        stage_lines=False,
    )


def _upgrade(paths: DemoPaths, options: DemoOptions, flow: ClusterFlow, key: StatusKey) -> tuple[Path, bool]:
    """Check, show the plan, upgrade unattended: (status file, whether every pair upgraded)."""
    printer = flow.printer
    printer.info(f"Demo: upgrading to {NEW_VERSION}, as `scm.py cluster --upgrade --unattended` does")
    paths.scratch.mkdir(exist_ok=True)
    try:
        outcome = upgrade_target(
            demo_target(paths),
            local_connector(),
            flow,
            work_dir=paths.scratch,
            status_key=lambda: key,
            argv=_demo_argv(options),
        )
    except RunFailed as exc:
        printer.error(exc.message)
        printer.info(
            "Demo: the failed pair was rolled back on the spot and no further pair was started; "
            "the status file records it all"
        )
        return exc.status_path, False
    if outcome is None:
        raise ScmflowError("the demo found nothing to upgrade in its sandbox")
    report_outcome(printer, outcome)
    return outcome.status_path, True


def _demo_argv(options: DemoOptions) -> list[str]:
    argv = ["scm.py", "demo"]
    if options.fail_service:
        argv += ["--fail", options.fail_service]
    if options.keep:
        argv.append("--keep")
    return argv


def _show_status(status_path: Path, printer: Printer, key: StatusKey) -> None:
    printer.info(f"Demo: scm.py status show {status_path}")
    for line in render_show(read_journal(status_path, key=key)).rstrip("\n").splitlines():
        printer.info(f"    {line}".rstrip())


def _rollback(status_path: Path, flow: ClusterFlow, key: StatusKey) -> bool:
    """Roll back every pair the status file says changed, as `cluster --rollback` does."""
    printer = flow.printer
    printer.info(
        f"Demo: rolling back, as `scm.py cluster --rollback --upgrade-status-path {status_path}` does"
    )
    # No trust check: the demo wrote this file a moment ago, and as root its install user
    # is root, which a cluster's status file may never name.
    state = open_run(status_path, key=key)
    try:
        printer.info(f"Read the upgrade status file {status_path}: {len(state.pairs)} planned pairs")
        options = replace(flow.options, upgrade=False, rollback=True, status_path=status_path)
        outcome = roll_back_state(state, replace(flow, options=options))
    except RunFailed as exc:
        printer.error(exc.message)
        return False
    finally:
        state.writer().close()
    if outcome is not None:
        report_rollback(printer, outcome)
    return True
