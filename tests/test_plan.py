"""The upgrade plan: order, skipped and absent services, explicit-only services, refusals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from scmflow.catalog import Catalog, load_catalog
from scmflow.compatibility import Compatibility, load_compatibility
from scmflow.errors import PlanError
from scmflow.inventory import HostInventory, InstalledService, Node
from scmflow.plan import Pair, Plan, PlannedNode, Skipped, group_stages, make_plan, service_order

CATALOG: Catalog = load_catalog()
COMPAT: Compatibility = load_compatibility(catalog=CATALOG)
ALL = CATALOG.names()

Installed = Mapping[str, str | tuple[str, Sequence[tuple[int | None, bool]]]]


def inventory(host: str, installed: Installed) -> HostInventory:
    """A host with `installed` services: name -> version, or (version, [(port, running), ...])."""
    services = {}
    for name, value in installed.items():
        version, nodes = (value, ()) if isinstance(value, str) else value
        services[name] = InstalledService(
            name=name,
            version=version,
            nodes=tuple(Node(port=p, pid=100 if r else None, running=r) for p, r in nodes),
        )
    return HostInventory(
        host=host, java_home="/opt/jdk", java_version="1.8.0_221", services=services, free={}
    )


def plan(
    inventories: Sequence[HostInventory],
    *,
    services: Sequence[str] | None = None,
    release: str = "3.2.2",
    available: Sequence[str] = ALL,
) -> Plan:
    return make_plan(
        catalog=CATALOG,
        compatibility=COMPAT,
        hosts=[i.host for i in inventories],
        inventories={i.host: i for i in inventories},
        services=services,
        release_version=release,
        available=available,
    )


def keys(p: Plan) -> list[tuple[str, str]]:
    return [pair.key for pair in p.pairs]


def test_pairs_follow_priority_then_catalog_order_then_host_order() -> None:
    installed = {
        "gateway": "3.1.2",
        "config-server": "3.1.2",
        "mq-server": "3.1.2",
        "auth-server": "3.1.2",
        "service-center": "3.1.2",
        "schedule-server": "3.1.2",
        "daemon": "3.1.2",
    }
    # hosts in config order b, a: that order is kept within every service
    result = plan([inventory("b", installed), inventory("a", installed)])
    assert [s for _, s in keys(result)][::2] == [
        "service-center",  # 0
        "auth-server",  # 2, before mq-server by catalog order
        "mq-server",  # 2
        "config-server",  # 3, before schedule-server by catalog order
        "schedule-server",  # 3
        "gateway",  # 4
        "daemon",  # 200
    ]
    assert [h for h, _ in keys(result)] == ["b", "a"] * 7
    assert result.hosts() == ("b", "a")
    assert [[p.key for p in stage] for stage in result.stages()][:2] == [
        [("b", "service-center"), ("a", "service-center")],
        [("b", "auth-server"), ("a", "auth-server")],
    ]


def test_a_service_on_some_hosts_only_is_planned_where_installed() -> None:
    result = plan([inventory("h1", {"gateway": "3.1.2"}), inventory("h2", {"content-server": "3.1.2"})])
    assert keys(result) == [("h1", "gateway"), ("h2", "content-server")]


def test_not_newer_services_are_skipped_and_listed() -> None:
    result = plan(
        [
            inventory("h1", {"gateway": "3.2.2", "content-server": "3.1.2"}),
            inventory("h2", {"gateway": "3.6.0", "content-server": "3.2.2"}),
            inventory("h3", {"gateway": "3.2.1"}),
        ],
        services=["gateway", "content-server"],
    )
    assert keys(result) == [("h3", "gateway"), ("h1", "content-server")]
    assert result.not_newer == (
        Skipped("h1", "GATEWAY", "3.2.2"),
        Skipped("h2", "GATEWAY", "3.6.0"),
        Skipped("h2", "CONTENT_SERVER", "3.2.2"),
    )
    assert result.absent == ()


def test_version_compare_is_numeric_on_three_parts() -> None:
    # 3.2.10 is newer than 3.2.9 (not a string compare); 3.2 == 3.2.0
    result = plan(
        [inventory("h1", {"gateway": "3.2.10", "om-server": "3.2"})],
        services=["gateway", "om-server"],
        release="3.2.9",
    )
    assert keys(result) == [("h1", "om-server")]
    assert result.not_newer == (Skipped("h1", "GATEWAY", "3.2.10"),)
    same = plan([inventory("h1", {"gateway": "3.2"})], services=["gateway"], release="3.2.0")
    assert same.pairs == () and same.not_newer == (Skipped("h1", "GATEWAY", "3.2"),)


def test_named_services_installed_nowhere_are_listed_as_absent() -> None:
    result = plan(
        [inventory("h1", {"gateway": "3.1.2"}), inventory("h2", {"gateway": "3.1.2"})],
        services=["om-server", "gateway", "s3-server"],
    )
    assert keys(result) == [("h1", "gateway"), ("h2", "gateway")]
    # in upgrade order, as printed names
    assert result.absent == ("OM_SERVER", "S3_SERVER")


def test_a_service_found_only_not_newer_is_not_absent() -> None:
    result = plan([inventory("h1", {"gateway": "3.2.2"})], services=["gateway"])
    assert result.pairs == () and result.absent == ()


@pytest.mark.parametrize("name", ["non-service", "scmsystools"])
def test_explicit_only_services_are_planned_on_every_host_when_named(name: str) -> None:
    hosts = [inventory("h1", {"gateway": "3.1.2"}), inventory("h2", {name: "3.1.2"})]
    named = plan(hosts, services=["gateway", name])
    printed = CATALOG.get(name).printed
    assert keys(named) == [("h1", "gateway"), ("h1", name), ("h2", name)]
    absent_pair, present_pair = named.pairs[1], named.pairs[2]
    assert absent_pair.old_version is None
    assert absent_pair.label() == f"[h1]:{printed}:none to 3.2.2"
    assert present_pair.old_version == "3.1.2"
    assert named.absent == ()


def test_without_a_selection_every_service_installed_nowhere_is_absent() -> None:
    # the vendor manual's sample: all services selected, the missing ones all warned about
    installed = {
        n: "3.2.0" for n in ALL if n not in ("mq-server", "fulltext-server", "scmsystools", "non-service")
    }
    result = plan([inventory("h1", installed)])
    assert result.absent == ("MQ_SERVER", "FULLTEXT_SERVER", "SCMSYSTOOLS", "NON_SERVICE[doc, driver, tools]")
    assert len(result.pairs) == len(installed)


@pytest.mark.parametrize("name", ["non-service", "scmsystools"])
def test_explicit_only_services_are_not_planned_where_absent_unless_named(name: str) -> None:
    hosts = [inventory("h1", {"gateway": "3.1.2"}), inventory("h2", {name: "3.1.2"})]
    everything = plan(hosts)
    assert (("h1", name) in keys(everything), ("h2", name) in keys(everything)) == (False, True)


def test_an_unsupported_upgrade_path_is_refused_naming_host_service_and_versions() -> None:
    hosts = [inventory("h1", {"gateway": "3.1.2"}), inventory("h2", {"gateway": "2.4.0"})]
    with pytest.raises(PlanError) as caught:
        plan(hosts)
    assert str(caught.value) == (
        "[h2]:GATEWAY: cannot upgrade 2.4.0 to 3.2.2: SequoiaCM 2.x can only be upgraded to 2.x"
    )


def test_an_unknown_old_series_is_refused() -> None:
    with pytest.raises(
        PlanError,
        match=r"^\[h1\]:CONTENT_SERVER: cannot upgrade 1\.0\.0 to 3\.2\.2: "
        r"no upgrade path is known from SequoiaCM 1\.0\.0$",
    ):
        plan([inventory("h1", {"content-server": "1.0.0"})])


def test_a_release_without_the_package_is_refused() -> None:
    with pytest.raises(PlanError) as caught:
        plan(
            [inventory("h1", {"gateway": "3.1.2", "om-server": "3.1.2"})],
            available=[n for n in ALL if n != "om-server"],
        )
    assert str(caught.value) == "[h1]:OM_SERVER: the release 3.2.2 has no package for om-server"


def test_crossing_3_6_1_moves_config_server_first() -> None:
    installed = {"service-center": "3.2.2", "config-server": "3.2.2", "gateway": "3.2.2"}
    hosts = [inventory("h1", installed), inventory("h2", installed)]
    crossing = plan(hosts, release="3.6.1")
    assert keys(crossing) == [
        ("h1", "config-server"),
        ("h2", "config-server"),
        ("h1", "service-center"),
        ("h2", "service-center"),
        ("h1", "gateway"),
        ("h2", "gateway"),
    ]
    within = plan(hosts, release="3.6.0")
    assert [s for _, s in keys(within)][::2] == ["service-center", "config-server", "gateway"]


def test_the_3_6_1_rule_applies_when_any_installed_version_is_below_it() -> None:
    hosts = [
        inventory("h1", {"service-center": "3.6.1", "config-server": "3.6.1"}),
        inventory("h2", {"service-center": "3.6.0", "config-server": "3.6.1"}),
    ]
    result = plan(hosts, release="3.6.2")
    assert [s for _, s in keys(result)][:2] == ["config-server", "config-server"]


def test_service_order_puts_rule_services_first() -> None:
    ordered = service_order(
        CATALOG, ["gateway", "config-server", "service-center"], COMPAT, ["3.2.2"], "3.6.1"
    )
    assert [s.name for s in ordered] == ["config-server", "service-center", "gateway"]


def test_service_selection_keeps_upgrade_order_not_the_order_named() -> None:
    installed = {"gateway": "3.1.2", "service-center": "3.1.2", "content-server": "3.1.2"}
    result = plan([inventory("h1", installed)], services=["gateway", "service-center"])
    assert keys(result) == [("h1", "service-center"), ("h1", "gateway")]


def test_pair_labels_nodes_and_records() -> None:
    result = plan(
        [
            inventory(
                "h1",
                {"gateway": ("3.1.2", [(8080, True), (8081, False)]), "daemon": ("3.1.2", [(None, True)])},
            )
        ],
        services=["gateway", "daemon"],
    )
    gateway, daemon = result.pairs
    assert gateway.label() == "[h1]:GATEWAY:3.1.2 to 3.2.2"
    assert gateway.label(reverse=True) == "[h1]:GATEWAY:3.2.2 to 3.1.2"
    assert gateway.nodes == (PlannedNode(8080, True), PlannedNode(8081, False))
    assert gateway.running_ports == (8080,)
    assert not gateway.daemon_running
    assert daemon.running_ports == () and daemon.daemon_running
    for p in result.pairs:
        assert Pair.from_record(p.to_record()) == p
    assert result.to_record() == {
        "release_version": "3.2.2",
        "pairs": [gateway.to_record(), daemon.to_record()],
        "not_newer": [],
        "absent": [],
    }


def test_group_stages_groups_consecutive_pairs_of_one_service() -> None:
    result = plan([inventory(h, {"gateway": "3.1.2", "content-server": "3.1.2"}) for h in ("h1", "h2", "h3")])
    stages = group_stages(result.pairs)
    assert [[p.key for p in s] for s in stages] == [
        [("h1", "gateway"), ("h2", "gateway"), ("h3", "gateway")],
        [("h1", "content-server"), ("h2", "content-server"), ("h3", "content-server")],
    ]
    assert group_stages([]) == []


def test_an_empty_cluster_plans_nothing_and_lists_every_named_service_absent() -> None:
    result = plan([inventory("h1", {})], services=["gateway", "service-center"])
    assert result.pairs == ()
    assert result.absent == ("SERVICE_CENTER", "GATEWAY")
