"""A pair's backup on the host: taking it, dropping an incomplete one, putting it back."""

import errno
import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from .context import Ctx, Failure
from .files import (
    copy_tree,
    fsync_dir,
    matches,
    read_json,
    remove_path,
    require_space,
    same_tree,
    sync_tree,
    walk_size,
    write_atomic,
)
from .health import health_problems
from .nodes import start_service, stop_service
from .packages import installed_version, staging_dir


def backup_paths(backup_dir: str) -> Tuple[str, str, str]:
    """(files dir, manifest, completion marker) of a pair's backup."""
    return (
        os.path.join(backup_dir, "files"),
        os.path.join(backup_dir, "manifest.json"),
        os.path.join(backup_dir, ".complete"),
    )


def complete_manifest(ctx: Ctx, backup_dir: str) -> Optional[Dict[str, Any]]:
    """The manifest of a complete backup, else None; Failure when it is damaged or not ours."""
    _, path, marker = backup_paths(backup_dir)
    if not os.path.exists(marker):
        return None
    manifest = read_json(path)
    if manifest is None:
        raise Failure(f"the backup {backup_dir} is marked complete but its manifest is unreadable")
    if "service" in ctx.spec and manifest.get("service") != ctx.service()["name"]:
        raise Failure(f"the backup {backup_dir} holds {manifest.get('service')}, not {ctx.service()['name']}")
    return manifest


def replaced_matches(ctx: Ctx) -> List[str]:
    """Service-dir-relative paths that the replace globs match now."""
    base = ctx.service_dir()
    found: List[str] = []
    for pattern in ctx.service()["replace"]:
        for path in matches(base, pattern):
            rel = os.path.relpath(path, base)
            if rel not in found:
                found.append(rel)
    return found


def relative_matches(base: str, patterns: List[str]) -> List[str]:
    """`base`-relative paths matching any of the globs."""
    found: List[str] = []
    for pattern in patterns:
        for path in matches(base, pattern):
            rel = os.path.relpath(path, base)
            if rel not in found:
                found.append(rel)
    return found


def restored_by_mate(ctx: Ctx, backup_dir: str) -> List[str]:
    """Replace globs whose files a pair of the same dir, upgraded earlier, already restored.

    Services sharing a dir (the cloud services) each back up the shared files (bin/, *.py,
    the tools jar) as they were just before their own upgrade, so a later pair's copy holds
    the files the earlier pair's upgrade brought. When the earlier pair was rolled back
    first (out of reverse order: a skipped pair put right, or `--service` one at a time),
    the shared files already match its older copy; restoring the later copy over them
    would bring the newer files back.
    """
    svc = ctx.service()
    base = ctx.service_dir()
    mine = read_json(backup_paths(backup_dir)[2]) or {}
    parent = os.path.dirname(os.path.normpath(backup_dir))
    for name in sorted(os.listdir(parent)):
        other = os.path.join(parent, name)
        if other == os.path.normpath(backup_dir) or not os.path.isdir(other):
            continue
        files, manifest_path, marker = backup_paths(other)
        theirs, done = read_json(manifest_path), read_json(marker)
        if theirs is None or done is None or theirs.get("dir") != svc["dir"]:
            continue
        if float(done.get("time", 0)) >= float(mine.get("time", 0)):
            continue
        shared = [g for g in svc["replace"] if g in (theirs.get("replace") or [])]
        now, saved = relative_matches(base, shared), relative_matches(files, shared)
        if shared and sorted(now) == sorted(saved) and all(
            same_tree(os.path.join(base, rel), os.path.join(files, rel)) for rel in now
        ):
            return shared
    return []



