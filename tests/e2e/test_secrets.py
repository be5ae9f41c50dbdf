"""End-to-end: an upgrade with an SSH password login leaves that password in no artefact.

The operator logs in as the test hosts' `scmops` user, whose sudo needs the password too.
Its HOME holds known_hosts but no key, so password authentication is the only way in.
Looked at: the status file's raw bytes, the log file, stdout and stderr, every other file
the run left on the control machine and on the hosts, and, sampled all through the run,
every process's arguments (`ps -eo args` inside each host) and the environment of every
process living in a host's namespaces (where a password passed on to a remote command
would show).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scmflow.agentpayload import BOOT
from scmflow.journalreader import read_journal
from scmflow.replay import replay
from scmflow.sandbox import NodeSpec, Topology
from tests.e2e.sandbox_cluster import REPO, SCM, Scenario
from tests.hosts import TestCluster, TestHost

pytestmark = pytest.mark.e2e

PASSWORD_ENV = "SCMFLOW_TEST_SSH_PASSWORD"


def secrets_topology() -> Topology:
    """Small: two cloud services sharing a directory, one running node each."""
    return Topology(
        services=("service-center", "gateway"),
        nodes=(NodeSpec("service-center", 8810), NodeSpec("gateway", 8080)),
    )


@pytest.fixture
def scenario(cluster3: TestCluster, releases: dict[str, Path], tmp_path: Path) -> Iterator[Scenario]:
    """Three hosts with 3.1.2 installed; an operator HOME with known_hosts and no key."""
    s = Scenario(cluster=cluster3, releases=releases, work=tmp_path)
    ssh_dir = s.home / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    shutil.copyfile(cluster3.known_hosts, ssh_dir / "known_hosts")
    s.cleanup()
    try:
        s.install_all("3.1.2", secrets_topology())
        yield s
    finally:
        s.cleanup()


@dataclass
class Sampler:
    """Samples process arguments and remote environments until stopped, in a thread."""

    hosts: list[TestHost]
    args: list[str] = field(default_factory=list)
    environments: list[bytes] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    rounds: int = 0

    def run(self) -> None:
        """Sample every host, round after round, until `stop` is set."""
        while not self.stop.is_set():
            for host in self.hosts:
                done = host.exec(["ps", "-eo", "args"], check=False, timeout=30)
                self.args.append(done.stdout)
                self.environments.extend(_environments(host))
            self.rounds += 1

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=60)


def _environments(host: TestHost) -> list[bytes]:
    """The environment of every process in the host's network namespace (sshd's children)."""
    listed = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True).stdout
    out = []
    for pid in listed.split():
        try:
            out.append(Path(f"/proc/{pid}/environ").read_bytes())
        except OSError:
            continue  # it ended between listing and reading
    return out


def run_with_sampling(
    s: Scenario, args: list[str], env: dict[str, str], *, cwd: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], Sampler]:
    """Run scm.py as the operator, from `cwd` (default: s.work), while a Sampler watches every host."""
    full_env = {
        "HOME": str(s.home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
        **env,
    }
    with Sampler(list(s.cluster.hosts)) as sampler:
        done = subprocess.run(
            [sys.executable, str(SCM), *args],
            input="",
            capture_output=True,
            text=True,
            env=full_env,
            cwd=s.work if cwd is None else cwd,
            timeout=600,
        )
    return done, sampler


def files_under(root: Path) -> Iterator[Path]:
    """Every regular file below root."""
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


def files_holding(secret: bytes, roots: list[Path], *, skip: tuple[Path, ...] = ()) -> list[str]:
    """Files below `roots` whose bytes contain `secret`."""
    return [str(p) for root in roots for p in files_under(root) if p not in skip and secret in p.read_bytes()]


def log_path(stdout: str) -> Path:
    """The log file the run announced (`Log file location:PATH`)."""
    found = re.search(r"Log file location:(\S+)", stdout)
    assert found, stdout
    return Path(found.group(1))


def upgrade_and_check_nothing_leaks(s: Scenario, password_cell: str, env: dict[str, str]) -> None:
    """Upgrade with the given Password cell, then look for the password everywhere."""
    cluster = s.cluster
    secret = cluster.ops_password
    assert len(secret) >= 16
    config = s.config(user=cluster.ops_user, password=password_cell)
    accepted_before = {h.name: _password_logins(h) for h in cluster.hosts}

    done, sampler = run_with_sampling(s, s.upgrade_args("3.2.2", "--unattended", "--parallel", "3"), env)

    assert done.returncode == 0, done.stdout + done.stderr
    # the run really logged in with the password, on every host
    assert all(_password_logins(h) > accepted_before[h.name] for h in cluster.hosts)
    status = s.status_files()
    assert len(status) == 1
    assert {r.state for r in replay(read_journal(status[0])).values()} == {"verified"}
    log = log_path(done.stdout)
    for path in (status[0], log):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert log.stat().st_size > 0

    assert secret not in done.stdout and secret not in done.stderr
    assert secret.encode() not in status[0].read_bytes()
    assert secret.encode() not in log.read_bytes()
    # everything else the run wrote on the control machine (the config itself aside)
    holding = files_holding(secret.encode(), [s.work])
    assert holding == ([str(config)] if password_cell == secret else [])
    assert files_holding(secret.encode(), [s.releases["3.2.2"] / "sequoiacm-deploy"]) == []
    # and on the hosts: install, backups, upgrade packs, the run lock
    for host in cluster.hosts:
        roots = [host.opt_dirs[m] for m in ("/opt/sequoiacm", "/opt/backup", "/opt/upgrade")]
        assert files_holding(secret.encode(), roots) == [], host.name
    assert sampler.rounds >= 3, "the process list was sampled too rarely to mean anything"
    leaked_args = [sample for sample in sampler.args if secret in sample]
    assert leaked_args == []
    # the agents' command lines were among those read (ps cuts them at 80 columns)
    assert any(f"python3 -I -c {BOOT.splitlines()[0]}" in sample for sample in sampler.args)
    assert sampler.environments
    assert [e for e in sampler.environments if secret.encode() in e] == []
    print(f"{sampler.rounds} sampling rounds, {len(sampler.environments)} environments read")


def _password_logins(host: TestHost) -> int:
    if not host.sshd_log.exists():
        return 0
    return host.sshd_log.read_text(errors="replace").count("Accepted password for scmops")


def test_password_from_environment_leaks_nowhere(scenario: Scenario) -> None:
    env = {PASSWORD_ENV: scenario.cluster.ops_password}
    upgrade_and_check_nothing_leaks(scenario, f"env:{PASSWORD_ENV}", env)


def test_literal_password_in_config_leaks_nowhere(scenario: Scenario) -> None:
    upgrade_and_check_nothing_leaks(scenario, scenario.cluster.ops_password, {})


def test_rollback_without_config_uses_the_recorded_one_until_it_changes(scenario: Scenario) -> None:
    """The vendor manual's `--rollback --upgrade-status-path FILE --unattended`, no config, no tty."""
    s = scenario
    cluster = s.cluster
    secret = cluster.ops_password
    config = s.config(user=cluster.ops_user, password=secret)
    original = config.read_bytes()
    before, running = s.digests(), s.running()
    args = s.upgrade_args("3.2.2", "--unattended", "--parallel", "3")
    args[args.index(str(config))] = config.name  # relative, as operators type it; cwd is s.work
    done = s.scm(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    (status,) = s.status_files()
    assert read_journal(status).header["config"] == {
        "path": str(config),
        "sha256": hashlib.sha256(original).hexdigest(),
    }
    assert secret.encode() not in status.read_bytes()
    upgraded = s.digests()
    assert upgraded != before
    # from another directory, so only the recorded absolute path can find the config
    elsewhere = s.home
    rollback = [
        "cluster", "--rollback", "--upgrade-status-path", str(status),
        "--status-dir", str(s.status_dir), "--unattended",
    ]

    # a changed config: one line, exit 2, and not even a TCP connection to any host
    config.write_bytes(original + b"# edited after the upgrade\n")
    connections = {h.name: h.accepted_connections() for h in cluster.hosts}
    journal_bytes = status.read_bytes()
    done, _ = run_with_sampling(s, rollback, {}, cwd=elsewhere)
    assert done.returncode == 2, done.stdout + done.stderr
    logins = ", ".join(f"{cluster.ops_user}@{h.address}" for h in cluster.hosts)
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        f"[ERROR] the SSH password of {logins} is not in the status file and cannot be asked "
        f"(--unattended); pass --upgrade-conf FILE (the config recorded in the status file, {config}, "
        "has changed since the run)"
    ]
    assert "Traceback" not in done.stdout + done.stderr
    assert {h.name: h.accepted_connections() for h in cluster.hosts} == connections
    assert s.digests() == upgraded
    assert all(v == "3.2.2" for ports in s.running().values() for v in ports.values())
    assert status.read_bytes() == journal_bytes

    # the very bytes of the run again: the rollback logs in with the recorded config's password
    config.write_bytes(original)
    logins_before = {h.name: _password_logins(h) for h in cluster.hosts}
    done, sampler = run_with_sampling(s, rollback, {}, cwd=elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"[INFO ] The SSH passwords come from the config recorded in the status file, {config}" in (
        done.stdout.splitlines()
    )
    assert all(_password_logins(h) > logins_before[h.name] for h in cluster.hosts)
    assert s.digests() == before
    now = s.running()
    assert {h: set(p) for h, p in now.items()} == {h: set(p) for h, p in running.items()}
    assert all(v == "3.1.2" for ports in now.values() for v in ports.values()), now
    assert {r.state for r in replay(read_journal(status)).values()} == {"rolled_back"}

    # and the password reached no status byte, log, output or command line
    assert secret not in done.stdout and secret not in done.stderr
    assert secret.encode() not in status.read_bytes()
    assert secret.encode() not in log_path(done.stdout).read_bytes()
    assert [sample for sample in sampler.args if secret in sample] == []
