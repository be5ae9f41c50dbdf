"""Auditor views of status files: show, JSON export, lifecycle diagram, listing.

Pure functions returning strings or plain data; the CLI prints them.
"""

from __future__ import annotations

import shlex
import textwrap
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack

from scmflow.authenticity import AUTHENTIC, INVALID, NO_KEY, Authenticity
from scmflow.errors import JournalError
from scmflow.hooks import PHASES
from scmflow.journalreader import JournalContents, VerifyResult, read_journal
from scmflow.lifecycle import Lifecycle, load_lifecycle
from scmflow.replay import PairReplay, error_text, replay
from scmflow.statusformat import FILE_PREFIX, NAME_TIME_FORMAT, format_time

EXPORT_SCHEMA = "scmflow-status-export/1"

SUCCESS = "success"
FAILED = "failed"
INTERRUPTED = "interrupted"
ROLLED_BACK = "rolled back"
PARTIALLY_ROLLED_BACK = "partially rolled back"
UNREADABLE = "unreadable"
PAUSED = "paused"
OUTCOMES = (SUCCESS, FAILED, INTERRUPTED, PAUSED, ROLLED_BACK, PARTIALLY_ROLLED_BACK, UNREADABLE)

# `run` record results that close a run; "started" opens one.
_CLOSING_RESULTS = frozenset({"success", "failed", "interrupted", "paused"})
# Pair records that mean an action was at least attempted on the pair.
_ACTION_KINDS = frozenset({"begin", "transition", "fail"})
_LABEL_WIDTH = 10
_TIMELINE_INDENT = 8
_NOTE_WIDTH = 60


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


# --- outcome ------------------------------------------------------------------------


def run_records(contents: JournalContents) -> list[dict[str, Any]]:
    """The `run` records (start and end of each upgrade, rollback or resume)."""
    return [r for r in contents.records if r.get("kind") == "run"]


def never_started(pair: PairReplay) -> bool:
    """Whether nothing was ever done to the pair: nothing in flight, no action recorded.

    Such a pair is still in the lifecycle's initial state: only those records move a pair.
    """
    return pair.in_flight is None and not any(r.get("kind") in _ACTION_KINDS for r in pair.history)


def never_started_count(pairs: Mapping[tuple[str, str], PairReplay]) -> int:
    """How many pairs were never started (see `never_started`)."""
    return sum(1 for p in pairs.values() if never_started(p))


def outcome_of(
    contents: JournalContents,
    pairs: Mapping[tuple[str, str], PairReplay],
    lifecycle: Lifecycle | None = None,
) -> str:
    """The file's outcome; rules in order, first match wins (see docs/status-file.md)."""
    lifecycle = lifecycle or load_lifecycle()
    runs = run_records(contents)
    last = _run_detail(runs[-1]) if runs else {}
    last_result = last.get("result")
    if last_result not in _CLOSING_RESULTS or last_result == INTERRUPTED:
        return INTERRUPTED
    if last_result == PAUSED:
        return PAUSED
    states = [p.state for p in pairs.values()]
    rolled_back = sum(1 for s in states if s == lifecycle.rolled_back)
    # A crash can stop an upgrade before it reaches some pairs; a rollback then leaves them
    # pending, yet they are exactly as they were before the upgrade, like a rolled-back pair.
    as_before = rolled_back + never_started_count(pairs)
    # A failed upgrade puts its failed pair back on the spot: that is a failure, not a rollback.
    if last.get("action") == "rollback" and states and as_before == len(states):
        return ROLLED_BACK
    if last.get("action") == "rollback" and rolled_back:
        return PARTIALLY_ROLLED_BACK
    if last_result == SUCCESS and all(s == lifecycle.done for s in states):
        return SUCCESS
    # a resume narrowed by --host/--service that did all it was asked: the rest is left on
    # purpose, still pending, and a later resume carries on
    left_on_purpose = set(states) <= {lifecycle.done, lifecycle.initial}
    if last_result == SUCCESS and last.get("action") == "resume" and left_on_purpose:
        return PAUSED
    return FAILED


def _run_detail(record: Mapping[str, Any]) -> Mapping[str, Any]:
    detail = record.get("detail")
    return detail if isinstance(detail, Mapping) else {}


# --- authenticity -------------------------------------------------------------------

