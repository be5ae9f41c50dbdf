"""The command line: `scm.py cluster --upgrade/--rollback`, `scm.py status ...`, `scm.py demo`.

This layer parses options, prompts and prints; the work happens in the core modules.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from scmflow import __version__
from scmflow.cli.cluster import cluster_command
from scmflow.cli.demo import demo_command
from scmflow.cli.status import status_group
from scmflow.errors import EXIT_INTERRUPTED, EXIT_REFUSED

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
