"""Sandbox SequoiaCM daemon process: the command of the `linuxCron` line that scmd.sh writes.

The real daemon is a Java tool that watches the host's nodes; this one only proves it runs
the jar it was given, then idles until SIGTERM. Standard library only.

Usage: scmdaemon.py --jar JAR
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

JAR_MAGIC = "SEQUOIACM-SANDBOX-JAR"


def main(argv: Sequence[str]) -> int:
    """Check the jar, then wait for SIGTERM."""
    parser = argparse.ArgumentParser(prog="scmdaemon.py")
    parser.add_argument("--jar", required=True)
    opts = parser.parse_args(argv)
    try:
        with open(opts.jar, "rb") as f:
            head = f.readline(512).split()
    except OSError as exc:
        sys.stderr.write(f"ERROR: cannot read {opts.jar}: {exc}\n")
        return 1
    if not head or head[0] != JAR_MAGIC.encode():
        sys.stderr.write(f"ERROR: {opts.jar} is not a sandbox jar\n")
        return 1
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while True:
        signal.pause()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
