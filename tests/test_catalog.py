"""The service catalog (states/services.toml) and version arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from scmflow.catalog import Catalog, compare_versions, load_catalog, parse_version, version_key
from scmflow.errors import CatalogError

# The original tool's upgrade order (original-tool.md, "Services").
UPGRADE_ORDER = [
    "service-center",
    "service-trace",
    "auth-server",
    "mq-server",
    "config-server",
    "schedule-server",
    "gateway",
    "content-server",
    "admin-server",
    "om-server",
    "fulltext-server",
    "s3-server",
    "scmsystools",
    "daemon",
    "non-service",
]

GOOD_ENTRY = """
[[service]]
name = "gateway"
printed = "GATEWAY"
priority = 4
dir = "sequoiacm-cloud"
version_file = "jars/sequoiacm-cloud-gateway-*.jar"
ctl = "scmcloudctl.sh"
listed = "GATEWAY"
stop_args = ["stop", "-t", "gateway"]
node_kind = "port"
package = ["package/sequoiacm-cloud-{version}-release.tar.gz"]
replace = ["bin", "jars/sequoiacm-cloud-gateway-*.jar"]
"""


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "services.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_catalog_holds_the_fifteen_services(catalog: Catalog) -> None:
    assert sorted(catalog.names()) == sorted(UPGRADE_ORDER)
    assert len(catalog.services) == 15


def test_upgrade_order_matches_the_original(catalog: Catalog) -> None:
    assert [s.name for s in catalog.ordered()] == UPGRADE_ORDER


def test_printed_names_and_directories(catalog: Catalog) -> None:
    assert catalog.get("non-service").printed == "NON_SERVICE[doc, driver, tools]"
    assert catalog.get("non-service").dir == ""
    cloud = [s.name for s in catalog.services if s.dir == "sequoiacm-cloud"]
    assert sorted(cloud) == [
        "admin-server", "auth-server", "gateway", "service-center", "service-trace",
    ]
    assert catalog.get("content-server").version_file == "lib/sequoiacm-content-server-*.jar"
    assert catalog.get("content-server").preserve == ("lib/hbase_transwarp", "lib/hdfs_transwarp")


def test_node_kinds_and_stop_args(catalog: Catalog) -> None:
    assert not catalog.get("scmsystools").has_nodes
    assert not catalog.get("non-service").has_nodes
    assert catalog.get("daemon").node_kind == "daemon"
    assert catalog.get("gateway").stop_args == ("stop", "-t", "gateway")
    assert catalog.get("content-server").stop_args == ("stop", "--all")
    assert catalog.get("om-server").stop_args == ("stop", "-t", "all")
    assert catalog.get("service-trace").since == "3.2.0"


def test_package_paths(catalog: Catalog) -> None:
    assert catalog.get("gateway").package_paths("3.2.2") == (
        "package/sequoiacm-cloud-3.2.2-release.tar.gz",
    )
    assert catalog.get("daemon").package_paths("3.6.1") == ("package/daemon-3.6.1-release.tar.gz",)
    assert catalog.get("non-service").package_paths("3.2.2") == ("doc", "driver", "tools")


def test_get_and_find(catalog: Catalog) -> None:
    assert catalog.find("gatewya") is None
    with pytest.raises(CatalogError, match="unknown service 'gatewya'; known: service-center"):
        catalog.get("gatewya")


def test_to_spec_is_plain_data(catalog: Catalog) -> None:
    spec = catalog.get("content-server").to_spec()
    assert spec["preserve"] == ["lib/hbase_transwarp", "lib/hdfs_transwarp"]
    assert spec["stop_args"] == ["stop", "--all"]


@pytest.mark.parametrize(
    ("filename", "version"),
    [
        ("sequoiacm-cloud-gateway-3.2.2.jar", "3.2.2"),
        ("jars/sequoiacm-cloud-servicecenter-3.6.1.jar", "3.6.1"),
        ("/opt/sequoiacm/sequoiacm-content/lib/sequoiacm-content-server-3.0.0.jar", "3.0.0"),
        ("sequoiacm-daemon-tools-2.4.jar", "2.4"),
        ("sequoiacm-cloud-3.2.2-release.tar.gz", "3.2.2"),
        ("daemon-3.2.2-release.tar.gz", "3.2.2"),
        ("driver/sequoiacm-driver-3.6.0-release.tar.gz", "3.6.0"),
        ("sequoiacm-sys-tools-3.6.1-release.tgz", "3.6.1"),
    ],
)
def test_parse_version(filename: str, version: str) -> None:
    assert parse_version(filename) == version


@pytest.mark.parametrize(
    "filename", ["sequoiacm.jar", "sequoiacm-cloud-gateway.jar", "3.2.2.jar", "x-release.tar.gz"]
)
def test_parse_version_without_version(filename: str) -> None:
    with pytest.raises(ValueError, match="no version"):
        parse_version(filename)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("3.2.2", "3.2.2", 0),
        ("3.2", "3.2.0", 0),
        ("3", "3.0.0", 0),
        ("3.2.2.1", "3.2.2", 0),  # only the first three parts count
        ("3.2.2.9", "3.2.2.1", 0),
        ("3.2.1", "3.2.2", -1),
        ("3.2.10", "3.2.9", 1),  # numeric, not textual
        ("3.10.0", "3.9.9", 1),
        ("2.9.9", "3.0.0", -1),
        ("3.6.1", "3.6.0", 1),
    ],
)
def test_compare_versions(a: str, b: str, expected: int) -> None:
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


def test_version_key() -> None:
    assert version_key("3.2") == (3, 2, 0)
    assert version_key("3.2.2.7") == (3, 2, 2)
    with pytest.raises(ValueError, match="not a version"):
        version_key("three")


def test_good_minimal_catalog_loads(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, GOOD_ENTRY))
    assert catalog.names() == ("gateway",)
    assert catalog.get("gateway").preserve == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[service]\nname = 1", "invalid TOML"),
        ("title = 'no services'", "no [[service]] entries"),
        (GOOD_ENTRY.replace('printed = "GATEWAY"\n', ""), "service #1: missing printed"),
        (GOOD_ENTRY + "colour = 'red'\n", "service 'gateway': unknown keys colour"),
        (GOOD_ENTRY.replace('"port"', '"socket"'), "'node_kind' must be one of port"),
        (GOOD_ENTRY.replace("priority = 4", 'priority = "4"'), "'priority' must be an integer"),
        (GOOD_ENTRY.replace("priority = 4", "priority = true"), "'priority' must be an integer"),
        (GOOD_ENTRY.replace('ctl = "scmcloudctl.sh"\n', ""), "needs a 'ctl' script"),
        (GOOD_ENTRY.replace('listed = "GATEWAY"\n', ""), "needs 'listed'"),
        (GOOD_ENTRY.replace('listed = "GATEWAY"', 'listed = "GATEWAY_"'), "'listed' must be"),
        (GOOD_ENTRY.replace('"bin",', '"../bin",'), "path '../bin' must stay inside"),
        (GOOD_ENTRY.replace('"bin",', '"/bin",'), "path '/bin' must stay inside"),
        (GOOD_ENTRY.replace('replace = ["bin", ', "replace = [1, "), "'replace' must be a list"),
        (
            GOOD_ENTRY.replace(
                'package = ["package/sequoiacm-cloud-{version}-release.tar.gz"]', "package = []"
            ),
            "'package' and 'replace' must not be empty",
        ),
        (GOOD_ENTRY + 'since = "soon"\n', "'since' must be a version"),
        (GOOD_ENTRY + GOOD_ENTRY, "duplicate service names: gateway"),
    ],
)
def test_bad_catalog(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_catalog(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read service catalog"):
        load_catalog(tmp_path / "absent.toml")


# The reference's Nodes section: the ctl tools print getName().toUpperCase(), hyphen kept.
LISTED_BY_REFERENCE = {
    "service-center": "SERVICE-CENTER",
    "service-trace": "SERVICE-TRACE",
    "auth-server": "AUTH-SERVER",
    "mq-server": "MQ-SERVER",
    "config-server": "CONFIG-SERVER",
    "schedule-server": "SCHEDULE-SERVER",
    "gateway": "GATEWAY",
    "content-server": "CONTENT-SERVER",
    "admin-server": "ADMIN-SERVER",
    "om-server": "OM-SERVER",
    "fulltext-server": "FULLTEXT-SERVER",
    "s3-server": "S3-SERVER",
}


def test_listed_names_are_the_reference_listing_names() -> None:
    catalog = load_catalog()
    listed = {s.name: s.listed for s in catalog.services if s.node_kind == "port"}
    assert listed == LISTED_BY_REFERENCE


def test_lookup_accepts_every_spelling_an_operator_reads(catalog: Catalog) -> None:
    spellings = ("service-center", "SERVICE_CENTER", "service_center", "SERVICE-CENTER", " Service-Center ")
    for spelling in spellings:
        found = catalog.lookup(spelling)
        assert found is not None and found.name == "service-center"
    assert catalog.lookup("nosuch") is None
