"""Files for the ctl tool: jars and manifests, pid files, and pathlib's answers for plain string paths."""

from __future__ import annotations

import os
import stat

from .tool import (
    FILE_NOT_FIND,
    JAR_MAGIC,
    JSON_SPACE,
    MISSING_ERRNOS,
    SYSTEM_ERROR,
    CtlError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def single_match(root: str, pattern: str) -> str:
    """The one file matching `pattern` under `root`; CtlError otherwise."""
    found = glob_sorted(root, pattern)
    if len(found) != 1:
        names = ", ".join(os.path.basename(f) for f in found) or "none"
        code = FILE_NOT_FIND if not found else SYSTEM_ERROR
        raise CtlError(
            f"expected exactly one {os.path.basename(root)}/{pattern}, found: {names}", code
        )
    return found[0]


def glob_sorted(root: str, pattern: str) -> list[str]:
    """`sorted(glob.glob(str(Path(root) / pattern)))`.

    The manifests' patterns (`jars/NAME-*.jar`: one `*`, in the last part, nothing for
    pathlib to normalise) are matched here as glob does: the names in the directory, those
    starting with `.` only when the pattern does. Any other pattern goes to glob itself.
    """
    *dirs, name = pattern.split("/")
    head, star, rest = name.partition("*")
    plain = star and not any(c in part for part in (root, *dirs, head, rest) for c in "*?[")
    if not plain or "" in dirs or "." in dirs:
        import glob
        from pathlib import Path

        return sorted(glob.glob(str(Path(root) / pattern)))
    folder = os.path.join(root, *dirs)
    names: list[str] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                names.append(entry.name)
    except OSError:
        pass
    return sorted(
        os.path.join(folder, n) for n in names
        if n.startswith(head) and n.endswith(rest) and len(n) >= len(head) + len(rest)
        and (head.startswith(".") or not n.startswith("."))
    )


class _JsonContext:
    """What json.loads' decoder hands the C scanner: json.JSONDecoder()'s defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {
        "-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan"),
    }.__getitem__


def load_json(data: str | bytes) -> Any:
    """`json.loads(data)`, without importing json for plain JSON.

    Every call reads its pack's manifest, and `import json` costs about as much as the rest
    of a `list` (json.decoder compiles regular expressions, so it imports re). So the text
    goes to the C scanner that json.loads itself uses, set up as json.loads sets it up;
    whatever that does not take whole (or a Python without _json) goes to json.loads, so
    values and errors are json's own.
    """
    try:
        from _json import make_scanner

        if isinstance(data, str):
            text = data
        elif data[:1] not in (b"\0", b"\xef", b"\xfe", b"\xff") and data[1:2] != b"\0":
            # what json.loads decodes as UTF-8 (no BOM, not UTF-16/32)
            text = data.decode("utf-8", "surrogatepass")
        else:
            text = ""  # refused by the scanner: json.loads decodes it
        start = len(text) - len(text.lstrip(JSON_SPACE))
        value, end = make_scanner(_JsonContext)(text, start)  # type: ignore[arg-type]
        if not text[end:].strip(JSON_SPACE):
            return value
    except Exception:  # noqa: S110 - json.loads below gives json's own answer
        pass
    import json

    return json.loads(data)


def jar_version(jar: str) -> str:
    """The version written in a sandbox jar's header line."""
    try:
        with open(jar, "rb") as f:
            head = f.readline(512).decode("utf-8", "replace").split()
    except OSError as exc:
        raise CtlError(f"cannot read {jar}: {exc}", FILE_NOT_FIND) from exc
    if len(head) != 3 or head[0] != JAR_MAGIC:
        raise CtlError(f"{jar} is not a sandbox jar")
    return head[2]


def read_pid(path: str) -> int | None:
    """The pid in a pid file, or None."""
    try:
        text = read_text(path).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def write_pid(path: str, pid: int) -> None:
    """Write a pid file (under `log/`)."""
    make_dirs(os.path.dirname(path))
    write_text(path, f"{pid}\n")


def remove_pid(path: str, pid: int | None) -> None:
    """Remove a pid file; with `pid`, only when it still names that process."""
    if pid is None or read_pid(path) == pid:
        unlink(path)


def tail(log: str, lines: int = 3) -> str:
    """The last lines of a log, joined for a one-line message."""
    try:
        text = read_text(log, errors="replace")
    except OSError:
        return "no log"
    return " | ".join(text.strip().splitlines()[-lines:]) or "empty log"


# ---------------------------------------------------------------- paths: pathlib's answers

# This tool used pathlib; these helpers keep its answers and errors (the same exceptions,
# naming the same paths), so no message or exit code changed with the move to strings.


def read_text(path: str, errors: str | None = None) -> str:
    """The file's text (UTF-8)."""
    with open(path, encoding="utf-8", errors=errors) as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    """Replace the file's text (UTF-8)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def unlink(path: str) -> None:
    """Remove a file; a missing one is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def stat_mode(path: str) -> int | None:
    """The path's st_mode; None where pathlib's is_dir() and exists() say False."""
    try:
        return os.stat(path).st_mode
    except OSError as exc:
        if exc.errno not in MISSING_ERRNOS:
            raise
    except ValueError:
        pass
    return None


def is_dir(path: str) -> bool:
    """`Path(path).is_dir()`."""
    mode = stat_mode(path)
    return mode is not None and stat.S_ISDIR(mode)


def make_dirs(path: str, *, parents: bool = True) -> None:
    """`Path(path).mkdir(parents=True, exist_ok=True)`, failing as it does."""
    try:
        os.mkdir(path)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if not parents or parent == path:
            raise
        make_dirs(parent)
        make_dirs(path, parents=False)
    except OSError:
        if not is_dir(path):
            raise


def dir_names(path: str) -> list[str]:
    """The names `Path(path).glob("*")` yields (hidden ones too), in directory order."""
    if not is_dir(path):
        return []
    try:
        with os.scandir(path) as entries:
            return [entry.name for entry in entries]
    except PermissionError:
        return []


def pack_roots(install_path: str) -> list[str]:
    """The `<install>/<dir>` that `sorted(Path(install_path).glob("*/bin/sandbox.json"))`
    finds, in that order."""
    found: list[str] = []
    if not is_dir(install_path):
        return found
    try:
        with os.scandir(install_path) as listing:
            entries = list(listing)
        for entry in entries:
            try:
                if not entry.is_dir():
                    continue
            except OSError as exc:
                if exc.errno not in MISSING_ERRNOS:
                    raise
                continue
            bin_dir = os.path.join(install_path, entry.name, "bin")
            try:
                if is_dir(bin_dir) and stat_mode(os.path.join(bin_dir, "sandbox.json")) is not None:
                    found.append(entry.name)
            except PermissionError:
                pass
    except PermissionError:
        pass
    return [os.path.join(install_path, name) for name in sorted(found)]
