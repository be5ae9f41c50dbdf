"""The one tar-member check: the agent unpacks a package only if the control side would send it.

tests/test_release.py holds the check's rules through `check_tarball_members`; this file
holds the host's use of the same function and what only the host meets (the non-service
package, whose members may lie anywhere relative).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from scmflow.agent.context import Ctx, Failure
from scmflow.agent.packages import stage_package, swaps_in
from scmflow.agent.tarcheck import member_problem
from scmflow.catalog import load_catalog
from scmflow.errors import ReleaseError
from scmflow.release import check_tarball_members
from tests.test_release import SAFE, member, write_tar

UNSAFE = [
    member("sequoiacm-om/../../etc/passwd"),
    member("sequoiacm-om/bin/up", tarfile.SYMTYPE, "../../../etc/shadow"),
    member("sequoiacm-om/fifo", tarfile.FIFOTYPE),
    member("sequoiacm-om/d", tarfile.SYMTYPE, "jars"),
]

def om_ctx(install: Path, package: Path) -> Ctx:
    """A step's context for unpacking `package` as the om-server's."""
    service = load_catalog().get("om-server").to_spec()
    return Ctx({"install_path": str(install), "package": str(package), "service": service})

@pytest.mark.parametrize("bad", UNSAFE, ids=["dotdot", "symlink-up", "fifo", "through-symlink"])
def test_the_host_refuses_a_package_with_the_control_sides_words(
    tmp_path: Path, bad: tarfile.TarInfo
) -> None:
    extra = [member("sequoiacm-om/d/x")] if bad.issym() and bad.linkname == "jars" else []
    path = write_tar(tmp_path / "bad.tar.gz", [*SAFE, bad, *extra])
    with pytest.raises(ReleaseError) as sent:
        check_tarball_members(path, "sequoiacm-om")
    install = tmp_path / "install"
    install.mkdir()
    with pytest.raises(Failure) as unpacked:
        stage_package(om_ctx(install, path))
    assert unpacked.value.message == str(sent.value)
    assert unpacked.value.step == "extract"
    assert list(install.iterdir()) == []

def test_the_host_unpacks_a_package_the_control_side_accepts(tmp_path: Path) -> None:
    link = member("sequoiacm-om/bin/link", tarfile.SYMTYPE, "../jars/a.jar")
    path = write_tar(tmp_path / "ok.tar.gz", [*SAFE, link])
    check_tarball_members(path, "sequoiacm-om")
    install = tmp_path / "install"
    install.mkdir()
    staged = Path(stage_package(om_ctx(install, path)))
    assert (staged / "bin" / "link").read_bytes() == b"x"

def test_members_of_the_non_service_package_may_lie_anywhere_below_its_root() -> None:
    members = [member("doc/a.txt"), member("driver", tarfile.DIRTYPE)]
    members.append(member("tools/t", tarfile.SYMTYPE, "../doc"))
    assert member_problem(members, "") is None
    assert member_problem([member("tools/t", tarfile.SYMTYPE, "../../etc")], "") == (
        "link 'tools/t' -> '../../etc' leaves the package"
    )
    assert member_problem([member("/etc/x")], "") == "unsafe member '/etc/x' (absolute or '..')"

def test_an_upgrade_unpacks_only_what_it_swaps_in() -> None:
    globs = ["jars/sequoiacm-cloud-servicecenter-*.jar", "bin", "lib/*.so"]
    assert swaps_in("sequoiacm-cloud/jars/sequoiacm-cloud-servicecenter-3.2.2.jar", "sequoiacm-cloud", globs)
    assert swaps_in("./sequoiacm-cloud/bin/scmcloudctl.sh", "sequoiacm-cloud", globs)
    assert swaps_in("sequoiacm-cloud/bin", "sequoiacm-cloud", globs)
    assert swaps_in("sequoiacm-cloud/lib/native.so", "sequoiacm-cloud", globs)
    assert not swaps_in("sequoiacm-cloud/jars/sequoiacm-cloud-gateway-3.2.2.jar", "sequoiacm-cloud", globs)
    assert not swaps_in("sequoiacm-cloud/conf/application.properties", "sequoiacm-cloud", globs)
    assert not swaps_in("sequoiacm-cloud", "sequoiacm-cloud", globs)
    assert not swaps_in("other/bin/x", "sequoiacm-cloud", globs)
    assert swaps_in("bin/x", "", globs)