_VERDICTS = {AUTHENTIC: "yes", INVALID: "NO", NO_KEY: "unknown"}


def authenticity_text(
    authenticity: Authenticity, key_path: Path | None = None, *, qualifier: str = ""
) -> str:
    """`yes|NO|unknown[ qualifier], why`: whether this machine's key wrote the file."""
    verdict = _VERDICTS.get(authenticity.state, "unknown")
    return f"{verdict}{qualifier}, {authenticity.reason}{authenticity_hint(authenticity, key_path)}"


def authenticity_hint(authenticity: Authenticity, key_path: Path | None) -> str:
    """Where the key was looked for, when there was none."""
    if authenticity.state != NO_KEY or key_path is None:
        return ""
    return f"; there is none at {key_path} (--status-key FILE gives the key of the machine that wrote it)"


def chain_text(result: VerifyResult) -> str:
    """Whether the hash chain is intact, else where it breaks."""
    if result.ok:
        return f"intact, {result.count} records"
    if result.torn_tail:
        return (
            f"{result.count} records intact; the last record (seq {result.first_bad_seq}, byte offset "
            f"{result.first_bad_offset}) is incomplete, left by an interrupted write"
        )
    return (
        f"broken at record {result.first_bad_seq} (byte offset {result.first_bad_offset}), "
        f"{result.count} records intact before it"
    )


def trusted_values(header: Mapping[str, Any]) -> list[str]:
    """What a run header makes rollback and resume do: hosts and logins, users, paths.

    Shown before an operator decides to trust a file that is not authentic; expects a
    header whose values were validated (no control characters reach the terminal).
    """
    layout = header.get("layout") or {}
    hosts = [
        f"{h.get('name')}:{h.get('port') or 22} as {h.get('user')}, "
        f"JAVA_HOME {h.get('java_home') or '(from /etc/profile)'}"
        for h in header.get("hosts") or []
    ]
    release = header.get("release") or {}
    config = header.get("config")
    return [
        *(f"host        {line}" for line in hosts),
        f"install     {layout.get('install_path')}, run as {layout.get('install_user')} "
        f"(directories made by {layout.get('admin_user') or 'the login user'})",
        f"upgrade dir {layout.get('upgrade_dir')}",
        f"backup dir  {layout.get('backup_dir')}",
        f"release     {release.get('version')} from {release.get('root')}",
        f"config      {config.get('path') if isinstance(config, Mapping) else 'none recorded'}",
        *_hook_lines(header.get("hooks")),
    ]


def _hook_lines(record: Any) -> list[str]:
    """The commands a header's hooks would run on this control machine (escaped)."""
    if not isinstance(record, Mapping):
        return []
    lines = []
    for phase in PHASES:
        argv = record.get(phase)
        if isinstance(argv, list | tuple) and argv:
            command = _printable(shlex.join(str(word) for word in argv))
            lines.append(f"hook        {phase}: {command} (runs on this control machine)")
    return lines


# --- show ---------------------------------------------------------------------------


def render_show(
    contents: JournalContents, *, timeline: bool = False, width: int = 100, key_path: Path | None = None
) -> str:
    """Who ran it, when, what, whether it is authentic; a table of pairs; optionally every event."""
    lifecycle = load_lifecycle()
    pairs = replay(contents, lifecycle)
    lines = _summary_lines(contents, pairs, lifecycle, width, key_path)
    lines.append("")
    lines.extend(_pair_table(list(pairs.values()), width))
    lines.extend(_error_lines(list(pairs.values()), width))
    if timeline:
        lines.append("")
        lines.append("Timeline:")
        for record in contents.records:
            lines.extend(_timeline_lines(record, width))
    for problem in contents.problems:
        lines.append("")
        lines.extend(_wrap(f"Warning: {problem}", width, indent="  "))
    return "\n".join(lines) + "\n"


