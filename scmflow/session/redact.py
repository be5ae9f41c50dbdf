"""Redaction: keep passwords and secret environment values out of logs and errors."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# Environment variables whose values are secrets, judged by name.
_SECRET_ENV = re.compile(r"PASS|SECRET|TOKEN|CREDENTIAL", re.IGNORECASE)
_LOG_CLIP = 2000
_MASK = "******"


def secrets_of(password: str | None, env: Mapping[str, str] | None) -> tuple[str, ...]:
    """The values to hide: the login password and the secret-looking environment values."""
    found = [password] if password else []
    found += [value for name, value in (env or {}).items() if _SECRET_ENV.search(name) and value]
    return tuple(found)


def redact(text: str, secrets: Sequence[str]) -> str:
    """`text` with every secret masked."""
    for secret in secrets:
        text = text.replace(secret, _MASK)
    return text


def clip(text: str) -> str:
    """`text` stripped, and cut short (saying how long it was) if it would flood a log line."""
    text = text.strip()
    return text if len(text) <= _LOG_CLIP else text[:_LOG_CLIP] + f"... ({len(text)} chars)"
