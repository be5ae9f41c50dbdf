"""`scm.py status ...`: read upgrade status files (show, verify, export, list) and draw the lifecycle."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from scmflow.cli.ui import Printer, echo_json, fail
from scmflow.errors import ScmflowError, UsageError
from scmflow.journalreader import read_journal, verify_journal
from scmflow.lifecyclediagram import render_diagram
from scmflow.statusexport import export_json
from scmflow.statuskey import StatusKey, key_path, load_key
from scmflow.statuslist import list_status_files, render_list
from scmflow.statusview import render_show
from scmflow.trustview import authenticity_hint, authenticity_text, chain_text


@click.group(
    "status",
    epilog="""\b
Examples:
  scm.py status list --status-dir sequoiacm-deploy/upgrade-status
  scm.py status show sequoiacm-deploy/upgrade-status/upgrade_status_2026-11-26-10:00:00 --timeline
  scm.py status verify sequoiacm-deploy/upgrade-status/upgrade_status_2026-11-26-10:00:00
  scm.py status export FILE --format json > run.json
  scm.py status diagram
""",
)
def status_group() -> None:
    """Read upgrade status files: show, verify, export, list, and the pair lifecycle diagram."""


_STATUS_FILE = click.Path(path_type=Path, dir_okay=False)
_STATUS_KEY = click.option(
    "--status-key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The key to check the file's MACs with [default: $SCMFLOW_STATUS_KEY_FILE, else "
    "~/.config/scmflow/status.key].",
)


def reading_key(option: Path | None) -> tuple[Path, StatusKey | None]:
    """Where the status key is, and the key if there is one; reading never creates a key."""
    where = key_path(option)
    return where, load_key(where)


@status_group.command(
    "show",
    epilog="""\b
Examples:
  scm.py status show sequoiacm-deploy/upgrade-status/upgrade_status_2026-11-26-10:00:00
  scm.py status show FILE --timeline --width 140
""",
)
@click.argument("path", type=_STATUS_FILE)
@click.option("--timeline", is_flag=True, help="Also list every event in order, errors in full.")
@click.option("--width", type=click.IntRange(60, 400), default=100, show_default=True)
@_STATUS_KEY
def status_show(path: Path, timeline: bool, width: int, status_key: Path | None) -> None:
    """Who ran the upgrade, when, on which hosts, and where every pair ended."""

    printer = Printer()
    try:
        where, key = reading_key(status_key)
        contents = read_journal(_existing(path), key=key)
        click.echo(render_show(contents, timeline=timeline, width=width, key_path=where).rstrip("\n"))
    except ScmflowError as exc:
        fail(printer, exc)


@status_group.command(
    "verify",
    epilog="""\b
Examples:
  scm.py status verify sequoiacm-deploy/upgrade-status/upgrade_status_2026-11-26-10:00:00
  scm.py status verify FILE --status-key /secure/ctl1-status.key
""",
)
@click.argument("path", type=_STATUS_FILE)
@_STATUS_KEY
def status_verify(path: Path, status_key: Path | None) -> None:
    """Check the format, the whole hash chain and every record's MAC.

    Prints two facts: whether the chain is intact (else the first bad record) and whether
    the file is authentic (every MAC valid with this machine's status key). Exit 0 only
    when both hold; else 1, with an [ERROR] line naming the first that does not.
    """

    printer = Printer()
    try:
        where, key = reading_key(status_key)
        result = verify_journal(_existing(path), key=key)
    except ScmflowError as exc:
        fail(printer, exc)
    click.echo(f"chain:     {chain_text(result)}")
    intact = "" if result.ok else f" for the {result.count} intact records"
    click.echo(f"authentic: {authenticity_text(result.authenticity, where, qualifier=intact)}")
    if not result.ok:
        printer.error(result.message)
        sys.exit(1)
    if not result.authenticity.ok:
        hint = authenticity_hint(result.authenticity, where)
        printer.error(f"{path} is not authentic: {result.authenticity.reason}{hint}")
        sys.exit(1)


@status_group.command(
    "export",
    epilog="""\b
Examples:
  scm.py status export FILE --format json > run.json
""",
)
@click.argument("path", type=_STATUS_FILE)
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json", show_default=True)
@_STATUS_KEY
def status_export(path: Path, fmt: str, status_key: Path | None) -> None:
    """The whole status file as one JSON document (schema: docs/status-file.md)."""

    printer = Printer()
    try:
        _, key = reading_key(status_key)
        echo_json(export_json(read_journal(_existing(path), key=key)))
    except ScmflowError as exc:
        fail(printer, exc)


@status_group.command(
    "list",
    epilog="""\b
Examples:
  scm.py status list
  scm.py status list --status-dir /opt/scm_upgrade_package/sequoiacm/sequoiacm-deploy/upgrade-status
""",
)
@click.option(
    "--status-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default="sequoiacm-deploy/upgrade-status",
    show_default=True,
)
def status_list(status_dir: Path) -> None:
    """The status files of a directory, newest first, one line each with the run's outcome."""

    printer = Printer()
    if not status_dir.is_dir():
        fail(printer, UsageError(f"status directory {status_dir} does not exist"))
    try:
        click.echo(render_list(list_status_files(status_dir)).rstrip("\n"))
    except ScmflowError as exc:
        fail(printer, exc)


@status_group.command(
    "diagram",
    epilog="""\b
Examples:
  scm.py status diagram > lifecycle.mmd
""",
)
def status_diagram() -> None:
    """The pair lifecycle (states/pair.toml) as a Mermaid state diagram."""

    printer = Printer()
    try:
        click.echo(render_diagram().rstrip("\n"))
    except ScmflowError as exc:
        fail(printer, exc)


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise UsageError(f"status file {path} does not exist")
    return path
