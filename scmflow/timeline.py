"""A status file's timeline: one entry per record, with what it says in full for failures."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scmflow.outcome import run_detail
from scmflow.replay import error_text
from scmflow.terminaltext import wrap

_TIMELINE_INDENT = 8


def timeline_lines(record: Mapping[str, Any], width: int) -> list[str]:
    """One record's timeline entry: time, seq, kind and what happened, then its detail."""
    kind = str(record.get("kind", "?"))
    head = f"  {record.get('time', '?')}  #{record.get('seq', '?'):<4} {kind:<11} {_event_text(record)}"
    indent = " " * _TIMELINE_INDENT
    lines = wrap(head, width, indent=indent)
    detail = record.get("detail")
    # Drop what the headline already says.
    if kind == "run" and isinstance(detail, Mapping):
        detail = {k: v for k, v in detail.items() if k not in ("action", "result")}
    if kind == "begin" and isinstance(detail, Mapping) and detail.get("action") == record.get("trigger"):
        detail = {k: v for k, v in detail.items() if k != "action"}
    if kind == "fail":
        lines.extend(_full_detail_lines(detail, width, indent))
    elif detail:
        lines.extend(wrap(_compact(detail), width, indent=indent + "  ", first=indent))
    return lines


def _event_text(record: Mapping[str, Any]) -> str:
    kind = record.get("kind")
    if kind == "run":
        detail = run_detail(record)
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
        lines.extend(wrap(line, width, first=lead, indent=indent + "  "))
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
