"""The listing of a status directory: one line per status file, newest first, with its outcome."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from scmflow.errors import JournalError
from scmflow.journalreader import read_journal
from scmflow.lifecycle import load_lifecycle
from scmflow.outcome import UNREADABLE, never_started_count, outcome_of, run_detail, run_records
from scmflow.replay import replay
from scmflow.statusformat import FILE_PREFIX, NAME_TIME_FORMAT
from scmflow.terminaltext import printable


@dataclass(frozen=True)
class StatusSummary:
    """One status file in a listing."""

    path: Path
    created: str
    outcome: str
    actions: tuple[str, ...] = ()
    release_version: str | None = None
    pair_count: int = 0
    states: Mapping[str, int] = field(default_factory=dict)
    detail: str = ""
    never_started: int = 0


def list_status_files(status_dir: Path) -> list[StatusSummary]:
    """Every status file in `status_dir`, newest first, with its outcome."""
    status_dir = Path(status_dir)
    if not status_dir.exists():
        return []
    if not status_dir.is_dir():
        raise JournalError(f"status dir {status_dir} is not a directory")
    files = [p for p in status_dir.glob(FILE_PREFIX + "*") if p.is_file()]
    files.sort(key=_creation_key, reverse=True)
    return [summarize(path) for path in files]


def summarize(path: Path) -> StatusSummary:
    """One file's listing entry; an unreadable file is listed with the reason."""
    created = _created_text(path)
    lifecycle = load_lifecycle()
    try:
        contents = read_journal(path)
        pairs = replay(contents, lifecycle)
    except JournalError as exc:
        return StatusSummary(path=path, created=created, outcome=UNREADABLE, detail=str(exc))
    actions = tuple(
        dict.fromkeys(str(run_detail(r).get("action", "?")) for r in run_records(contents))
    )
    release = contents.header.get("release")
    return StatusSummary(
        path=path,
        created=created,
        outcome=outcome_of(contents, pairs, lifecycle),
        actions=actions,
        release_version=str(release.get("version")) if isinstance(release, Mapping) else None,
        pair_count=len(pairs),
        states=dict(Counter(p.state for p in pairs.values())),
        detail="last record torn" if contents.torn_tail else "",
        never_started=never_started_count(pairs),
    )


def render_list(summaries: Iterable[StatusSummary]) -> str:
    """One line per status file."""
    lines = []
    for s in summaries:
        # File names, actions, versions and states come from the file: escaped before padding.
        name, detail = printable(s.path.name), printable(s.detail)
        if s.outcome == UNREADABLE:
            lines.append(f"{s.created:<19}  {s.outcome:<21}  {name}: {detail}")
            continue
        actions = printable("+".join(s.actions) or "-")
        release = printable(s.release_version or "?")
        states = printable(", ".join(f"{n} {state}" for state, n in sorted(s.states.items())))
        notes = [f"{s.never_started} never started"] if s.never_started else []
        notes += [detail] if detail else []
        note = f" ({'; '.join(notes)})" if notes else ""
        lines.append(
            f"{s.created:<19}  {s.outcome:<21}  {s.pair_count:>3} pairs  {actions:<16}  "
            f"{release:<8}  {name}  [{states}]{note}"
        )
    if not lines:
        return "No upgrade status files found.\n"
    return "\n".join(lines) + "\n"


def _name_time(path: Path) -> tuple[datetime, int] | None:
    stamp = path.name[len(FILE_PREFIX) :]
    head, separator, suffix = stamp[:19], stamp[19:20], stamp[20:]
    if separator not in ("", "-"):
        return None
    try:
        created = datetime.strptime(head, NAME_TIME_FORMAT)
        number = int(suffix) if suffix else 1
    except ValueError:
        return None
    return created, number


def _creation_key(path: Path) -> tuple[float, int]:
    named = _name_time(path)
    if named is not None:
        return named[0].timestamp(), named[1]
    return _mtime(path), 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _created_text(path: Path) -> str:
    named = _name_time(path)
    created = named[0] if named is not None else datetime.fromtimestamp(_mtime(path))
    return created.strftime("%Y-%m-%d %H:%M:%S")
