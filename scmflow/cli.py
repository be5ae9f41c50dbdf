"""The command line: `scm.py cluster --upgrade/--rollback`, `scm.py status ...`, `scm.py demo`.

This layer parses options, prompts and prints; the work happens in the core modules.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from scmflow import __version__
from scmflow.availability import MaxUnavailable, parse_max_unavailable
from scmflow.catalog import load_catalog
from scmflow.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED, ScmflowError, UsageError
from scmflow.statuskey import StatusKey, key_path, load_key

LOG = logging.getLogger("scmflow")

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
DEFAULT_START_TIMEOUT = 300


class Printer:
    """Prints operator lines as the original tool does (`[INFO ] ...`), and logs them.

    On a terminal it also draws progress: one live line of per-host transfer bars, and a
    bar after each `(i/N)` step line. Elsewhere (CI, logs) the plain lines are all there is.
    """

    def __init__(self, *, to_stderr: bool = False, tty: bool | None = None) -> None:
        self.err = to_stderr
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._transfers: dict[str, tuple[int, int]] = {}
        self._drawn = 0.0
        self._bar_shown = False

    def info(self, message: str, *, err: bool | None = None) -> None:
        """`[INFO ] message`; `err` sends it to stderr (or stdout) whatever the printer's default."""
        self._emit("[INFO ] " + message, err)

    def warn(self, message: str, *, err: bool | None = None) -> None:
        """`[WARN ] message`; `err` as for `info`."""
        self._emit("[WARN ] " + message, err)

    def error(self, message: str) -> None:
        """`[ERROR] message`, always on stderr."""
        LOG.error(message)
        with self._lock:
            self._clear_bar()
            click.echo("[ERROR] " + message, err=True)

    def transfer(self, host: str, sent: int, total: int) -> None:
        """Package bytes sent to `host` so far: logged; a live bar line on a terminal."""
        LOG.debug("sent %d/%d bytes to %s", sent, total, host)
        if not self.tty:
            return
        with self._lock:
            self._transfers[host] = (sent, total)
            done = all(s >= t for s, t in self._transfers.values())
            now = time.monotonic()
            if not done and now - self._drawn < 0.2:
                return
            self._drawn = now
            click.echo("\r\033[K" + self._transfer_line(), nl=False, err=True)
            self._bar_shown = True
            if done:
                click.echo("", err=True)
                self._bar_shown = False
                self._transfers.clear()

    def _transfer_line(self) -> str:
        width = shutil.get_terminal_size((100, 24)).columns - 1
        parts = []
        for host, (sent, total) in self._transfers.items():
            ratio = sent / total if total else 1.0
            parts.append(f"{host} {bar(ratio, 10)} {sent / 1e6:.0f}/{total / 1e6:.0f} MB")
        return ("sending: " + "  ".join(parts))[:width]

    def _clear_bar(self) -> None:
        if self._bar_shown:
            click.echo("\r\033[K", nl=False, err=True)
            self._bar_shown = False

    def _emit(self, line: str, err: bool | None = None) -> None:
        LOG.info(line)
        with self._lock:
            self._clear_bar()
            step = _STEP.search(line) if self.tty else None
            if step is not None:
                done, total = int(step.group(1)), int(step.group(2))
                line = f"{line} {bar(done / total if total else 1.0, 20)}"
            click.echo(line, err=self.err if err is None else err)
            if self._transfers:
                click.echo(self._transfer_line(), nl=False, err=True)
                self._bar_shown = True


_STEP = re.compile(r"\((\d+)/(\d+)\)$")


