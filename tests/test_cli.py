"""The command line, driven through click's CliRunner: errors, usage, help, version, status."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import click
import msgpack
import pytest
from click.testing import CliRunner, Result

from scmflow import __version__
from scmflow.cli import main
from scmflow.journal import Journal, read_journal
from scmflow.statuskey import ENV_VAR, StatusKey, default_key_path, load_or_create_key

REPO = Path(__file__).resolve().parents[1]

BAD_PORT_CFG = """\
[installconfig]
InstallPath,          InstallUser
/opt/,                scmadmin

[host]
HostName,      SshPort, User,   Password,  JavaHome
scmServer-a,   22,      root,   ,
scmServer-b,   notaport, root,  ,

[config]
upgradePackPath=/opt/upgrade/sequoiacm
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each command from an empty directory, so nothing lands in the checkout.

    HOME is a fresh directory beside it: the operator's status key is looked for there.
    """
    monkeypatch.chdir(tmp_path)
    home = tmp_path.parent / f"{tmp_path.name}-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(ENV_VAR, raising=False)
    return tmp_path


def invoke(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("[ERROR]")]


def assert_one_error(result: Result, expected: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    assert error_lines(result) == [f"[ERROR] {expected}"]
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_bad_config_gives_one_error_line_naming_file_line_and_field(workdir: Path) -> None:
    (workdir / "BAD.cfg").write_text(BAD_PORT_CFG)
    result = invoke("cluster", "--upgrade", "--upgrade-conf", "BAD.cfg")
    assert_one_error(result, "BAD.cfg:8, field SshPort: 'notaport' is not a port number (1-65535)")
    assert result.stdout == "[INFO ] Parsing the upgrade configuration...\n"
    assert sorted(p.name for p in workdir.iterdir()) == ["BAD.cfg"]


def test_the_real_entry_point_prints_only_the_error_line_on_stderr(tmp_path: Path) -> None:
    # pytest attaches its own log handlers, which would hide logging's last-resort handler
    # (an unprefixed copy of the message) from a CliRunner test
    (tmp_path / "BAD.cfg").write_text(BAD_PORT_CFG)
    done = subprocess.run(
        [sys.executable, str(REPO / "scm.py"), "cluster", "--upgrade", "--upgrade-conf", "BAD.cfg"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "[ERROR] BAD.cfg:8, field SshPort: 'notaport' is not a port number (1-65535)"
    ]


def test_a_missing_config_file_is_one_error_line(workdir: Path) -> None:
    result = invoke("cluster", "--upgrade", "--upgrade-conf", "nowhere.cfg")
    assert_one_error(result, "nowhere.cfg: cannot read the upgrade configuration: No such file or directory")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--upgrade", "--rollback", "--upgrade-conf", "x.cfg"],
            "give exactly one of --upgrade and --rollback",
        ),
        (["--upgrade-conf", "x.cfg"], "give exactly one of --upgrade and --rollback"),
        (["--rollback"], "--rollback needs --upgrade-status-path FILE"),
        (["--upgrade"], "--upgrade needs --upgrade-conf FILE (or --upgrade-status-path FILE to resume)"),
        (
            ["--rollback", "--upgrade-status-path", "upgrade_status_none"],
            "upgrade status file upgrade_status_none does not exist",
        ),
        (
            ["--upgrade", "--upgrade-status-path", "upgrade_status_none"],
            "upgrade status file upgrade_status_none does not exist",
        ),
    ],
    ids=[
        "both",
        "neither",
        "rollback-without-status",
        "upgrade-without-config",
        "rollback-missing-status",
        "resume-missing-status",
    ],
)
def test_usage_errors_are_one_error_line_and_exit_2(workdir: Path, args: list[str], message: str) -> None:
    assert_one_error(invoke("cluster", *args), message)
    assert list(workdir.iterdir()) == []


def test_click_level_usage_errors_exit_2(workdir: Path) -> None:
    result = invoke("cluster", "--upgrade", "--parallel", "0", "--upgrade-conf", "x.cfg")
    assert result.exit_code == 2
    assert "Invalid value for '--parallel'" in result.stderr


def test_status_verify_on_random_bytes_is_one_error_line(workdir: Path) -> None:
    (workdir / "random").write_bytes(bytes(range(256)) * 4)
    for command in ("verify", "show", "export"):
        result = invoke("status", command, "random")
        assert result.exit_code != 0
        assert error_lines(result) == ["[ERROR] random is not an scmflow upgrade status file"]
        assert "Traceback" not in result.output


def test_status_commands_on_a_missing_file(workdir: Path) -> None:
    assert_one_error(invoke("status", "verify", "nothing"), "status file nothing does not exist")
    assert_one_error(
        invoke("status", "list", "--status-dir", "nodir"), "status directory nodir does not exist"
    )


def signed_status(directory: Path, key: StatusKey | None) -> Path:
    """A two-record status file, signed with `key` (None: an unsigned version 1 file)."""
    header = {"run_id": "r1", "plan": [], "hosts": [], "layout": {"install_user": "scmadmin"}}
    with Journal.create(directory, header, key=key) as journal:
        journal.append({"kind": "run", "detail": {"action": "upgrade", "result": "started"}})
        return journal.path


def forge(path: Path, **layout: str) -> None:
    """Rewrite the header's layout and recompute the digest chain, as anyone without the key can."""
    contents = read_journal(path)
    records = [{k: v for k, v in contents.header.items()}, *contents.records]
    records[0]["layout"] = {**records[0]["layout"], **layout}
    out, prev = [], b""
    for record in records:
        if record["seq"]:
            record["prev"] = prev
        body = msgpack.packb(record, use_bin_type=True)
        prev = hashlib.sha256(body).digest()
        out.append(msgpack.packb([body, prev, bytes(32)], use_bin_type=True))
    path.write_bytes(b"".join(out))


