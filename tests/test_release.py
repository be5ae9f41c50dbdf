"""The release on the control machine: version, hashes, refusals, tarball safety."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from scmflow import sandbox
from scmflow.catalog import load_catalog
from scmflow.errors import ReleaseError
from scmflow.release import (
    NON_SERVICE_TARBALL,
    check_tarball_members,
    file_sha256,
    load_release,
    release_version,
    tarball_bytes,
)

CATALOG = load_catalog()
ALL = CATALOG.names()


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A fresh sandbox release 3.2.2 that a test may change."""
    return sandbox.build_release(tmp_path / "rel", "3.2.2")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_release_gives_its_version_and_a_hashed_package_per_service(release: Path, tmp_path: Path) -> None:
    loaded = load_release(release, CATALOG, ALL, work_dir=tmp_path / "work")
    assert loaded.version == "3.2.2"
    assert loaded.root == release.resolve()
    assert set(loaded.packages) == set(ALL)
    cloud = loaded.package_for("gateway")
    assert cloud.path == release / "package" / "sequoiacm-cloud-3.2.2-release.tar.gz"
    assert cloud.name == "sequoiacm-cloud-3.2.2-release.tar.gz"
    assert cloud.top_dir == "sequoiacm-cloud"
    assert cloud.sha256 == sha(cloud.path)
    assert cloud.size == cloud.path.stat().st_size
    # the five cloud services share one package (hashed once)
    assert loaded.package_for("service-center") is cloud
    assert loaded.package_for("daemon").name == "daemon-3.2.2-release.tar.gz"
    non_service = loaded.package_for("non-service")
    assert non_service.path == tmp_path / "work" / NON_SERVICE_TARBALL.format(version="3.2.2")
    assert non_service.top_dir == ""
    assert non_service.sha256 == sha(non_service.path)


def test_only_the_wanted_services_are_loaded(release: Path, tmp_path: Path) -> None:
    loaded = load_release(release, CATALOG, ["gateway", "om-server"], work_dir=tmp_path / "w")
    assert set(loaded.packages) == {"gateway", "om-server"}
    assert not (tmp_path / "w").exists()
    with pytest.raises(ReleaseError, match=r"has no package for service 'daemon'$"):
        loaded.package_for("daemon")


def test_a_service_without_a_package_in_the_release_is_left_out(release: Path, tmp_path: Path) -> None:
    (release / "package" / "sequoiacm-s3-3.2.2-release.tar.gz").unlink()
    loaded = load_release(release, CATALOG, ["gateway", "s3-server"], work_dir=tmp_path / "w")
    assert set(loaded.packages) == {"gateway"}


def test_file_sha256_reads_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "big"
    data = os.urandom(3 * (1 << 20) + 17)
    path.write_bytes(data)
    assert file_sha256(path) == (hashlib.sha256(data).hexdigest(), len(data))
    with pytest.raises(ReleaseError, match="cannot read"):
        file_sha256(tmp_path / "absent")


def test_a_directory_without_package_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError) as caught:
        load_release(tmp_path, CATALOG, ALL, work_dir=tmp_path / "w")
    assert str(caught.value) == (
        f"{tmp_path.resolve()} is not an unpacked SequoiaCM release (no package/ directory); "
        "use --release-dir"
    )


def test_an_empty_package_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "package").mkdir()
    with pytest.raises(ReleaseError, match=r"/package holds no \*-release\.tar\.gz packages$"):
        release_version(tmp_path, CATALOG)


def test_mixed_versions_are_refused_naming_the_files(release: Path, tmp_path: Path) -> None:
    shutil.copy(
        release / "package" / "sequoiacm-om-3.2.2-release.tar.gz",
        release / "package" / "sequoiacm-om-3.2.1-release.tar.gz",
    )
    with pytest.raises(ReleaseError) as caught:
        load_release(release, CATALOG, ALL, work_dir=tmp_path / "w")
    message = str(caught.value)
    assert message.startswith(
        f"release {release.resolve()} mixes versions (3.2.1: sequoiacm-om-3.2.1-release.tar.gz; 3.2.2: "
    )
    assert "\n" not in message


def test_a_driver_of_another_version_is_refused(release: Path) -> None:
    driver = release / "driver"
    (driver / "sequoiacm-driver-3.2.2-release.tar.gz").rename(
        driver / "sequoiacm-driver-3.1.2-release.tar.gz"
    )
    with pytest.raises(
        ReleaseError, match=r"mixes versions \(3\.1\.2: driver/sequoiacm-driver-3\.1\.2-release"
    ):
        release_version(release, CATALOG)


def test_a_package_name_without_a_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "package").mkdir()
    (tmp_path / "package" / "nothing-release.tar.gz").write_bytes(b"")
    with pytest.raises(ReleaseError, match=r"nothing-release\.tar\.gz: no version in file name"):
        release_version(tmp_path, CATALOG)


