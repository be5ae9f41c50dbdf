"""bench/sampler.py: CPU of a process's threads and of agent processes, read from /proc."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

from bench import sampler
from scmflow import agentpayload

_BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < {seconds}: pass\n"


def test_cpu_of_reads_utime_and_stime_after_a_comm_with_spaces() -> None:
    ticks = sampler._TICK
    line = f"42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 {3 * ticks} {ticks} 0 0 20 0 1 0"
    assert sampler.cpu_of(line) == 4.0


def test_samples_the_threads_of_a_process_and_agents_by_their_command_line() -> None:
    # a mark of this test's own: agents of other runs on this machine do not count
    mark = f"agent-{uuid.uuid4().hex}"
    control = subprocess.Popen([sys.executable, "-c", _BUSY.format(seconds=0.6)])
    # an "agent": python with the mark in its command line; a plain python is not one
    agent = subprocess.Popen([sys.executable, "-c", _BUSY.format(seconds=0.4), mark])
    other = subprocess.Popen([sys.executable, "-c", _BUSY.format(seconds=0.4)])
    try:
        with sampler.sampling(control.pid, interval=0.02, mark=mark.encode()) as seen:
            for proc in (control, agent, other):
                proc.wait(timeout=30)
            time.sleep(0.1)
    finally:
        for proc in (control, agent, other):
            proc.kill()
            proc.wait()
    usage = seen.usage()
    assert usage.threads == 1
    assert 0.4 <= usage.main_thread <= 1.0
    assert usage.other_threads == 0.0
    assert usage.agent_processes == 1
    assert 0.2 <= usage.agents <= 0.8
    assert "host agents" in usage.line()


def test_the_agent_mark_is_in_every_agents_command_line() -> None:
    for argv in (agentpayload.serve_argv(), agentpayload.agent_argv("probe", {})):
        assert any(sampler.AGENT_MARK in word.encode() for word in argv)
