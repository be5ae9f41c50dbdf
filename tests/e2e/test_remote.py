"""SSHSession and connect_all against real sshd test hosts."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from scmflow.errors import HostKeyError, RemoteError, RemoteTimeout, ScmflowError
from scmflow.session.base import StreamEnded
from scmflow.session.ssh import SSHSession, connect_all
from scmflow.session.targets import SSHOptions, SSHTarget
from tests.hosts import TestCluster, TestHost

pytestmark = pytest.mark.e2e

NASTY = "a b; touch {m} #$(touch {m})`touch {m}` 'single' \"double\" \\ \n second\tline $HOME * ?"


def _options(cluster: TestCluster, tmp_path: Path, **overrides: object) -> SSHOptions:
    """Options that trust a copy of the cluster's known_hosts and log in with its client key."""
    known = tmp_path / "known_hosts"
    if not known.exists():
        known.write_text(cluster.known_hosts.read_text())
    settings: dict[str, object] = {
        "known_hosts": (known,),
        "key_filenames": (cluster.client_key,),
        "use_agent": False,
        "connect_timeout": 5.0,
    }
    settings.update(overrides)
    return SSHOptions(**settings)  # type: ignore[arg-type]


def _as_admin(cluster: TestCluster, host: TestHost, tmp_path: Path) -> SSHSession:
    """A key login as the install user."""
    return SSHSession.connect(SSHTarget(host.address, user=cluster.install_user), _options(cluster, tmp_path))


def _ops(cluster: TestCluster, host: TestHost) -> SSHTarget:
    return SSHTarget(host.address, user=cluster.ops_user, password=cluster.ops_password)


def _openssh_fingerprint(host: TestHost) -> str:
    """The host key's fingerprint as OpenSSH's own ssh-keygen prints it."""
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(host.host_key_path) + ".pub"],
        capture_output=True, text=True, check=True,
    ).stdout
    return listed.split()[1]