def op_backup(ctx: Ctx) -> Dict[str, Any]:
    """Copy what the upgrade will replace into the backup dir, then mark it complete."""
    backup_dir = ctx.need("backup_dir")
    files, manifest_path, marker = backup_paths(backup_dir)
    ctx.step = "check"
    done = complete_manifest(ctx, backup_dir)
    if done is not None:
        return {"already": True, "paths": done.get("paths", []), "version": done.get("version")}
    remove_path(backup_dir)
    base = ctx.service_dir()
    version = installed_version(ctx)
    rels = replaced_matches(ctx)
    size = sum(walk_size(os.path.join(base, rel)) for rel in rels)
    ctx.step = "space"
    require_space(ctx, backup_dir, size)
    ctx.step = "copy"
    try:
        os.makedirs(files, 0o750)
        for rel in rels:
            dst = os.path.join(files, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            copy_tree(os.path.join(base, rel), dst)
        manifest = {
            "service": ctx.service()["name"],
            "version": version,
            "paths": rels,
            "dir_existed": os.path.isdir(base),
            "bytes": size,
            # what a restore of a pair sharing the dir needs to know (see restored_by_mate)
            "dir": ctx.service()["dir"],
            "replace": list(ctx.service()["replace"]),
        }
        write_atomic(manifest_path, json.dumps(manifest, sort_keys=True).encode())
        # The copies must be on disk before the marker says they are.
        sync_tree(files)
        fsync_dir(os.path.dirname(os.path.abspath(backup_dir)))
        ctx.step = "mark"
        write_atomic(marker, json.dumps({"time": time.time()}).encode())
    except OSError as exc:
        remove_path(backup_dir)
        if exc.errno == errno.ENOSPC:
            raise Failure(f"no space left on {ctx.host}:{backup_dir} during the backup", "copy") from None
        raise
    return {"already": False, "paths": rels, "version": version, "bytes": size}



def op_restore(ctx: Ctx) -> Dict[str, Any]:
    """Put the backup back exactly, restart the nodes that ran, verify the old version."""
    spec = ctx.spec
    backup_dir = ctx.need("backup_dir")
    manifest = complete_manifest(ctx, backup_dir)
    if manifest is None:
        # replace refuses to run without a complete backup, so nothing was replaced.
        remove_path(backup_dir)
        return {"restored": False}
    ctx.step = "check-backup"
    saved = restorable_paths(ctx, backup_paths(backup_dir)[0], manifest)
    ctx.step = "stop"
    stop_service(ctx)
    ctx.step = "restore"
    base = ctx.service_dir()
    files = backup_paths(backup_dir)[0]
    remove_path(staging_dir(ctx))
    kept = restored_by_mate(ctx, backup_dir)
    keep_now = set(relative_matches(base, kept))
    keep_saved = set(relative_matches(files, kept))
    if os.path.isdir(base):
        for rel in replaced_matches(ctx):
            if rel not in keep_now:
                remove_path(os.path.join(base, rel))
    for rel in saved:
        if rel in keep_saved:
            continue
        dst = os.path.join(base, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        copy_tree(os.path.join(files, rel), dst)
    if not manifest.get("dir_existed", True) and ctx.service()["dir"]:
        remove_path(base)
    ctx.step = "start"
    ports = [int(p) for p in spec.get("ports") or []]
    timeout = float(spec.get("timeout") or 300)
    started = start_service(ctx, ports, bool(spec.get("daemon")), timeout)
    ctx.step = "verify"
    problems, state = health_problems(
        ctx, spec.get("old_version"), ports, bool(spec.get("daemon")), min(timeout, 60.0)
    )
    if problems:
        raise Failure("after the restore: " + "; ".join(problems), "verify")
    return dict(state, restored=True, started=started["started"], kept=kept)


def restorable_paths(ctx: Ctx, files: str, manifest: Dict[str, Any]) -> List[str]:
    """The manifest's paths, each one the service's catalog says a backup holds; else Failure.

    Whoever can write the backup can write its manifest: a path that is absolute, climbs
    out with `..`, or is not one of the service's replaced paths is never restored.
    """
    wanted = set(relative_matches(files, list(ctx.service()["replace"])))
    paths = [str(p) for p in manifest.get("paths") or []]
    for rel in paths:
        parts = rel.split("/")
        if rel.startswith("/") or ".." in parts or os.path.normpath(rel) != rel or rel not in wanted:
            raise Failure(f"the backup's manifest names '{rel}', which the backup of "
                          f"{ctx.service()['printed']} never holds; refusing to restore", "restore")
    return paths


def op_abandon(ctx: Ctx) -> Dict[str, Any]:
    """Remove an incomplete backup; keep a complete one."""
    backup_dir = ctx.need("backup_dir")
    if complete_manifest(ctx, backup_dir) is not None:
        return {"removed": False}
    existed = os.path.lexists(backup_dir)
    remove_path(backup_dir)
    return {"removed": existed}
