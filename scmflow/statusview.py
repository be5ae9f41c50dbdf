"""`status show`: who ran an upgrade, when, what, whether the file is authentic, where every pair ended.

Pure functions returning strings; the CLI prints them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scmflow.journalreader import JournalContents
from scmflow.lifecycle import Lifecycle, load_lifecycle
from scmflow.outcome import CLOSING_RESULTS, never_started_count, outcome_of, run_detail, run_records
from scmflow.replay import PairReplay, replay
from scmflow.terminaltext import printable, wrap
from scmflow.timeline import timeline_lines
from scmflow.trustview import authenticity_text

_LABEL_WIDTH = 10


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
            lines.extend(timeline_lines(record, width))
    for problem in contents.problems:
        lines.append("")
        lines.extend(wrap(f"Warning: {problem}", width, indent="  "))
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
    lines = wrap(f"Upgrade status file {contents.path}", width, indent="  ")
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
    return wrap(value, width, first=first, indent=" " * len(first))


def _argv_text(argv: Any) -> str:
    if isinstance(argv, list | tuple):
        return " ".join(str(a) for a in argv)
    return "?" if argv is None else str(argv)


def _ended_text(contents: JournalContents, runs: Sequence[Mapping[str, Any]]) -> str:
    if runs and run_detail(runs[-1]).get("result") in CLOSING_RESULTS:
        return str(runs[-1].get("time", "?"))
    last = contents.records[-1].get("time") if contents.records else contents.header.get("time")
    return f"not recorded (last record at {last})"


def _run_text(record: Mapping[str, Any]) -> str:
    detail = run_detail(record)
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
    # Cells do not go through wrap: escape them here, before the widths are measured.
    rows = [heading] + [
        [
            printable(cell)
            for cell in (
                p.host,
                p.service,
                f"{p.old_version or 'none'} -> {p.new_version or '?'}",
                _state_text(p),
                format_duration(p.duration),
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
        lines.extend(wrap(f"[{pair.host}] {pair.service}: {first_line[0]}", width, indent="    ",
                           first="  "))
    return lines
