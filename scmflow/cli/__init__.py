"""The command line: `scm.py cluster --upgrade/--rollback`, `scm.py status ...`, `scm.py demo`.

This layer parses options, prompts and prints; the work happens in the core modules.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

# paramiko imports invoke only to run ssh_config's `Match exec` commands, which scmflow
# refuses (scmflow/sshconfig.py). Without invoke (None in sys.modules makes its import
# fail, which paramiko expects), no ssh_config line can make paramiko run a command even if
# that refusal were bypassed, and each start of the command line is about 0.1 s of CPU
# cheaper. Set before any module of the command line imports paramiko.
sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]  # None blocks an import

import click  # noqa: E402

from scmflow import __version__  # noqa: E402
from scmflow.cli.cluster import cluster_command  # noqa: E402
from scmflow.cli.demo import demo_command  # noqa: E402
from scmflow.cli.status import status_group  # noqa: E402
from scmflow.errors import EXIT_INTERRUPTED, EXIT_REFUSED  # noqa: E402

__all__ = ["main"]


class ScmGroup(click.Group):
    """A group whose own usage errors end, like every other error, in one `[ERROR]` line."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; click's errors become `[ERROR] ...` and exit 2."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            hint = "; see --help" if isinstance(exc, click.UsageError) else ""
            click.echo(f"[ERROR] {exc.format_message().rstrip('.')}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort as exc:
            # click turns Ctrl-C and an end of input at a prompt into Abort
            if isinstance(exc.__cause__, KeyboardInterrupt):
                click.echo("[ERROR] interrupted", err=True)
                sys.exit(EXIT_INTERRUPTED)
            click.echo("[ERROR] no answer: the input ended at a prompt; nothing was changed", err=True)
            sys.exit(EXIT_REFUSED)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=ScmGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="scmflow")
def main() -> None:
    """Upgrade and roll back a SequoiaCM cluster in one command.

    \b
    Examples:
      scm.py cluster --upgrade --upgrade-conf sequoiacm-deploy/conf/upgrade.cfg
      scm.py cluster --rollback --upgrade-status-path sequoiacm-deploy/upgrade-status/upgrade_status_...
      scm.py status show sequoiacm-deploy/upgrade-status/upgrade_status_...
    """
    # Library loggers (paramiko logs socket errors at ERROR) go to the run's log file only,
    # never to the operator's terminal through logging's last-resort handler.
    for name in ("scmflow", "paramiko", "transitions"):
        logging.getLogger(name).addHandler(logging.NullHandler())


main.add_command(cluster_command)
main.add_command(status_group)
main.add_command(demo_command)
