"""LocalSession, and the parts of remote.py that need no network (host keys, targets, redaction)."""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import socket
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from scmflow.errors import HostKeyError, RemoteError, RemoteTimeout
from scmflow.session import local as remote
from scmflow.session.base import StreamEnded
from scmflow.session.hostkeys import check_host_key, find_known_keys, fingerprint, record_host_key
from scmflow.session.local import LocalSession
from scmflow.session.ssh import SSHSession
from scmflow.session.targets import SSHOptions, SSHTarget, known_host_name

ME = pwd.getpwuid(os.geteuid()).pw_name
NASTY = "a b; touch {m} #$(touch {m})`touch {m}` 'single' \"double\" \\ \n second\tline $HOME *"


# --------------------------------------------------------------------------- LocalSession


def test_run_returns_output_exit_code_and_stdin() -> None:
    session = LocalSession()
    result = session.run(["sh", "-c", 'cat; echo "$GREETING" >&2; exit 3'], env={"GREETING": "hi"},
                         stdin=b"piped\n", check=False)
    assert (result.host, result.argv[:2], result.exit_code) == ("localhost", ("sh", "-c"), 3)
    assert (result.stdout, result.stderr) == ("piped\n", "hi\n")
    assert result.duration >= 0


def test_failed_command_raises_with_exit_code_and_stderr_tail() -> None:
    with pytest.raises(RemoteError) as info:
        LocalSession(host="demo").run(["sh", "-c", "echo one >&2; echo two >&2; exit 4"])
    error = info.value
    assert error.host == "demo" and error.remote_exit_code == 4
    assert str(error) == (
        "[demo] command failed with exit code 4: sh -c 'echo one >&2; echo two >&2; exit 4' (one | two)"
    )


def test_missing_program_is_a_remote_error() -> None:
    with pytest.raises(RemoteError, match="command not found: /no/such/program") as info:
        LocalSession().run(["/no/such/program"])
    assert info.value.remote_exit_code == 127


