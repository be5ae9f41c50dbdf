"""What an auditor reads before trusting a status file.

Whether it is whole (its chain), who wrote it (its MACs) and what it would make rollback
and resume do (its header's hosts, users, paths and hooks).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scmflow.authenticity import AUTHENTIC, INVALID, NO_KEY, Authenticity
from scmflow.hooks import PHASES
from scmflow.journalreader import VerifyResult
from scmflow.terminaltext import printable

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
            command = printable(shlex.join(str(word) for word in argv))
            lines.append(f"hook        {phase}: {command} (runs on this control machine)")
    return lines
