"""The cluster command's password handling for rollback and resume, with no host contacted.

A status file records the upgrade.cfg of its run (absolute path and sha256). Without
--upgrade-conf, rollback and resume take the SSH passwords from that file while it is
unchanged, else ask on a terminal, else stop before any connection with one clear line.
`connect_all` is replaced by a recorder that ends the run, so each test sees exactly which
logins would have been made, or that none was.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from scmflow.catalog import load_catalog
from scmflow.cli import cluster_login, main
from scmflow.cli.options import ClusterOptions
from scmflow.cli.ui import Printer
from scmflow.errors import ScmflowError
from scmflow.journal import Journal
from scmflow.journalreader import read_journal
from scmflow.resume import select_resume
from scmflow.runstate import HostEntry, StatusTrust, open_run, read_run
from scmflow.session.targets import SSHTarget
from scmflow.statuskey import StatusKey, key_path, load_or_create_key
from tests.forgery import forge

CATALOG = load_catalog()
SECRET = "Zq-s3cr3t-pw-literal"
ENV_SECRET = "Yx-s3cr3t-pw-from-env"
ENV_NAME = "SCM_SSH_PWD"
HOSTS = ("scm-a", "scm-b", "scm-c")
CONFIG = f"""\
[installconfig]
InstallPath, InstallUser
/opt, scmadmin

