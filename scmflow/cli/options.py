"""The `cluster` command's options, validated into one frozen value."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scmflow.availability import MaxUnavailable, parse_max_unavailable
from scmflow.errors import UsageError

DEFAULT_START_TIMEOUT = 300


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

    @property
    def upgrade_start_timeout(self) -> int:
        """The node start timeout of a new upgrade: --start-timeout, else the default."""
        return self.start_timeout if self.start_timeout is not None else DEFAULT_START_TIMEOUT


def parse_cluster_options(raw: dict[str, Any]) -> ClusterOptions:
    """click's values of the `cluster` command, checked together; UsageError when they clash."""
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


def csv_option(value: str | None, option: str = "") -> tuple[str, ...] | None:
    """`a,b` -> ("a", "b"); not given -> None; given but naming nothing -> UsageError."""
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        # An empty filter must never widen to "everything".
        raise UsageError(f"{option or 'the option'} names nothing; give one or more comma-separated names")
    return items


def absolute(path: Path) -> Path:
    """`path` made absolute without resolving links, so that a printed path can be pasted anywhere."""
    return Path(os.path.abspath(path))