def _summary_lines(
    contents: JournalContents,
    pairs: Mapping[tuple[str, str], PairReplay],
    lifecycle: Lifecycle,
    width: int,
    key_path: Path | None,
) -> list[str]:
    header = contents.header
    runs = run_records(contents)
    lines = _wrap(f"Upgrade status file {contents.path}", width, indent="  ")
    fields: list[tuple[str, str]] = [
        ("Run", f"{header.get('run_id', '?')} (format {header.get('format')} "
         f"v{header.get('format_version')})"),
        ("Operator", f"{header.get('operator', '?')} on {header.get('control_host', '?')}"),
        ("Command", _argv_text(header.get("argv"))),
        ("Started", str(header.get("time", "?"))),
        ("Ended", _ended_text(contents, runs)),
        ("Tool", f"scmflow {header.get('tool_version', '?')}"),
        ("Release", _release_text(header.get("release"))),
        *(("", package) for package in _release_packages(header.get("release"))),
        ("Install", f"{_setting(header, 'install_path')} as {_setting(header, 'install_user')}"),
        ("Remote", f"pack {_setting(header, 'remote_pack_dir', 'upgrade_dir')}, "
         f"backup {_setting(header, 'remote_backup_dir', 'backup_dir')}"),
        ("Hosts", _hosts_text(header.get("hosts"))),
        ("Runs", ", ".join(_run_text(r) for r in runs) or "none recorded"),
        ("Outcome", outcome_of(contents, pairs, lifecycle)),
        ("Pairs", f"{never_started_count(pairs)} of {len(pairs)} never started"),
        ("Authentic", authenticity_text(contents.authenticity, key_path)),
    ]
    for label, value in fields:
        lines.extend(_labelled(label, value, width))
    return lines


def _setting(header: Mapping[str, Any], key: str, layout_key: str | None = None) -> str:
    """A header value, or the same value inside the scheduler's `layout` record."""
    if header.get(key) is not None:
        return str(header[key])
    layout = header.get("layout")
    if isinstance(layout, Mapping) and layout.get(layout_key or key) is not None:
        return str(layout[layout_key or key])
    return "?"


def _labelled(label: str, value: str, width: int) -> list[str]:
    first = f"  {label:<{_LABEL_WIDTH}}"
    return _wrap(value, width, first=first, indent=" " * len(first))


def _argv_text(argv: Any) -> str:
    if isinstance(argv, list | tuple):
        return " ".join(str(a) for a in argv)
    return "?" if argv is None else str(argv)


def _ended_text(contents: JournalContents, runs: Sequence[Mapping[str, Any]]) -> str:
    if runs and _run_detail(runs[-1]).get("result") in _CLOSING_RESULTS:
        return str(runs[-1].get("time", "?"))
    last = contents.records[-1].get("time") if contents.records else contents.header.get("time")
    return f"not recorded (last record at {last})"


def _run_text(record: Mapping[str, Any]) -> str:
    detail = _run_detail(record)
    return f"{detail.get('action', '?')} {detail.get('result', '?')}"


def _release_text(release: Any) -> str:
    if isinstance(release, Mapping):
        return str(release.get("version", "?"))
    return "?" if release is None else str(release)


def _release_packages(release: Any) -> list[str]:
    if not isinstance(release, Mapping):
        return []
    packages = release.get("packages")
    if isinstance(packages, Mapping):  # keyed by service
        packages = list(packages.values())
    if not isinstance(packages, list):
        return []
    # Services shipped in one package (service-center, gateway, ...) name it once.
    lines = (
        f"{p.get('name', '?')} sha256 {p.get('sha256', '?')}" for p in packages if isinstance(p, Mapping)
    )
    return list(dict.fromkeys(lines))


def _hosts_text(hosts: Any) -> str:
    if not isinstance(hosts, list):
        return "?"
    texts = []
    for host in hosts:
        if isinstance(host, Mapping):
            port = host.get("port")
            where = f":{port}" if port is not None else ""
            texts.append(f"{host.get('name', '?')}{where} ({host.get('user', '?')})")
        else:
            texts.append(str(host))
    return ", ".join(texts) or "none"


def _pair_table(pairs: list[PairReplay], width: int) -> list[str]:
    if not pairs:
        return ["No pairs in the plan."]
    heading = ["HOST", "SERVICE", "OLD -> NEW", "STATE", "DURATION"]
    # Cells do not go through _wrap: escape them here, before the widths are measured.
    rows = [heading] + [
        [
            _printable(cell)
            for cell in (
                p.host,
                p.service,
                f"{p.old_version or 'none'} -> {p.new_version or '?'}",
                _state_text(p),
                format_duration(_duration(p)),
            )
        ]
        for p in pairs
    ]
    widths = _column_widths(rows, width)
    return [_table_row(row, widths) for row in rows]


