"""Fault switches: files that make one host's ctl scripts fail or slow down on purpose.

They live in `<install_path>/.sandbox-faults/`, outside every directory an upgrade
replaces, so a replace or a restore cannot delete them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from scmflow.catalog import load_catalog
from scmflow.sandbox.errors import SandboxError

FAULTS_DIR = ".sandbox-faults"
FAULT_KINDS = ("start-fail", "stop-fail", "start-slow")


def set_fault(
    install_path: Path,
    service: str,
    kind: str,
    version: str | None = None,
    seconds: float | None = None,
) -> Path:
    """Switch a fault on for `service`; only for nodes whose jar is `version` when given.

    `seconds` is the start-slow delay (the scripts default to 3 s).
    """
    if kind not in FAULT_KINDS:
        raise SandboxError(f"unknown fault kind '{kind}'; known: {', '.join(FAULT_KINDS)}")
    if load_catalog().find(service) is None:
        raise SandboxError(f"unknown service '{service}'")
    words = [version or "*"]
    if seconds is not None:
        words.append(f"{seconds:g}")
    folder = install_path / FAULTS_DIR
    folder.mkdir(mode=0o755, exist_ok=True)
    folder.chmod(0o755)  # readable by the install user whatever the umask
    path = folder / f"{service}.{kind}"
    path.write_text(" ".join(words) + "\n", encoding="utf-8")
    path.chmod(0o644)
    return path


def clear_fault(install_path: Path, service: str, kind: str) -> None:
    """Switch one fault off."""
    (install_path / FAULTS_DIR / f"{service}.{kind}").unlink(missing_ok=True)


def clear_faults(install_path: Path) -> None:
    """Switch every fault of the install off."""
    shutil.rmtree(install_path / FAULTS_DIR, ignore_errors=True)
