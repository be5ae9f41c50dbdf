"""The terminal: operator lines (`[INFO ] ...`), progress bars, prompts, Ctrl-C, the run's log file."""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from scmflow.cli.render import render
from scmflow.errors import ConfigError, ScmflowError, UsageError
from scmflow.events import Event, PackageBytes
from scmflow.report import open_log

LOG = logging.getLogger("scmflow")
_STEP = re.compile(r"\((\d+)/(\d+)\)$")


class Printer:
    """Prints operator lines as the original tool does (`[INFO ] ...`), and logs them.

    It is the command line's Reporter: the core's events are printed as render() says them.
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

    def emit(self, event: Event) -> None:
        """Print the core's `event` (transfer progress is drawn, not printed)."""
        if isinstance(event, PackageBytes):
            self.transfer(event.host, event.sent, event.total)
            return
        line = render(event)
        if line is not None:
            self._emit(line.printed)

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


def bar(ratio: float, width: int) -> str:
    """`[#####.....]` for a ratio in 0..1."""
    filled = max(0, min(width, round(ratio * width)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def fail(printer: Printer, error: ScmflowError) -> NoReturn:
    """Print one `[ERROR]` line and exit with the error's code."""
    printer.error(error.message)
    sys.exit(error.exit_code)


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


def ask_password(user: str) -> str:
    """The SSH password of `user`, asked on the terminal; ConfigError when there is none."""
    if not sys.stdin.isatty():
        raise ConfigError(
            f"the password of SSH user {user} is to be asked (Password -) but there is no "
            "terminal; use Password env:NAME instead",
            field="Password",
        )
    value: str = click.prompt(f"SSH password for {user}", hide_input=True, err=True)
    return value


def echo_json(document: Any) -> None:
    """One JSON document on stdout."""
    click.echo(json.dumps(document, indent=2, sort_keys=True, default=str))


def stamp_path(directory: Path, prefix: str, suffix: str = "") -> Path:
    """`directory/prefix<timestamp>suffix`."""
    return directory / f"{prefix}{time.strftime('%Y-%m-%d-%H:%M:%S')}{suffix}"


def open_run_log(status_dir: Path, printer: Printer) -> Path:
    """Start the debug log of this run and tell the operator where it is."""
    log_dir = status_dir.parent / "log"
    path = stamp_path(log_dir, "scmflow_")
    try:
        handler = open_log(path, LOG)
        logging.getLogger("paramiko").addHandler(handler)
    except OSError as exc:
        raise UsageError(f"cannot write the log file {path}: {exc}; check --status-dir") from exc
    printer.info(f"Log file location:{path}")
    return path


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


@dataclass(frozen=True)
class Interrupts:
    """A run that cleans up after itself: `stop` asks it to finish its step and end."""

    stop: threading.Event
    cleaning: threading.Event


@contextmanager
def cleanup_interrupts(printer: Printer) -> Iterator[Interrupts]:
    """First Ctrl-C: finish the step in flight, then clean up; second (or SIGTERM): at once.

    While `cleaning` is set, Ctrl-C only asks for patience. Signal handlers can only be set
    from the main thread; elsewhere Ctrl-C is left alone.
    """
    state = Interrupts(stop=threading.Event(), cleaning=threading.Event())

    def warn(message: str) -> None:
        # From another thread: the handler may run while this thread holds the printer's lock.
        threading.Thread(target=printer.warn, args=(message,), daemon=True).start()

    def handle(signum: int, frame: FrameType | None) -> None:
        if state.cleaning.is_set():
            warn("Interrupted: cleaning up the sandbox first, please wait")
            return
        if signum == signal.SIGINT and not state.stop.is_set():
            state.stop.set()
            warn("Interrupted: finishing the step in flight, then cleaning up (Ctrl-C again: now)")
            return
        state.stop.set()
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
