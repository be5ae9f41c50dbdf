"""A service's package: the version on disk, and unpacking a new one to swap its files in."""

import errno
import fnmatch
import os
import tarfile
from typing import Any, Dict, List, Optional, Tuple

from .context import Ctx, Failure, one_line
from .files import adopt_group, matches, remove_path, require_space
from .tarcheck import member_problem

_STAGING_PREFIX = ".scmflow-staging-"


def version_of(name: str) -> str:
    """Version in a jar or tarball name (`x-3.2.2.jar`, `x-3.2.2-release.tar.gz`)."""
    base = name
    for suffix in (".tar.gz", ".tgz", ".jar"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    if base.endswith("-release"):
        base = base[: -len("-release")]
    version = base.rsplit("-", 1)[-1]
    if "-" not in base or not version[:1].isdigit():
        raise Failure(f"no version in file name '{name}'", "version")
    return version


def installed_version(ctx: Ctx) -> Optional[str]:
    """Version of the service's single version file; None when absent, Failure when several."""
    svc = ctx.service()
    found = matches(ctx.service_dir(), svc["version_file"])
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(os.path.basename(p) for p in found)
        where = ctx.service_dir()
        raise Failure(f"{svc['printed']} has several version files in {where}: {names}", "version")
    return version_of(os.path.basename(found[0]))



def staging_dir(ctx: Ctx) -> str:
    """Where a package unpacks before its files move in (same filesystem as the install)."""
    return os.path.join(ctx.need("install_path"), _STAGING_PREFIX + ctx.service()["name"])


def checked_members(ctx: Ctx, tar: tarfile.TarFile) -> Tuple[List[tarfile.TarInfo], int]:
    """Members that unpack inside the service's dir, made ours; Failure on any other; + size."""
    members = tar.getmembers()
    problem = member_problem(members, ctx.service()["dir"])
    if problem is not None:
        raise Failure(f"{ctx.need('package')}: {problem}", "extract")
    size = 0
    for member in members:
        member.uid, member.gid = os.getuid(), os.getgid()
        member.uname = member.gname = ""
        size += _blocks(member)
    return members, size


def _blocks(member: tarfile.TarInfo) -> int:
    return (member.size + 4095) // 4096 * 4096 if member.isfile() else 4096


def swaps_in(name: str, top: str, globs: List[str]) -> bool:
    """Whether a member is, or is inside, a match of one of the globs.

    fnmatch's `*` also matches `/` and leading dots, so this keeps at least every member
    that glob matching in the staging dir can find (a few more at most, which stay unused).
    """
    parts = _below(name, top)
    if not parts:
        return False
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(fnmatch.fnmatchcase(prefix, glob) for prefix in prefixes for glob in globs)


def _below(name: str, top: str) -> Optional[List[str]]:
    """A member's path below the dir `top` as parts ([] for `top` itself), None if not below."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    head = [p for p in top.split("/") if p not in ("", ".")]
    if parts[: len(head)] != head:
        return None
    return parts[len(head):]


def stage_package(ctx: Ctx, only: Optional[List[str]] = None) -> str:
    """Unpack the package into a fresh staging dir; the service's files inside it.

    `only`: the globs (relative to the service's dir) of what will be swapped in; members
    outside them are not written (a package often holds several services' files).
    """
    package = ctx.need("package")
    staging = staging_dir(ctx)
    remove_path(staging)
    try:
        with tarfile.open(package, "r:*") as tar:
            members, size = checked_members(ctx, tar)
            top = ctx.service()["dir"]
            has_top = any(_below(m.name, top) is not None for m in members)
            if only is not None:
                members = [m for m in members if swaps_in(m.name, top, only)]
                size = sum(_blocks(m) for m in members)
            require_space(ctx, ctx.need("install_path"), size)
            os.mkdir(staging, 0o700)
            kwargs: Dict[str, Any] = {}
            if hasattr(tarfile, "fully_trusted_filter"):
                # Members are checked above; keep the same behaviour on every Python.
                kwargs["filter"] = "fully_trusted"
            tar.extractall(staging, members=members, **kwargs)  # noqa: S202
            if has_top and top:
                # the service's dir, even when nothing in it is to be swapped in
                os.makedirs(os.path.join(staging, top), exist_ok=True)
    except (tarfile.TarError, EOFError) as exc:
        remove_path(staging)
        raise Failure(f"{package}: not a readable tarball: {one_line(str(exc))}", "extract") from None
    except OSError as exc:
        remove_path(staging)
        if exc.errno == errno.ENOSPC:
            message = f"no space left on {ctx.host}:{staging} while unpacking {package}"
            raise Failure(message, "extract") from None
        raise
    staged = os.path.join(staging, top) if top else staging
    if not os.path.isdir(staged):
        remove_path(staging)
        raise Failure(f"{package} has no {top}/ directory", "extract")
    return staged


def swap_in(ctx: Ctx, staged: str, fresh: bool) -> List[str]:
    """Delete every match of the replace globs and move the staged matches in."""
    base = ctx.service_dir()
    os.makedirs(base, exist_ok=True)
    moved: List[str] = []
    for pattern in ctx.service()["replace"]:
        groups = {}
        for old in matches(base, pattern):
            groups[os.path.relpath(old, base)] = os.lstat(old).st_gid
            remove_path(old)
        for new in matches(staged, pattern):
            rel = os.path.relpath(new, staged)
            dst = os.path.join(base, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            remove_path(dst)
            os.rename(new, dst)
            # New files join the install tree's group (InstallUserGroup), not the user's own.
            adopt_group(dst, groups.get(rel, os.lstat(os.path.dirname(dst)).st_gid))
            moved.append(rel)
    if fresh:
        # The service was not on this host: it also needs the package's conf/ and the rest.
        for name in sorted(os.listdir(staged)):
            dst = os.path.join(base, name)
            if not os.path.lexists(dst):
                os.rename(os.path.join(staged, name), dst)
                adopt_group(dst, os.lstat(base).st_gid)
    return moved
