"""`scm.py cluster`: its options, its help, and which flow runs (upgrade, resume or rollback)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from scmflow.catalog import Catalog, load_catalog
from scmflow.cli.cluster_flow import ClusterFlow
from scmflow.cli.cluster_login import SSHAccess
from scmflow.cli.cluster_resume import resume
from scmflow.cli.cluster_rollback import rollback
from scmflow.cli.cluster_upgrade import upgrade
from scmflow.cli.options import DEFAULT_START_TIMEOUT, ClusterOptions, parse_cluster_options
from scmflow.cli.ui import Printer, fail, interrupt_handler
from scmflow.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED, ScmflowError
from scmflow.fanout import DEFAULT_PARALLEL_SSH

# The one table of exit codes: `cluster --help` prints it and the README repeats it (a test
# compares the two).
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "Success; also a pause, a dry run, nothing to do, or the operator answered n."),
    (EXIT_FAILED, "A pair failed: something changed on a host and that pair was rolled back."),
    (
        EXIT_REFUSED,
        "Refused before any host changed: options, config, release, plan, host check, host "
        "keys, connection, locks, status file or status key.",
    ),
    (EXIT_INTERRUPTED, "Interrupted (Ctrl-C): the status file records where every pair stopped."),
)


@click.command(
    "cluster",
    epilog="""\b
Examples:
  upgrade every host and service of the config, asking before any change:
    scm.py cluster --upgrade --upgrade-conf sequoiacm-deploy/conf/upgrade.cfg
  show what would be done, as JSON, changing nothing:
    scm.py cluster --upgrade --upgrade-conf upgrade.cfg --dry-run --output json
  upgrade two hosts, four at a time, without a prompt:
    scm.py cluster --upgrade --upgrade-conf upgrade.cfg --host h1,h2 --parallel 4 --unattended
  continue an interrupted or failed upgrade:
    scm.py cluster --upgrade --upgrade-status-path sequoiacm-deploy/upgrade-status/upgrade_status_...
  roll back what an upgrade did (all of it, or only some hosts/services):
    scm.py cluster --rollback --upgrade-status-path .../upgrade_status_... --service gateway
  roll back from a status file another control machine wrote, with that machine's key:
    scm.py cluster --rollback --upgrade-status-path .../upgrade_status_... --status-key ctl1.key
"""
    + "\n\b\nExit codes:\n"
    + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES),
)
@click.option("--upgrade", is_flag=True, help="Upgrade the cluster (or resume, with --upgrade-status-path).")
@click.option("--rollback", is_flag=True, help="Roll back what the status file records.")
@click.option(
    "--upgrade-conf", type=click.Path(path_type=Path), help="The upgrade configuration (upgrade.cfg)."
)
@click.option(
    "--upgrade-status-path",
    "status_path",
    type=click.Path(path_type=Path),
    help="An upgrade status file: rollback reads it; with --upgrade, the run it records is resumed.",
)
@click.option(
    "--release-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="The unpacked new release (holds package/) [default: the current directory; on resume, "
    "the one the status file records].",
)
@click.option("--host", "hosts", help="Only these hosts (comma-separated).")
@click.option(
    "--service", "services", help="Only these services (comma-separated); overrides service= in the config."
)
@click.option("--unattended", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Print the plan and every remote step, change nothing.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--parallel",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Hosts upgraded at once within a service.",
)
@click.option(
    "--max-unavailable",
    metavar="N|N%",
    help="At most N hosts (or N% of the hosts that ran it) of a service down at once [default: "
    "--parallel, and never every host that ran the service].",
)
@click.option(
    "--allow-outage",
    is_flag=True,
    help="Allow every node of a service to be down at once (then --parallel alone caps a stage).",
)
@click.option(
    "--pause-after",
    type=click.IntRange(1, None),
    metavar="N",
    help="Stop cleanly once N pairs are verified (a canary); resume carries on.",
)
@click.option(
    "--parallel-ssh",
    type=click.IntRange(1, 256),
    default=DEFAULT_PARALLEL_SSH,
    show_default=True,
    help="Hosts connected, checked, locked and sent packages at once.",
)
@click.option(
    "--status-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where status files and logs go [default: RELEASE_DIR/sequoiacm-deploy/upgrade-status; "
    "on resume and rollback, the status file's directory].",
)
@click.option(
    "--start-timeout",
    type=click.IntRange(1, 86400),
    help=f"Seconds a node may take to start [default: {DEFAULT_START_TIMEOUT}; on resume and "
    "rollback, the value the status file records].",
)
@click.option(
    "--accept-new-host-keys",
    is_flag=True,
    help="Record unknown SSH host keys in known_hosts (a changed key is still refused).",
)
@click.option(
    "--break-lock",
    is_flag=True,
    help="Take over per-host run locks of a run that cannot be proven dead, e.g. one from another "
    "control machine (check it is dead first). A run that died on this machine needs no flag.",
)
@click.option(
    "--status-key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The key that signs status files [default: $SCMFLOW_STATUS_KEY_FILE, else "
    "~/.config/scmflow/status.key, made on first use].",
)
@click.option(
    "--trust-status-file",
    is_flag=True,
    help="Use a status file that is not authentic (e.g. written by an older scmflow), after "
    "showing the hosts, users and paths it names and asking (unless --unattended).",
)
def cluster_command(**raw: Any) -> None:
    """Upgrade or roll back a SequoiaCM cluster (the vendor's `scm.py cluster`)."""
    printer = Printer(to_stderr=raw["output"] == "json")
    try:
        options = parse_cluster_options(raw)
        code = run_cluster(options, printer, catalog=load_catalog())
    except ScmflowError as exc:
        fail(printer, exc)
    sys.exit(code)


def run_cluster(options: ClusterOptions, printer: Printer, *, catalog: Catalog) -> int:
    """`scm.py cluster ...` over SSH: the exit code."""
    flow = ClusterFlow(
        options=options,
        printer=printer,
        catalog=catalog,
        access=SSHAccess(options, catalog, printer),
        interrupts=lambda: interrupt_handler(printer),
    )
    if options.rollback:
        return rollback(flow)
    if options.status_path is not None:
        return resume(flow)
    return upgrade(flow)
