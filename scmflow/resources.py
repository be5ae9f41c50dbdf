"""Finds the declarative files (`states/`, `conf/`) from a checkout and from an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the directory `name` (`states` or `conf`) next to the package or inside it."""
    for candidate in (_PACKAGE_DIR / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"scmflow data directory '{name}' not found near {_PACKAGE_DIR}")


def states_file(name: str) -> Path:
    """Path of a file under `states/`."""
    return data_dir("states") / name