def test_missing_non_service_directories_are_refused(release: Path, tmp_path: Path) -> None:
    shutil.rmtree(release / "tools")
    with pytest.raises(ReleaseError) as caught:
        load_release(release, CATALOG, ["non-service"], work_dir=tmp_path / "w")
    assert str(caught.value) == f"release {release.resolve()} lacks directories: tools"


def test_the_non_service_tarball_is_the_same_bytes_every_time(release: Path, tmp_path: Path) -> None:
    first = load_release(release, CATALOG, ["non-service"], work_dir=tmp_path / "a").package_for(
        "non-service"
    )
    second = load_release(release, CATALOG, ["non-service"], work_dir=tmp_path / "b").package_for(
        "non-service"
    )
    again = load_release(release, CATALOG, ["non-service"], work_dir=tmp_path / "a").package_for(
        "non-service"
    )
    assert first.sha256 == second.sha256 == again.sha256
    assert first.path.read_bytes() == second.path.read_bytes()
    with tarfile.open(first.path) as tar:
        names = tar.getnames()
        assert all(m.uid == 0 and m.uname == "" for m in tar.getmembers())
    assert names[:2] == ["doc", "doc/README.txt"]
    assert {n.split("/")[0] for n in names} == {"doc", "driver", "tools"}
    assert names == sorted(names, key=lambda n: (["doc", "driver", "tools"].index(n.split("/")[0]), n))


def test_the_non_service_tarball_changes_when_a_file_changes(release: Path, tmp_path: Path) -> None:
    before = load_release(release, CATALOG, ["non-service"], work_dir=tmp_path / "a").package_for(
        "non-service"
    )
    readme = release / "doc" / "README.txt"
    stat = readme.stat()
    readme.write_text("changed\n")
    os.utime(readme, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = load_release(release, CATALOG, ["non-service"], work_dir=tmp_path / "b").package_for(
        "non-service"
    )
    assert before.sha256 != after.sha256


# ---------------------------------------------------------------------------- tarball safety


def write_tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            data = b"x" * info.size if info.isfile() else None
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


SAFE = [member("sequoiacm-om", tarfile.DIRTYPE), member("sequoiacm-om/jars/a.jar")]


def test_a_well_formed_tarball_passes(tmp_path: Path) -> None:
    path = write_tar(
        tmp_path / "ok.tar.gz",
        SAFE
        + [
            member("./sequoiacm-om/bin/x.sh"),
            member("sequoiacm-om/bin/link", tarfile.SYMTYPE, "../jars/a.jar"),
            member("sequoiacm-om/bin/hard", tarfile.LNKTYPE, "sequoiacm-om/jars/a.jar"),
        ],
    )
    check_tarball_members(path, "sequoiacm-om")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (member("/etc/cron.d/evil"), "unsafe member '/etc/cron.d/evil' (absolute or '..')"),
        (
            member("sequoiacm-om/../../etc/passwd"),
            "unsafe member 'sequoiacm-om/../../etc/passwd' (absolute or '..')",
        ),
        (
            member("sequoiacm-cloud/jars/x.jar"),
            "member 'sequoiacm-cloud/jars/x.jar' is outside 'sequoiacm-om/'",
        ),
        (
            member("sequoiacm-om/bin/up", tarfile.SYMTYPE, "../../../etc/shadow"),
            "link 'sequoiacm-om/bin/up' -> '../../../etc/shadow' leaves the package",
        ),
        (
            member("sequoiacm-om/bin/abs", tarfile.SYMTYPE, "/etc/shadow"),
            "link 'sequoiacm-om/bin/abs' -> '/etc/shadow' leaves the package",
        ),
        (
            member("sequoiacm-om/bin/side", tarfile.SYMTYPE, "../../sequoiacm-cloud/conf"),
            "link 'sequoiacm-om/bin/side' -> '../../sequoiacm-cloud/conf' leaves 'sequoiacm-om/'",
        ),
        (
            member("sequoiacm-om/bin/hard", tarfile.LNKTYPE, "../etc/passwd"),
            "link 'sequoiacm-om/bin/hard' -> '../etc/passwd' leaves the package",
        ),
        (member("sequoiacm-om/dev/sda", tarfile.BLKTYPE), "member 'sequoiacm-om/dev/sda' is a special file"),
        (member("sequoiacm-om/dev/tty", tarfile.CHRTYPE), "member 'sequoiacm-om/dev/tty' is a special file"),
        (member("sequoiacm-om/fifo", tarfile.FIFOTYPE), "member 'sequoiacm-om/fifo' is a special file"),
    ],
    ids=[
        "absolute",
        "dotdot",
        "outside-top",
        "symlink-up",
        "symlink-absolute",
        "symlink-sideways",
        "hardlink-up",
        "block-device",
        "char-device",
        "fifo",
    ],
)
def test_an_unsafe_tarball_is_refused_with_a_clear_error(
    tmp_path: Path, bad: tarfile.TarInfo, message: str
) -> None:
    path = write_tar(tmp_path / "bad.tar.gz", [*SAFE, bad])
    with pytest.raises(ReleaseError) as caught:
        check_tarball_members(path, "sequoiacm-om")
    assert str(caught.value) == f"{path}: {message}"


