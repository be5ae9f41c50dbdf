"""~/.ssh/config, ProxyJump through a bastion and ssh-agent keys, on real sshd test hosts.

Two test hosts: the bastion (host1) and the target (host2). A veth link joins the two
namespaces directly; the target's address on it (10.252.N.2) is reachable from the
bastion only: the control machine routes that subnet to `unreachable`, so nothing for it
leaves this machine and a direct connection fails at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scmflow.errors import HostKeyError, RemoteError, RemoteTimeout
from scmflow.sandbox import NodeSpec, Topology
from scmflow.session.ssh import SSHSession, connect_all
from scmflow.session.targets import SSHOptions, SSHTarget
from scmflow.sshconfig import load_client_config, resolve_target
from tests.e2e.conftest import ClusterFactory
from tests.e2e.sandbox_cluster import Scenario
from tests.hosts import TestCluster, TestHost

pytestmark = pytest.mark.e2e


@dataclass
class Net:
    """The bastion, the target behind it, and the addresses of the link between them."""

    cluster: TestCluster
    bastion: TestHost
    target: TestHost
    inner: str  # the target's address on the bastion-only link
    bastion_inner: str  # the bastion's address on that link


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def net(host_cluster_factory: ClusterFactory) -> Iterator[Net]:
    """Two hosts; host2 reachable at 10.252.N.2 from host1 only."""
    cluster = host_cluster_factory(2)
    bastion, target = cluster.hosts
    slot = bastion.slot
    near, far = f"scmj{slot}a", f"scmj{slot}b"
    subnet = f"10.252.{slot}.0/30"
    _ip("route", "replace", "unreachable", subnet)
    try:
        _ip("link", "add", near, "type", "veth", "peer", "name", far)
        _ip("link", "set", near, "netns", bastion.netns)
        _ip("link", "set", far, "netns", target.netns)
        _ip("-n", bastion.netns, "addr", "add", f"10.252.{slot}.1/30", "dev", near)
        _ip("-n", target.netns, "addr", "add", f"10.252.{slot}.2/30", "dev", far)
        _ip("-n", bastion.netns, "link", "set", near, "up")
        _ip("-n", target.netns, "link", "set", far, "up")
        yield Net(cluster, bastion, target, f"10.252.{slot}.2", f"10.252.{slot}.1")
    finally:
        for where in ([], ["-n", bastion.netns]):
            subprocess.run(["ip", *where, "link", "del", near], capture_output=True)
        subprocess.run(["ip", "route", "del", "unreachable", subnet], capture_output=True)


@pytest.fixture
def home(net: Net, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh operator HOME: the client key, known_hosts for every host and address, no agent."""
    home = net.cluster.home(tmp_path / "home")
    with (home / ".ssh" / "known_hosts").open("a") as known:
        known.write(f"{net.inner} {net.target.host_public_key}\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def _write_config(home: Path, text: str) -> None:
    (home / ".ssh" / "config").write_text(text)


def _jump_config(net: Net, extra: str = "") -> str:
    return (
        f"Host scm-target\n  HostName {net.inner}\n  ProxyJump jump\n{extra}"
        f"Host jump\n  HostName {net.bastion.address}\n  User scmadmin\n"
    )


def _logins(host: TestHost, user: str, source: str) -> int:
    text = host.sshd_log.read_text(errors="replace")
    return text.count(f"Accepted publickey for {user} from {source} ")


def _established_from(host: TestHost, peer: str) -> list[str]:
    listed = host.exec(["ss", "-tnH", "state", "established"]).stdout
    return [line for line in listed.splitlines() if f" {peer}:" in line]


def _strict() -> SSHOptions:
    return SSHOptions(connect_timeout=5.0)


def test_proxy_jump_reaches_a_host_only_the_bastion_can_reach(net: Net, home: Path) -> None:
    control = f"10.251.{net.bastion.slot}.1"
    with pytest.raises(RemoteError, match="No route to host"):
        SSHSession.connect(SSHTarget(net.inner), _strict())
    # a second target behind the same bastion: the bastion's own sshd, seen from inside
    with (home / ".ssh" / "known_hosts").open("a") as known:
        known.write(f"127.0.0.1 {net.bastion.host_public_key}\n")
    _write_config(home, _jump_config(net) + "Host bastion-self\n  HostName 127.0.0.1\n  ProxyJump jump\n")
    config = load_client_config()
    targets = [resolve_target(config, name, user="root") for name in ("scm-target", "bastion-self")]
    bastion_logins = _logins(net.bastion, "scmadmin", control)

    sessions = connect_all(targets, _strict())
    try:
        session = sessions["scm-target"]
        assert session.host == "scm-target"
        seen = session.run(["sh", "-c", 'echo "$SSH_CONNECTION"; id -un']).stdout.split()
        assert seen[0] == net.bastion_inner and seen[2:] == [net.inner, "22", "root"]
        assert sessions["bastion-self"].run(["hostname", "-I"]).stdout.split()[0] == net.bastion.address
        # files travel through the tunnel too, checksum verified on the target
        payload = home / "payload.bin"
        payload.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
        digest = hashlib.sha256(payload.read_bytes()).hexdigest()
        session.put(payload, "/opt/upgrade/payload.bin", sha256=digest)
        assert (net.target.opt_dirs["/opt/upgrade"] / "payload.bin").read_bytes() == payload.read_bytes()
        assert _logins(net.target, "root", net.bastion_inner) >= 1
        # both targets share one login to the bastion, with ssh_config's User for the hop
        assert _logins(net.bastion, "scmadmin", control) == bastion_logins + 1
        assert len(_established_from(net.bastion, control)) == 1
    finally:
        for session in sessions.values():
            session.close()
        (net.target.opt_dirs["/opt/upgrade"] / "payload.bin").unlink(missing_ok=True)
    # the bastion connection closes with the last session through it
    deadline = time.monotonic() + 5
    while _established_from(net.bastion, control) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _established_from(net.bastion, control) == []


def test_hostname_port_user_and_identity_file_come_from_ssh_config(net: Net, home: Path) -> None:
    host = net.bastion
    keys = home / "keys"
    keys.mkdir()
    shutil.move(home / ".ssh" / "id_ed25519", keys / "scm_key")
    (home / ".ssh" / "id_ed25519.pub").unlink()
    known = home / ".ssh" / "known_hosts"
    known.write_text(host.known_hosts_line(port=host.alt_port) + host.known_hosts_line())
    _write_config(
        home,
        f"Host db-alias\n  HostName {host.address}\n  Port {host.alt_port}\n  User scmadmin\n"
        "  IdentityFile ~/keys/scm_key\n  IdentitiesOnly yes\n"
        f"Host keyless\n  HostName {host.address}\n",
    )
    config = load_client_config()
    with SSHSession.connect(resolve_target(config, "db-alias"), _strict()) as session:
        seen = session.run(["sh", "-c", 'echo "$SSH_CONNECTION"; id -un']).stdout.split()
        assert seen[2:] == [host.address, str(host.alt_port), "scmadmin"]
    # upgrade.cfg's SshPort and User win over ssh_config's
    with SSHSession.connect(resolve_target(config, "db-alias", port=22, user="root"), _strict()) as session:
        seen = session.run(["sh", "-c", 'echo "$SSH_CONNECTION"; id -un']).stdout.split()
        assert seen[2:] == [host.address, "22", "root"]
    # the key came from IdentityFile: a host without one finds no key in this HOME
    with pytest.raises(RemoteError, match="authentication failed for user root .tried no method"):
        SSHSession.connect(resolve_target(config, "keyless", user="root"), _strict())


def test_host_keys_are_checked_under_the_name_openssh_records(net: Net, home: Path) -> None:
    host = net.bastion
    known = home / ".ssh" / "known_hosts"
    # filed under the alias the operator typed, a key vouches for nothing: OpenSSH files HostName
    known.write_text(f"[db-alias]:{host.alt_port} {host.host_public_key}\ndb-alias {host.host_public_key}\n")
    _write_config(home, f"Host db-alias\n  HostName {host.address}\n  Port {host.alt_port}\n")
    config = load_client_config()
    with pytest.raises(HostKeyError) as info:
        SSHSession.connect(resolve_target(config, "db-alias", user="root"), _strict())
    assert str(info.value).startswith(f"[db-alias] unknown host key for [{host.address}]:{host.alt_port}: ")
    assert f"`ssh-keyscan -p {host.alt_port} {host.address} >> ~/.ssh/known_hosts`" in str(info.value)

    # behind a bastion, the advice is to let ssh (same config, same route) record the key
    known.write_text(net.cluster.known_hosts.read_text())
    _write_config(home, _jump_config(net))
    target = resolve_target(load_client_config(), "scm-target", user="root")
    with pytest.raises(HostKeyError) as info:
        SSHSession.connect(target, _strict())
    assert str(info.value).startswith(f"[scm-target] unknown host key for {net.inner}: ")
    assert "run `ssh -p 22 scm-target` once and accept the key" in str(info.value)


def test_keys_openssh_records_are_the_keys_we_check(net: Net, home: Path) -> None:
    """Let OpenSSH's own ssh accept-new each key, then connect strictly with what it wrote."""
    known = home / "openssh_known_hosts"
    key = net.cluster.client_key
    config_file = home / "openssh_config"
    # absolute paths: OpenSSH expands ~ from the password database, not from $HOME
    config_file.write_text(
        _jump_config(net)
        + f"Host alt\n  HostName {net.bastion.address}\n  Port {net.bastion.alt_port}\n"
        + f"Host aliased\n  HostName {net.target.address}\n  HostKeyAlias scm-target-key\n"
        + f"Host *\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  BatchMode yes\n"
        + f"  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n"
        + "  StrictHostKeyChecking accept-new\n"
    )
    names = ("scm-target", "alt", "aliased")
    for name in names:
        done = subprocess.run(
            ["ssh", "-F", str(config_file), name, "true"], capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
    recorded = known.read_text()
    # the bastion and the target under their HostNames, the alias as is; `alt` (port 2222) was
    # vouched for by the bastion's bare-address line, so OpenSSH recorded nothing for it
    assert sorted(line.split()[0] for line in recorded.splitlines()) == sorted(
        [net.bastion.address, net.inner, "scm-target-key"]
    )
    config = load_client_config([config_file])
    options = SSHOptions(known_hosts=(known,), connect_timeout=5.0)
    for name in names:
        with SSHSession.connect(resolve_target(config, name), options) as session:
            assert session.run(["id", "-un"]).stdout == "root\n"
    assert known.read_text() == recorded


def test_a_target_that_goes_silent_behind_the_bastion_is_dropped(net: Net, home: Path) -> None:
    _write_config(home, _jump_config(net))
    target = resolve_target(load_client_config(), "scm-target", user="root")
    options = SSHOptions(connect_timeout=5.0, keepalive_interval=1.0, keepalive_count_max=2)
    near = f"scmj{net.bastion.slot}a"
    session = SSHSession.connect(target, options)
    cut = threading.Timer(0.5, lambda: _ip("-n", net.bastion.netns, "link", "set", near, "down"))
    try:
        cut.start()
        # the bastion's own link stays up: only the probes through the tunnel can tell
        with pytest.raises(RemoteError, match=r"\[scm-target\] host stopped answering") as info:
            session.run(["sleep", "60"], timeout=120)
        assert not isinstance(info.value, RemoteTimeout)
    finally:
        cut.join()
        session.close()
        _ip("-n", net.bastion.netns, "link", "set", near, "up")
    with SSHSession.connect(target, options) as again:
        assert again.run(["echo", "back"]).stdout == "back\n"


def _start_agent(sock: Path) -> subprocess.Popen[bytes]:
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if agent.poll() is not None or time.monotonic() > deadline:
            agent.kill()
            raise RuntimeError("ssh-agent did not start")
        time.sleep(0.02)
    return agent


def test_agent_keys_log_in_through_the_bastion(
    net: Net, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (home / ".ssh" / "id_ed25519").unlink()
    (home / ".ssh" / "id_ed25519.pub").unlink()
    # the same key, passphrase-protected: unusable from the file, usable from the agent
    locked = home / ".ssh" / "locked"
    shutil.copyfile(net.cluster.client_key, locked)
    locked.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-N", "passphrase-9", "-f", str(locked)], check=True)
    shutil.copyfile(net.cluster.client_key.with_suffix(".pub"), f"{locked}.pub")
    stranger = home / ".ssh" / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    _write_config(
        home,
        _jump_config(net)
        + f"Host only-locked\n  HostName {net.bastion.address}\n  IdentityFile ~/.ssh/locked\n"
        + "  IdentitiesOnly yes\n"
        + f"Host only-stranger\n  HostName {net.bastion.address}\n  IdentityFile ~/.ssh/stranger\n"
        + "  IdentitiesOnly yes\n",
    )
    config = load_client_config()
    target = resolve_target(config, "scm-target", user="root")
    with pytest.raises(RemoteError, match="through bastion jump: .*authentication failed for user scmadmin"):
        SSHSession.connect(target, _strict())

    sock = tmp_path / "agent.sock"
    agent = _start_agent(sock)
    try:
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        added = subprocess.run(["ssh-add", "-q", str(net.cluster.client_key)], env=env, capture_output=True)
        assert added.returncode == 0, added.stderr
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        with SSHSession.connect(target, _strict()) as session:
            assert session.run(["id", "-un"]).stdout == "root\n"
        # IdentitiesOnly: the agent's copy of a listed (locked) key is used, an unlisted one is not
        with SSHSession.connect(resolve_target(config, "only-locked", user="root"), _strict()) as session:
            assert session.run(["id", "-un"]).stdout == "root\n"
        with pytest.raises(RemoteError, match="authentication failed for user root"):
            SSHSession.connect(resolve_target(config, "only-stranger", user="root"), _strict())
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def test_cli_upgrades_a_host_behind_the_bastion_by_its_alias(
    net: Net, home: Path, releases: dict[str, Path], tmp_path: Path
) -> None:
    scenario = Scenario(cluster=net.cluster, releases=releases, work=tmp_path)
    assert scenario.home == home
    _write_config(home, _jump_config(net))
    (tmp_path / "upgrade.cfg").write_text(
        "[installconfig]\nInstallPath, InstallUser\n/opt, scmadmin\n\n"
        "[host]\nHostName, SshPort, User, Password, JavaHome\nscm-target, , root, , /opt/java\n\n"
        "[config]\nupgradePackPath=/opt/upgrade/sequoiacm\nbackupPath=/opt/backup/sequoiacm\n"
    )
    scenario.cleanup()
    try:
        topology = Topology(services=("config-server",), nodes=(NodeSpec("config-server", 8840),))
        scenario.install(net.target, "3.1.2", topology)
        done = scenario.scm(*scenario.upgrade_args("3.2.2", "--unattended"), timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "[INFO ] [scm-target]:CONFIG_SERVER:3.1.2 to 3.2.2" in done.stdout
        assert net.inner not in done.stdout + done.stderr  # the operator's name is the one shown
        assert scenario.version_on(net.target, "sequoiacm-config/jars/sequoiacm-config-server-*.jar") == [
            "sequoiacm-config-server-3.2.2.jar"
        ]
        assert scenario.running()[net.target.name] == {8840: "3.2.2"}
        assert len(scenario.status_files()) == 1
        assert _logins(net.target, "root", net.bastion_inner) >= 1
    finally:
        scenario.cleanup()
