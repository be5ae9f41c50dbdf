"""Which tar members may be unpacked: the one check of the control side and of the hosts.

The control machine checks a release's tarballs before sending them (scmflow/release.py)
and the agent checks a package again before unpacking it (`packages`), since whoever can
write the upgrade dir on the host could have replaced it; both ask `member_problem`.
Standard library only and Python 3.6 compatible, like the rest of the agent.
"""

import tarfile
from typing import Iterable, Optional, Set, Tuple, Union

Parts = Tuple[str, ...]


def member_problem(members: Iterable[tarfile.TarInfo], top_dir: str) -> Optional[str]:
    """Why the first unsafe member may not be unpacked; None when every member may.

    A member must unpack inside `top_dir` ("" = anywhere relative): no absolute path, no
    `..`, no special file, and a link's target must stay inside too. Lexical checks only
    hold when no path goes through a symlink of the archive (a link `a -> .` makes `a/a/..`
    climb one level higher than it reads), so no member and no link may pass through one.
    """
    listed = list(members)
    symlinks = {_parts(m.name) for m in listed if m.issym()}
    for member in listed:
        problem = _problem(member, top_dir, symlinks)
        if problem is not None:
            return problem
    return None


def _parts(name: str) -> Parts:
    return tuple(p for p in name.split("/") if p not in ("", "."))


def _problem(member: tarfile.TarInfo, top_dir: str, symlinks: Set[Parts]) -> Optional[str]:
    name = member.name
    if name.startswith("/") or ".." in name.split("/"):
        return f"unsafe member '{name}' (absolute or '..')"
    parts = _parts(name)
    if top_dir and parts and parts[0] != top_dir:
        return f"member '{name}' is outside '{top_dir}/'"
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return f"member '{name}' is a special file"
    under = next((parts[:i] for i in range(1, len(parts)) if parts[:i] in symlinks), None)
    if under is not None:
        return f"member '{name}' lies under the symlink '{'/'.join(under)}'"
    if member.issym() or member.islnk():
        return _link_problem(member, parts, top_dir, symlinks)
    return None


def _link_problem(member: tarfile.TarInfo, parts: Parts, top_dir: str, symlinks: Set[Parts]) -> Optional[str]:
    # A symlink's target is relative to its directory, a hard link's to the archive's root.
    base = parts[:-1] if member.issym() else ()
    target = member.linkname
    where = f"link '{member.name}' -> '{target}'"
    resolved = None if target.startswith("/") else _follow(base, _parts(target), symlinks)
    if resolved is None:
        return f"{where} leaves the package"
    if isinstance(resolved, str):
        return f"{where} goes through the symlink '{resolved}'"
    if top_dir and (not resolved or resolved[0] != top_dir):
        return f"{where} leaves '{top_dir}/'"
    return None


def _follow(base: Parts, steps: Parts, symlinks: Set[Parts]) -> Union[Parts, str, None]:
    """Where `steps` lead from `base`: None when above the root, the symlink name when via one."""
    out = list(base)
    for index, step in enumerate(steps):
        if step == "..":
            if not out:
                return None
            out.pop()
            continue
        out.append(step)
        if tuple(out) in symlinks and index < len(steps) - 1:
            return "/".join(out)
    return tuple(out)