def test_sudo_with_password_runs_as_install_user_and_never_logs_the_password(
    cluster3: TestCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    host = cluster3.hosts[0]
    options = _options(cluster3, tmp_path, key_filenames=(tmp_path / "no-such-key",))
    with SSHSession.connect(_ops(cluster3, host), options) as session:
        result = session.run(
            ["sh", "-c", 'id -un; echo "$HOME"; echo "$WHO"; cat'],
            user="scmadmin", env={"WHO": "install user"}, stdin=b"from stdin\n",
        )
        assert result.stdout.splitlines() == ["scmadmin", "/home/scmadmin", "install user", "from stdin"]
        assert session.run(["id", "-un"]).stdout.strip() == cluster3.ops_user
    messages = [record.getMessage() for record in caplog.records]
    assert any(re.search(r"sudo -S -k -p '\[scmflow-sudo-[0-9a-f]{16}\]' -u scmadmin", m) for m in messages)
    assert all(cluster3.ops_password not in m for m in messages)


def test_password_is_absent_from_the_remote_process_list(cluster3: TestCluster, tmp_path: Path) -> None:
    host = cluster3.hosts[0]
    seconds = f"2.{uuid.uuid4().int % 1000:03d}"
    with SSHSession.connect(_ops(cluster3, host), _options(cluster3, tmp_path)) as session:
        worker = threading.Thread(target=session.run, args=(["sleep", seconds],), kwargs={"user": "scmadmin"})
        worker.start()
        samples = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and worker.is_alive():
            samples.append(host.exec(["ps", "-eo", "user,args"]).stdout)
            time.sleep(0.05)
        worker.join()
    running = [line for sample in samples for line in sample.splitlines() if f"sleep {seconds}" in line]
    assert any(line.startswith("scmadmin") for line in running), "the sudo'd command never showed up"
    # sudo itself shows only while it authenticates (it then execs the command), too briefly
    # to be sampled reliably; the command line it had is checked in the log test above.
    assert all(cluster3.ops_password not in sample for sample in samples)


def test_sudo_refusals_are_explained_without_the_password(cluster3: TestCluster, tmp_path: Path) -> None:
    host = cluster3.hosts[1]
    wrong = SSHTarget(host.address, user=cluster3.ops_user, password="not-the-password-42")
    with SSHSession.connect(wrong, _options(cluster3, tmp_path)) as session:
        with pytest.raises(RemoteError, match="sudo as scmadmin refused: wrong password for scmops") as info:
            session.run(["true"], user="scmadmin")
        assert "not-the-password-42" not in str(info.value)
    no_password = SSHTarget(host.address, user="scmadmin")
    with SSHSession.connect(no_password, _options(cluster3, tmp_path)) as session:
        with pytest.raises(RemoteError, match="needs a password for sudo and none is configured"):
            session.run(["true"], user=cluster3.ops_user)


def test_the_password_goes_only_to_a_sudo_that_asks_for_it(cluster3: TestCluster, tmp_path: Path) -> None:
    host = cluster3.hosts[2]
    rule = Path("/etc/sudoers.d/scmflow-tests-nopasswd")
    with SSHSession.connect(_ops(cluster3, host), _options(cluster3, tmp_path)) as session:
        # The first sudo learns that this user needs a password for scmadmin...
        assert session.run(["id", "-un"], user="scmadmin").stdout == "scmadmin\n"
        # ...then the rule changes under the session: sudo will no longer ask.
        rule.write_text(f"{cluster3.ops_user} ALL=(scmadmin) NOPASSWD: ALL\n")
        rule.chmod(0o440)
        try:
            ran = session.run(["cat"], user="scmadmin", stdin=b"only this\n")
            stream = session.open_stream(["cat"], user="scmadmin")
            stream.send(b"stream input\n")
            line = stream.read_line(10)
            stream.close()
        finally:
            rule.unlink()
    assert ran.stdout == "only this\n"
    assert cluster3.ops_password not in ran.stdout + ran.stderr
    assert line == b"stream input\n"


def test_unknown_host_key_is_refused_with_its_fingerprint(cluster3: TestCluster, tmp_path: Path) -> None:
    host = cluster3.hosts[0]
    known = tmp_path / "known_hosts"
    known.write_text("")
    options = _options(cluster3, tmp_path, known_hosts=(known,))
    with pytest.raises(HostKeyError) as info:
        SSHSession.connect(SSHTarget(host.address), options)
    message = str(info.value)
    assert f"unknown host key for {host.address}: ssh-ed25519 key {_openssh_fingerprint(host)}" in message
    assert f"ssh-keyscan -p 22 {host.address} >> ~/.ssh/known_hosts" in message
    assert "--accept-new-host-keys" in message
    assert known.read_text() == ""


def test_keyscan_advice_works_for_a_non_standard_port(cluster3: TestCluster, tmp_path: Path) -> None:
    host = cluster3.hosts[2]
    known = tmp_path / "known_hosts"
    scanned = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(host.alt_port), host.address],
        capture_output=True, text=True, check=True,
    ).stdout
    known.write_text(scanned)
    assert scanned.startswith(f"[{host.address}]:{host.alt_port} ssh-ed25519 ")
    options = _options(cluster3, tmp_path, known_hosts=(known,))
    with SSHSession.connect(SSHTarget(host.address, port=host.alt_port), options) as session:
        assert session.run(["echo", "ok"]).stdout == "ok\n"
    # the same key filed under port 22 does not vouch for the host on another port, and back
    with pytest.raises(HostKeyError, match="unknown host key"):
        SSHSession.connect(SSHTarget(host.address), options)


