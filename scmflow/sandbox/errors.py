"""The sandbox's one error type."""

from __future__ import annotations

from scmflow.errors import ScmflowError


class SandboxError(ScmflowError):
    """The sandbox could not build, install, start or stop something."""
