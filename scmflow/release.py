"""The new release on the control machine: its tarballs, their versions, hashes and safety."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from scmflow.agent.tarcheck import member_problem
from scmflow.catalog import Catalog, Service, parse_version
from scmflow.errors import ReleaseError

_HASH_CHUNK = 1 << 20
# A tarball built here from the release's doc/, driver/ and tools/ directories, so that
# non-service files travel, hash and unpack like every other package.
NON_SERVICE_TARBALL = "sequoiacm-non-service-{version}.tar.gz"


@dataclass(frozen=True)
class Package:
    """One file to send: a release tarball (or the built non-service tarball)."""

    path: Path
    sha256: str
    size: int
    top_dir: str

    @property
    def name(self) -> str:
        """File name, as it is stored in the remote upgrade dir."""
        return self.path.name


@dataclass(frozen=True)
class Release:
    """An unpacked SequoiaCM release and the package each service upgrades from."""

    root: Path
    version: str
    packages: dict[str, Package]

    def package_for(self, service: str) -> Package:
        """The package of `service`; ReleaseError when the release does not carry it."""
        try:
            return self.packages[service]
        except KeyError:
            raise ReleaseError(
                f"release {self.root} has no package for service '{service}'"
            ) from None


def load_release(
    root: Path, catalog: Catalog, services: Iterable[str], *, work_dir: Path
) -> Release:
    """Find, version, hash and safety-check the packages of `services` under `root`.

    `work_dir` receives the non-service tarball built from doc/, driver/ and tools/.
    """
    root = root.resolve()
    if not (root / "package").is_dir():
        raise ReleaseError(
            f"{root} is not an unpacked SequoiaCM release (no package/ directory); "
            "use --release-dir"
        )
    wanted = [catalog.get(name) for name in services]
    version = release_version(root, catalog)
    packages: dict[str, Package] = {}
    by_path: dict[Path, Package] = {}
    for service in wanted:
        if service.name == "non-service":
            packages[service.name] = _non_service_package(root, service, version, work_dir)
            continue
        path = _service_tarball(root, service, version)
        if path is None:
            continue
        if path not in by_path:
            by_path[path] = _checked_package(path, service.dir)
        packages[service.name] = by_path[path]
    return Release(root=root, version=version, packages=packages)


def release_version(root: Path, catalog: Catalog) -> str:
    """The version every package of the release carries; ReleaseError when they disagree."""
    versions: dict[str, list[str]] = {}
    for path in sorted((root / "package").glob("*-release.tar.gz")):
        try:
            versions.setdefault(parse_version(path.name), []).append(path.name)
        except ValueError as exc:
            raise ReleaseError(f"{path}: {exc}") from exc
    driver = sorted((root / "driver").glob("sequoiacm-driver-*-release.tar.gz"))
    for path in driver:
        versions.setdefault(parse_version(path.name), []).append(f"driver/{path.name}")
    if not versions:
        raise ReleaseError(f"{root}/package holds no *-release.tar.gz packages")
    if len(versions) > 1:
        found = "; ".join(f"{v}: {', '.join(names)}" for v, names in sorted(versions.items()))
        raise ReleaseError(f"release {root} mixes versions ({found})")
    return next(iter(versions))


def _service_tarball(root: Path, service: Service, version: str) -> Path | None:
    for rel in service.package_paths(version):
        path = root / rel
        if path.is_file():
            return path
    return None


def _checked_package(path: Path, top_dir: str) -> Package:
    check_tarball_members(path, top_dir)
    digest, size = file_sha256(path)
    return Package(path=path, sha256=digest, size=size, top_dir=top_dir)


def file_sha256(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise ReleaseError(f"cannot read {path}: {exc}") from exc
    return h.hexdigest(), size


def check_tarball_members(path: Path, top_dir: str) -> None:
    """ReleaseError unless every member unpacks inside `top_dir` ("" = anywhere relative).

    The check is the agent's own (`member_problem`), which it makes again on the host.
    """
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ReleaseError(f"{path}: not a readable tarball: {exc}") from exc
    if not members:
        raise ReleaseError(f"{path}: empty tarball")
    problem = member_problem(members, top_dir)
    if problem is not None:
        raise ReleaseError(f"{path}: {problem}")


def _non_service_package(root: Path, service: Service, version: str, work_dir: Path) -> Package:
    dirs = [root / d for d in service.package]
    missing = [d.name for d in dirs if not d.is_dir()]
    if missing:
        raise ReleaseError(f"release {root} lacks directories: {', '.join(missing)}")
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / NON_SERVICE_TARBALL.format(version=version)
    _write_deterministic_tar(out, root, [d.name for d in dirs])
    return _checked_package(out, "")


def _write_deterministic_tar(out: Path, root: Path, names: list[str]) -> None:
    """A tarball whose bytes depend only on the files, so reruns hash the same."""
    tmp = out.with_suffix(".tmp")
    with tmp.open("wb") as raw:
        # gzip stores a timestamp; mtime=0 keeps the bytes stable across runs.
        with (
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for name in names:
                for path in _walk_sorted(root / name):
                    rel = path.relative_to(root).as_posix()
                    info = tar.gettarinfo(str(path), arcname=rel)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.mtime = int(path.lstat().st_mtime)
                    if info.isfile():
                        with path.open("rb") as f:
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)
    os.replace(tmp, out)


def _walk_sorted(top: Path) -> list[Path]:
    out = [top]
    if top.is_dir() and not top.is_symlink():
        for child in sorted(top.iterdir()):
            out.extend(_walk_sorted(child))
    return out


def tarball_bytes(files: dict[str, bytes]) -> bytes:
    """A small in-memory tar.gz of `files` (used by tests and the sandbox)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
