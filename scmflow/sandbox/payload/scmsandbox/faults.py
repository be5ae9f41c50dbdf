"""Fault switches: a node that fails to start or stop, starts slowly or turns unhealthy; a failing JVM."""

from __future__ import annotations

import os

from .tool import DEFAULT_SLOW_SECONDS, FAULTS_DIR, CtlError


class Faults:
    """Switches under `<install>/.sandbox-faults/`, named `<service>.<kind>`.

    Content: `VERSION [seconds=S] [times=N]`. VERSION (`*` = any) must equal the node's jar
    version (for jvm-fail: the tool's own version). `times=N` makes the switch apply to the
    next N checks only: each applying check takes one, under an exclusive flock, so
    concurrent ctl calls never both take the last one.
    """

    def __init__(self, install_path: str, service: str, version: str | None) -> None:
        self.dir = os.path.join(install_path, FAULTS_DIR)
        self.service = service
        self.version = version

    def active(self, kind: str) -> float | None:
        """The switch's seconds (a default when unset) when it applies now, else None."""
        path = os.path.join(self.dir, f"{self.service}.{kind}")
        try:
            words = _read_switch(path).split()
        except OSError:
            return None
        if not self._applies(words):
            return None
        if "times" in _settings(words) and not self._take_one(path):
            return None
        try:
            return float(_settings(words).get("seconds", DEFAULT_SLOW_SECONDS))
        except ValueError:
            return DEFAULT_SLOW_SECONDS

    def _applies(self, words: list[str]) -> bool:
        return bool(words) and words[0] in ("*", self.version)

    def _take_one(self, path: str) -> bool:
        """Take one of the switch's remaining times; False when none is left."""
        import fcntl

        try:
            handle = open(path, "r+", encoding="utf-8")
        except OSError as exc:
            raise CtlError(f"cannot count down fault switch {path}: {exc}") from exc
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            words = handle.read().split()
            settings = _settings(words)
            try:
                left = int(settings.get("times", "0"))
            except ValueError:
                left = 0
            if not self._applies(words) or left <= 0:
                return False
            rest = [w for w in words[1:] if not w.startswith("times=")]
            handle.seek(0)
            handle.truncate()
            handle.write(" ".join([words[0], *rest, f"times={left - 1}"]) + "\n")
            handle.flush()
        return True


def _read_switch(path: str) -> str:
    """A switch's text, read under a shared flock.

    A concurrent `_take_one` rewrites the file in place under its exclusive flock; without
    the lock, a read could land between its truncate and its write and see no switch.
    """
    import fcntl

    with open(path, encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        return handle.read()


def _settings(words: list[str]) -> dict[str, str]:
    """The `key=value` words of a switch (a bare number is the old `seconds`)."""
    out: dict[str, str] = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if sep:
            out[key] = value
        else:
            out["seconds"] = word
    return out
