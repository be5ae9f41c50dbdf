"""What the agent does as root on a host cannot be steered by what other users planted.

`prepare` makes the run's pack and backup dirs; `restore` writes back what a backup holds.
Both run where the install user (or anyone who can write there) may have left links.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
from pathlib import Path

import pytest

from scmflow.agent.operations import run_op
from scmflow.catalog import load_catalog

CATALOG = load_catalog()
ROOT = os.geteuid() == 0


def prepare(*dirs: dict[str, object]) -> dict[str, object]:
    return run_op("prepare", {"dirs": list(dirs)})


def other_user() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def test_bases_are_made_ours_and_the_run_dir_goes_to_its_owner(tmp_path: Path) -> None:
    run = tmp_path / "backup" / "sequoiacm" / "backup-1"
    owner = other_user().pw_name if ROOT else pwd.getpwuid(os.geteuid()).pw_name
    reply = prepare({"path": str(run), "mode": "0750", "owner": owner, "fresh": True})
    assert reply["ok"], reply
    assert reply["created"] == [str(tmp_path / "backup"), str(tmp_path / "backup" / "sequoiacm"), str(run)]
    for base in (tmp_path / "backup", tmp_path / "backup" / "sequoiacm"):
        st = base.lstat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o755)
    st = run.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pwd.getpwnam(owner).pw_uid, 0o750)


def test_a_planted_link_for_the_next_run_dir_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    base = tmp_path / "backup"
    base.mkdir()
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    (base / "backup-2").symlink_to(secret)
    reply = prepare({"path": str(base / "backup-2"), "mode": "0750", "owner": "nobody", "fresh": True})
    assert not reply["ok"] and "already exists" in str(reply["error"])
    reply = prepare({"path": str(base / "backup-2"), "mode": "0750", "owner": "nobody", "fresh": False})
    assert not reply["ok"] and "symbolic link" in str(reply["error"])
    st = secret.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o700)


def test_a_link_among_the_bases_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "backup").symlink_to(elsewhere)
    reply = prepare({"path": str(tmp_path / "backup" / "sequoiacm" / "backup-1"), "fresh": True})
    assert not reply["ok"] and f"{tmp_path / 'backup'} on " in str(reply["error"])
    assert list(elsewhere.iterdir()) == []


def test_a_base_that_others_may_write_is_refused_unless_sticky(tmp_path: Path) -> None:
    base = tmp_path / "shared"
    base.mkdir()
    base.chmod(0o777)
    reply = prepare({"path": str(base / "backup-1"), "fresh": True})
    assert not reply["ok"] and "writable by other users" in str(reply["error"])
    base.chmod(0o1777)
    assert prepare({"path": str(base / "backup-1"), "fresh": True})["ok"]


def test_relative_or_unnormalised_paths_are_refused() -> None:
    for path in ("opt/backup", "/opt/../etc", "/"):
        reply = prepare({"path": path})
        assert not reply["ok"] and "absolute, normalised" in str(reply["error"])


@pytest.mark.parametrize("planted", ["../../etc/cron.d/x", "/etc/passwd", "conf", "jars/../../x"])
def test_restore_writes_only_what_the_catalog_says_a_backup_holds(tmp_path: Path, planted: str) -> None:
    install = tmp_path / "sequoiacm"
    (install / "sequoiacm-cloud" / "jars").mkdir(parents=True)
    backup = tmp_path / "backup" / "gateway"
    files = backup / "files"
    (files / "jars").mkdir(parents=True)
    (files / "jars" / "sequoiacm-cloud-gateway-3.1.2.jar").write_text("old jar")
    manifest = {"service": "gateway", "version": "3.1.2", "dir": "sequoiacm-cloud",
                "paths": ["jars/sequoiacm-cloud-gateway-3.1.2.jar", planted]}
    (backup / "manifest.json").write_text(json.dumps(manifest))
    (backup / ".complete").write_text(json.dumps({"time": 1}))
    spec = {"install_path": str(install), "service": CATALOG.get("gateway").to_spec(),
            "backup_dir": str(backup), "ports": [], "old_version": "3.1.2"}
    reply = run_op("restore", spec)
    assert not reply["ok"] and "never holds" in str(reply["error"]) and planted in str(reply["error"])
