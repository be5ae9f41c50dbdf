"""End-to-end: only status files this control machine's key wrote are used, and never blindly.

A real upgrade on three sshd test hosts writes a signed status file. A copy rewritten by
someone without the key (install user root, every digest and `prev` recomputed, so the
chain is intact) is refused by --rollback and by resume with exit 2 before any SSH
connection, and `status verify` fails on it. The genuine file converted to format
version 1 (no MACs, as an older scmflow wrote it) is refused too, and rolled back with
--trust-status-file --unattended, restoring every host.
"""

from __future__ import annotations

import pytest

from tests.e2e.sandbox_cluster import Scenario
from tests.e2e.test_rollback import (
    bare,  # noqa: F401 (the fixture `small` builds on)
    old_everywhere,
    resume_args,
    rollback_args,
    small,  # noqa: F401 (the fixture)
    upgrade_ok,
)
from tests.forgery import forge

pytestmark = pytest.mark.e2e


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[ERROR]")]


def test_a_rewritten_status_file_touches_no_host_and_an_unsigned_one_only_when_trusted(
    small: Scenario,  # noqa: F811 (the fixture imported above)
) -> None:
    s = small
    before, running = s.digests(), s.running()
    status = upgrade_ok(s)
    upgraded = s.digests()
    forged = s.work / "forged" / status.name
    forge(status, forged, lambda header: header["layout"].update(install_user="root"))
    forged_bytes = forged.read_bytes()
    connections = {h.name: h.accepted_connections() for h in s.cluster.hosts}

    for args in (rollback_args(s, forged, "--unattended"), resume_args(s, forged, "--unattended")):
        done = s.scm(*args)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr
        (line,) = errors(done.stderr)
        assert line.startswith(f"[ERROR] status file {forged} is not authentic: record 0's MAC is not valid")
        assert line.endswith("nothing was done (to use it anyway, check it and pass --trust-status-file)")
    verified = s.scm("status", "verify", str(forged))
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "chain:     intact" in verified.stdout
    assert errors(verified.stderr)[0].startswith(f"[ERROR] {forged} is not authentic: record 0's MAC")
    # trusting it does not let its values through: root cannot be the install user
    done = s.scm(*rollback_args(s, forged, "--unattended", "--trust-status-file"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert errors(done.stderr) == [
        f"[ERROR] {forged} names an unsafe layout.install_user: 'root' cannot be the install user: "
        "the services and their scripts run as it"
    ]

    assert {h.name: h.accepted_connections() for h in s.cluster.hosts} == connections, "no host contacted"
    assert s.digests() == upgraded
    assert forged.read_bytes() == forged_bytes

    # the genuine run, as an older scmflow wrote it: refused, then used when trusted
    unsigned = s.work / "unsigned" / status.name
    forge(status, unsigned, lambda header: None, unsigned=True)
    done = s.scm(*rollback_args(s, unsigned, "--unattended"))
    assert done.returncode == 2
    assert "is not authentic: it is in status format version 1" in errors(done.stderr)[0]
    assert {h.name: h.accepted_connections() for h in s.cluster.hosts} == connections

    done = s.scm(*rollback_args(s, unsigned, "--unattended", "--trust-status-file"))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "--trust-status-file uses it anyway. It names:" in done.stderr
    hosts = [line for line in done.stderr.splitlines() if line.startswith("[WARN ]     host ")]
    assert [line.split()[3] for line in hosts] == [f"{h.address}:22" for h in s.cluster.hosts]
    assert "[WARN ]     install     /opt/sequoiacm, run as scmadmin (directories made by root)" in done.stderr
    assert s.digests() == before
    old_everywhere(s, running)
