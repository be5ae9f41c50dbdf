"""tests/treedigest.py: entries, ignore patterns, symlinks, readable differences."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.treedigest import describe_diff, subtree, tree_digest


def _tree(root: Path) -> Path:
    (root / "a" / "log").mkdir(parents=True)
    (root / "a" / "log" / "x.log").write_text("runtime\n")
    (root / "a" / "f.txt").write_text("hello\n")
    (root / "a" / "f.txt").chmod(0o640)
    (root / "a" / "n.pid").write_text("1\n")
    (root / "link").symlink_to("a/f.txt")
    (root / "dirlink").symlink_to("a")
    return root


def test_entries_describe_type_mode_owner_and_content(tmp_path: Path) -> None:
    digest = tree_digest(_tree(tmp_path))
    uid, gid = os.getuid(), os.getgid()
    assert digest["a/f.txt"] == ("file", 0o640, uid, gid, hashlib.sha256(b"hello\n").hexdigest())
    assert digest["a"][:1] == ("dir",)
    assert digest["."][0] == "dir"
    # symlinks are described by their target, never followed
    assert digest["link"][0] == "link"
    assert digest["link"][4] == hashlib.sha256(b"a/f.txt").hexdigest()
    assert digest["dirlink"][0] == "link"
    assert "dirlink/f.txt" not in digest
    assert "a/log/x.log" in digest  # nothing is ignored unless named


def test_ignore_patterns_skip_whole_directories(tmp_path: Path) -> None:
    digest = tree_digest(_tree(tmp_path), ignore=("*/log", "*.pid"))
    assert not [rel for rel in digest if "log" in rel or rel.endswith(".pid")]
    assert set(subtree(digest, "a")) == {"a", "a/f.txt"}


def test_differences_are_readable(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    before = tree_digest(root)
    assert describe_diff(before, tree_digest(root)) == "no differences"
    pid_mode = before["a/n.pid"][1]
    (root / "a" / "f.txt").chmod(0o600)
    (root / "a" / "n.pid").unlink()
    (root / "new").write_text("x")
    (root / "new").chmod(0o600)
    (root / "link").unlink()
    (root / "link").symlink_to("elsewhere")
    owner = f"{os.getuid()}:{os.getgid()}"
    old_target = hashlib.sha256(b"a/f.txt").hexdigest()[:12]
    new_target = hashlib.sha256(b"elsewhere").hexdigest()[:12]
    assert describe_diff(before, tree_digest(root)).splitlines() == [
        "4 difference(s):",
        "~ a/f.txt: mode 0640 -> 0600",
        f"- a/n.pid (file {pid_mode:04o} {owner})",
        f"~ link: content {old_target} -> {new_target}",
        f"+ new (file 0600 {owner})",
    ]
    assert describe_diff(before, {}, limit=2).splitlines()[-1] == f"... and {len(before) - 2} more"
