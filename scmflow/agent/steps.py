"""The probe and the upgrade's own steps: replace, restart, verify."""

import os
import pwd
import re
import shutil
from typing import Any, Dict, List, Optional

from .backups import backup_paths, complete_manifest
from .commands import run_command
from .context import Ctx, Failure, use_java
from .files import free_bytes, merge_tree, remove_path
from .health import health_problems
from .nodes import daemon_pid, has_ctl, list_at_once, list_nodes, start_service, stop_service
from .packages import installed_version, stage_package, staging_dir, swap_in

_JAVA_VERSION = re.compile(r'version "([^"]+)"')
_PROFILE_JAVA_HOME = '. "$1" >/dev/null 2>&1; printf %s "$JAVA_HOME"'


def op_probe(ctx: Ctx) -> Dict[str, Any]:
    """Java, the install path, free space, and every service's version and nodes."""
    spec = ctx.spec
    java_home = spec.get("java_home") or _profile_java_home(ctx, str(spec.get("profile") or "/etc/profile"))
    if java_home:
        use_java(ctx.env, java_home)
    ctx.step = "java"
    # The nodes run on the first java of the ctl tools' PATH: that is the one to check.
    java = shutil.which("java", path=ctx.env.get("PATH")) if java_home else None
    java_version = _java_version(ctx, java) if java else None
    install_path = ctx.need("install_path")
    free = {str(p): free_bytes(str(p)) for p in spec.get("df_paths") or []}
    services: Dict[str, Any] = {}
    probes: List[Ctx] = []
    for svc in spec.get("services") or []:
        one = Ctx(dict(spec, service=svc))
        one.env = ctx.env
        probes.append(one)
    ctx.step = "list nodes"
    listings = list_at_once(probes)
    for one in probes:
        svc = one.service()
        ctx.step = f"probe {svc['name']}"
        version = installed_version(one)
        nodes: List[Dict[str, Any]] = []
        if svc["node_kind"] == "port":
            nodes = list_nodes(one, listings)
        elif svc["node_kind"] == "daemon" and (version is not None or has_ctl(one)):
            pid = daemon_pid(one)
            nodes = [{"port": None, "pid": pid, "running": pid is not None}]
        services[svc["name"]] = {"version": version, "nodes": nodes}
    return {
        "java_home": java_home or None,
        "java": java,
        "java_version": java_version,
        "install_path_exists": os.path.isdir(install_path),
        "user": pwd.getpwuid(os.geteuid()).pw_name,
        "free": free,
        "services": services,
    }


def _profile_java_home(ctx: Ctx, profile: str) -> str:
    ctx.step = "profile"
    env = dict(ctx.env)
    env.pop("JAVA_HOME", None)
    saved, ctx.env = ctx.env, env
    try:
        done = run_command(ctx, ["bash", "-c", _PROFILE_JAVA_HOME, "scmflow-probe", profile], 60, check=False)
    finally:
        ctx.env = saved
    return done.out.strip()


def _java_version(ctx: Ctx, java: str) -> Optional[str]:
    try:
        done = run_command(ctx, [java, "-version"], 60, check=False)
    except Failure:
        return None
    m = _JAVA_VERSION.search(done.err + done.out)
    return m.group(1) if m else None



def op_replace(ctx: Ctx) -> Dict[str, Any]:
    """Stop the nodes and swap the service's files for the package's; conf/ and data stay."""
    backup_dir = ctx.need("backup_dir")
    new_version = ctx.need("new_version")
    ctx.step = "check-backup"
    manifest = complete_manifest(ctx, backup_dir)
    if manifest is None:
        raise Failure(f"refusing to replace: the backup {backup_dir} is not complete", "check-backup")
    ctx.step = "extract"
    fresh = not manifest.get("dir_existed", True)
    # a fresh install needs all of the package (conf/ too); an upgrade only what it swaps in
    staged = stage_package(ctx, None if fresh else list(ctx.service()["replace"]))
    try:
        ctx.step = "stop"
        stopped = stop_service(ctx)
        ctx.step = "swap"
        moved = swap_in(ctx, staged, fresh=fresh)
        ctx.step = "preserve"
        files = backup_paths(backup_dir)[0]
        for rel in ctx.service().get("preserve") or []:
            src = os.path.join(files, rel)
            if os.path.lexists(src):
                merge_tree(src, os.path.join(ctx.service_dir(), rel))
    finally:
        remove_path(staging_dir(ctx))
    ctx.step = "check-version"
    found = installed_version(ctx)
    if found != new_version:
        raise Failure(f"after the replace the version on disk is {found or 'none'}, not {new_version}")
    return {"stopped": stopped["stopped"], "replaced": moved, "version": found}


def op_restart(ctx: Ctx) -> Dict[str, Any]:
    """Start exactly the nodes that ran before the upgrade."""
    spec = ctx.spec
    ports = [int(p) for p in spec.get("ports") or []]
    return start_service(
        ctx, ports, bool(spec.get("daemon")), float(spec.get("timeout") or 300), bool(spec.get("nodes_down"))
    )


def op_verify(ctx: Ctx) -> Dict[str, Any]:
    """The new version is on disk once and every listed node runs and answers."""
    spec = ctx.spec
    ports = [int(p) for p in spec.get("ports") or []]
    problems, state = health_problems(
        ctx, spec.get("version"), ports, bool(spec.get("daemon")), float(spec.get("wait") or 60)
    )
    if problems:
        raise Failure("; ".join(problems), "verify")
    return state
