"""Local operations that need root: switching users, process accounting.

Moved from tests/test_remote_local.py and tests/test_bench_acct.py so that the unit suite
needs no root.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench import acct
from scmflow.session.local import LocalSession


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users locally needs root")
def test_other_user_runs_through_runuser_when_root() -> None:
    result = LocalSession().run(["sh", "-c", 'id -un; echo "$X"'], user="nobody", env={"X": "kept"})
    assert result.stdout.split() == ["nobody", "kept"]


def test_stream_as_another_user_runs_through_runuser_when_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    stream = LocalSession().open_stream(["sh", "-c", "read -r x; id -un"], user="nobody")
    stream.send(b"go\n")
    assert stream.read_line(10) == b"nobody\n"
    stream.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="acct(2) needs root")
def test_accounting_records_a_process_that_ends_in_the_block(tmp_path: Path) -> None:
    with acct.accounting(tmp_path / "acct") as recorder:
        subprocess.run(["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"], check=True)
    names = {c.name: c for c in recorder.profile.commands}
    assert names["sh"].processes >= 1
    assert names["sh"].cpu_seconds > 0
    # Accounting is machine-wide, so other processes (other test workers) may be in the
    # profile too; that the caller's own record is left out is tested in test_bench_acct.
    assert not (tmp_path / "acct").exists()