def test_status_verify_of_an_intact_and_a_damaged_file(workdir: Path) -> None:
    key = load_or_create_key(default_key_path())
    path = signed_status(workdir / "status", key)
    good = invoke("status", "verify", str(path))
    assert good.exit_code == 0, good.output
    assert good.stdout == (
        "chain:     intact, 2 records\n"
        f"authentic: yes, every record's MAC is valid with status key {key.key_id} ({default_key_path()})\n"
    )
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF  # in the last record's digest
    path.write_bytes(bytes(data))
    bad = invoke("status", "verify", str(path))
    assert bad.exit_code == 1
    assert len(error_lines(bad)) == 1 and str(path) in error_lines(bad)[0]
    assert "is damaged or was tampered with: record 1" in error_lines(bad)[0]
    assert bad.stdout.splitlines()[0].startswith("chain:     broken at record 1 (byte offset ")


def test_status_verify_exits_1_on_a_file_rewritten_with_a_recomputed_chain(workdir: Path) -> None:
    key = load_or_create_key(default_key_path())
    path = signed_status(workdir / "status", key)
    forge(path, install_user="root")

    result = invoke("status", "verify", str(path))

    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        "chain:     intact, 2 records",
        f"authentic: NO, record 0's MAC is not valid with status key {key.key_id} ({default_key_path()}): "
        "it was changed after it was written",
    ]
    assert error_lines(result) == [
        f"[ERROR] {path} is not authentic: record 0's MAC is not valid with status key {key.key_id} "
        f"({default_key_path()}): it was changed after it was written"
    ]


def test_status_verify_without_a_key_or_of_an_unsigned_file_is_not_ok(workdir: Path) -> None:
    key = StatusKey.generate()
    path = signed_status(workdir / "status", key)
    missing = invoke("status", "verify", str(path))
    assert missing.exit_code == 1
    assert missing.stdout.splitlines()[1] == (
        f"authentic: unknown, there is no status key to check its MACs with (the file names status key "
        f"{key.key_id}); there is none at {default_key_path()} (--status-key FILE gives the key of the "
        "machine that wrote it)"
    )
    assert not default_key_path().exists(), "reading never makes a key"
    # the key of the machine that wrote it, given by option or environment
    (workdir / "ctl1.key").write_bytes(key.secret)
    (workdir / "ctl1.key").chmod(0o600)
    assert invoke("status", "verify", str(path), "--status-key", "ctl1.key").exit_code == 0
    given = CliRunner(env={ENV_VAR: str(workdir / "ctl1.key")}).invoke(main, ["status", "verify", str(path)])
    assert given.exit_code == 0, given.output
    old = signed_status(workdir / "old", None)
    unsigned = invoke("status", "verify", str(old), "--status-key", "ctl1.key")
    assert unsigned.exit_code == 1
    assert error_lines(unsigned)[0].endswith(
        "is not authentic: it is in status format version 1, whose records carry no MAC"
    )