def test_changed_host_key_is_always_refused(cluster3: TestCluster, tmp_path: Path) -> None:
    host = cluster3.hosts[1]
    impostor = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    fields = (tmp_path / "impostor.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"{host.address} {fields[0]} {fields[1]}\n")
    for accept in (False, True):
        options = _options(cluster3, tmp_path, known_hosts=(known,), accept_new_host_keys=accept)
        with pytest.raises(HostKeyError, match=f"host key for {re.escape(host.address)} has changed") as info:
            SSHSession.connect(SSHTarget(host.address), options)
        assert _openssh_fingerprint(host) in str(info.value)
        assert f"{known}:1" in str(info.value)
    assert known.read_text() == f"{host.address} {fields[0]} {fields[1]}\n"


def test_accept_new_records_the_key_plain_or_hashed(cluster3: TestCluster, tmp_path: Path) -> None:
    first, second = cluster3.hosts[0], cluster3.hosts[1]
    plain = tmp_path / "plain" / "known_hosts"
    accept = _options(cluster3, tmp_path, known_hosts=(plain,), accept_new_host_keys=True)
    with SSHSession.connect(SSHTarget(first.address), accept) as session:
        assert session.run(["echo", "ok"]).stdout == "ok\n"
    assert plain.read_text() == first.known_hosts_line()
    strict = _options(cluster3, tmp_path, known_hosts=(plain,))
    SSHSession.connect(SSHTarget(first.address), strict).close()

    hashed = tmp_path / "hashed_known_hosts"
    hashed.write_text(
        subprocess.run(["ssh-keyscan", "-H", "-t", "ed25519", first.address],
                       capture_output=True, text=True, check=True).stdout
    )
    accept = _options(cluster3, tmp_path, known_hosts=(hashed,), accept_new_host_keys=True)
    SSHSession.connect(SSHTarget(second.address, port=second.alt_port), accept).close()
    added = hashed.read_text().splitlines()[-1]
    assert added.startswith("|1|") and added.endswith(second.host_public_key)
    found = subprocess.run(
        ["ssh-keygen", "-F", f"[{second.address}]:{second.alt_port}", "-f", str(hashed)],
        capture_output=True, text=True,
    )
    assert found.returncode == 0 and second.host_public_key in found.stdout


def test_command_past_its_timeout_is_a_remote_timeout(cluster3: TestCluster, tmp_path: Path) -> None:
    host = cluster3.hosts[0]
    with _as_admin(cluster3, host, tmp_path) as session:
        started = time.monotonic()
        with pytest.raises(RemoteTimeout) as info:
            session.run(["sleep", "30"], timeout=1)
        assert time.monotonic() - started < 10
        assert str(info.value) == f"[{host.address}] command did not finish within 1 s: sleep 30"
        assert session.run(["echo", "still usable"]).stdout == "still usable\n"


ECHO = 'echo "as $(id -un) with $WHO"; while read -r line; do echo "got $line"; done; echo done >&2; exit 5'


def test_stream_through_sudo_with_password_keeps_the_password_off_its_input(
    cluster3: TestCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    host = cluster3.hosts[0]
    with SSHSession.connect(_ops(cluster3, host), _options(cluster3, tmp_path)) as session:
        stream = session.open_stream(["sh", "-c", ECHO], user="scmadmin", env={"WHO": "a stream"})
        assert stream.read_line(10) == b"as scmadmin with a stream\n"
        stream.send(b"one\n")
        assert stream.read_line(10) == b"got one\n"
        stream.send(b"two\nthree\n")
        assert [stream.read_line(10), stream.read_line(10)] == [b"got two\n", b"got three\n"]
        stream.close()
        stream.close()
        # the session goes on after the stream
        assert session.run(["id", "-un"], user="scmadmin").stdout == "scmadmin\n"
    assert all(cluster3.ops_password not in record.getMessage() for record in caplog.records)


def test_stream_end_timeout_and_refusal(cluster3: TestCluster, tmp_path: Path) -> None:
    host = cluster3.hosts[1]
    with _as_admin(cluster3, host, tmp_path) as session:
        stream = session.open_stream(["sh", "-c", ECHO], env={"WHO": "x"})
        assert stream.read_line(10) == b"as scmadmin with x\n"
        with pytest.raises(RemoteTimeout, match=r"no answer within 0.3 s"):
            stream.read_line(0.3)
        stream.close()
        ended = session.open_stream(["sh", "-c", "echo last; echo gone >&2; exit 5"])
        assert ended.read_line(10) == b"last\n"
        with pytest.raises(StreamEnded) as info:
            ended.read_line(10)
        assert info.value.remote_exit_code == 5 and info.value.stderr == "gone\n"
        ended.close()
    wrong = SSHTarget(host.address, user=cluster3.ops_user, password="not-the-password-42")
    with SSHSession.connect(wrong, _options(cluster3, tmp_path)) as session:
        started = time.monotonic()
        with pytest.raises(RemoteError, match="sudo as scmadmin refused: wrong password") as why:
            session.open_stream(["cat"], user="scmadmin")
        # refused at once, not after sudo waits on the open stdin for another try
        assert time.monotonic() - started < 10
        assert "not-the-password-42" not in str(why.value)


def test_closed_streams_give_their_channel_back(cluster3: TestCluster, tmp_path: Path) -> None:
    host = cluster3.hosts[2]
    options = _options(cluster3, tmp_path, max_channels=2)
    with SSHSession.connect(SSHTarget(host.address, user="scmadmin"), options) as session:
        for number in range(5):
            stream = session.open_stream(["sh", "-c", "read -r x; echo $x"])
            stream.send(f"{number}\n".encode())
            assert stream.read_line(10) == f"{number}\n".encode()
            stream.close()
        kept = session.open_stream(["cat"])
        # one channel is still free for commands while a stream holds the other
        assert session.run(["echo", "beside"], timeout=10).stdout == "beside\n"
        kept.close()


def test_cut_link_is_reported_within_the_documented_bound(cluster3: TestCluster, tmp_path: Path) -> None:
    host = cluster3.hosts[2]
    options = _options(cluster3, tmp_path, keepalive_interval=1.0, keepalive_count_max=2)
    session = SSHSession.connect(SSHTarget(host.address, user="scmadmin"), options)
    cut_after = 0.3
    cutter = threading.Timer(cut_after, host.cut_link)
    try:
        started = time.monotonic()
        cutter.start()
        with pytest.raises(RemoteError, match="host stopped answering"):
            session.run(["sleep", "60"], timeout=120)
        assert time.monotonic() - started < cut_after + options.dead_peer_bound
        with pytest.raises(RemoteError, match="host stopped answering"):
            session.run(["true"])
        with pytest.raises(RemoteError, match="cannot connect to port 22"):
            SSHSession.connect(SSHTarget(host.address, user="scmadmin"), options)
    finally:
        cutter.join()
        host.restore_link()
        session.close()
    with SSHSession.connect(SSHTarget(host.address, user="scmadmin"), options) as again:
        assert again.run(["echo", "back"]).stdout == "back\n"


def test_host_closing_the_connection_is_reported(cluster3: TestCluster, tmp_path: Path) -> None:
    host = cluster3.hosts[1]
    with _as_admin(cluster3, host, tmp_path) as session:
        # The shell's parent is this connection's sshd process: killing it drops the connection.
        # The pause lets sshd read what the client sent last (the end of stdin): the kernel
        # answers a socket closed with unread data with a reset, not a close.
        with pytest.raises(RemoteError, match="connection closed by the host"):
            session.run(["sh", "-c", "sleep 0.5; kill -9 $PPID; sleep 5"])


def test_arguments_reach_the_program_unchanged(cluster3: TestCluster, tmp_path: Path) -> None:
    host = cluster3.hosts[0]
    marker = f"/opt/upgrade/executed-{uuid.uuid4().hex}"
    nasty = NASTY.format(m=marker)
    with (
        SSHSession.connect(SSHTarget(host.address), _options(cluster3, tmp_path)) as root,
        SSHSession.connect(_ops(cluster3, host), _options(cluster3, tmp_path)) as ops,
    ):
        assert root.run(["printf", "%s", nasty]).stdout == nasty
        assert root.run(["printf", "%s|", nasty, "", nasty]).stdout == f"{nasty}||{nasty}|"
        assert ops.run(["printf", "%s", nasty], user="scmadmin").stdout == nasty
        assert ops.run(["printenv", "NASTY"], user="scmadmin", env={"NASTY": nasty}).stdout == nasty + "\n"
    assert host.exec(["test", "-e", marker], check=False).returncode == 1


def _scratch(host: TestHost) -> tuple[str, Path]:
    """A fresh dir the install user owns on the host (inside and outside path); the pack and
    backup bases are root's, so files the install user sends go here."""
    name = f"scratch-{uuid.uuid4().hex}"
    outside = host.opt_dirs["/opt/sequoiacm"] / name
    outside.mkdir()
    shutil.chown(outside, "scmadmin", "scmadmin")
    return f"/opt/sequoiacm/{name}", outside


def test_put_sends_and_verifies(cluster3: TestCluster, tmp_path: Path) -> None:
    host = cluster3.hosts[1]
    inside, outside = _scratch(host)
    local = tmp_path / "package.tar.gz"
    local.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    local.chmod(0o640)
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    seen: list[tuple[int, int]] = []
    try:
        with _as_admin(cluster3, host, tmp_path) as session:
            session.put(
                local, f"{inside}/package.tar.gz", sha256=digest, progress=lambda s, t: seen.append((s, t))
            )
            with pytest.raises(RemoteError, match=f"checksum mismatch for {inside}/bad.tar.gz"):
                session.put(local, f"{inside}/bad.tar.gz", sha256="0" * 64)
            with pytest.raises(RemoteError, match="cannot write /opt/no-such-dir/x"):
                session.put(local, "/opt/no-such-dir/x")
        assert seen[-1] == (local.stat().st_size, local.stat().st_size)
        remote = host.exec(["stat", "-c", "%a %U", f"{inside}/package.tar.gz"]).stdout.split()
        assert remote == ["640", "scmadmin"]
        assert host.exec(["sha256sum", f"{inside}/package.tar.gz"]).stdout.split()[0] == digest
        assert (outside / "package.tar.gz").read_bytes() == local.read_bytes()
        leftovers = host.exec(["ls", "-A", inside]).stdout.split()
        assert leftovers == ["package.tar.gz"]
    finally:
        shutil.rmtree(outside)


def test_one_connection_serves_fifty_commands(cluster3: TestCluster, tmp_path: Path) -> None:
    host = cluster3.hosts[2]
    inside, outside = _scratch(host)
    before = host.accepted_connections()
    try:
        with _as_admin(cluster3, host, tmp_path) as session:
            outputs = [session.run(["echo", str(i)]).stdout for i in range(50)]
            session.put(Path(__file__), f"{inside}/copied.py")
    finally:
        shutil.rmtree(outside)
    assert outputs == [f"{i}\n" for i in range(50)]
    assert host.accepted_connections() - before == 1


def test_connect_all_reaches_every_host(cluster3: TestCluster, tmp_path: Path) -> None:
    targets = [SSHTarget(h.address, user="scmadmin") for h in cluster3.hosts]
    sessions = connect_all(targets, _options(cluster3, tmp_path))
    try:
        for host in cluster3.hosts:
            shown = sessions[host.address].run(["ip", "-o", "-4", "addr", "show"]).stdout
            assert f"inet {host.address}/30" in shown
    finally:
        for session in sessions.values():
            session.close()


def test_connect_all_names_every_failed_host(cluster3: TestCluster, tmp_path: Path) -> None:
    good, refused, stranger = cluster3.hosts
    known = tmp_path / "known_hosts"
    known.write_text(good.known_hosts_line() + refused.known_hosts_line())
    before = good.sshd_log.read_text().count("Closing connection to")
    targets = [
        SSHTarget(good.address, user="scmadmin"),
        SSHTarget(refused.address, port=23, user="scmadmin"),
        SSHTarget(stranger.address, user="scmadmin"),
    ]
    with pytest.raises(ScmflowError) as info:
        connect_all(targets, _options(cluster3, tmp_path, known_hosts=(known,)))
    message = str(info.value)
    assert message.startswith("cannot connect to 2 of 3 hosts: ")
    assert f"[{refused.address}] connection refused on port 23" in message
    assert f"[{stranger.address}] unknown host key for {stranger.address}" in message
    assert good.address not in message
    deadline = time.monotonic() + 5
    while good.sshd_log.read_text().count("Closing connection to") == before:
        assert time.monotonic() < deadline, "the successful connection was left open"
        time.sleep(0.02)


def test_authentication_failure_names_the_user(
    cluster3: TestCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no default identities to fall back on
    host = cluster3.hosts[0]
    options = _options(cluster3, tmp_path, key_filenames=())
    target = SSHTarget(host.address, user=cluster3.ops_user, password="wrong-password-7")
    with pytest.raises(RemoteError) as info:
        SSHSession.connect(target, options)
    assert str(info.value) == (
        f"[{host.address}] authentication failed for user scmops (tried password); "
        "check the key, the password and the user name"
    )
    with SSHSession.connect(_ops(cluster3, host), options) as session:
        assert session.run(["id", "-un"]).stdout == "scmops\n"


def test_operator_home_works_with_default_options(
    cluster3: TestCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = cluster3.home(tmp_path / "operator")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    options = SSHOptions(connect_timeout=5.0)
    assert options.known_hosts[0] == home / ".ssh" / "known_hosts"
    sessions = connect_all([SSHTarget(h.address) for h in cluster3.hosts], options)
    try:
        assert {name: s.run(["id", "-un"]).stdout for name, s in sessions.items()} == {
            h.address: "root\n" for h in cluster3.hosts
        }
    finally:
        for session in sessions.values():
            session.close()
    first = cluster3.hosts[0].address
    with pytest.raises(ScmflowError, match=f"hosts listed more than once: {re.escape(first)}"):
        connect_all([SSHTarget(first)] * 2, options)
