"""Run directories made as root without trusting what another user controls; what exists."""

import errno
import os
import pwd
import stat
from typing import Any, Dict, List, Tuple

from .context import Ctx, Failure


def op_prepare(ctx: Ctx) -> Dict[str, Any]:
    """Make each dir safely as whoever runs this (root): see `prepare_dir`."""
    created: List[str] = []
    for entry in ctx.spec.get("dirs") or []:
        path = str(entry["path"])
        ctx.step = f"mkdir {path}"
        fresh = bool(entry.get("fresh"))
        created.extend(prepare_dir(ctx, path, entry.get("owner"), entry.get("mode"), fresh))
    return {"created": created}


def prepare_dir(ctx: Ctx, path: str, owner: Any, mode: Any, fresh: bool) -> List[str]:
    """mkdir -p `path` without following a link or trusting what another user controls.

    Every directory above `path` must be a real directory owned by root (or by whoever
    runs this) and writable by no one else, unless sticky; missing ones are made so (0755).
    `path` itself goes to `owner` with `mode` (default: like its parents); `fresh` refuses
    one that exists. Ownership and mode are set on an open descriptor, never by name.
    """
    if not path.startswith("/") or os.path.normpath(path) != path or path == "/":
        raise Failure(f"{path}: not an absolute, normalised directory path", "prepare")
    uid, gid = _owner_ids(ctx, owner)
    parts = path.strip("/").split("/")
    created: List[str] = []
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        where = ""
        for i, name in enumerate(parts):
            where += "/" + name
            last = i == len(parts) - 1
            made = _make_dir_at(fd, name)
            if made:
                created.append(where)
            elif last and fresh:
                raise Failure(f"{where} already exists on {ctx.host}; a run never reuses it", "prepare")
            child = _open_dir_at(ctx, fd, name, where)
            os.close(fd)
            fd = child
            st = os.fstat(fd)
            if made or not last:
                _check_trusted(ctx, st, where, made)
            if last:
                _set_owner_mode(fd, st, uid, gid, mode)
            elif made:
                os.fchmod(fd, 0o755)
    finally:
        os.close(fd)
    return created


def _owner_ids(ctx: Ctx, owner: Any) -> Tuple[int, int]:
    if not owner:
        return os.geteuid(), os.getegid()
    try:
        user = pwd.getpwnam(str(owner))
    except KeyError:
        raise Failure(f"no user '{owner}' on {ctx.host}", "chown") from None
    return user.pw_uid, user.pw_gid


def _make_dir_at(fd: int, name: str) -> bool:
    """mkdir `name` in the directory `fd` (0700 until it is checked and set); whether it was made."""
    try:
        os.mkdir(name, 0o700, dir_fd=fd)
    except FileExistsError:
        return False
    return True


def _open_dir_at(ctx: Ctx, fd: int, name: str, where: str) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            message = f"{where} on {ctx.host} is a symbolic link or not a directory; refusing it"
            raise Failure(message, "prepare") from None
        raise


def _check_trusted(ctx: Ctx, st: os.stat_result, where: str, made: bool) -> None:
    """A directory above a run's dir must be root's (or ours) and writable by no one else."""
    if made:
        return
    if st.st_uid not in (0, os.geteuid()):
        owner = _user_name(st.st_uid)
        raise Failure(
            f"{where} on {ctx.host} belongs to {owner}, not root: another user could replace what "
            f"scmflow makes in it (chown root {where})",
            "prepare",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise Failure(
            f"{where} on {ctx.host} is writable by other users "
            f"(mode {stat.S_IMODE(st.st_mode):o}); refusing it",
            "prepare",
        )


def _set_owner_mode(fd: int, st: os.stat_result, uid: int, gid: int, mode: Any) -> None:
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.fchown(fd, uid, gid)
    if mode is not None:
        os.fchmod(fd, int(mode, 8) if isinstance(mode, str) else int(mode))
    elif stat.S_IMODE(st.st_mode) == 0o700 and uid == os.geteuid():
        os.fchmod(fd, 0o755)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def op_exists(ctx: Ctx) -> Dict[str, Any]:
    """Which of the given paths exist."""
    return {"exists": [str(p) for p in ctx.spec.get("paths") or [] if os.path.lexists(str(p))]}