def test_a_broken_status_key_is_one_error_line(workdir: Path) -> None:
    path = signed_status(workdir / "status", StatusKey.generate())
    (workdir / "bad.key").write_bytes(b"x" * 32)
    (workdir / "bad.key").chmod(0o644)
    for command in ("verify", "show", "export"):
        result = invoke("status", command, str(path), "--status-key", "bad.key")
        assert_one_error(
            result,
            "the status key bad.key is open to other users (mode 0644); make it private: chmod 600 bad.key",
        )


def test_status_show_and_export_say_whether_the_file_is_authentic(workdir: Path) -> None:
    key = load_or_create_key(default_key_path())
    path = signed_status(workdir / "status", key)
    shown = invoke("status", "show", str(path))
    assert shown.exit_code == 0, shown.output
    assert "  Authentic yes, every record's MAC is valid with status key" in shown.stdout
    exported = json.loads(invoke("status", "export", str(path)).stdout)
    assert exported["authenticity"] == {
        "authentic": True,
        "state": "authentic",
        "first_bad_seq": None,
        "key_id": key.key_id,
        "file_key_id": key.key_id,
        "reason": f"every record's MAC is valid with status key {key.key_id} ({default_key_path()})",
    }
    assert exported["header"]["format_version"] == 2 and exported["header"]["key_id"] == key.key_id
    forge(path, install_user="root")
    shown = invoke("status", "show", str(path))
    assert shown.exit_code == 0 and "  Authentic NO, record 0's MAC is not valid" in shown.stdout
    assert json.loads(invoke("status", "export", str(path)).stdout)["authenticity"]["first_bad_seq"] == 0


def test_trust_status_file_needs_a_status_file(workdir: Path) -> None:
    assert_one_error(
        invoke("cluster", "--upgrade", "--upgrade-conf", "x.cfg", "--trust-status-file"),
        "--trust-status-file needs --upgrade-status-path FILE",
    )


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"scmflow, version {__version__}\n"


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found.extend(all_commands(command, (*prefix, name)))
        else:
            found.append((*prefix, name))
    return found


COMMANDS = all_commands(main)


def test_the_command_list_is_what_the_tests_expect() -> None:
    assert {(), ("cluster",), ("demo",), ("status",)} <= set(COMMANDS)
    assert {("status", n) for n in ("diagram", "export", "list", "show", "verify")} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "scm.py")
