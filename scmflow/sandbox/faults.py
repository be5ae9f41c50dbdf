"""Fault switches: files that make one host's ctl scripts fail or slow down on purpose.

They live in `<install_path>/.sandbox-faults/`, outside every directory an upgrade
replaces, so a replace or a restore cannot delete them. One file per switch,
`<service>.<kind>`, holding `VERSION [seconds=S] [times=N]` (read by the ctl tool,
payload/scmsandbox/faults.py):

  start-fail  `<ctl> start` of the service's nodes fails (exit 8), nothing is started
  stop-fail   `<ctl> stop` of the service's running nodes fails (exit 8), they keep running
  start-slow  the service's nodes answer health DOWN for `seconds` (default 3) after start
  jvm-fail    the whole ctl tool of the service's directory, any command, fails as a JVM
              that cannot start: empty stdout, `Error occurred during initialization of VM`
              on stderr, exit 1, no `Total:` line

VERSION (`*` = any) limits the switch to nodes whose jar is that version (for jvm-fail: to
a tool of that version, i.e. the installed bin/). `times=N` limits it to the next N times it
would apply; the tool counts down under a lock, so "fail once, then work" is exact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from scmflow.catalog import load_catalog
from scmflow.sandbox.errors import SandboxError

FAULTS_DIR = ".sandbox-faults"
# health-down: the node answers UP once (the ctl's start check), then DOWN for good, as a
# node whose health indicator fails right after start-up (e.g. it cannot reach its database)
FAULT_KINDS = ("start-fail", "stop-fail", "start-slow", "jvm-fail", "health-down")


def set_fault(
    install_path: Path,
    service: str,
    kind: str,
    version: str | None = None,
    seconds: float | None = None,
    *,
    times: int | None = None,
) -> Path:
    """Switch a fault on for `service`; only for nodes whose jar is `version` when given.

    `seconds` is the start-slow delay (the tool defaults to 3 s); `times` limits the switch
    to the next `times` calls it applies to (None = always).
    """
    if kind not in FAULT_KINDS:
        raise SandboxError(f"unknown fault kind '{kind}'; known: {', '.join(FAULT_KINDS)}")
    if load_catalog().find(service) is None:
        raise SandboxError(f"unknown service '{service}'")
    if times is not None and times < 0:
        raise SandboxError("times must be 0 or more")
    words = [version or "*"]
    if seconds is not None:
        words.append(f"seconds={seconds:g}")
    if times is not None:
        words.append(f"times={times}")
    folder = install_path / FAULTS_DIR
    folder.mkdir(mode=0o755, exist_ok=True)
    folder.chmod(0o755)  # readable by the install user whatever the umask
    path = folder / f"{service}.{kind}"
    path.write_text(" ".join(words) + "\n", encoding="utf-8")
    # The tool counts a limited switch down as the install user, who must be able to write it.
    path.chmod(0o664 if times is not None else 0o644)
    _own_like(path, install_path)
    return path


def fault_times_left(install_path: Path, service: str, kind: str) -> int | None:
    """How many more times a limited switch applies; None when it is off or unlimited."""
    try:
        words = (install_path / FAULTS_DIR / f"{service}.{kind}").read_text().split()
    except OSError:
        return None
    for word in words[1:]:
        if word.startswith("times="):
            return int(word.partition("=")[2])
    return None


def clear_fault(install_path: Path, service: str, kind: str) -> None:
    """Switch one fault off."""
    (install_path / FAULTS_DIR / f"{service}.{kind}").unlink(missing_ok=True)


def clear_faults(install_path: Path) -> None:
    """Switch every fault of the install off."""
    shutil.rmtree(install_path / FAULTS_DIR, ignore_errors=True)


def _own_like(path: Path, install_path: Path) -> None:
    """Give `path` the install's owner when we may (root writes switches for another user)."""
    if os.geteuid() != 0:
        return
    st = install_path.stat()
    os.chown(path, st.st_uid, st.st_gid)
