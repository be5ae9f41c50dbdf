"""The host check: Java version parsing and the refusals a host can earn (fake session)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from scmflow.agentcall import STEP_MARGIN
from scmflow.catalog import load_catalog
from scmflow.errors import RemoteError
from scmflow.inventory import HostCheckError, InstalledService, Node, java_key, probe_host
from scmflow.session.base import CommandResult

CATALOG = load_catalog()
SERVICES = [CATALOG.get("gateway"), CATALOG.get("daemon")]
GOOD_REPLY: dict[str, Any] = {
    "ok": True,
    "install_path_exists": True,
    "java_home": "/usr/local/java/jdk1.8.0_221",
    "java": "/usr/local/java/jdk1.8.0_221/bin/java",
    "java_version": "1.8.0_221",
    "services": {
        "gateway": {
            "version": "3.1.2",
            "nodes": [
                {"port": 8080, "pid": 1326, "running": True},
                {"port": 8081, "pid": None, "running": False},
            ],
        },
        "daemon": {"version": None, "nodes": []},
    },
    "free": {"/opt/sequoiacm": 5000000},
}


class FakeSession:
    """Records every command; `sudo` fails when refused; the agent answers with `reply`."""

    def __init__(self, reply: Mapping[str, Any], *, sudo_ok: bool = True, host: str = "h1") -> None:
        self.host = host
        self.reply = dict(reply)
        self.sudo_ok = sudo_ok
        self.calls: list[dict[str, Any]] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 600.0,
        check: bool = True,
        stdin: bytes | None = None,
    ) -> CommandResult:
        self.calls.append({"argv": list(argv), "user": user, "env": env, "timeout": timeout})
        if list(argv) == ["true"]:
            if not self.sudo_ok:
                raise RemoteError(self.host, "sudo: a password is required", exit_code=1)
            return CommandResult(self.host, tuple(argv), 0, "", "", 0.01)
        return CommandResult(self.host, tuple(argv), 0, "noise\n" + json.dumps(self.reply) + "\n", "", 0.1)

    def put(self, local: Path, remote: str, *, sha256: str | None = None, progress: Any = None) -> None:
        raise AssertionError("the check sends no files")

    def close(self) -> None:
        pass


def probe(session: FakeSession, **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "install_path": "/opt/sequoiacm",
        "install_user": "scmadmin",
        "java_home": None,
        "services": SERVICES,
    }
    options.update(kwargs)
    return probe_host(session, **options)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("1.8.0_221", (1, 8)),
        ("1.7.0_80", (1, 7)),
        ("1.6", (1, 6)),
        ("9", (9, 0)),
        ("11.0.21", (11, 0)),
        ("17.0.2", (17, 0)),
        ("21-ea", (21, 0)),
        ("openjdk 1.8.0-internal", (1, 8)),
        ("1", (1, 0)),
        ("", (0, 0)),
        ("unknown", (0, 0)),
    ],
)
def test_java_key(text: str, key: tuple[int, int]) -> None:
    assert java_key(text) == key


def test_java_9_and_later_are_newer_than_any_1_x() -> None:
    assert java_key("1.8.0_401") < java_key("9") < java_key("11.0.1") < java_key("17")


def test_a_good_host_gives_its_inventory() -> None:
    session = FakeSession(GOOD_REPLY)
    inventory = probe(session, df_paths=["/opt/sequoiacm"])
    assert inventory.host == "h1"
    assert inventory.java_home == "/usr/local/java/jdk1.8.0_221"
    assert inventory.java_version == "1.8.0_221"
    assert inventory.services["gateway"] == InstalledService(
        "gateway", "3.1.2", (Node(8080, 1326, True), Node(8081, None, False))
    )
    assert inventory.version_of("gateway") == "3.1.2"
    assert inventory.version_of("daemon") is None
    assert inventory.version_of("om-server") is None
    assert inventory.free == {"/opt/sequoiacm": 5000000}


def test_the_check_asks_sudo_then_runs_the_probe_as_the_install_user() -> None:
    session = FakeSession(GOOD_REPLY)
    probe(session, java_home="/opt/jdk", admin_user="root", df_paths=["/opt/backup"])
    sudo, agent_call = session.calls
    assert sudo == {"argv": ["true"], "user": "root", "env": None, "timeout": 60.0}
    assert agent_call["user"] == "scmadmin"
    assert agent_call["env"] == {"JAVA_HOME": "/opt/jdk"}
    # The agent's own budget is the step's timeout; the control side waits a margin longer.
    assert agent_call["timeout"] == 120.0 + STEP_MARGIN
    assert agent_call["argv"][:3] == ["python3", "-I", "-c"]
    assert agent_call["argv"][5] == "probe"
    spec = json.loads(agent_call["argv"][6])
    assert spec.pop("step_timeout") == 120.0
    assert spec == {
        "install_path": "/opt/sequoiacm",
        "java_home": "/opt/jdk",
        "df_paths": ["/opt/backup"],
        "services": [s.to_spec() for s in SERVICES],
    }


def test_without_an_admin_user_there_is_no_sudo_check_and_no_java_env() -> None:
    session = FakeSession(GOOD_REPLY, sudo_ok=False)
    probe(session, admin_user=None)
    assert len(session.calls) == 1
    assert session.calls[0]["env"] is None


def test_a_user_who_cannot_sudo_is_refused() -> None:
    session = FakeSession(GOOD_REPLY, sudo_ok=False)
    with pytest.raises(HostCheckError) as caught:
        probe(session)
    assert str(caught.value) == "[h1] the SSH user cannot sudo: [h1] sudo: a password is required"
    assert caught.value.exit_code == 2
    assert len(session.calls) == 1  # nothing else ran


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"install_path_exists": False}, "[h1] install path /opt/sequoiacm does not exist"),
        (
            {"java_home": ""},
            "[h1] JAVA_HOME is not set: give JavaHome in the config or export it in /etc/profile",
        ),
        (
            {"java_home": None},
            "[h1] JAVA_HOME is not set: give JavaHome in the config or export it in /etc/profile",
        ),
        ({"java_version": ""}, "[h1] cannot run /usr/local/java/jdk1.8.0_221/bin/java -version"),
        (
            {"java_version": "1.7.0_80"},
            "[h1] Java 1.7.0_80 (/usr/local/java/jdk1.8.0_221/bin/java, first on PATH) is too old; "
            "SequoiaCM needs 1.8 or newer",
        ),
        (
            {"java": "/usr/bin/java"},
            "[h1] /usr/local/java/jdk1.8.0_221/bin/java is missing or not executable "
            "(the first java on PATH is /usr/bin/java)",
        ),
        (
            {"java": None},
            "[h1] /usr/local/java/jdk1.8.0_221/bin/java is missing or not executable (no java is on PATH)",
        ),
    ],
    ids=[
        "no-install-path", "empty-java-home", "no-java-home", "java-does-not-run", "old-java",
        "other-java-first", "no-java",
    ],
)
def test_a_bad_host_is_refused_with_one_clear_line(change: dict[str, Any], message: str) -> None:
    session = FakeSession({**GOOD_REPLY, **change})
    with pytest.raises(HostCheckError) as caught:
        probe(session)
    assert str(caught.value) == message


@pytest.mark.parametrize("version", ["1.8.0_221", "11.0.2", "17.0.9", "21"])
def test_java_8_and_later_pass(version: str) -> None:
    assert probe(FakeSession({**GOOD_REPLY, "java_version": version})).java_version == version


def test_an_agent_failure_fails_the_host_check_naming_the_host() -> None:
    error = "cannot list the nodes on h1: `scmctl.sh list -m local` exited 1"
    session = FakeSession({"ok": False, "error": error})
    with pytest.raises(HostCheckError) as caught:
        probe(session)
    assert str(caught.value) == f"[h1] probe failed: {error}"
    assert caught.value.exit_code == 2