def test_help_of_every_command_shows_an_example(command: tuple[str, ...]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.stdout
    examples = result.stdout.split("Examples:", 1)
    assert len(examples) == 2, f"{' '.join(command)} --help has no Examples section"
    assert "scm.py " in examples[1]


def test_short_help_option_works() -> None:
    assert invoke("cluster", "-h").stdout == invoke("cluster", "--help").stdout


def test_status_diagram_is_the_mermaid_lifecycle() -> None:
    result = invoke("status", "diagram")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[:2] == ["stateDiagram-v2", "    [*] --> pending"]
    for edge in (
        "    pending --> backed_up : backup",
        "    backed_up --> replaced : replace",
        "    replaced --> restarted : restart",
        "    restarted --> verified : verify",
        "    verified --> failed : fail",
        "    pending --> rolled_back : rollback (abandon)",
        "    backed_up --> rolled_back : rollback (abandon)",
        "    failed --> rolled_back : rollback (restore)",
        "    verified --> rolled_back : rollback (restore)",
        "    rolled_back --> pending : retry",
        "    verified --> [*]",
        "    rolled_back --> [*]",
        "    note right of failed",
    ):
        assert edge in lines
    assert "    failed --> [*]" not in lines


# --- the README's tables are the command's --------------------------------------------


def _readme_table(heading: str) -> list[list[str]]:
    """The rows (cells) of the first Markdown table after `heading` in README.md."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def test_the_readme_exit_code_table_is_the_one_help_prints() -> None:
    from scmflow.cli.cluster import EXIT_CODES

    readme = [(int(code), meaning) for code, meaning in _readme_table("### Exit codes")]
    assert readme == list(EXIT_CODES)
    shown = " ".join(invoke("cluster", "--help").output.split())
    assert "Exit codes:" in shown
    for code, meaning in EXIT_CODES:
        assert f"{code} {' '.join(meaning.split())}" in shown


def test_the_readme_option_table_names_every_cluster_option() -> None:
    import re

    from scmflow.cli.cluster import cluster_command

    documented = {
        option for row in _readme_table("## The command line") for option in re.findall(r"--[a-z-]+", row[0])
    }
    params = cluster_command.params
    declared = {opt for param in params for opt in param.opts if opt.startswith("--")} - {"--help"}
    assert documented == declared
    shown = invoke("cluster", "--help").output
    assert all(option in shown for option in declared)


def test_locks_and_unreachable_hosts_are_refusals() -> None:
    from scmflow.errors import ConnectError, LockError

    assert LockError("held").exit_code == 2
    assert ConnectError("down").exit_code == 2


def test_an_unknown_rollback_service_is_an_error(workdir: Path) -> None:
    from scmflow.catalog import load_catalog
    from scmflow.rollback import match_services

    catalog = load_catalog()
    assert match_services(catalog, ["GATEWAY", "service_center", "SERVICE-CENTER"]) == (
        "gateway",
        "service-center",
    )
    with pytest.raises(Exception, match="unknown service.*nosuch") as refused:
        match_services(catalog, ["nosuch"])
    assert getattr(refused.value, "exit_code", None) == 2


def test_the_sample_config_says_which_variable_to_export(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SCM_SSH_PWD", raising=False)
    result = invoke(
        "cluster", "--upgrade", "--upgrade-conf", str(REPO / "conf" / "upgrade.cfg"), "--unattended"
    )
    assert result.exit_code == 2, result.output
    (error,) = error_lines(result)
    assert "environment variable SCM_SSH_PWD is not set" in error
    assert "export SCM_SSH_PWD=" in error
    sample = (REPO / "conf" / "upgrade.cfg").read_text(encoding="utf-8")
    assert "SCM_SSH_PWD" in sample.split("env:SCM_SSH_PWD")[0]  # the comment above the row says so


def test_the_guides_run_scmflow_not_the_release_s_own_scm_py() -> None:
    for guide in (REPO / "docs" / "operators.md", REPO / "conf" / "upgrade.cfg"):
        text = guide.read_text(encoding="utf-8")
        commands = [
            line for line in text.splitlines() if "cluster --upgrade" in line or "cluster --rollback" in line
        ]
        assert commands, guide
        # `python scm.py` inside the unpacked release runs the vendor's tool
        assert not [line for line in commands if line.lstrip("# ").startswith("python scm.py")], guide
        upgrades = [
            line
            for line in commands
            if "cluster --upgrade --" in line and "--upgrade-status-path" not in line
        ]
        assert all("--release-dir" in line for line in upgrades), upgrades


def test_ctrl_c_before_a_run_is_exit_130_and_end_of_input_at_a_prompt_is_a_refusal(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scmflow.cli import cluster

    def interrupted(*args: object, **kwargs: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cluster, "run_cluster", interrupted)
    (workdir / "u.cfg").write_text("")
    result = invoke("cluster", "--upgrade", "--upgrade-conf", "u.cfg")
    assert result.exit_code == 130, result.output
    assert error_lines(result) == ["[ERROR] interrupted"]

    def no_answer(*args: object, **kwargs: object) -> int:
        raise EOFError

    monkeypatch.setattr(cluster, "run_cluster", no_answer)
    result = invoke("cluster", "--upgrade", "--upgrade-conf", "u.cfg")
    assert result.exit_code == 2, result.output
    assert error_lines(result) == ["[ERROR] no answer: the input ended at a prompt; nothing was changed"]
