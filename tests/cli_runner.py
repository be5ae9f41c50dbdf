"""Running `scm.py` in-process for the CLI tests (test_cli*.py)."""

from __future__ import annotations

from click.testing import CliRunner, Result

from scmflow.cli import main


def invoke(*args: str, stdin: str | None = None) -> Result:
    """`scm.py ARGS` through click's CliRunner, stdin as given."""
    return CliRunner().invoke(main, list(args), input=stdin)


def error_lines(result: Result) -> list[str]:
    """The `[ERROR]` lines of stderr."""
    return [line for line in result.stderr.splitlines() if line.startswith("[ERROR]")]


def assert_one_error(result: Result, expected: str, code: int = 2) -> None:
    """The command ended with exactly one `[ERROR] expected` line, exit `code`, no traceback."""
    assert result.exit_code == code, result.output
    assert error_lines(result) == [f"[ERROR] {expected}"]
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
