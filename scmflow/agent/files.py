"""Files on the host: globbing, exact tree copies that keep owners, atomic writes, space."""

import glob
import json
import os
import shutil
import stat
from typing import Any, Dict, Iterator, List, Optional

from .context import Ctx, Failure

_SPACE_MARGIN = 1 << 20


def matches(base: str, pattern: str) -> List[str]:
    """Paths under `base` matching the glob `pattern`, sorted; literal chars in base stay literal."""
    return sorted(glob.glob(os.path.join(glob.escape(base), pattern)))


def remove_path(path: str) -> None:
    """Delete a file, link or tree; nothing when absent."""
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def copy_tree(src: str, dst: str) -> None:
    """Copy a file, link or tree exactly: owner, group, mode, links as links, mtimes (dirs last)."""
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
        keep_owner(st, dst)
        shutil.copystat(src, dst, follow_symlinks=False)
    elif stat.S_ISDIR(st.st_mode):
        os.mkdir(dst)
        for name in sorted(os.listdir(src)):
            copy_tree(os.path.join(src, name), os.path.join(dst, name))
        keep_owner(st, dst)
        shutil.copystat(src, dst)
    elif stat.S_ISREG(st.st_mode):
        shutil.copy2(src, dst)
        # chown clears set-id bits, so the mode is set again after it.
        if keep_owner(st, dst):
            os.chmod(dst, stat.S_IMODE(st.st_mode))


def keep_owner(st: os.stat_result, dst: str) -> bool:
    """Give `dst` (not following a link) the owner and group in `st`; whether it changed.

    A copy belongs to whoever made it, in that user's primary group; an install tree's
    group (InstallUserGroup) often differs, and a restore must bring it back too.
    """
    now = os.lstat(dst)
    uid = st.st_uid if st.st_uid != now.st_uid else -1
    gid = st.st_gid if st.st_gid != now.st_gid else -1
    if uid == -1 and gid == -1:
        return False
    try:
        os.chown(dst, uid, gid, follow_symlinks=False)
    except OSError as exc:
        raise Failure(
            f"cannot give {dst} the owner {st.st_uid}:{st.st_gid} that its original has: {exc.strerror}",
            "owner",
        ) from None
    return True


def merge_tree(src: str, dst: str) -> None:
    """Copy `src` over `dst`, keeping what only `dst` has."""
    if os.path.isdir(src) and not os.path.islink(src):
        if os.path.lexists(dst) and (os.path.islink(dst) or not os.path.isdir(dst)):
            remove_path(dst)
        if not os.path.isdir(dst):
            os.mkdir(dst)
        for name in sorted(os.listdir(src)):
            merge_tree(os.path.join(src, name), os.path.join(dst, name))
        keep_owner(os.lstat(src), dst)
        shutil.copystat(src, dst)
    else:
        remove_path(dst)
        copy_tree(src, dst)


def walk_size(path: str) -> int:
    """Bytes a copy of `path` takes, counting whole 4 KiB blocks per file."""
    total = 0
    for entry in _walk(path):
        st = os.lstat(entry)
        if stat.S_ISREG(st.st_mode):
            total += (st.st_size + 4095) // 4096 * 4096
        elif stat.S_ISDIR(st.st_mode):
            total += 4096
    return total


def _walk(path: str) -> Iterator[str]:
    yield path
    if os.path.isdir(path) and not os.path.islink(path):
        for name in os.listdir(path):
            yield from _walk(os.path.join(path, name))


def free_bytes(path: str) -> int:
    """Bytes free for an unprivileged user on the filesystem that holds (or will hold) path."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize


def require_space(ctx: Ctx, path: str, size: int) -> None:
    """Fail before anything changes when the filesystem of `path` cannot take `size` bytes."""
    need = size + size // 100 + _SPACE_MARGIN
    have = free_bytes(path)
    if have < need:
        raise Failure(f"not enough space on {ctx.host}:{path}: need {need}, have {have}", "space")


def write_atomic(path: str, data: bytes, mode: int = 0o666) -> None:
    """Write a file by rename, with the data and the directory entry fsynced.

    The temporary file's name is this writer's alone and it is created exclusively without
    following links: two writers never share it (a shared `path.tmp` let them interleave),
    and a link planted at a guessable name is never written through. `mode` goes through
    the umask, as with open().
    """
    tmp = f"{path}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path))


def sync_tree(path: str) -> None:
    """Make a tree just written durable: every regular file and directory in it fsynced.

    Only what was written is flushed, unlike sync(2), which flushes every dirty page of the
    host (on a busy host, far more than one service's backup). A file this process cannot
    open (mode 000) falls back to sync(2).
    """
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            full = os.path.join(root, name)
            if not stat.S_ISREG(os.lstat(full).st_mode):
                continue  # a link's entry is made durable with its directory
            try:
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
            except PermissionError:
                os.sync()
                return
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def fsync_dir(path: str) -> None:
    """Make a directory's entries durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str) -> Optional[Dict[str, Any]]:
    """A JSON object from a file, or None when absent or unreadable."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def same_tree(a: str, b: str) -> bool:
    """Whether two files, links or trees are equal in type, mode, link target and content."""
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    if sa.st_mode != sb.st_mode:  # type and permission bits
        return False
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(a) == os.readlink(b)
    if stat.S_ISDIR(sa.st_mode):
        names = sorted(os.listdir(a))
        return names == sorted(os.listdir(b)) and all(
            same_tree(os.path.join(a, n), os.path.join(b, n)) for n in names
        )
    if sa.st_size != sb.st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            block = fa.read(1 << 20)
            if block != fb.read(1 << 20):
                return False
            if not block:
                return True


def adopt_group(path: str, gid: int) -> None:
    """Give `path` and everything under it (links themselves) the group `gid`."""
    for entry in _walk(path):
        st = os.lstat(entry)
        if st.st_gid != gid:
            os.chown(entry, -1, gid, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(entry, stat.S_IMODE(st.st_mode))