[host]
HostName, SshPort, User,   Password,       JavaHome
scm-a,    22,      scmops, {SECRET},
scm-b,    ,        scmops, env:{ENV_NAME},
scm-c,    22,      root,   ,
"""
# the logins the upgrade made: scm-b's empty SshPort cell left its port to ~/.ssh/config
ENTRIES = (
    HostEntry("scm-a", 22, "scmops", None, password_auth=True),
    HostEntry("scm-b", None, "scmops", None, password_auth=True),
    HostEntry("scm-c", 22, "root", None, password_auth=False),
)


class Contacted(ScmflowError):
    """Raised by the recording connect_all: the run got as far as logging in."""

    exit_code = 9


@dataclass
class Logins:
    """What connect_all was asked to do, per call: {host: (port, user, password)}."""

    calls: list[dict[str, tuple[int, str, str | None]]] = field(default_factory=list)

    def connect_all(self, targets: Sequence[SSHTarget], *args: Any, **kwargs: Any) -> Any:
        self.calls.append({t.host: (t.port, t.user, t.password) for t in targets})
        raise Contacted("contacted")


@pytest.fixture
def logins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Logins:
    """Record instead of connecting; an operator HOME without ssh config; the env password set."""
    recorder = Logins()
    monkeypatch.setattr(cluster_login, "connect_all", recorder.connect_all)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv(ENV_NAME, ENV_SECRET)
    monkeypatch.chdir(tmp_path)
    return recorder


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "conf" / "upgrade.cfg"
    path.parent.mkdir()
    path.write_text(CONFIG)
    return path


def operator_key() -> StatusKey:
    """The status key of the operator (HOME is the test's), as the cluster command finds it."""
    return load_or_create_key(key_path())


def write_status(directory: Path, config: Path | None) -> Path:
    """A status file of an upgrade that verified gateway on every host, with its config record.

    Signed with the operator's status key, as an upgrade on this machine signs it.
    """
    header: dict[str, Any] = {
        "run_id": "run-1",
        "layout": {
            "install_path": "/opt/sequoiacm",
            "install_user": "scmadmin",
            "admin_user": "root",
            "upgrade_dir": "/opt/upgrade/sequoiacm/upgrade-s",
            "backup_dir": "/opt/backup/sequoiacm/backup-s",
            "start_timeout": 300,
        },
        "hosts": [e.to_record() for e in ENTRIES],
        "release": {"root": "/nonexistent-release", "version": "3.2.2", "packages": {}},
        "plan": [
            {
                "host": h,
                "service": "gateway",
                "printed": "GATEWAY",
                "old_version": "3.1.2",
                "new_version": "3.2.2",
                "nodes": [],
            }
            for h in HOSTS
        ],
    }
    if config is not None:
        # the record as docs/status-file.md defines it
        header["config"] = {"path": str(config), "sha256": hashlib.sha256(config.read_bytes()).hexdigest()}
    journal = Journal.create(directory, header, key=operator_key())
    for host in HOSTS:
        journal.append(
            {"kind": "transition", "host": host, "service": "gateway", "trigger": "verify",
             "src": "restarted", "dst": "verified"}
        )
    journal.close()
    return journal.path


def copy_of(status: Path, name: str) -> Path:
    """A fresh copy: each run holds its status file's lock until the process ends."""
    path = status.parent / f"{status.name}-{name}"
    shutil.copyfile(status, path)
    return path


def rollback(status: Path, *extra: str, stdin: str | None = None) -> Result:
    """`cluster --rollback` through click, as the operator types it (no terminal)."""
    args = ["cluster", "--rollback", "--upgrade-status-path", str(status), "--status-dir", "sd", *extra]
    return CliRunner().invoke(main, args, input=stdin)


def errors(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("[ERROR]")]


def info_line(path: Path) -> str:
    return f"[INFO ] The SSH passwords come from the config recorded in the status file, {path}"


def no_secret_in(result: Result) -> None:
    for secret in (SECRET, ENV_SECRET):
        assert secret not in result.output and secret not in result.stderr


EXPECTED = {
    "scm-a": (22, "scmops", SECRET),
    "scm-b": (22, "scmops", ENV_SECRET),
    "scm-c": (22, "root", None),
}


def test_rollback_without_config_takes_the_passwords_from_the_recorded_one(
    logins: Logins, cfg: Path, tmp_path: Path
) -> None:
    status = write_status(tmp_path / "status", cfg)

    result = rollback(status, "--unattended")

    assert result.exit_code == 9, result.output + result.stderr
    assert errors(result) == ["[ERROR] contacted"]
    assert logins.calls == [EXPECTED]
    assert result.stdout.splitlines().count(info_line(cfg)) == 1
    no_secret_in(result)

    # --upgrade-conf still wins, and then the recorded config is not mentioned
    other = tmp_path / "other.cfg"
    other.write_text(CONFIG.replace(SECRET, "another-password-1"))
    result = rollback(copy_of(status, "given"), "--unattended", "--upgrade-conf", str(other))
    assert result.exit_code == 9, result.output + result.stderr
    assert logins.calls[-1]["scm-a"] == (22, "scmops", "another-password-1")
    assert "recorded in the status file" not in result.stdout


@pytest.mark.parametrize("unattended", [True, False], ids=["unattended", "no-terminal"])
def test_a_changed_recorded_config_stops_before_any_login(
    logins: Logins, cfg: Path, tmp_path: Path, unattended: bool
) -> None:
    status = write_status(tmp_path / "status", cfg)
    cfg.write_text(CONFIG + "# edited after the run\n")

    result = rollback(status, *(["--unattended"] if unattended else []), stdin="y\n")

    assert result.exit_code == 2, result.output + result.stderr
    because = "--unattended" if unattended else "there is no terminal"
    assert errors(result) == [
        f"[ERROR] the SSH password of scmops@scm-a, scmops@scm-b is not in the status file and cannot "
        f"be asked ({because}); pass --upgrade-conf FILE (the config recorded in the status file, "
        f"{cfg}, has changed since the run)"
    ]
    assert logins.calls == []
    assert "recorded in the status file, " not in result.stdout
    assert "Whether to rollback?" not in result.stdout
    no_secret_in(result)


def test_a_missing_recorded_config_stops_before_any_login(logins: Logins, cfg: Path, tmp_path: Path) -> None:
    status = write_status(tmp_path / "status", cfg)
    cfg.unlink()

    result = rollback(status, "--unattended")

    assert result.exit_code == 2, result.output + result.stderr
    (line,) = errors(result)
    assert line.endswith(
        f"pass --upgrade-conf FILE (the config recorded in the status file, {cfg}, is missing)"
    )
    assert logins.calls == []


def test_an_older_status_file_without_a_config_record_says_so(
    logins: Logins, cfg: Path, tmp_path: Path
) -> None:
    status = write_status(tmp_path / "status", None)

    result = rollback(status, "--unattended")

    assert result.exit_code == 2, result.output + result.stderr
    (line,) = errors(result)
    assert line.endswith(
        "pass --upgrade-conf FILE (the status file records no config file: an older scmflow wrote it)"
    )
    assert logins.calls == []
    # and given the config, it rolls back as before
    result = rollback(copy_of(status, "given"), "--unattended", "--upgrade-conf", str(cfg))
    assert result.exit_code == 9 and logins.calls == [EXPECTED]


def test_key_logins_never_need_the_recorded_config(logins: Logins, cfg: Path, tmp_path: Path) -> None:
    status = write_status(tmp_path / "status", cfg)
    cfg.unlink()

    result = rollback(status, "--unattended", "--host", "scm-c")

    assert result.exit_code == 9, result.output + result.stderr
    assert logins.calls == [{"scm-c": (22, "root", None)}]
    assert "recorded in the status file" not in result.stdout
    # while a password login on the same file needs it
    result = rollback(copy_of(status, "a"), "--unattended", "--host", "scm-a")
    assert result.exit_code == 2 and "is missing)" in errors(result)[0]
    assert len(logins.calls) == 1


def test_an_unset_environment_password_in_the_recorded_config_names_its_line(
    logins: Logins, cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status = write_status(tmp_path / "status", cfg)
    monkeypatch.delenv(ENV_NAME)

    result = rollback(status, "--unattended")

    assert result.exit_code == 2, result.output + result.stderr
    assert errors(result) == [
        f"[ERROR] {cfg}:8, field Password: environment variable {ENV_NAME} is not set: "
        f"Password env:{ENV_NAME} of host scm-b reads the SSH password from it; "
        f"export {ENV_NAME}=... before running, or change the cell"
    ]
    assert logins.calls == []


def test_resume_without_config_stops_before_the_question_when_the_config_changed(
    logins: Logins, cfg: Path, tmp_path: Path
) -> None:
    status = write_status(tmp_path / "status", cfg)
    with Journal.open_for_append(status, key=operator_key()) as journal:
        journal.append(
            {"kind": "fail", "host": "scm-a", "service": "gateway", "trigger": "verify",
             "src": "restarted", "dst": "failed", "detail": "node did not answer"}
        )
    cfg.write_text(CONFIG.replace(SECRET, "rotated-password-2"))

    args = ["cluster", "--upgrade", "--upgrade-status-path", str(status), "--status-dir", "sd"]
    result = CliRunner().invoke(main, args, input="y\n")

    assert result.exit_code == 2, result.output + result.stderr
    (line,) = errors(result)
    assert line.endswith(f"(the config recorded in the status file, {cfg}, has changed since the run)")
    assert "(there is no terminal)" in line
    assert "Whether to resume the upgrade?" not in result.stdout
    assert logins.calls == []


# -- on a terminal ---------------------------------------------------------------------------


class Terminal:
    """A stdin that is a terminal."""

    def isatty(self) -> bool:
        return True


def options(status: Path, *, unattended: bool = False) -> ClusterOptions:
    return ClusterOptions(
        upgrade=False,
        rollback=True,
        upgrade_conf=None,
        status_path=status,
        release_dir=Path("."),
        hosts=None,
        services=None,
        unattended=unattended,
        dry_run=False,
        output="text",
        parallel=1,
        parallel_ssh=16,
        status_dir=status.parent,
        start_timeout=300,
        accept_new_host_keys=False,
        break_lock=False,
    )


def test_on_a_terminal_a_changed_config_means_asking_once_per_user(
    logins: Logins,
    cfg: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = write_status(tmp_path / "status", cfg)
    cfg.write_text(CONFIG + "# edited\n")
    asked: list[str] = []

    def ask(user: str) -> str:
        asked.append(user)
        return f"typed-for-{user}"

    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(cluster_login, "ask_password", ask)
    state = open_run(status, trust=StatusTrust(operator_key()))
    try:
        endpoints = cluster_login.status_endpoints(state, options(status), CATALOG, Printer(), list(HOSTS))
    finally:
        state.journal.close()

    assert asked == ["scmops"]
    assert endpoints == {
        "scm-a": (22, "scmops", "typed-for-scmops"),
        "scm-b": (None, "scmops", "typed-for-scmops"),
        "scm-c": (22, "root", None),
    }
    out = capsys.readouterr().out
    assert (
        f"[WARN ] Asking for the SSH passwords: the config recorded in the status file, {cfg}, "
        "has changed since the run"
    ) in out.splitlines()

    # --unattended asks nothing, even on a terminal
    state = open_run(status, trust=StatusTrust(operator_key()))
    try:
        unattended = options(status, unattended=True)
        with pytest.raises(ScmflowError, match=r"cannot be asked \(--unattended\)") as info:
            cluster_login.status_endpoints(state, unattended, CATALOG, Printer(), list(HOSTS))
    finally:
        state.journal.close()
    assert info.value.exit_code == 2
    assert asked == ["scmops"]


# -- authenticity: refused before any login ----------------------------------------------------


def as_root(header: dict[str, Any]) -> None:
    header["layout"]["install_user"] = "root"


def resume(status: Path, *extra: str, stdin: str | None = None) -> Result:
    args = ["cluster", "--upgrade", "--upgrade-status-path", str(status), "--status-dir", "sd", *extra]
    return CliRunner().invoke(main, args, input=stdin)


@pytest.mark.parametrize("run", [rollback, resume], ids=["rollback", "resume"])
def test_a_rewritten_status_file_is_refused_before_any_login(
    logins: Logins, cfg: Path, tmp_path: Path, run: Any
) -> None:
    status = write_status(tmp_path / "status", cfg)
    forge(status, status, as_root)
    forged = status.read_bytes()

    result = run(status, "--unattended")

    assert result.exit_code == 2, result.output + result.stderr
    assert errors(result) == [
        f"[ERROR] status file {status} is not authentic: record 0's MAC is not valid with status key "
        f"{operator_key().key_id} ({key_path()}): it was changed after it was written; nothing was done "
        "(to use it anyway, check it and pass --trust-status-file)"
    ]
    assert logins.calls == []
    assert status.read_bytes() == forged, "not even a note is appended"
    assert result.stdout == ""


def test_a_status_file_from_another_machine_names_the_key_to_give(
    logins: Logins, cfg: Path, tmp_path: Path
) -> None:
    status = write_status(tmp_path / "status", cfg)
    theirs = operator_key()
    key_path().rename(tmp_path / "ctl1.key")  # this machine has no key (or another one)

    result = rollback(status, "--unattended")

    assert result.exit_code == 2 and logins.calls == []
    (line,) = errors(result)
    assert f"no status key to check its MACs with (the file names status key {theirs.key_id}); " in line
    assert f"there is none at {key_path()} (--status-key FILE gives the key" in line
    assert not key_path().exists(), "a refusal makes no key"
    result = rollback(status, "--unattended", "--status-key", str(tmp_path / "ctl1.key"))
    assert result.exit_code == 9 and logins.calls == [EXPECTED]


def test_trusting_an_unsigned_file_shows_what_it_names_then_proceeds(
    logins: Logins, cfg: Path, tmp_path: Path
) -> None:
    status = write_status(tmp_path / "status", cfg)
    forge(status, status, lambda header: None, unsigned=True)  # as an older scmflow wrote it

    result = rollback(status, "--unattended", "--trust-status-file")

    assert result.exit_code == 9, result.output + result.stderr
    assert logins.calls == [EXPECTED]
    shown = [line for line in result.stderr.splitlines() if line.startswith("[WARN ]")]
    assert shown[0] == (
        f"[WARN ] status file {status} is not authentic: it is in status format version 1, whose "
        "records carry no MAC; --trust-status-file uses it anyway. It names:"
    )
    assert shown[1:] == [
        "[WARN ]     host        scm-a:22 as scmops, JAVA_HOME (from /etc/profile)",
        "[WARN ]     host        scm-b:22 as scmops, JAVA_HOME (from /etc/profile)",
        "[WARN ]     host        scm-c:22 as root, JAVA_HOME (from /etc/profile)",
        "[WARN ]     install     /opt/sequoiacm, run as scmadmin (directories made by root)",
        "[WARN ]     upgrade dir /opt/upgrade/sequoiacm/upgrade-s",
        "[WARN ]     backup dir  /opt/backup/sequoiacm/backup-s",
        "[WARN ]     release     3.2.2 from /nonexistent-release",
        f"[WARN ]     config      {cfg}",
    ]
    assert "Whether to use this status file?" not in result.output


@pytest.mark.parametrize(("answer", "code"), [("n\n", 0), ("y\n", 9)])
def test_trusting_asks_on_stderr_unless_unattended(
    logins: Logins, cfg: Path, tmp_path: Path, answer: str, code: int
) -> None:
    status = write_status(tmp_path / "status", cfg)
    forge(status, status, lambda header: None, unsigned=True)

    result = rollback(status, "--trust-status-file", stdin=answer)

    assert result.exit_code == code, result.output + result.stderr
    assert "[INFO ] Whether to use this status file?\nPlease enter (y/n) confirm:" in result.stderr
    assert "Please enter" not in result.stdout
    if code == 0:
        assert logins.calls == []
        assert result.stderr.endswith("[INFO ] The status file was not used, nothing was changed\n")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (as_root, "layout.install_user: 'root' cannot be the install user"),
        (lambda h: h["layout"].update(backup_dir="/etc/backup-s"), "layout.backup_dir: '/etc' is a system"),
        (lambda h: h["layout"].update(upgrade_dir="/"), "layout.upgrade_dir: '/' is not a run's directory"),
        (
            lambda h: h["layout"].update(install_path="/opt/../sequoiacm"),
            "layout.install_path: '/opt/../sequoiacm' must not contain '..'",
        ),
        (
            lambda h: h["hosts"][0].update(name="$(touch /tmp/x)"),
            "hosts[0].name: '$(touch /tmp/x)' is not a host name or address",
        ),
        (lambda h: h["hosts"][1].update(java_home="/opt/jdk\n"), "hosts[1].java_home: path contains a"),
        (lambda h: h["hosts"][2].update(user="-oProxyCommand=x"), "hosts[2].user: '-oProxyCommand=x' is not"),
        (lambda h: h["plan"][0].update(host="h\x1b[2J"), "plan[0].host: 'h\\x1b[2J' is not a host name"),
        (lambda h: h["hosts"][0].update(name="a\nb"), "hosts[0].name: 'a\\nb' is not a host name"),
    ],
    ids=["root", "system-dir", "root-dir", "dotdot", "host", "control-char", "user", "plan-host", "newline"],
)
def test_header_values_pass_the_config_validators_whatever_the_mac_says(
    logins: Logins, cfg: Path, tmp_path: Path, change: Any, message: str
) -> None:
    signed = write_status(tmp_path / "signed", cfg)
    # authentic, and unsafe: written with the key itself
    header = {k: v for k, v in read_journal(signed).header.items() if k != "key_id"}
    change(header)
    authentic = Journal.create(
        tmp_path / "authentic",
        {k: v for k, v in header.items() if k not in ("format", "format_version", "seq", "time", "epoch")},
        key=operator_key(),
    )
    authentic.close()
    # not authentic, trusted by the operator
    forge(signed, signed, change)

    for status, extra in ((authentic.path, ()), (signed, ("--trust-status-file",))):
        result = rollback(status, "--unattended", *extra)
        assert result.exit_code == 2, result.output + result.stderr
        (line,) = errors(result)
        assert line.startswith(f"[ERROR] {status} names an unsafe ") and message in line, line
        assert logins.calls == []
        assert "[WARN ]" not in result.stderr, "nothing of an unvalidated header is shown"


# --- resume: what it advances, what it keeps; dry runs write nothing -----------------------


def _run(journal: Journal, action: str, result: str) -> None:
    journal.append({"kind": "run", "detail": {"action": action, "result": result}})


def _move(journal: Journal, host: str, trigger: str, src: str, dst: str) -> None:
    journal.append(
        {"kind": "transition", "host": host, "service": "gateway", "trigger": trigger, "src": src, "dst": dst}
    )


def mixed_status(tmp_path: Path, *, undo_all: bool = False) -> Path:
    """scm-a verified then rolled back by --rollback; scm-b rolled back by its failed upgrade;
    scm-c never started (or, with `undo_all`, scm-b never started either)."""
    path = write_status(tmp_path, None)
    status_key = operator_key()
    fresh = Journal.open_for_append(path, key=status_key)
    fresh.close()
    # rebuild the records after the header: write_status verified every pair
    header = read_journal(path, key=status_key).header
    path.unlink()
    header = {k: v for k, v in header.items() if k not in _RESERVED}
    for entry in header["plan"]:
        entry["nodes"] = [{"port": 8080, "running": True}, {"port": 8081, "running": False}]
    journal = Journal.create(tmp_path, header, key=status_key)
    _run(journal, "upgrade", "started")
    _move(journal, "scm-a", "verify", "restarted", "verified")
    if not undo_all:
        _move(journal, "scm-b", "rollback", "failed", "rolled_back")
    _run(journal, "upgrade", "failed")
    _run(journal, "rollback", "started")
    _move(journal, "scm-a", "rollback", "verified", "rolled_back")
    _run(journal, "rollback", "success")
    journal.close()
    return journal.path


_RESERVED = ("format", "format_version", "seq", "time", "epoch", "prev", "key_id")


def test_resume_keeps_an_operators_rollback_and_retries_a_failures(tmp_path: Path, logins: Logins) -> None:
    status = mixed_status(tmp_path)
    state = read_run(status, trust=StatusTrust(key=operator_key()))
    assert state.rolled_back_by == {("scm-a", "gateway"): "rollback", ("scm-b", "gateway"): "upgrade"}

    plain = select_resume(state, hosts=None, services=None, catalog=CATALOG)
    assert [p.host for p in plain.pairs] == ["scm-b", "scm-c"]
    assert [p.host for p in plain.kept] == ["scm-a"]

    named = select_resume(state, hosts=["SCM-A"], services=["GATEWAY"], catalog=CATALOG)
    assert [p.host for p in named.pairs] == ["scm-a"] and named.kept == []
    with pytest.raises(ScmflowError, match="nosuch") as unknown:
        select_resume(state, hosts=None, services=["nosuch"], catalog=CATALOG)
    assert unknown.value.exit_code == 2


def test_resume_of_a_run_rollback_undid_entirely_does_nothing_unless_named(
    tmp_path: Path, logins: Logins
) -> None:
    status = mixed_status(tmp_path, undo_all=True)
    state = read_run(status, trust=StatusTrust(key=operator_key()))
    plain = select_resume(state, hosts=None, services=None, catalog=CATALOG)
    assert plain.pairs == [] and [p.host for p in plain.kept] == ["scm-a", "scm-b", "scm-c"]

    result = resume(status, "--unattended")
    assert result.exit_code == 0, result.output + result.stderr
    assert "No pair to resume" in result.stdout
    assert logins.calls == []


def _fingerprint(path: Path) -> tuple[str, int, list[str]]:
    return (
        hashlib.sha256(path.read_bytes()).hexdigest(),
        path.stat().st_mtime_ns,
        sorted(p.name for p in path.parent.iterdir()),
    )


@pytest.mark.parametrize("run", [rollback, resume], ids=["rollback", "resume"])
def test_a_dry_run_changes_no_byte_of_the_status_file(
    run: Any, tmp_path: Path, logins: Logins, monkeypatch: pytest.MonkeyPatch
) -> None:
    status = mixed_status(tmp_path)
    journal = Journal.open_for_append(status, key=operator_key())
    journal.append({"kind": "note", "detail": {"message": "cut short below"}})
    journal.close()
    with status.open("r+b") as torn:  # an interrupted write's incomplete last record
        torn.truncate(status.stat().st_size - 7)
    assert read_journal(status, key=operator_key()).torn_tail
    before = _fingerprint(status)
    monkeypatch.chdir(tmp_path)

    result = run(status, "--dry-run", "--unattended")

    # a rollback dry run goes on to check the pairs on their hosts (here: the recorder)
    assert result.exit_code in (0, 9), result.output + result.stderr
    assert _fingerprint(status) == before
    assert not (tmp_path / "log").exists()


def test_a_resume_dry_run_of_a_finished_run_appends_nothing(tmp_path: Path, logins: Logins) -> None:
    status = write_status(tmp_path, None)  # every pair verified, no closing record
    before = _fingerprint(status)
    result = resume(status, "--dry-run", "--unattended")
    assert result.exit_code == 0, result.output + result.stderr
    assert "already upgraded" in result.stdout
    assert _fingerprint(status) == before


def test_a_resume_dry_run_prints_the_start_timeout_in_force_and_json_on_stdout(
    tmp_path: Path, logins: Logins
) -> None:
    import json

    status = mixed_status(tmp_path)
    recorded = resume(status, "--dry-run", "--unattended", "--release-dir", str(tmp_path))
    assert "[INFO ] Node start timeout: 300 s, as the run recorded it" in recorded.stdout

    given = resume(status, "--dry-run", "--unattended", "--start-timeout", "77", "--output", "json")
    assert given.exit_code == 0, given.output + given.stderr
    document = json.loads(given.stdout)
    assert document["action"] == "resume" and document["start_timeout"] == 77
    states = [(p["host"], p["state"]) for p in document["pairs"]]
    assert states == [("scm-b", "rolled_back"), ("scm-c", "pending")]
    assert "[INFO ] Node start timeout: 77 s (--start-timeout; the run recorded 300 s)" in given.stderr
    assert all("--timeout 77" in " ".join(steps) for steps in document["steps"].values())
