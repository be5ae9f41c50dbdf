"""Build an unpacked sandbox SequoiaCM release with the real release's layout."""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
from collections.abc import Iterable
from pathlib import Path

from scmflow.catalog import Catalog, load_catalog
from scmflow.sandbox.errors import SandboxError
from scmflow.sandbox.packs import (
    FileSpec,
    Pack,
    driver_files,
    non_service_files,
    pack_files,
    release_packs,
)

# Every file of a release gets this mtime, so builds are byte-for-byte repeatable.
FIXED_MTIME = 1673568000  # 2023-01-13, the vendor manual's upgrade example
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_SAMPLE_CFG = """# Sample upgrade configuration of the SequoiaCM {version} sandbox release.
[installconfig]
InstallPath,          InstallUser
/opt/,                scmadmin

[host]
HostName,      SshPort, User,   Password,  JavaHome
127.0.0.1,     22,      root,   ,

[config]
#service=gateway
upgradePackPath=/opt/upgrade/sequoiacm
backupPath=/opt/backup/sequoiacm
"""


def build_release(
    dest: Path,
    version: str,
    *,
    services: Iterable[str] | None = None,
    pad_bytes: int = 0,
) -> Path:
    """Write the unpacked release `dest/sequoiacm/` for `version`; return that root.

    `services` limits which packs are written (default: all); `pad_bytes` is the total of
    incompressible filler spread evenly over the service tarballs (for benchmarks).
    """
    if not _VERSION_RE.match(version):
        raise SandboxError(f"release version must look like 3.2.2, not '{version}'")
    catalog = load_catalog()
    wanted = _wanted(catalog, services)
    root = dest / "sequoiacm"
    if root.exists():
        raise SandboxError(f"{root} already exists; build a release into an empty directory")
    packs = [p for p in release_packs(catalog, version) if wanted & {s.name for s in p.services}]
    pad = pad_bytes // len(packs) if packs else 0
    (root / "package").mkdir(parents=True)
    for pack in packs:
        _write_pack(root, pack, version, pad)
    if "non-service" in wanted:
        _write_non_service(root, version)
    _write_tree(root, {"sequoiacm-deploy/conf/upgrade.cfg": FileSpec(
        _SAMPLE_CFG.format(version=version).encode()
    )})
    _fix_mtimes(root)
    return root


def _wanted(catalog: Catalog, services: Iterable[str] | None) -> set[str]:
    if services is None:
        return set(catalog.names())
    wanted = set(services)
    unknown = sorted(w for w in wanted if catalog.find(w) is None)
    if unknown:
        raise SandboxError(f"unknown services: {', '.join(unknown)}")
    return wanted


def _write_pack(root: Path, pack: Pack, version: str, pad: int) -> None:
    files = {f"{pack.dir}/{rel}": spec for rel, spec in pack_files(pack, version, pad).items()}
    (root / pack.tarball).write_bytes(tarball(files, level=1 if pad else 9))


def _write_non_service(root: Path, version: str) -> None:
    _write_tree(root, non_service_files(version))
    driver = tarball(driver_files(version))
    _write_tree(root, {f"driver/sequoiacm-driver-{version}-release.tar.gz": FileSpec(driver)})


def _write_tree(root: Path, files: dict[str, FileSpec]) -> None:
    for rel, spec in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(spec.data)
        path.chmod(spec.mode)


def tarball(files: dict[str, FileSpec], *, level: int = 9) -> bytes:
    """A tar.gz of `files` (with their directories) whose bytes depend only on the files."""
    buf = io.BytesIO()
    # gzip stores a timestamp; mtime=0 keeps the bytes stable across builds.
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=level) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name in _with_dirs(files):
                spec = files.get(name)
                info = tarfile.TarInfo(name)
                info.mtime = FIXED_MTIME
                info.uname = info.gname = "root"
                if spec is None:
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
                else:
                    info.mode = spec.mode
                    info.size = len(spec.data)
                    tar.addfile(info, io.BytesIO(spec.data))
    return buf.getvalue()


def _with_dirs(files: dict[str, FileSpec]) -> list[str]:
    names = set(files)
    for name in files:
        parts = name.split("/")[:-1]
        names.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return sorted(names)


def _fix_mtimes(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.utime(Path(dirpath) / name, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    os.utime(root, (FIXED_MTIME, FIXED_MTIME))
