"""Tree digests for tests: what every file of a tree is, so two states can be compared and
their differences printed readably in an assertion message.

An entry is (type, mode, uid, gid, sha256): type is `dir`, `file`, `link` or `other`;
mode the permission bits; sha256 that of a file's bytes or of a symlink's target (empty
for directories). Symlinks are never followed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

Entry = tuple[str, int, int, int, str]
Digest = dict[str, Entry]
_FIELDS = ("type", "mode", "uid", "gid", "sha256")


def tree_digest(root: Path, ignore: Iterable[str] = ()) -> Digest:
    """Every path under `root` (and `root` itself, as `.`), relative, with its Entry.

    `ignore` holds fnmatch patterns on relative paths (`*/log`, `*.pid`); a directory that
    matches is skipped with everything under it. Nothing is ignored unless named here.
    """
    patterns = tuple(ignore)
    out: Digest = {".": entry(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        kept = []
        for name in sorted(dirnames):
            rel = (base / name).relative_to(root).as_posix()
            if not _ignored(rel, patterns):
                kept.append(name)
                out[rel] = entry(base / name)
        dirnames[:] = kept  # os.walk lists symlinks to dirs as dirs but never enters them
        for name in sorted(filenames):
            rel = (base / name).relative_to(root).as_posix()
            if not _ignored(rel, patterns):
                out[rel] = entry(base / name)
    return dict(sorted(out.items()))


def entry(path: Path) -> Entry:
    """The Entry of one path (lstat: a symlink is described, not followed)."""
    st = path.lstat()
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path).encode("utf-8", "surrogateescape")
        return ("link", mode, st.st_uid, st.st_gid, hashlib.sha256(target).hexdigest())
    if stat.S_ISDIR(st.st_mode):
        return ("dir", mode, st.st_uid, st.st_gid, "")
    if stat.S_ISREG(st.st_mode):
        return ("file", mode, st.st_uid, st.st_gid, _file_sha256(path))
    return ("other", mode, st.st_uid, st.st_gid, "")


def subtree(digest: Mapping[str, Entry], prefix: str) -> Digest:
    """The entries of `prefix` and everything under it."""
    return {
        rel: value for rel, value in digest.items()
        if rel == prefix or rel.startswith(prefix.rstrip("/") + "/")
    }


def describe_diff(before: Mapping[str, Entry], after: Mapping[str, Entry], limit: int = 40) -> str:
    """The differences between two digests, one line each (at most `limit` lines):
    `- path` gone, `+ path` new, `~ path: mode 0644 -> 0600, gid 1001 -> 1000` changed."""
    lines: list[str] = []
    for rel in sorted(set(before) | set(after)):
        old, new = before.get(rel), after.get(rel)
        if old == new:
            continue
        if new is None:
            lines.append(f"- {rel} ({_show(old)})")
        elif old is None:
            lines.append(f"+ {rel} ({_show(new)})")
        else:
            lines.append(f"~ {rel}: {_changes(old, new)}")
    if not lines:
        return "no differences"
    more = len(lines) - limit
    shown = lines[:limit] + ([f"... and {more} more"] if more > 0 else [])
    return f"{len(lines)} difference(s):\n" + "\n".join(shown)


def _changes(old: Entry, new: Entry) -> str:
    parts = []
    for field, a, b in zip(_FIELDS, old, new, strict=True):
        if a == b:
            continue
        if field == "mode":
            parts.append(f"mode {a:04o} -> {b:04o}")
        elif field == "sha256":
            parts.append(f"content {str(a)[:12]} -> {str(b)[:12]}")
        else:
            parts.append(f"{field} {a} -> {b}")
    return ", ".join(parts)


def _show(value: Entry | None) -> str:
    if value is None:
        return "absent"
    kind, mode, uid, gid, _ = value
    return f"{kind} {mode:04o} {uid}:{gid}"


def _ignored(rel: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
