"""The one exception family the CLI turns into an `[ERROR] ...` line and an exit code."""

from __future__ import annotations

# The exit codes (cli.EXIT_CODES says what each means to the operator).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_INTERRUPTED = 130


class ScmflowError(Exception):
    """An operator-facing failure: one line of text and an exit code."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(ScmflowError):
    """Bad options or option combinations."""

    exit_code = EXIT_REFUSED


class ConfigError(ScmflowError):
    """A malformed upgrade.cfg; the message names file, line and field."""

    exit_code = EXIT_REFUSED

    def __init__(
        self, message: str, *, path: str = "", line: int | None = None, field: str = ""
    ) -> None:
        where = path
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        parts = [p for p in (where, f"field {field}" if field else "") if p]
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path = path
        self.line = line
        self.field = field


class CatalogError(ScmflowError):
    """A broken declarative file under states/."""

    exit_code = EXIT_REFUSED


class ReleaseError(ScmflowError):
    """The unpacked release directory is missing pieces or holds unsafe tarballs."""

    exit_code = EXIT_REFUSED


class RemoteError(ScmflowError):
    """A remote command or transfer failed; carries the host and the command's result."""

    def __init__(
        self,
        host: str,
        message: str,
        *,
        argv: tuple[str, ...] = (),
        exit_code: int | None = None,
        stderr: str = "",
    ) -> None:
        tail = stderr.strip().splitlines()[-3:] if stderr else []
        detail = f" ({' | '.join(tail)})" if tail else ""
        super().__init__(f"[{host}] {message}{detail}")
        self.host = host
        self.argv = argv
        self.remote_exit_code = exit_code
        self.stderr = stderr


class HostKeyError(RemoteError):
    """An unknown or changed SSH host key."""


class RemoteTimeout(RemoteError):
    """A remote command or connection did not finish in time."""


class PlanError(ScmflowError):
    """The requested upgrade cannot be planned (forbidden path, unknown host, ...)."""

    exit_code = EXIT_REFUSED


class JournalError(ScmflowError):
    """A status file that cannot be read, is of an unknown format, or is tampered with."""

    exit_code = EXIT_REFUSED


class UntrustedStatusFile(JournalError):
    """A status file whose MACs do not prove it was written by this control machine's key."""


class StatusKeyError(ScmflowError):
    """The status key file cannot be read, created or trusted."""

    exit_code = EXIT_REFUSED


class ConnectError(ScmflowError):
    """A host cannot be reached, trusted or logged in to; nothing was done on any host."""

    exit_code = EXIT_REFUSED


class LockError(ScmflowError):
    """Another run holds the lock; the run is refused before any host changed."""

    exit_code = EXIT_REFUSED


class Interrupted(ScmflowError):
    """The operator interrupted the run (Ctrl-C)."""

    exit_code = EXIT_INTERRUPTED
