"""Sends each host the packages its pairs need, into the run's upgrade dir, sha256-checked."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from scmflow.actions import RemoteLayout
from scmflow.agentcall import call_agent
from scmflow.errors import ScmflowError
from scmflow.plan import Pair
from scmflow.release import Package, Release
from scmflow.remote import Session


def packages_for(pairs: Sequence[Pair], release: Release) -> list[Package]:
    """The distinct packages a host's pairs need, in plan order."""
    seen: dict[str, Package] = {}
    for pair in pairs:
        package = release.package_for(pair.service)
        seen.setdefault(package.name, package)
    return list(seen.values())


def prepare_host(session: Session, layout: RemoteLayout, *, login_user: str, fresh: bool) -> None:
    """Create the run's upgrade and backup dirs; `fresh` refuses an existing upgrade dir."""
    spec = {
        "dirs": [
            {"path": layout.upgrade_dir, "mode": 0o755, "owner": login_user, "fresh": fresh},
            {"path": layout.backup_dir, "mode": 0o750, "owner": layout.install_user, "fresh": False},
        ]
    }
    call_agent(session, "prepare", spec, user=layout.admin_user, java_home=None, timeout=120.0)


def send_host_packages(
    session: Session,
    layout: RemoteLayout,
    packages: Sequence[Package],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Send `packages` to the upgrade dir, each verified by sha256 on the host."""
    total = sum(p.size for p in packages)
    done = 0
    for package in packages:

        def step(sent: int, _size: int, base: int = done) -> None:
            if progress is not None:
                progress(base + sent, total)

        session.put(package.path, layout.package_path(package.name), sha256=package.sha256, progress=step)
        done += package.size
        if progress is not None:
            progress(done, total)


def distribute(
    sessions: Mapping[str, Session],
    pairs_by_host: Mapping[str, Sequence[Pair]],
    release: Release,
    layout: RemoteLayout,
    *,
    login_users: Mapping[str, str],
    fresh: bool,
    parallel: int,
    on_host_start: Callable[[str], None],
    on_bytes: Callable[[str, int, int], None] | None = None,
) -> None:
    """Prepare and fill every host's upgrade dir, `parallel` hosts at once.

    Every host is attempted; one ScmflowError then names each host that failed.
    """

    def one(host: str) -> None:
        on_host_start(host)
        session = sessions[host]
        prepare_host(session, layout, login_user=login_users[host], fresh=fresh)
        progress = None
        if on_bytes is not None:
            callback = on_bytes

            def progress(sent: int, total: int) -> None:
                callback(host, sent, total)

        send_host_packages(session, layout, packages_for(pairs_by_host[host], release), progress=progress)

    hosts = list(pairs_by_host)
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(hosts) or 1))) as pool:
        futures = {host: pool.submit(one, host) for host in hosts}
        for host, future in futures.items():
            exc = future.exception()
            if exc is not None:
                errors.append(exc.message if isinstance(exc, ScmflowError) else f"[{host}] {exc}")
    if errors:
        raise ScmflowError("sending upgrade packages failed: " + "; ".join(errors))
