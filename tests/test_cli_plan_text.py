"""The plan as the operator reads it (scmflow/cli/plan_text.py): warnings, plan lines, dry-run steps."""

from __future__ import annotations

from scmflow.actions import RemoteLayout
from scmflow.catalog import load_catalog
from scmflow.cli.plan_text import dry_run_steps, plan_lines, plan_warnings
from scmflow.plan import Pair, Plan, PlannedNode, Skipped

CATALOG = load_catalog()
LAYOUT = RemoteLayout(
    install_path="/opt/sequoiacm",
    install_user="scmadmin",
    upgrade_dir="/opt/upgrade/sequoiacm/upgrade-<timestamp>",
    backup_dir="/opt/backup/sequoiacm/backup-<timestamp>",
    start_timeout=300,
)
UPGRADE_DIR = "/opt/upgrade/sequoiacm/upgrade-<timestamp>"
BACKUP_DIR = "/opt/backup/sequoiacm/backup-<timestamp>"


def pair(
    service: str, nodes: tuple[PlannedNode, ...] = (), old: str | None = "3.1.2", host: str = "h1"
) -> Pair:
    return Pair(host, service, CATALOG.get(service).printed, old, "3.2.2", nodes)


def test_plan_warnings_are_the_originals_texts() -> None:
    plan = Plan(
        release_version="3.2.2",
        pairs=(),
        not_newer=(
            Skipped("192.168.16.70", "GATEWAY", "3.2.2"),
            Skipped("192.168.16.71", "OM_SERVER", "3.6.0"),
        ),
        absent=("MQ_SERVER", "FULLTEXT_SERVER", "SCMSYSTOOLS", "NON_SERVICE[doc, driver, tools]"),
    )
    assert plan_warnings(plan) == [
        "The following specified service do not exist in the cluster:"
        "[MQ_SERVER, FULLTEXT_SERVER, SCMSYSTOOLS, NON_SERVICE[doc, driver, tools]]",
        "The following services are not older than the upgrade version 3.2.2 and will not be upgraded:"
        "[[192.168.16.70]:GATEWAY:3.2.2, [192.168.16.71]:OM_SERVER:3.6.0]",
    ]


def test_no_warnings_for_a_clean_plan() -> None:
    assert plan_warnings(Plan("3.2.2", (pair("gateway"),), (), ())) == []


def test_plan_lines_forward_and_reverse() -> None:
    pairs = [pair("gateway"), pair("non-service", old=None, host="h2")]
    assert plan_lines(pairs) == [
        "[h1]:GATEWAY:3.1.2 to 3.2.2",
        "[h2]:NON_SERVICE[doc, driver, tools]:none to 3.2.2",
    ]
    assert plan_lines(pairs, reverse=True) == [
        "[h1]:GATEWAY:3.2.2 to 3.1.2",
        "[h2]:NON_SERVICE[doc, driver, tools]:3.2.2 to none",
    ]


def test_dry_run_steps_of_a_cloud_service() -> None:
    gateway = pair("gateway", (PlannedNode(8080, True), PlannedNode(8081, False), PlannedNode(8082, True)))
    assert dry_run_steps(gateway, CATALOG, LAYOUT, "sequoiacm-cloud-3.2.2-release.tar.gz") == [
        "backup:  copy bin, *.py, jars/sequoiacm-cloud-gateway-*.jar, jars/sequoiacm-cloud-tools-*.jar "
        f"from /opt/sequoiacm/sequoiacm-cloud to {BACKUP_DIR}/gateway",
        "replace: stop nodes (scmcloudctl.sh stop -t gateway), swap bin, *.py, "
        "jars/sequoiacm-cloud-gateway-*.jar, jars/sequoiacm-cloud-tools-*.jar "
        f"for the contents of {UPGRADE_DIR}/sequoiacm-cloud-3.2.2-release.tar.gz",
        "restart: scmcloudctl.sh start --timeout 300 -p 8080; scmcloudctl.sh start --timeout 300 -p 8082",
        "verify:  version 3.2.2 on disk; nodes answer on 8080, 8082",
    ]


def test_dry_run_steps_keep_customer_jars_of_content_server() -> None:
    content = pair("content-server", (PlannedNode(15000, True), PlannedNode(15001, False)))
    steps = dry_run_steps(content, CATALOG, LAYOUT, "sequoiacm-content-3.2.2-release.tar.gz")
    assert steps[1] == (
        "replace: stop nodes (scmctl.sh stop --all), swap bin, *.py, lib for the contents of "
        f"{UPGRADE_DIR}/sequoiacm-content-3.2.2-release.tar.gz, "
        "keeping lib/hbase_transwarp, lib/hdfs_transwarp"
    )
    assert steps[2] == "restart: scmctl.sh start --timeout 300 -p 15000"


def test_dry_run_steps_of_the_daemon() -> None:
    steps = dry_run_steps(
        pair("daemon", (PlannedNode(None, True),)), CATALOG, LAYOUT, "daemon-3.2.2-release.tar.gz"
    )
    assert steps[1].startswith("replace: stop nodes (scmd.sh stop), swap bin, *.py, jars for ")
    assert steps[2:] == ["restart: scmd.sh start", "verify:  version 3.2.2 on disk; daemon process runs"]


def test_dry_run_steps_of_services_without_nodes() -> None:
    tools = dry_run_steps(pair("scmsystools"), CATALOG, LAYOUT, "sequoiacm-sys-tools-3.2.2-release.tar.gz")
    assert tools == [
        f"backup:  copy bin, *.py, jars from /opt/sequoiacm/sequoiacm-sys-tools to {BACKUP_DIR}/scmsystools",
        "replace: swap bin, *.py, jars for the contents of "
        f"{UPGRADE_DIR}/sequoiacm-sys-tools-3.2.2-release.tar.gz",
        "restart: nothing to start",
        "verify:  version 3.2.2 on disk",
    ]
    non_service = dry_run_steps(pair("non-service", old=None), CATALOG, LAYOUT, "n.tar.gz")
    assert (
        non_service[0] == f"backup:  copy doc, driver, tools from /opt/sequoiacm to {BACKUP_DIR}/non-service"
    )


def test_dry_run_steps_when_no_node_was_running() -> None:
    steps = dry_run_steps(pair("om-server", (PlannedNode(8500, False),)), CATALOG, LAYOUT, "om.tar.gz")
    assert steps[2:] == ["restart: nothing to start", "verify:  version 3.2.2 on disk"]
