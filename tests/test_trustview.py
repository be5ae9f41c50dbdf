"""What an auditor is shown before trusting a status file."""

from __future__ import annotations

from scmflow.trustview import trusted_values
from tests.statusscenarios import header


def test_trusted_values_name_every_host_user_and_path() -> None:
    layout = {"install_path": "/opt/sequoiacm", "install_user": "scmadmin", "admin_user": "root",
              "upgrade_dir": "/opt/upgrade/sequoiacm/upgrade-s",
              "backup_dir": "/opt/backup/sequoiacm/backup-s"}
    lines = trusted_values({**header(), "layout": layout})
    assert lines == [
        "host        scmServer-a:22 as root, JAVA_HOME /opt/jdk",
        "host        scmServer-b:2222 as root, JAVA_HOME (from /etc/profile)",
        "install     /opt/sequoiacm, run as scmadmin (directories made by root)",
        "upgrade dir /opt/upgrade/sequoiacm/upgrade-s",
        "backup dir  /opt/backup/sequoiacm/backup-s",
        "release     3.2.2 from None",
        "config      none recorded",
    ]