def test_arguments_are_passed_unchanged(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    nasty = NASTY.format(m=marker)
    session = LocalSession()
    assert session.run(["printf", "%s", nasty]).stdout == nasty
    assert session.run(["printenv", "NASTY"], env={"NASTY": nasty}).stdout == nasty + "\n"
    assert not marker.exists()


def test_timeout_kills_the_command_and_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(RemoteTimeout, match=r"command did not finish within 0.5 s: sh -c"):
        LocalSession().run(["sh", "-c", f"sleep 30 & echo $! > {pid_file}; wait"], timeout=0.5)
    assert time.monotonic() - started < 10
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and "Z" not in _proc_state(child):
        assert time.monotonic() < deadline, "the command's child survived the timeout"
        time.sleep(0.02)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (FileNotFoundError, IndexError):
        return "Z"


def test_current_user_and_install_user_alias_run_directly() -> None:
    session = LocalSession(install_user="scmadmin-demo")
    assert session.run(["id", "-un"], user=ME).stdout.strip() == ME
    assert session.run(["id", "-un"], user="scmadmin-demo").stdout.strip() == ME


def test_other_user_without_root_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    session = LocalSession()
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    with pytest.raises(RemoteError, match="cannot run commands as nobody: only root can switch users"):
        session.run(["true"], user="nobody")


def test_put_copies_verifies_and_reports_progress(tmp_path: Path) -> None:
    local = tmp_path / "pkg.tar.gz"
    local.write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    local.chmod(0o640)
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    seen: list[tuple[int, int]] = []
    session = LocalSession()
    target = tmp_path / "remote" / "pkg.tar.gz"
    target.parent.mkdir()
    session.put(local, str(target), sha256=digest, progress=lambda s, t: seen.append((s, t)))
    assert target.read_bytes() == local.read_bytes()
    assert target.stat().st_mode & 0o777 == 0o640
    assert seen[0] == (0, local.stat().st_size) and seen[-1] == (local.stat().st_size,) * 2
    with pytest.raises(RemoteError, match="checksum mismatch for .*bad.tar.gz: expected sha256 0+, got "):
        session.put(local, str(target.parent / "bad.tar.gz"), sha256="0" * 64)
    assert sorted(p.name for p in target.parent.iterdir()) == ["pkg.tar.gz"]
    with pytest.raises(RemoteError, match="cannot copy"):
        session.put(local, str(tmp_path / "missing-dir" / "x"))


def test_command_lines_are_logged_with_secrets_redacted(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("scmflow.test.local")
    caplog.set_level(logging.DEBUG, logger=log.name)
    LocalSession(log=log).run(["printenv", "DB_PASSWORD"], env={"DB_PASSWORD": "hunter2-secret"})
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "$ env DB_PASSWORD=****** printenv DB_PASSWORD -> exit 0" in text
    assert "stdout: ******" in text
    assert "hunter2-secret" not in text


def test_stream_answers_line_by_line_and_reports_its_end() -> None:
    session = LocalSession()
    script = 'while read -r line; do echo "got $line"; done; echo bye >&2; exit 4'
    stream = session.open_stream(["sh", "-c", script])
    stream.send(b"one\ntwo\n")
    assert stream.read_line(10) == b"got one\n"
    assert stream.read_line(10) == b"got two\n"
    stream.send(b"three\n")
    assert stream.read_line(10) == b"got three\n"
    stream.close()
    session.close()


def test_stream_end_carries_exit_code_and_stderr() -> None:
    stream = LocalSession().open_stream(["sh", "-c", "echo partial; echo oops >&2; exit 3"])
    assert stream.read_line(10) == b"partial\n"
    with pytest.raises(StreamEnded) as ended:
        stream.read_line(10)
    assert ended.value.remote_exit_code == 3 and ended.value.stderr == "oops\n"
    stream.close()


def test_stream_read_past_its_timeout_and_close_of_a_busy_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # how long close() lets a busy command go on before killing it (5 s in use)
    monkeypatch.setattr(remote, "_EXIT_WAIT", 0.5)
    session = LocalSession()
    child = tmp_path / "child"
    stream = session.open_stream(["sh", "-c", f"sleep 300 & echo $! > {child}; wait"])
    started = time.monotonic()
    with pytest.raises(RemoteTimeout, match="no answer within 0.3 s"):
        stream.read_line(0.3)
    assert time.monotonic() - started < 5
    # closing the session ends the stream; a command that ignores its stdin is killed
    session.close()
    assert stream.closed
    stat_file = Path(f"/proc/{int(child.read_text())}/stat")

    def gone() -> bool:
        # gone, or a zombie left for init to reap (SIGKILL takes effect a moment after kill())
        try:
            return stat_file.read_text().rpartition(")")[2].split()[0] == "Z"
        except OSError:
            return True

    deadline = time.monotonic() + 5
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gone()


def test_stream_of_a_missing_program_is_a_remote_error() -> None:
    with pytest.raises(RemoteError, match="command not found: no-such-program-x"):
        LocalSession().open_stream(["no-such-program-x"])


# --------------------------------------------------------------------------- targets and options


def test_target_repr_hides_the_password() -> None:
    target = SSHTarget("db1", port=2222, user="ops", password="s3cret!")
    assert "s3cret" not in repr(target) and "s3cret" not in str(target)
    assert repr(target) == "SSHTarget(host='db1', port=2222, user='ops', password='******')"
    assert "password=None" in repr(SSHTarget("db1"))


def test_default_options_follow_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    options = SSHOptions()
    assert options.known_hosts == (tmp_path / ".ssh" / "known_hosts", Path("/etc/ssh/ssh_known_hosts"))
    assert (options.keepalive_interval, options.keepalive_count_max, options.connect_timeout) == (5, 3, 15)
    assert options.dead_peer_bound == 22.0


def test_unresolvable_host_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # no DNS traffic from tests: the resolver's answer is stood in for
    def no_such_name(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    with pytest.raises(RemoteError) as info:
        SSHSession.connect(SSHTarget("scm-host-7.example"), SSHOptions(known_hosts=()))
    assert str(info.value) == "[scm-host-7.example] cannot resolve host name 'scm-host-7.example': " \
                              "Name or service not known"


def test_refused_port_is_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RemoteError, match=rf"\[127.0.0.1\] connection refused on port {port} "):
        SSHSession.connect(SSHTarget("127.0.0.1", port=port), SSHOptions(known_hosts=()))


# --------------------------------------------------------------------------- host keys


@pytest.fixture
def host_key(tmp_path: Path) -> tuple[paramiko.PKey, Path]:
    path = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return paramiko.PKey.from_path(path), path


def test_fingerprint_matches_ssh_keygen(host_key: tuple[paramiko.PKey, Path]) -> None:
    key, path = host_key
    listed = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", f"{path}.pub"],
                            capture_output=True, text=True, check=True).stdout
    assert fingerprint(key) == listed.split()[1]


def test_known_host_names_follow_openssh() -> None:
    assert known_host_name("10.0.0.5", 22) == "10.0.0.5"
    assert known_host_name("scm1", 2222) == "[scm1]:2222"


def test_known_hosts_matching(host_key: tuple[paramiko.PKey, Path], tmp_path: Path) -> None:
    key, _ = host_key
    blob = f"{key.get_name()} {key.get_base64()}"
    known = tmp_path / "known_hosts"
    known.write_text(
        "# comment\n\n"
        "garbage line\n"
        f"unused ssh-ed25519 not-base64!!\n"
        f"scm1,10.0.0.5 {blob}\n"
        f"[scm2]:2222 {blob}\n"
        f"{paramiko.HostKeys.hash_host('scm3')} {blob}\n"
        f"*.site-b,!bad.site-b {blob}\n"
        f"@cert-authority *.site-c {blob}\n"
        f"sk-host ssh-dss AAAAB3NzaC1kc3MAAACBAP\n"
    )
    def lines(name: str) -> list[int]:
        return [entry.line for entry in find_known_keys([known, tmp_path / "absent"], name)]

    assert lines("scm1") == [5] and lines("10.0.0.5") == [5]
    assert lines("[scm2]:2222") == [6] and lines("scm2") == []
    assert lines("scm3") == [7] and lines("scm4") == []
    assert lines("node.site-b") == [8] and lines("bad.site-b") == []
    assert lines("x.site-c") == []


def test_unknown_changed_and_revoked_keys(host_key: tuple[paramiko.PKey, Path], tmp_path: Path) -> None:
    key, _ = host_key
    other = paramiko.Ed25519Key.from_private_key_file(str(host_key[1]))  # same key, other object
    known = tmp_path / "known_hosts"
    known.write_text("")
    options = SSHOptions(known_hosts=(known,))
    with pytest.raises(HostKeyError, match=r"unknown host key for \[h\]:2200: ssh-ed25519 key SHA256:"):
        check_host_key("h", 2200, key, options)
    assert check_host_key("h", 2200, key, SSHOptions(known_hosts=(known,), accept_new_host_keys=True))
    assert known.read_text() == f"[h]:2200 ssh-ed25519 {key.get_base64()}\n"
    assert not check_host_key("h", 2200, other, options)

    newcomer_path = tmp_path / "newcomer"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(newcomer_path)], check=True)
    newcomer = paramiko.PKey.from_path(newcomer_path)
    for accept in (False, True):
        changed = r"host key for \[h\]:2200 has changed: .* records ssh-ed25519"
        with pytest.raises(HostKeyError, match=changed):
            check_host_key("h", 2200, newcomer, SSHOptions(known_hosts=(known,), accept_new_host_keys=accept))
    with known.open("a") as handle:
        handle.write(f"@revoked [h]:2200 ssh-ed25519 {key.get_base64()}\n")
    with pytest.raises(HostKeyError, match="is marked revoked in"):
        check_host_key("h", 2200, key, options)


def test_recorded_keys_follow_the_file_style(host_key: tuple[paramiko.PKey, Path], tmp_path: Path) -> None:
    key, _ = host_key
    hashed = tmp_path / "hashed"
    hashed.write_text(f"{paramiko.HostKeys.hash_host('old')} ssh-ed25519 {key.get_base64()}")  # no newline
    record_host_key(hashed, "[new]:2222", key)
    lines = hashed.read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("|1|")
    found = subprocess.run(
        ["ssh-keygen", "-F", "[new]:2222", "-f", str(hashed)], capture_output=True, text=True
    )
    assert found.returncode == 0 and key.get_base64() in found.stdout
    fresh = tmp_path / "dir" / "known_hosts"
    record_host_key(fresh, "new", key)
    assert fresh.read_text() == f"new ssh-ed25519 {key.get_base64()}\n"
    assert fresh.stat().st_mode & 0o777 == 0o600 and fresh.parent.stat().st_mode & 0o777 == 0o700
