"""The agent's file operations: copies keep what the install tree's files carry."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from scmflow.agent.files import copy_tree, sync_tree


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


def test_sync_tree_fsyncs_every_file_and_directory_written_and_no_more(tmp_path: Path, monkeypatch) -> None:
    tree = tmp_path / "backup" / "files"
    (tree / "jars").mkdir(parents=True)
    (tree / "jars" / "a.jar").write_bytes(b"a")
    (tree / "bin").mkdir()
    (tree / "bin" / "ctl.sh").write_bytes(b"#!/bin/sh\n")
    (tree / "bin" / "link").symlink_to("ctl.sh")
    (tmp_path / "unrelated").write_bytes(b"x")
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "sync", lambda: pytest.fail("no sync(2) when every file can be opened"))
    sync_tree(str(tree))
    written = {tree / "jars" / "a.jar", tree / "bin" / "ctl.sh", tree / "jars", tree / "bin"}
    expected = written | {tree, tree.parent}
    assert {Path(p) for p in synced} == {p.resolve() for p in expected}


def test_sync_tree_falls_back_to_sync_for_a_file_it_cannot_open(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "secret").write_bytes(b"s")
    real_open = os.open
    calls: list[str] = []

    def refusing_open(path: str, flags: int, *args: int) -> int:
        if str(path).endswith("secret"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(os, "sync", lambda: calls.append("sync"))
    sync_tree(str(tmp_path / "t"))
    assert calls == ["sync"]
