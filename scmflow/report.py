"""The core's side of telling the operator: the Reporter that receives events, the run's debug log."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

from scmflow.events import Event


class Reporter(Protocol):
    """Receives the core's events (scmflow/events.py): the CLI renders them, tests collect them."""

    def emit(self, event: Event) -> None:
        """One thing the operator is to be told."""
        ...


def open_log(path: Path, logger: logging.Logger) -> logging.Handler:
    """Attach a DEBUG file handler writing to `path` (mode 0600) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return handler


def json_ready(value: Any) -> Any:
    """Values made JSON-friendly (bytes as hex, tuples as lists)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value
