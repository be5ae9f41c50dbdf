"""ssh_config resolution: names, ports, users, keys, ProxyJump chains, host-key names."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest

from scmflow.errors import ConfigError, HostKeyError, ScmflowError
from scmflow.session.hostkeys import check_host_key
from scmflow.session.ssh import connect_all
from scmflow.session.targets import SSHOptions, SSHTarget
from scmflow.sshconfig import (
    ClientConfig,
    JumpSpec,
    load_client_config,
    local_user,
    parse_proxy_jump,
    resolve_target,
)


def _config(tmp_path: Path, text: str, system: str | None = None) -> ClientConfig:
    user_file = tmp_path / "config"
    user_file.write_text(text)
    files = [user_file]
    if system is not None:
        files.append(tmp_path / "ssh_config")
        files[-1].write_text(system)
    return load_client_config(files)


# --------------------------------------------------------------------------- ProxyJump values


@pytest.mark.parametrize(
    ("text", "hops"),
    [
        ("bastion", (JumpSpec("bastion"),)),
        ("ops@bastion:2200", (JumpSpec("bastion", "ops", 2200),)),
        ("ssh://ops@bastion:2200", (JumpSpec("bastion", "ops", 2200),)),
        ("[fe80::1]:2222", (JumpSpec("fe80::1", None, 2222),)),
        ("ops@[::1]", (JumpSpec("::1", "ops", None),)),
        ("fe80::1", (JumpSpec("fe80::1"),)),
        ("a, u@b:23", (JumpSpec("a"), JumpSpec("b", "u", 23))),
        ("none", ()),
        ("NONE", ()),
    ],
)
def test_proxy_jump_forms(text: str, hops: tuple[JumpSpec, ...]) -> None:
    assert parse_proxy_jump(text) == hops


@pytest.mark.parametrize("text", ["ops@", "@bastion", "bastion:", "bastion:99999", "bastion:ssh", "a,,b"])
def test_malformed_proxy_jump_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="ProxyJump hop|not a port number"):
        parse_proxy_jump(text)


# --------------------------------------------------------------------------- files


def test_missing_files_are_skipped(tmp_path: Path) -> None:
    config = load_client_config([tmp_path / "absent", tmp_path / "also-absent"])
    assert config.files == ()
    target = resolve_target(config, "db1", user="scmadmin")
    assert (target.host, target.connect_address, target.port, target.via) == ("db1", "db1", 22, None)


def test_default_files_follow_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text("Host db1\n  HostName 10.9.0.1\n")
    config = load_client_config()
    assert config.files[0] == tmp_path / ".ssh" / "config"
    assert resolve_target(config, "db1").address == "10.9.0.1"


def test_first_value_wins_and_each_file_starts_global(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "Host db1\n  Port 2201\n\nHost db*\n  Port 2299\n  User ops\n\nHost web1\n  User webops\n",
        # top-level lines of the system file apply to every host, not only to web1
        system="User fallback\nPort 2400\n",
    )
    assert (resolve_target(config, "db1").port, resolve_target(config, "db1").user) == (2201, "ops")
    assert (resolve_target(config, "db2").port, resolve_target(config, "db2").user) == (2299, "ops")
    assert (resolve_target(config, "web1").port, resolve_target(config, "web1").user) == (2400, "webops")
    assert (resolve_target(config, "other").port, resolve_target(config, "other").user) == (2400, "fallback")


def test_include_is_followed_relative_to_the_config_dir(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-db.conf").write_text("Host db1\n  HostName 10.9.0.1\n")
    (tmp_path / "conf.d" / "20-web.conf").write_text("Host web1\n  HostName 10.9.0.2\n")
    (tmp_path / "ports.conf").write_text("Port 2202\n")
    config = _config(
        tmp_path,
        "Include conf.d/*.conf\nUser ops\n\nHost db1\n  Include ports.conf\n  IdentityFile ~/k1\n",
    )
    db1 = resolve_target(config, "db1")
    assert (db1.address, db1.port, db1.user) == ("10.9.0.1", 2202, "ops")
    assert len(db1.identity_files) == 1
    # the User line after the Include is global again, and the db1-only Include stays db1-only
    web1 = resolve_target(config, "web1")
    assert (web1.address, web1.port, web1.user) == ("10.9.0.2", 22, "ops")


def test_nested_include_keeps_the_enclosing_host_block(tmp_path: Path) -> None:
    (tmp_path / "outer.conf").write_text("Include inner.conf\nPort 2202\n")
    (tmp_path / "inner.conf").write_text("User ops\nHost web1\n  User webops\n")
    config = _config(tmp_path, "Host db1\n  Include outer.conf\n  HostName 10.9.0.1\n")
    db1 = resolve_target(config, "db1")
    assert (db1.address, db1.port, db1.user) == ("10.9.0.1", 2202, "ops")
    other = resolve_target(config, "db2")
    assert (other.address, other.port, other.user) == ("db2", 22, local_user())
    assert resolve_target(config, "web1").user == "webops"


def test_include_loop_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "loop.conf").write_text("Include loop.conf\n")
    with pytest.raises(ConfigError, match="Include nested deeper than 16 levels"):
        _config(tmp_path, "Include loop.conf\n")


def test_unparsable_line_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config: cannot parse"):
        _config(tmp_path, "Host db1\n  ===\n")


# --------------------------------------------------------------------------- resolution


def test_given_port_and_user_win_over_ssh_config(tmp_path: Path) -> None:
    config = _config(tmp_path, "Host db1\n  HostName 10.9.0.1\n  Port 2222\n  User ops\n")
    given = resolve_target(config, "db1", port=22, user="root", password="pw")
    assert (given.host, given.address, given.port, given.user, given.password) == (
        "db1", "10.9.0.1", 22, "root", "pw",
    )
    open_ = resolve_target(config, "db1")
    assert (open_.port, open_.user) == (2222, "ops")
    assert resolve_target(config, "db2").user == local_user()


def test_identity_files_expand_home_and_keep_their_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = _config(
        tmp_path,
        "Host db1\n  IdentityFile ~/.ssh/db_key\n  IdentitiesOnly yes\nHost *\n  IdentityFile /keys/all\n",
    )
    db1 = resolve_target(config, "db1")
    assert db1.identity_files == (tmp_path / ".ssh" / "db_key", Path("/keys/all"))
    assert db1.identities_only
    assert not resolve_target(config, "db2").identities_only


def test_bad_port_names_host_and_file(tmp_path: Path) -> None:
    config = _config(tmp_path, "Host db1\n  Port ssh\n")
    with pytest.raises(ConfigError, match=r"config: Port of host db1 is 'ssh', not a port number"):
        resolve_target(config, "db1")


def test_known_name_follows_openssh(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "Host db1\n  HostName 10.9.0.1\n"
        "Host db2\n  HostName 10.9.0.2\n  Port 2222\n"
        "Host db3\n  HostName 10.9.0.3\n  Port 2222\n  HostKeyAlias db3-key\n",
    )
    # known_hosts holds the HostName, not the alias the operator typed; an alias has no port
    assert resolve_target(config, "db1").known_name == "10.9.0.1"
    assert resolve_target(config, "db2").known_name == "[10.9.0.2]:2222"
    assert resolve_target(config, "db3").known_name == "db3-key"
    assert SSHTarget("10.9.0.4", port=2200).known_name == "[10.9.0.4]:2200"


def test_proxy_jump_chain_follows_openssh(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "Host db1\n  HostName 10.9.0.1\n  ProxyJump ops@outer:2200,inner\n"
        "Host outer\n  HostName 192.0.2.1\n  User nobody\n  ProxyJump gate\n"
        "Host inner\n  HostName 10.9.0.254\n  ProxyJump ignored\n  IdentityFile /keys/inner\n"
        "Host gate\n  HostName 198.51.100.7\n  Port 2022\n",
    )
    db1 = resolve_target(config, "db1", user="root")
    inner = db1.via
    assert inner is not None and inner.via is not None and inner.via.via is not None
    outer, gate = inner.via, inner.via.via
    # a later hop goes through the hop before it, not through its own ProxyJump
    assert (inner.host, inner.address, inner.user, inner.identity_files) == (
        "inner", "10.9.0.254", local_user(), (Path("/keys/inner"),),
    )
    # the hop's user@...:port win over its Host block; the first hop follows its own ProxyJump
    assert (outer.host, outer.address, outer.port, outer.user) == ("outer", "192.0.2.1", 2200, "ops")
    assert (gate.address, gate.port, gate.via) == ("198.51.100.7", 2022, None)
    assert db1.route == "db1 via inner via outer via gate"
    assert db1.connect_address == "10.9.0.1"


def test_proxy_jump_none_ends_a_wildcard(tmp_path: Path) -> None:
    config = _config(tmp_path, "Host bastion\n  ProxyJump none\nHost *\n  ProxyJump bastion\n")
    db1 = resolve_target(config, "db1")
    assert db1.via is not None and db1.via.host == "bastion" and db1.via.via is None
    assert resolve_target(config, "bastion").via is None


def test_proxy_jump_loop_is_a_config_error(tmp_path: Path) -> None:
    config = _config(tmp_path, "Host *\n  ProxyJump bastion\n")
    loop = r"ProxyJump loop for db1: db1 -> bastion -> bastion .*ProxyJump none"
    with pytest.raises(ConfigError, match=loop):
        resolve_target(config, "db1")


def test_overlong_proxy_jump_chain_is_a_config_error(tmp_path: Path) -> None:
    config = _config(tmp_path, "".join(f"Host h{i}\n  ProxyJump h{i + 1}\n" for i in range(12)))
    assert resolve_target(config, "h4").route == " via ".join(f"h{i}" for i in range(4, 13))
    with pytest.raises(ConfigError, match="ProxyJump chain for h0 is longer than 8 hops"):
        resolve_target(config, "h0")


def test_proxy_command_is_refused_not_bypassed(tmp_path: Path) -> None:
    config = _config(tmp_path, "Host db1\n  ProxyCommand nc -X connect -x proxy:3128 %h %p\n")
    with pytest.raises(ConfigError, match="host db1 uses ProxyCommand, which scmflow does not run"):
        resolve_target(config, "db1")
    assert resolve_target(_config(tmp_path, "Host db1\n  ProxyCommand none\n"), "db1").via is None


@pytest.mark.parametrize(
    "line",
    [
        'Match exec "touch {marker}"',
        "Match host db1 exec 'touch {marker}'",
        'Match !exec "touch {marker}"',
        'Match originalhost * EXEC "touch {marker}"',
        'match=exec "touch {marker}"',
        '  Match final exec "test %h = x || touch {marker}"',
    ],
)
def test_match_exec_is_refused_when_loaded_and_never_run(tmp_path: Path, line: str) -> None:
    marker = tmp_path / "ran"
    text = f"Host db1\n  HostName 10.9.0.1\n\n{line.format(marker=marker)}\n  User ops\n"
    with pytest.raises(ConfigError) as info:
        config = _config(tmp_path, text)
        resolve_target(config, "db1")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'config'}:4: Match exec runs a command, and scmflow never runs")
    assert "\n" not in message and info.value.exit_code == 2
    assert not marker.exists()


def test_match_exec_in_an_included_or_system_file_is_refused_too(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "corp.conf").write_text(f'# corporate\nMatch exec "touch {marker}"\n')
    with pytest.raises(ConfigError, match=r"conf\.d/corp\.conf:2: Match exec runs a command"):
        _config(tmp_path, "Host db1\n  Include conf.d/*.conf\n")
    with pytest.raises(ConfigError, match=r"ssh_config:1: Match exec runs a command"):
        _config(tmp_path, "Host db1\n", system=f'Match exec "touch {marker}"\n')
    assert not marker.exists()


def test_only_the_exec_criterion_is_refused(tmp_path: Path) -> None:
    # a host pattern or user named "exec" is not the exec criterion
    text = "Match host exec user exec\n  Port 2200\nMatch all\n  User ops\n"
    config = _config(tmp_path, text)
    assert resolve_target(config, "exec").port == 22  # the local user is not "exec"
    assert resolve_target(config, "db1").user == "ops"
    marker = tmp_path / "ran"
    with pytest.raises(ConfigError, match=r"config:5: Match exec runs a command"):
        _config(tmp_path, f'{text}Match user exec exec "touch {marker}"\n')
    assert not marker.exists()


@pytest.mark.parametrize("name", ["$(touch x)", "db1;id", "-oProxyCommand=x", "a b", "h\x1b[2J", ""])
def test_a_host_name_that_is_no_name_never_reaches_ssh_config(tmp_path: Path, name: str) -> None:
    config = _config(tmp_path, "Host *\n  IdentityFile ~/.ssh/%h.key\n")
    with pytest.raises(ConfigError, match="is not a host name or address|host name is empty"):
        resolve_target(config, name)


def test_target_repr_shows_the_route_but_never_the_password() -> None:
    bastion = SSHTarget("gate", user="ops")
    target = SSHTarget("db1", port=22, user="root", password="s3cret!", address="10.9.0.1", via=bastion)
    text = repr(target)
    assert "s3cret" not in text
    assert text == (
        "SSHTarget(host='db1', port=22, user='root', password='******', address='10.9.0.1', "
        "via=SSHTarget(host='gate', port=22, user='ops', password=None))"
    )


# --------------------------------------------------------------------------- host keys and connecting


@pytest.fixture
def host_key(tmp_path: Path) -> paramiko.PKey:
    path = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return paramiko.PKey.from_path(path)


def test_host_key_is_filed_under_the_given_name(host_key: paramiko.PKey, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    hint = "run `ssh -p 22 db1` once and accept the key"
    strict = SSHOptions(known_hosts=(known,))
    with pytest.raises(HostKeyError) as info:
        check_host_key("db1", 22, host_key, strict, names=("db1-key",), accept_hint=hint)
    assert str(info.value).startswith("[db1] unknown host key for db1-key: ssh-ed25519 key SHA256:")
    assert str(info.value).endswith(f"then {hint} or use --accept-new-host-keys")
    accept = SSHOptions(known_hosts=(known,), accept_new_host_keys=True, hash_known_hosts=False)
    assert check_host_key("db1", 22, host_key, accept, names=("db1-key",))
    assert known.read_text() == f"db1-key ssh-ed25519 {host_key.get_base64()}\n"
    assert not check_host_key("db1", 22, host_key, strict, names=("db1-key",))


def test_bare_name_vouches_for_other_ports_as_in_openssh(host_key: paramiko.PKey, tmp_path: Path) -> None:
    other_path = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_path)], check=True)
    other = paramiko.PKey.from_path(other_path)
    known = tmp_path / "known_hosts"
    known.write_text(f"10.9.0.1 ssh-ed25519 {host_key.get_base64()}\n")
    strict = SSHOptions(known_hosts=(known,))
    assert SSHTarget("db1", port=2222, address="10.9.0.1").known_names == ("[10.9.0.1]:2222", "10.9.0.1")
    assert SSHTarget("db1", address="10.9.0.1").known_names == ("10.9.0.1",)
    assert SSHTarget("db1", port=2222, host_key_alias="db1-key").known_names == ("db1-key",)
    # "checking without port identifier": the same key under the bare name is trusted
    assert not check_host_key("10.9.0.1", 2222, host_key, strict)
    # a different key there neither vouches nor counts as changed: the key is simply unknown
    with pytest.raises(HostKeyError, match=r"unknown host key for \[10.9.0.1\]:2222"):
        check_host_key("10.9.0.1", 2222, other, strict)
    # a key recorded for the port decides alone: a different one there is a changed key
    known.write_text(f"[10.9.0.1]:2222 ssh-ed25519 {other.get_base64()}\n" + known.read_text())
    with pytest.raises(HostKeyError, match=r"host key for \[10.9.0.1\]:2222 has changed"):
        check_host_key("10.9.0.1", 2222, host_key, strict)
    # and the bare name never borrows from a port-qualified line
    with pytest.raises(HostKeyError, match="has changed"):
        check_host_key("10.9.0.1", 22, other, strict)
    # an alias has no fallback
    with pytest.raises(HostKeyError, match="unknown host key for db1-key"):
        check_host_key("db1", 2222, host_key, strict, names=("db1-key",))


def test_hosts_behind_an_unreachable_bastion_share_one_error_line(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bastion = SSHTarget("gate", port=port, address="127.0.0.1")
    targets = [SSHTarget(f"db{i}", address=f"10.9.0.{i}", via=bastion) for i in (1, 2)]
    with pytest.raises(ScmflowError) as info:
        connect_all(targets, SSHOptions(known_hosts=(tmp_path / "known_hosts",), connect_timeout=2.0))
    assert str(info.value) == (
        f"cannot connect to 2 of 2 hosts: [db1, db2] through bastion gate: [gate] connection refused "
        f"on 127.0.0.1 port {port} (is sshd running there?)"
    )


def test_the_command_line_leaves_paramiko_no_way_to_run_match_exec(tmp_path: Path) -> None:
    # Behind the refusal above: in the command line's process paramiko has no invoke, so a
    # Match exec line that reached paramiko's own lookup would fail rather than run.
    marker = tmp_path / "ran"
    code = (
        "import scmflow.cli, paramiko\n"
        f"config = paramiko.SSHConfig.from_text('Match exec \"touch {marker}\"\\n  Port 2222\\n')\n"
        "try:\n"
        "    config.lookup('db1')\n"
        "except ImportError as exc:\n"
        "    print('refused:', type(exc).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout == "refused: ModuleNotFoundError\n", done.stderr
    assert not marker.exists()
