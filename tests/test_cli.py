"""The command line, driven through click's CliRunner: errors, usage, help, version, the README's tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from scmflow import __version__
from scmflow.cli import main
from tests.cli_runner import assert_one_error, error_lines, invoke

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