def _state_text(pair: PairReplay) -> str:
    text = pair.state
    if pair.in_flight is not None:
        text += f", {pair.in_flight} in flight"
    if not pair.in_plan:
        text += " (not in plan)"
    return text


def _duration(pair: PairReplay) -> float | None:
    started, finished = pair.started, pair.finished
    if started is None or finished is None:
        return None
    return max(0.0, finished - started)


def format_duration(seconds: float | None) -> str:
    """`12.3s`, `4m05s`, `1h02m`; `-` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        minutes, rest = divmod(int(seconds), 60)
        return f"{minutes}m{rest:02d}s"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m"


def _column_widths(rows: Sequence[Sequence[str]], width: int) -> list[int]:
    natural = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    gaps = 2 * (len(natural) - 1)
    # Shrink the widest column first until the table fits; keep every column readable.
    while sum(natural) + gaps > width:
        widest = max(range(len(natural)), key=lambda i: natural[i])
        if natural[widest] <= 8:
            break
        natural[widest] -= 1
    return natural


def _table_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    parts = [_fit(cell, w).ljust(w) for cell, w in zip(cells, widths, strict=True)]
    return "  ".join(parts).rstrip()


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."


def _error_lines(pairs: list[PairReplay], width: int) -> list[str]:
    failed = [p for p in pairs if p.last_error]
    if not failed:
        return []
    lines = ["", "Errors:"]
    for pair in failed:
        first_line = (pair.last_error or "").strip().splitlines()[0:1] or [""]
        lines.extend(_wrap(f"[{pair.host}] {pair.service}: {first_line[0]}", width, indent="    ",
                           first="  "))
    return lines


def _timeline_lines(record: Mapping[str, Any], width: int) -> list[str]:
    kind = str(record.get("kind", "?"))
    head = f"  {record.get('time', '?')}  #{record.get('seq', '?'):<4} {kind:<11} {_event_text(record)}"
    indent = " " * _TIMELINE_INDENT
    lines = _wrap(head, width, indent=indent)
    detail = record.get("detail")
    # Drop what the headline already says.
    if kind == "run" and isinstance(detail, Mapping):
        detail = {k: v for k, v in detail.items() if k not in ("action", "result")}
    if kind == "begin" and isinstance(detail, Mapping) and detail.get("action") == record.get("trigger"):
        detail = {k: v for k, v in detail.items() if k != "action"}
    if kind == "fail":
        lines.extend(_full_detail_lines(detail, width, indent))
    elif detail:
        lines.extend(_wrap(_compact(detail), width, indent=indent + "  ", first=indent))
    return lines


def _event_text(record: Mapping[str, Any]) -> str:
    kind = record.get("kind")
    if kind == "run":
        detail = _run_detail(record)
        return f"{detail.get('action', '?')} {detail.get('result', '?')}"
    where = f"[{record['host']}] {record['service']}: " if "host" in record and "service" in record else ""
    trigger = record.get("trigger")
    if kind == "begin":
        return f"{where}{trigger} ({record.get('src')} -> {record.get('dst')})"
    if kind in ("transition", "fail"):
        return f"{where}{trigger}: {record.get('src')} -> {record.get('dst', 'failed')}"
    return where.rstrip(": ") if where else ""


def _full_detail_lines(detail: Any, width: int, indent: str) -> list[str]:
    if not isinstance(detail, Mapping):
        return _wrap_block(f"error: {error_text(detail)}", width, indent)
    lines: list[str] = []
    ordered = sorted(detail.items(), key=lambda kv: (kv[0] != "error", str(kv[0])))
    for key, value in ordered:
        lines.extend(_wrap_block(f"{key}: {_plain(value)}", width, indent))
    return lines


def _wrap_block(text: str, width: int, indent: str) -> list[str]:
    """Wrap every line of a multi-line text (stderr) without losing its line breaks."""
    lines: list[str] = []
    for index, line in enumerate(text.splitlines() or [""]):
        lead = indent if index == 0 else indent + "  "
        lines.extend(_wrap(line, width, first=lead, indent=indent + "  "))
    return lines


def _compact(detail: Any) -> str:
    if isinstance(detail, Mapping):
        return ", ".join(f"{k}={_plain(v)}" for k, v in detail.items())
    return _plain(detail)


def _plain(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_plain(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    return str(value)


def _wrap(text: str, width: int, *, indent: str = "", first: str = "") -> list[str]:
    # Every line render_show prints goes through here or the pair table; escaping before
    # wrapping keeps the escaped text within the width.
    return textwrap.wrap(
        _printable(text),
        width=width,
        initial_indent=first,
        subsequent_indent=indent,
        break_on_hyphens=False,
        drop_whitespace=True,
    ) or [first.rstrip()]


def _printable(text: str) -> str:
    """`text` with each control or other unprintable character escaped, as Python writes it.

    A status file can hold any string (an argv, a host name, a remote error), and a terminal
    escape sequence in it must not reach the auditor's terminal as one.
    """
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


# --- JSON export --------------------------------------------------------------------


def export_json(contents: JournalContents) -> dict[str, Any]:
    """The whole file as JSON-ready data, schema `scmflow-status-export/1`."""
    lifecycle = load_lifecycle()
    pairs = replay(contents, lifecycle)
    return {
        "schema": EXPORT_SCHEMA,
        "file": str(contents.path),
        "header": _jsonable(contents.header),
        "records": [_jsonable(r) for r in contents.records],
        "digests": [d.hex() for d in contents.digests],
        "torn_tail": contents.torn_tail,
        "problems": list(contents.problems),
        "outcome": outcome_of(contents, pairs, lifecycle),
        "never_started": never_started_count(pairs),
        "pairs": [_pair_export(p) for p in pairs.values()],
        "authenticity": _authenticity_export(contents.authenticity),
    }


def _authenticity_export(authenticity: Authenticity) -> dict[str, Any]:
    return {
        "authentic": authenticity.ok,
        "state": authenticity.state,
        "first_bad_seq": authenticity.first_bad_seq,
        "key_id": authenticity.key.key_id if authenticity.key is not None else None,
        "file_key_id": authenticity.file_key_id,
        "reason": authenticity.reason,
    }


def _pair_export(pair: PairReplay) -> dict[str, Any]:
    started, finished = pair.started, pair.finished
    return {
        "host": pair.host,
        "service": pair.service,
        "old_version": pair.old_version,
        "new_version": pair.new_version,
        "state": pair.state,
        "in_flight": pair.in_flight,
        "last_error": pair.last_error,
        "in_plan": pair.in_plan,
        "started": None if started is None else format_time(started),
        "finished": None if finished is None else format_time(finished),
        "duration_seconds": _duration(pair),
        "events": [r.get("seq") for r in pair.history],
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, msgpack.Timestamp):
        return value.to_datetime().isoformat()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, msgpack.ExtType):
        return {"ext_type": value.code, "data": value.data.hex()}
    return value


# --- lifecycle diagram --------------------------------------------------------------


def render_diagram(pair_toml_path: Path | None = None) -> str:
    """A Mermaid `stateDiagram-v2` of the pair lifecycle in states/pair.toml (or the file given)."""
    lifecycle = load_lifecycle(pair_toml_path)
    lines = ["stateDiagram-v2", f"    [*] --> {lifecycle.initial}"]
    for transition in lifecycle.transitions:
        label = transition.trigger
        if transition.action and transition.action != label:
            label += f" ({transition.action})"
        lines.extend(f"    {source} --> {transition.dest} : {label}" for source in transition.source)
    lines.extend(f"    {name} --> [*]" for name in lifecycle.states if name in lifecycle.final)
    for name, text in lifecycle.states.items():
        description = text.replace(";", ",").strip()
        if description:
            lines.append(f"    note right of {name}")
            lines.extend(f"        {line}" for line in textwrap.wrap(description, _NOTE_WIDTH))
            lines.append("    end note")
    return "\n".join(lines) + "\n"


# --- listing ------------------------------------------------------------------------


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
        dict.fromkeys(str(_run_detail(r).get("action", "?")) for r in run_records(contents))
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
        name, detail = _printable(s.path.name), _printable(s.detail)
        if s.outcome == UNREADABLE:
            lines.append(f"{s.created:<19}  {s.outcome:<21}  {name}: {detail}")
            continue
        actions = _printable("+".join(s.actions) or "-")
        release = _printable(s.release_version or "?")
        states = _printable(", ".join(f"{n} {state}" for state, n in sorted(s.states.items())))
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
