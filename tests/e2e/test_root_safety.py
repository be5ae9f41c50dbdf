"""Root's work on a host cannot be turned by what the install user planted (real test hosts).

The install user owns the install tree and may own an old backup base. There it can plant
`backup-<next stamp>` links to a root-only directory; root must never make such a
directory the install user's. Judged from the host itself: the target keeps its owner and
mode, and the install is unchanged.
"""

from __future__ import annotations

import datetime
import os
import stat

import pytest

from scmflow.upgrade import STAMP_FORMAT
from tests.e2e.sandbox_cluster import Scenario
from tests.hosts import INSTALL_USER

pytestmark = pytest.mark.e2e

OLD, NEW = "3.1.2", "3.2.2"
# What the tool will be asked to make next: a stamp for each second of the next two minutes.
PLANTED = 120


@pytest.fixture
def scenario(standard_scenario: Scenario) -> Scenario:
    return standard_scenario


def test_links_planted_by_the_install_user_in_the_backup_base_are_refused(scenario: Scenario) -> None:
    host = scenario.cluster.hosts[0]
    secret = host.opt_dirs["/opt/backup"] / "root-only"
    secret.mkdir(mode=0o700)
    # An old backup base the install user owns (as an earlier tool left it), full of links.
    base = host.opt_dirs["/opt/backup"] / "sequoiacm"
    base.mkdir(mode=0o755)
    os.chown(base, *_ids(INSTALL_USER))
    now = datetime.datetime.now()
    names = [(now + datetime.timedelta(seconds=i)).strftime(STAMP_FORMAT) for i in range(PLANTED)]
    host.exec(["sh", "-c", 'for n; do ln -s /opt/backup/root-only "/opt/backup/sequoiacm/backup-$n"; done',
               "sh", *names], user=INSTALL_USER)
    digests, running = scenario.digests(), scenario.running()

    done = scenario.scm(*scenario.upgrade_args(NEW, "--unattended"))

    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("[ERROR]")]
    assert len(errors) == 1, done.stderr
    assert "/opt/backup/sequoiacm" in errors[0] and "not root" in errors[0], errors[0]
    assert "Traceback" not in done.stdout + done.stderr
    st = secret.lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o700)
    assert scenario.digests() == digests
    assert scenario.running() == running


def test_a_base_made_by_the_tool_is_roots_and_the_run_dirs_belong_to_their_users(scenario: Scenario) -> None:
    done = scenario.scm(*scenario.upgrade_args(NEW, "--unattended"))
    assert done.returncode == 0, done.stdout + done.stderr
    for host in scenario.cluster.hosts:
        for mount, owner in (("/opt/backup", INSTALL_USER), ("/opt/upgrade", "root")):
            base = host.opt_dirs[mount] / "sequoiacm"
            st = base.lstat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755), base
            (run,) = [p for p in base.iterdir() if p.name.startswith(("backup-", "upgrade-"))]
            assert run.lstat().st_uid == _ids(owner)[0], run


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid
