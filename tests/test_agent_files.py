"""The agent's file operations: copies keep what the install tree's files carry."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from scmflow.agent.files import copy_tree


def _other_group() -> int | None:
    """A group this process may give files that is not its primary group, if any."""
    if os.geteuid() == 0:
        return 4242
    others = [g for g in os.getgroups() if g != os.getegid()]
    return others[0] if others else None


def test_copies_keep_group_mode_links_and_content(tmp_path: Path) -> None:
    gid = _other_group()
    if gid is None:
        pytest.skip("this user belongs to no second group")
    src = tmp_path / "src"
    (src / "lib" / "hbase").mkdir(parents=True)
    jar = src / "lib" / "hbase" / "client.jar"
    jar.write_bytes(b"customer jar\n")
    jar.chmod(0o640)
    (src / "lib" / "current").symlink_to("hbase/client.jar")
    for path in (src, src / "lib", src / "lib" / "hbase", jar, src / "lib" / "current"):
        os.chown(path, -1, gid, follow_symlinks=False)
    copy_tree(str(src), str(tmp_path / "dst"))
    for rel in ("", "lib", "lib/hbase", "lib/hbase/client.jar", "lib/current"):
        a, b = (src / rel).lstat(), (tmp_path / "dst" / rel).lstat()
        assert (b.st_mode, b.st_uid, b.st_gid) == (a.st_mode, a.st_uid, a.st_gid), rel
    assert (tmp_path / "dst" / "lib" / "hbase" / "client.jar").read_bytes() == b"customer jar\n"
    assert os.readlink(tmp_path / "dst" / "lib" / "current") == "hbase/client.jar"
    assert stat.S_IMODE((tmp_path / "dst" / "lib" / "hbase" / "client.jar").stat().st_mode) == 0o640
