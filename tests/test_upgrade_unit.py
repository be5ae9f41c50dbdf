"""Pieces of the upgrade flow that need no host: the status header, progress, layout, check."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from scmflow.catalog import load_catalog
from scmflow.cli.render import CollectingReporter
from scmflow.compatibility import load_compatibility
from scmflow.config import load_config, parse_config
from scmflow.errors import JournalError, ScmflowError
from scmflow.events import Step
from scmflow.inventory import HostInventory, InstalledService, Node
from scmflow.journal import Journal
from scmflow.journalreader import read_journal
from scmflow.plan import make_plan
from scmflow.release import load_release
from scmflow.runstate import HostEntry, Progress, open_run
from scmflow.session.base import CommandResult
from scmflow.statusformat import find_secret_key
from scmflow.upgrade import CheckedCluster, Target, build_header, check_cluster, make_layout

CATALOG = load_catalog()
COMPAT = load_compatibility(catalog=CATALOG)
SECRET = "Zq-s3cr3t-pw"
CONFIG = f"""\
[installconfig]
InstallPath,          InstallUser
/opt/,                scmadmin

[host]
HostName,      SshPort, User,   Password,  JavaHome
scmServer-a,   22,      root,   {SECRET},  /usr/local/java/jdk1.8.0_221
scmServer-b,   2222,    admin,  {SECRET},
scmServer-c,   22,      root,   ,

