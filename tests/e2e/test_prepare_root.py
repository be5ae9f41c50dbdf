"""`prepare` refuses a base another user owns: giving a directory to that user needs root.

Moved from tests/test_agent_prepare.py so that the unit suite needs no root.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_agent_prepare import other_user, prepare


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_a_base_that_another_user_owns_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "backup"
    base.mkdir()
    os.chown(base, other_user().pw_uid, other_user().pw_gid)
    reply = prepare({"path": str(base / "sequoiacm" / "backup-1"), "owner": "nobody", "fresh": True})
    assert not reply["ok"] and "belongs to nobody, not root" in str(reply["error"])
    assert list(base.iterdir()) == []
