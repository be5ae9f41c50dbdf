"""scmflow/agent/procs.py: finding a process by its command among every process of the host."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scmflow.agent import procs


@pytest.fixture
def sleeper() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A process with a command line no other process has."""
    tag = f"scmflow-test-{uuid.uuid4().hex}"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", tag])
    try:
        # until it has exec'd, the child shows this process's command line
        deadline = time.monotonic() + 10
        while tag.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        yield proc, tag
    finally:
        proc.kill()
        proc.wait()


def test_finds_the_process_however_its_command_is_split_into_words(
    sleeper: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, tag = sleeper
    assert procs.process_running([sys.executable, "-c", "import time; time.sleep(60)", tag]) == proc.pid
    # the crontab's command is split by the shell: the words are what counts, not the argv
    assert procs.process_running([f"{sys.executable} -c import", "time;", "time.sleep(60)", tag]) == proc.pid


def test_a_longer_or_another_command_is_not_found(sleeper: tuple[subprocess.Popen[bytes], str]) -> None:
    _, tag = sleeper
    assert procs.process_running([sys.executable, "-c", "import time; time.sleep(60)", tag, "more"]) is None
    assert procs.process_running([sys.executable, "-c", "import time; time.sleep(6)", tag]) is None
    assert procs.process_running(None) is None


def test_an_ended_process_is_not_running(sleeper: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, tag = sleeper
    proc.kill()
    proc.wait()
    assert procs.process_running([sys.executable, "-c", "import time; time.sleep(60)", tag]) is None
    assert not procs.pid_alive(proc.pid)


def test_the_shell_that_launched_it_with_nohup_is_not_taken_for_it() -> None:
    tag = f"scmflow-test-{uuid.uuid4().hex}"
    command = [sys.executable, "-c", "import time; time.sleep(60)", tag]
    shell = subprocess.Popen(["sh", "-c", f"nohup {shlex.join(command)} >/dev/null 2>&1; true"])
    found = None
    try:
        deadline = time.monotonic() + 10
        while found is None and time.monotonic() < deadline:
            found = procs.process_running(command)
            time.sleep(0.01)
        assert found is not None and found != shell.pid
    finally:
        if found is not None:
            os.kill(found, signal.SIGKILL)
        shell.wait()


def test_own_mount_namespace_is_the_same() -> None:
    own = procs.mount_namespace("self")
    assert own is not None
    assert procs.same_mount_namespace(os.getpid(), own)
