"""sudo on the host: the prompt scmflow answers, and the refusals it explains."""

from __future__ import annotations

import re
import secrets as secrets_module
from collections.abc import Sequence
from dataclasses import dataclass, field

# Prints its $0 (the `started` marker) on stderr, then becomes the command.
_STARTED_SCRIPT = 'printf %s "$0" >&2; exec "$@"'

_SUDO_REFUSALS = (
    (re.compile(r"incorrect password attempt|^Sorry, try again", re.MULTILINE), "wrong password for {login}"),
    (
        re.compile(r"is not in the sudoers file|is not allowed to execute|may not run sudo"),
        "{login} may not run commands as {user} (sudoers)",
    ),
    (
        re.compile(r"^sudo: (a password is required|no password was provided|a terminal is required)",
                   re.MULTILINE),
        "{login} needs a password for sudo and none is configured",
    ),
)


@dataclass(frozen=True)
class SudoPrompt:
    """sudo's prompt for this one command (`-p MARKER`), the line the command prints on stderr
    when it starts (`started`), and the password that answers the prompt."""

    marker: str
    started: str
    password: str = field(repr=False)

    @classmethod
    def new(cls, password: str) -> SudoPrompt:
        """Markers of their own for one command."""
        tag = secrets_module.token_hex(8)
        return cls(f"[scmflow-sudo-{tag}]", f"[scmflow-run-{tag}]", password)

    def wrap(self, user: str, inner: Sequence[str]) -> list[str]:
        """sudo that prompts with `marker`, running a shell that says `started`, then execs inner."""
        return ["sudo", "-S", "-k", "-p", self.marker, "-u", user, "-H", "--",
                "sh", "-c", _STARTED_SCRIPT, self.started, *inner]

    def clean(self, stderr: bytes) -> bytes:
        """stderr without the markers (a wrong password makes sudo prompt again)."""
        return stderr.replace(self.marker.encode(), b"").replace(self.started.encode(), b"")


def sudo_refusal(stderr: str, login: str, user: str) -> str | None:
    """Why sudo refused to run the command, judged from its stderr, or None."""
    head = "\n".join(stderr.splitlines()[:6])
    for pattern, reason in _SUDO_REFUSALS:
        if pattern.search(head):
            return f"sudo as {user} refused: " + reason.format(login=login, user=user)
    return None