def test_a_symlink_chain_that_climbs_out_is_refused(tmp_path: Path) -> None:
    # `b -> .` makes `b/b/b/../../..` climb three levels above `sequoiacm-om/` on disk,
    # although it reads as staying inside: a path may not go through a link of the archive.
    loop = member("sequoiacm-om/b", tarfile.SYMTYPE, ".")
    escape = member("sequoiacm-om/e", tarfile.SYMTYPE, "b/b/b/../../../etc")
    path = write_tar(tmp_path / "chain.tar.gz", [*SAFE, loop, escape])
    with pytest.raises(ReleaseError) as caught:
        check_tarball_members(path, "sequoiacm-om")
    assert str(caught.value) == (
        f"{path}: link 'sequoiacm-om/e' -> 'b/b/b/../../../etc' goes through the symlink 'sequoiacm-om/b'"
    )


def test_a_member_written_through_a_symlink_is_refused(tmp_path: Path) -> None:
    # the file is listed before the link it would be written through
    path = write_tar(
        tmp_path / "through.tar.gz",
        [*SAFE, member("sequoiacm-om/d/cron.d/evil"), member("sequoiacm-om/d", tarfile.SYMTYPE, "jars")],
    )
    with pytest.raises(ReleaseError) as caught:
        check_tarball_members(path, "sequoiacm-om")
    assert (
        str(caught.value)
        == f"{path}: member 'sequoiacm-om/d/cron.d/evil' lies under the symlink 'sequoiacm-om/d'"
    )


def test_a_hard_link_through_a_symlink_is_refused(tmp_path: Path) -> None:
    path = write_tar(
        tmp_path / "hard.tar.gz",
        [
            *SAFE,
            member("sequoiacm-om/s", tarfile.SYMTYPE, "jars"),
            member("sequoiacm-om/h", tarfile.LNKTYPE, "sequoiacm-om/s/a.jar"),
        ],
    )
    with pytest.raises(ReleaseError, match="goes through the symlink 'sequoiacm-om/s'"):
        check_tarball_members(path, "sequoiacm-om")


def test_a_link_to_a_link_inside_the_package_is_allowed(tmp_path: Path) -> None:
    path = write_tar(
        tmp_path / "ok.tar.gz",
        [
            *SAFE,
            member("sequoiacm-om/s", tarfile.SYMTYPE, "jars/a.jar"),
            member("sequoiacm-om/t", tarfile.SYMTYPE, "./s"),
        ],
    )
    check_tarball_members(path, "sequoiacm-om")


def test_without_a_top_dir_members_may_be_anywhere_relative_but_not_escape(tmp_path: Path) -> None:
    ok = write_tar(
        tmp_path / "ok.tar.gz",
        [member("doc/a"), member("tools/b"), member("tools/l", tarfile.SYMTYPE, "../doc/a")],
    )
    check_tarball_members(ok, "")
    bad = write_tar(tmp_path / "bad.tar.gz", [member("doc/l", tarfile.SYMTYPE, "../../x")])
    with pytest.raises(ReleaseError, match="leaves the package"):
        check_tarball_members(bad, "")


def test_an_unsafe_service_package_stops_loading_the_release(release: Path, tmp_path: Path) -> None:
    target = release / "package" / "sequoiacm-om-3.2.2-release.tar.gz"
    write_tar(target, [*SAFE, member("sequoiacm-om/../../../root/.ssh/authorized_keys")])
    with pytest.raises(ReleaseError, match=r"sequoiacm-om-3\.2\.2-release\.tar\.gz: unsafe member"):
        load_release(release, CATALOG, ["om-server"], work_dir=tmp_path / "w")


def test_an_unreadable_or_empty_tarball_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball at all")
    with pytest.raises(ReleaseError, match=r"junk\.tar\.gz: not a readable tarball"):
        check_tarball_members(junk, "")
    empty = write_tar(tmp_path / "empty.tar.gz", [])
    with pytest.raises(ReleaseError, match=r"empty\.tar\.gz: empty tarball$"):
        check_tarball_members(empty, "")


def test_tarball_bytes_builds_a_readable_tarball() -> None:
    data = tarball_bytes({"a/b.txt": b"hello", "a/c": b""})
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["a/b.txt", "a/c"]
        extracted = tar.extractfile("a/b.txt")
        assert extracted is not None and extracted.read() == b"hello"
