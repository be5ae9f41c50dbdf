"""Text from a status file made fit for a terminal: control characters escaped, lines wrapped."""

from __future__ import annotations

import textwrap


def wrap(text: str, width: int, *, indent: str = "", first: str = "") -> list[str]:
    """`text`, escaped (see `printable`), as lines of at most `width`: `first` leads, `indent` the rest."""
    # Every line render_show prints goes through here or the pair table; escaping before
    # wrapping keeps the escaped text within the width.
    return textwrap.wrap(
        printable(text),
        width=width,
        initial_indent=first,
        subsequent_indent=indent,
        break_on_hyphens=False,
        drop_whitespace=True,
    ) or [first.rstrip()]


def printable(text: str) -> str:
    """`text` with each control or other unprintable character escaped, as Python writes it.

    A status file can hold any string (an argv, a host name, a remote error), and a terminal
    escape sequence in it must not reach the auditor's terminal as one.
    """
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