[config]
upgradePackPath=/opt/upgrade/sequoiacm/
backupPath=/opt/backup/sequoiacm
"""


def target_from_config(text: str = CONFIG) -> Target:
    """The Target the CLI builds from a parsed config (see scmflow/cli/cluster_upgrade.py)."""
    config = parse_config(text, "upgrade.cfg", CATALOG)
    return Target(
        install_path=config.install_path,
        install_user=config.install_user,
        hosts=tuple(
            HostEntry(h.name, h.port, h.user, h.java_home, password_auth=h.password_source != "none")
            for h in config.hosts
        ),
        services=config.services,
        upgrade_pack_path=config.upgrade_pack_path,
        backup_path=config.backup_path,
    )


def inventory(host: str, installed: Mapping[str, str], java_home: str = "/opt/jdk") -> HostInventory:
    return HostInventory(
        host=host,
        java_home=java_home,
        java_version="1.8.0_221",
        services={n: InstalledService(n, v, (Node(8080, 10, True),)) for n, v in installed.items()},
        free={},
    )


@pytest.fixture
def checked(releases: dict[str, Path], tmp_path: Path) -> CheckedCluster:
    """scmServer-a and -b carry gateway 3.1.2; scmServer-c has nothing to upgrade."""
    target = target_from_config()
    release = load_release(releases["3.2.2"], CATALOG, CATALOG.names(), work_dir=tmp_path / "work")
    inventories = {
        "scmServer-a": inventory("scmServer-a", {"gateway": "3.1.2"}),
        "scmServer-b": inventory("scmServer-b", {"gateway": "3.1.2"}, java_home="/usr/lib/jvm/java-8"),
        "scmServer-c": inventory("scmServer-c", {"gateway": "3.2.2"}),
    }
    plan = make_plan(
        catalog=CATALOG,
        compatibility=COMPAT,
        hosts=[h.name for h in target.hosts],
        inventories=inventories,
        services=None,
        release_version=release.version,
        available=tuple(release.packages),
    )
    return CheckedCluster(target=target, release=release, inventories=inventories, plan=plan, sessions={})


def test_the_header_holds_no_password_even_when_hosts_log_in_with_one(
    checked: CheckedCluster, tmp_path: Path
) -> None:
    layout = make_layout(checked.target, "2024-05-01-08:00:00", 300)
    argv = ["scm.py", "cluster", "--upgrade", "--upgrade-conf", "upgrade.cfg"]
    header = build_header(checked, layout, argv=argv, stamp="2024-05-01-08:00:00", parallel=2)
    assert SECRET not in json.dumps(header, default=str)
    assert find_secret_key(header) is None
    assert [h["auth"] for h in header["hosts"]] == ["password", "password"]
    # and the journal, which refuses secret keys, stores it as it is
    journal = Journal.create(tmp_path / "status", header)
    journal.close()
    assert SECRET.encode() not in journal.path.read_bytes()
    assert read_journal(journal.path).header["hosts"] == header["hosts"]


def test_the_header_records_what_a_rollback_needs(checked: CheckedCluster) -> None:
    layout = make_layout(checked.target, "2024-05-01-08:00:00", 120)
    header = build_header(checked, layout, argv=["scm.py"], stamp="2024-05-01-08:00:00", parallel=3)
    assert header["tool"] == "scmflow" and header["parallel"] == 3 and header["argv"] == ["scm.py"]
    assert header["stamp"] == "2024-05-01-08:00:00"
    assert header["layout"] == layout.to_record()
    # only hosts with a pair; JAVA_HOME as the check found it on each host
    assert header["hosts"] == [
        {"name": "scmServer-a", "port": 22, "user": "root", "java_home": "/opt/jdk", "auth": "password"},
        {
            "name": "scmServer-b",
            "port": 2222,
            "user": "admin",
            "java_home": "/usr/lib/jvm/java-8",
            "auth": "password",
        },
    ]
    assert header["plan"] == [p.to_record() for p in checked.plan.pairs]
    cloud = checked.release.package_for("gateway")
    assert header["release"] == {
        "root": str(checked.release.root),
        "version": "3.2.2",
        "packages": {"gateway": {"name": cloud.name, "sha256": cloud.sha256, "size": cloud.size}},
    }
    assert HostEntry.from_record(header["hosts"][1]) == replace(
        checked.target.hosts[1], java_home="/usr/lib/jvm/java-8"
    )


def test_the_header_records_the_config_file_by_path_and_sha256_never_its_content(
    checked: CheckedCluster, tmp_path: Path
) -> None:
    cfg = tmp_path / "upgrade.cfg"
    cfg.write_text(CONFIG)
    recorded = load_config(cfg, CATALOG).file
    assert recorded is not None
    checked.target = replace(checked.target, config=recorded)
    layout = make_layout(checked.target, "2024-05-01-08:00:00", 300)
    header = build_header(checked, layout, argv=["scm.py"], stamp="2024-05-01-08:00:00", parallel=1)

    assert header["config"] == {"path": str(cfg), "sha256": hashlib.sha256(cfg.read_bytes()).hexdigest()}
    journal = Journal.create(tmp_path / "status", header)
    journal.append({"kind": "run", "detail": {"action": "upgrade", "result": "started"}})
    journal.close()
    assert SECRET.encode() not in journal.path.read_bytes()
    state = open_run(journal.path)
    state.journal.close()
    assert state.config == recorded


def test_a_status_file_without_a_config_record_still_opens(checked: CheckedCluster, tmp_path: Path) -> None:
    layout = make_layout(checked.target, "s", 300)
    header = build_header(checked, layout, argv=[], stamp="s", parallel=1)
    assert "config" not in header  # a target without a config file (the demo)
    journal = Journal.create(tmp_path / "status", header)
    journal.close()
    state = open_run(journal.path)
    state.journal.close()
    assert state.config is None and len(state.pairs) == 2


@pytest.mark.parametrize(
    "record",
    ["/opt/upgrade.cfg", {"path": "upgrade.cfg", "sha256": "0" * 64}, {"path": "/u.cfg", "sha256": "beef"}],
)
def test_a_malformed_config_record_is_refused_for_rollback_and_resume(
    checked: CheckedCluster, tmp_path: Path, record: object
) -> None:
    header = build_header(checked, make_layout(checked.target, "s", 300), argv=[], stamp="s", parallel=1)
    journal = Journal.create(tmp_path / "status", {**header, "config": record})
    journal.close()
    with pytest.raises(JournalError, match=r"its header lacks a valid config$"):
        open_run(journal.path)


def test_each_header_has_its_own_run_id(checked: CheckedCluster) -> None:
    layout = make_layout(checked.target, "s", 300)
    ids = {build_header(checked, layout, argv=[], stamp="s", parallel=1)["run_id"] for _ in range(3)}
    assert len(ids) == 3


def test_host_entry_records_key_login_as_key() -> None:
    entry = HostEntry("h", 22, "root", None, password_auth=False)
    assert entry.to_record() == {"name": "h", "port": 22, "user": "root", "java_home": None, "auth": "key"}
    assert HostEntry.from_record(entry.to_record()) == entry


def test_make_layout_names_the_run_dirs_after_the_stamp() -> None:
    layout = make_layout(target_from_config(), "2024-05-01-08:00:00", 77)
    assert layout.upgrade_dir == "/opt/upgrade/sequoiacm/upgrade-2024-05-01-08:00:00"
    assert layout.backup_dir == "/opt/backup/sequoiacm/backup-2024-05-01-08:00:00"
    assert layout.install_path == "/opt/sequoiacm"
    assert layout.install_user == "scmadmin"
    assert layout.start_timeout == 77
    assert layout.admin_user == "root"


def test_progress_counts_once_per_step_across_threads() -> None:
    progress = Progress(200)
    seen: list[Step] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(50):
            step = progress.next()
            with lock:
                seen.append(step)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen, key=lambda s: s.done) == [Step(i, 200) for i in range(1, 201)]


# ----------------------------------------------------------------- check_cluster with fakes


class ProbeSession:
    """Answers the sudo check and the probe like a host with `installed` services."""

    def __init__(self, host: str, installed: Mapping[str, str], *, install_path_exists: bool = True) -> None:
        self.host = host
        self.reply = {
            "ok": True,
            "install_path_exists": install_path_exists,
            "java_home": "/opt/jdk",
            "java": "/opt/jdk/bin/java",
            "java_version": "1.8.0_221",
            "services": {
                n: {"version": v, "nodes": [{"port": 8080, "pid": 5, "running": True}]}
                for n, v in installed.items()
            },
            "free": {},
        }
        self.closed = False

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
        out = "" if list(argv) == ["true"] else json.dumps(self.reply)
        return CommandResult(self.host, tuple(argv), 0, out, "", 0.0)

    def put(self, local: Path, remote: str, *, sha256: str | None = None, progress: Any = None) -> None:
        raise AssertionError("the check sends nothing")

    def close(self) -> None:
        self.closed = True


def run_check(
    releases: dict[str, Path], tmp_path: Path, sessions: dict[str, ProbeSession], parallel_ssh: int = 16
) -> Any:
    reporter = CollectingReporter()
    result = check_cluster(
        target_from_config(),
        release_dir=releases["3.2.2"],
        catalog=CATALOG,
        compatibility=COMPAT,
        connect=lambda names: {n: sessions[n] for n in names},
        reporter=reporter,
        work_dir=tmp_path / "work",
        parallel_ssh=parallel_ssh,
    )
    return result, reporter


class SlowProbeSession(ProbeSession):
    """A ProbeSession whose probe takes a moment, counting probes in flight on `gauge`."""

    def __init__(self, host: str, gauge: dict[str, Any]) -> None:
        super().__init__(host, {"gateway": "3.1.2"})
        self.gauge = gauge

    def run(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        with self.gauge["lock"]:
            self.gauge["now"] += 1
            self.gauge["most"] = max(self.gauge["most"], self.gauge["now"])
        time.sleep(0.1)
        with self.gauge["lock"]:
            self.gauge["now"] -= 1
        return super().run(argv, **kwargs)


@pytest.mark.parametrize("parallel_ssh", [1, 2, 16])
def test_hosts_are_checked_parallel_ssh_at_a_time(
    releases: dict[str, Path], tmp_path: Path, parallel_ssh: int
) -> None:
    gauge: dict[str, Any] = {"lock": threading.Lock(), "now": 0, "most": 0}
    sessions = {n: SlowProbeSession(n, gauge) for n in ("scmServer-a", "scmServer-b", "scmServer-c")}
    checked, _ = run_check(releases, tmp_path, dict(sessions), parallel_ssh)  # type: ignore[arg-type]
    checked.close()
    assert gauge["most"] == min(parallel_ssh, 3)


def test_check_cluster_plans_from_what_the_hosts_report(releases: dict[str, Path], tmp_path: Path) -> None:
    sessions = {
        "scmServer-a": ProbeSession("scmServer-a", {"gateway": "3.1.2", "content-server": "3.1.2"}),
        "scmServer-b": ProbeSession("scmServer-b", {"gateway": "3.2.2"}),
        "scmServer-c": ProbeSession("scmServer-c", {"content-server": "3.1.2"}),
    }
    checked, reporter = run_check(releases, tmp_path, sessions)
    assert [p.label() for p in checked.plan.pairs] == [
        "[scmServer-a]:GATEWAY:3.1.2 to 3.2.2",
        "[scmServer-a]:CONTENT_SERVER:3.1.2 to 3.2.2",
        "[scmServer-c]:CONTENT_SERVER:3.1.2 to 3.2.2",
    ]
    assert reporter.lines == [
        "[INFO ] Checking the upgrade configuration... (0/2)",
        "[INFO ] Checking the upgrade configuration: Host (1/2)",
        "[INFO ] Checking the upgrade configuration: Config (2/2)",
        "[INFO ] Check the upgrade configuration success",
    ]
    assert not any(s.closed for s in sessions.values())
    checked.close()
    assert all(s.closed for s in sessions.values())


def test_a_failed_host_check_names_every_bad_host_and_closes_sessions(
    releases: dict[str, Path], tmp_path: Path
) -> None:
    sessions = {
        "scmServer-a": ProbeSession("scmServer-a", {"gateway": "3.1.2"}),
        "scmServer-b": ProbeSession("scmServer-b", {}, install_path_exists=False),
        "scmServer-c": ProbeSession("scmServer-c", {}, install_path_exists=False),
    }
    with pytest.raises(ScmflowError) as caught:
        run_check(releases, tmp_path, sessions)
    assert str(caught.value) == (
        "host check failed: [scmServer-b] install path /opt/sequoiacm does not exist; "
        "[scmServer-c] install path /opt/sequoiacm does not exist"
    )
    assert all(s.closed for s in sessions.values())
