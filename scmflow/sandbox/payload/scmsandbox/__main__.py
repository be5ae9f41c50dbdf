"""The ctl tool's entry: `<ctl-name> <ctl args...>`, run by the sandbox JDK as a package."""

from __future__ import annotations

import os
import sys

from .daemon import ctl_daemon
from .faults import Faults
from .files import is_dir
from .nodes import ctl_nodes
from .pack import Pack
from .systools import ctl_systools
from .tool import FAULTS_DIR, INVALID_ARG, JVM_FAILURE, JVM_FAILURE_TEXT, SYSTEM_ERROR, CtlError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    """Run the ctl named in argv[0] with the rest of argv."""
    if not argv:
        sys.stderr.write("usage: scmsandbox <ctl-name> <command> [options]\n")
        return INVALID_ARG
    ctl, args = argv[0], list(argv[1:])
    try:
        # this package is <pack>/bin/scmsandbox/
        pack = Pack(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))))
        if jvm_fails(pack):
            sys.stderr.write(JVM_FAILURE_TEXT)
            return JVM_FAILURE
        commands = {"nodes": ctl_nodes, "daemon": ctl_daemon, "systools": ctl_systools}
        return commands[pack.role](pack, ctl, args)
    except CtlError as exc:
        sys.stderr.write(f"ERROR: {exc}\n")
        return exc.code
    except OSError as exc:
        sys.stderr.write(f"ERROR: {exc}\n")
        return SYSTEM_ERROR


def jvm_fails(pack: Pack) -> bool:
    """Whether a jvm-fail switch of one of the pack's services applies to this call."""
    if not is_dir(os.path.join(pack.install_path, FAULTS_DIR)):
        return False
    return any(
        Faults(pack.install_path, s["name"], pack.version).active("jvm-fail") is not None
        for s in pack.services
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