def bar(ratio: float, width: int) -> str:
    """`[#####.....]` for a ratio in 0..1."""
    filled = max(0, min(width, round(ratio * width)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def fail(printer: Printer, error: ScmflowError) -> NoReturn:
    """Print one `[ERROR]` line and exit with the error's code."""
    printer.error(error.message)
    sys.exit(error.exit_code)


def csv_option(value: str | None, option: str = "") -> tuple[str, ...] | None:
    """`a,b` -> ("a", "b"); not given -> None; given but naming nothing -> UsageError."""
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        # An empty filter must never widen to "everything".
        raise UsageError(f"{option or 'the option'} names nothing; give one or more comma-separated names")
    return items


class ScmGroup(click.Group):
    """A group whose own usage errors end, like every other error, in one `[ERROR]` line."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; click's errors become `[ERROR] ...` and exit 2."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            hint = "; see --help" if isinstance(exc, click.UsageError) else ""
            click.echo(f"[ERROR] {exc.format_message().rstrip('.')}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort as exc:
            # click turns Ctrl-C and an end of input at a prompt into Abort
            if isinstance(exc.__cause__, KeyboardInterrupt):
                click.echo("[ERROR] interrupted", err=True)
                sys.exit(EXIT_INTERRUPTED)
            click.echo("[ERROR] no answer: the input ended at a prompt; nothing was changed", err=True)
            sys.exit(EXIT_REFUSED)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=ScmGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="scmflow")
def main() -> None:
    """Upgrade and roll back a SequoiaCM cluster in one command.

    \b
    Examples:
      scm.py cluster --upgrade --upgrade-conf sequoiacm-deploy/conf/upgrade.cfg
      scm.py cluster --rollback --upgrade-status-path sequoiacm-deploy/upgrade-status/upgrade_status_...
      scm.py status show sequoiacm-deploy/upgrade-status/upgrade_status_...
    """
    # Library loggers (paramiko logs socket errors at ERROR) go to the run's log file only,
    # never to the operator's terminal through logging's last-resort handler.
    for name in ("scmflow", "paramiko", "transitions"):
        logging.getLogger(name).addHandler(logging.NullHandler())


@dataclass(frozen=True)
class ClusterOptions:
    """The `cluster` command's options, validated."""

    upgrade: bool
    rollback: bool
    upgrade_conf: Path | None
    status_path: Path | None
    # absolute, like every path the run prints
    release_dir: Path
    hosts: tuple[str, ...] | None
    services: tuple[str, ...] | None
    unattended: bool
    dry_run: bool
    output: str
    parallel: int
    parallel_ssh: int
    status_dir: Path
    # None: not given, so 300 for an upgrade and the recorded value on resume and rollback
    start_timeout: int | None
    accept_new_host_keys: bool
    break_lock: bool
    # None: $SCMFLOW_STATUS_KEY_FILE, else ~/.config/scmflow/status.key (scmflow/statuskey.py)
    status_key: Path | None = None
    trust_status_file: bool = False
    # whether --release-dir was given: resume otherwise uses the release the file records
    release_dir_given: bool = False
    # the availability guard (scmflow/availability.py) and the canary pause
    max_unavailable: MaxUnavailable | None = None
    allow_outage: bool = False
    pause_after: int | None = None


@main.command(
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
    default=16,
    show_default=True,
    help="Hosts checked and sent packages at once.",
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
def cluster(**raw: Any) -> None:
    """Upgrade or roll back a SequoiaCM cluster (the vendor's `scm.py cluster`)."""
    printer = Printer(to_stderr=raw["output"] == "json")
    try:
        options = _cluster_options(raw)
        from scmflow import operate

        code = operate.run_cluster(options, printer, catalog=load_catalog())
    except ScmflowError as exc:
        fail(printer, exc)
    sys.exit(code)


def _cluster_options(raw: dict[str, Any]) -> ClusterOptions:
    if raw["upgrade"] == raw["rollback"]:
        raise UsageError("give exactly one of --upgrade and --rollback")
    if raw["rollback"] and not raw["status_path"]:
        raise UsageError("--rollback needs --upgrade-status-path FILE")
    if raw["upgrade"] and not raw["upgrade_conf"] and not raw["status_path"]:
        raise UsageError("--upgrade needs --upgrade-conf FILE (or --upgrade-status-path FILE to resume)")
    if raw["trust_status_file"] and not raw["status_path"]:
        raise UsageError("--trust-status-file needs --upgrade-status-path FILE")
    if raw["rollback"] and raw["pause_after"] is not None:
        raise UsageError("--pause-after pauses an upgrade or a resume, not a rollback")
    release_dir = absolute(Path(raw["release_dir"] or "."))
    if raw["status_dir"]:
        status_dir = absolute(Path(raw["status_dir"]))
    elif raw["status_path"]:
        # the run's own directory: its log goes beside the original's, its lock is the same
        status_dir = absolute(Path(raw["status_path"])).parent
    else:
        status_dir = release_dir / "sequoiacm-deploy" / "upgrade-status"
    return ClusterOptions(
        upgrade=raw["upgrade"],
        rollback=raw["rollback"],
        upgrade_conf=raw["upgrade_conf"],
        status_path=raw["status_path"],
        release_dir=release_dir,
        hosts=csv_option(raw["hosts"], "--host"),
        services=csv_option(raw["services"], "--service"),
        unattended=raw["unattended"],
        dry_run=raw["dry_run"],
        output=raw["output"],
        parallel=raw["parallel"],
        parallel_ssh=raw["parallel_ssh"],
        status_dir=status_dir,
        start_timeout=raw["start_timeout"],
        accept_new_host_keys=raw["accept_new_host_keys"],
        break_lock=raw["break_lock"],
        status_key=raw["status_key"],
        trust_status_file=raw["trust_status_file"],
        release_dir_given=raw["release_dir"] is not None,
        max_unavailable=_max_unavailable(raw["max_unavailable"]),
        allow_outage=raw["allow_outage"],
        pause_after=raw["pause_after"],
    )


def _max_unavailable(text: str | None) -> MaxUnavailable | None:
    return None if text is None else parse_max_unavailable(text)


def absolute(path: Path) -> Path:
    """`path` made absolute without resolving links, so that a printed path can be pasted anywhere."""
    return Path(os.path.abspath(path))


@contextmanager
def interrupt_handler(printer: Printer) -> Iterator[threading.Event]:
    """First Ctrl-C: finish the step in flight and stop; second: abandon at once."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        # Print from a thread: the handler may run while this thread holds the printer's lock.
        message = "Interrupted: finishing the step in flight, then stopping (Ctrl-C again to abandon it)"
        threading.Thread(target=printer.warn, args=(message,), daemon=True).start()

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def confirm(printer: Printer, question: str, *, err: bool = False) -> bool:
    """The original's prompt: `Whether to ...?` then `Please enter (y/n) confirm:`.

    On stderr when `err` or when the printer writes there (`--output json`): stdout then
    holds only the JSON document.
    """
    to_stderr = err or printer.err
    printer.info(question, err=to_stderr or None)
    click.echo("Please enter (y/n) confirm:", nl=False, err=to_stderr)
    line = sys.stdin.readline()
    return line.strip().lower() in ("y", "yes")


def echo_json(document: Any) -> None:
    """One JSON document on stdout."""
    click.echo(json.dumps(document, indent=2, sort_keys=True, default=str))


def stamp_path(directory: Path, prefix: str, suffix: str = "") -> Path:
    """`directory/prefix<timestamp>suffix`."""
    return directory / f"{prefix}{time.strftime('%Y-%m-%d-%H:%M:%S')}{suffix}"


def open_run_log(status_dir: Path, printer: Printer) -> Path:
    """Start the debug log of this run and tell the operator where it is."""
    from scmflow.report import open_log

    log_dir = status_dir.parent / "log"
    path = stamp_path(log_dir, "scmflow_")
    try:
        handler = open_log(path, LOG)
        logging.getLogger("paramiko").addHandler(handler)
    except OSError as exc:
        raise UsageError(f"cannot write the log file {path}: {exc}; check --status-dir") from exc
    printer.info(f"Log file location:{path}")
    return path


@main.group(
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
def status() -> None:
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


@status.command(
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
    from scmflow.journalreader import read_journal
    from scmflow.statusview import render_show

    printer = Printer()
    try:
        where, key = reading_key(status_key)
        contents = read_journal(_existing(path), key=key)
        click.echo(render_show(contents, timeline=timeline, width=width, key_path=where).rstrip("\n"))
    except ScmflowError as exc:
        fail(printer, exc)


@status.command(
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
    from scmflow.journalreader import verify_journal
    from scmflow.trustview import authenticity_hint, authenticity_text, chain_text

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


@status.command(
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
    from scmflow.journalreader import read_journal
    from scmflow.statusexport import export_json

    printer = Printer()
    try:
        _, key = reading_key(status_key)
        echo_json(export_json(read_journal(_existing(path), key=key)))
    except ScmflowError as exc:
        fail(printer, exc)


@status.command(
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
    from scmflow.statuslist import list_status_files, render_list

    printer = Printer()
    if not status_dir.is_dir():
        fail(printer, UsageError(f"status directory {status_dir} does not exist"))
    try:
        click.echo(render_list(list_status_files(status_dir)).rstrip("\n"))
    except ScmflowError as exc:
        fail(printer, exc)


@status.command(
    "diagram",
    epilog="""\b
Examples:
  scm.py status diagram > lifecycle.mmd
""",
)
def status_diagram() -> None:
    """The pair lifecycle (states/pair.toml) as a Mermaid state diagram."""
    from scmflow.lifecyclediagram import render_diagram

    printer = Printer()
    try:
        click.echo(render_diagram().rstrip("\n"))
    except ScmflowError as exc:
        fail(printer, exc)


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise UsageError(f"status file {path} does not exist")
    return path


@main.command(
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
def demo(keep: bool, fail_service: str | None, workdir: Path | None) -> None:
    """Run the real upgrade and rollback on a local sandbox SequoiaCM (no SSH, root or cluster)."""
    from scmflow.demo import DemoOptions, run_demo

    printer = Printer()
    try:
        code = run_demo(DemoOptions(keep=keep, fail_service=fail_service, workdir=workdir), printer)
    except ScmflowError as exc:
        fail(printer, exc)
    sys.exit(code)
