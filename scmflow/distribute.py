"""Sends each host the packages its pairs need, into the run's upgrade dir, sha256-checked.

A package already in the upgrade dir with the right sha256 (a resumed run's) is not sent
again: one `sha256sum` per host finds which ones are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from scmflow.actions import RemoteLayout
from scmflow.agentcall import call_agent
from scmflow.fanout import map_hosts
from scmflow.plan import Pair
from scmflow.release import Package, Release
from scmflow.session.base import Session, Upload


def packages_for(pairs: Sequence[Pair], release: Release) -> list[Package]:
    """The distinct packages a host's pairs need, in plan order."""
    seen: dict[str, Package] = {}
    for pair in pairs:
        package = release.package_for(pair.service)
        seen.setdefault(package.name, package)
    return list(seen.values())


def prepare_host(session: Session, layout: RemoteLayout, *, login_user: str, fresh: bool) -> None:
    """Create the run's upgrade and backup dirs; `fresh` (a new run) refuses existing ones.

    Their bases are made root's (agent/prepare.py, prepare_dir), so what the run dirs hold can be
    swapped by no user but the one each dir is given to.
    """
    spec = {
        "dirs": [
            {"path": layout.upgrade_dir, "mode": 0o755, "owner": login_user, "fresh": fresh},
            {"path": layout.backup_dir, "mode": 0o750, "owner": layout.install_user, "fresh": fresh},
        ]
    }
    call_agent(session, "prepare", spec, user=layout.admin_user, java_home=None, timeout=120.0)


def missing_packages(session: Session, layout: RemoteLayout, packages: Sequence[Package]) -> list[Package]:
    """The packages whose file in the upgrade dir is absent or differs, asked in one command."""
    if not packages:
        return []
    wanted = {layout.package_path(p.name): p for p in packages}
    # check=False: sha256sum exits 1 when some files are missing, and still hashes the rest
    result = session.run(["sha256sum", "--", *wanted], check=False, timeout=600.0)
    present: dict[str, str] = {}
    for line in result.stdout.splitlines():
        fields = line.split(maxsplit=1)
        if len(fields) == 2:
            present[fields[1].removeprefix("*")] = fields[0].lower()
    return [p for path, p in wanted.items() if present.get(path) != p.sha256.lower()]


def send_host_packages(
    session: Session,
    layout: RemoteLayout,
    packages: Sequence[Package],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Send `packages` to the upgrade dir in one transfer, each verified by sha256 on the host."""
    uploads = [Upload(p.path, layout.package_path(p.name), p.sha256) for p in packages]
    session.put_files(uploads, progress=progress)


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
) -> dict[str, int]:
    """Prepare and fill every host's upgrade dir, `parallel` hosts at once; bytes sent per host.

    A `fresh` upgrade dir is new, so everything is sent; otherwise only missing or differing
    packages are. Every host is attempted; one HostsFailed (exit 2) then names each host that failed.
    """

    def one(host: str) -> int:
        on_host_start(host)
        session = sessions[host]
        prepare_host(session, layout, login_user=login_users[host], fresh=fresh)
        packages = packages_for(pairs_by_host[host], release)
        if not fresh:
            packages = missing_packages(session, layout, packages)
        progress = None
        if on_bytes is not None:
            callback = on_bytes

            def progress(sent: int, total: int) -> None:
                callback(host, sent, total)

        send_host_packages(session, layout, packages, progress=progress)
        return sum(p.size for p in packages)

    # Only the run's own dirs and packages exist so far: a host that fails here refuses
    # the run before any install changed.
    return map_hosts(
        list(pairs_by_host), one, parallel=parallel, what="sending upgrade packages", exit_code=2
    )
