"""The vendor upgrade matrix and version-dependent order rules (states/compatibility.toml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scmflow.catalog import load_catalog
from scmflow.compatibility import Compatibility, load_compatibility
from scmflow.errors import CatalogError, PlanError

# The vendor's list (compatibility.md, "兼容性列表"), plus 3.6 -> 3.6.
SERIES = ["2", "3.0", "3.1", "3.2", "3.6"]
ALLOWED = {
    "2": {"2"},
    "3.0": {"3.0", "3.1", "3.2", "3.6"},
    "3.1": {"3.1", "3.2", "3.6"},
    "3.2": {"3.2", "3.6"},
    "3.6": {"3.6"},
}
# A low and a high release of each series, so in-series upgrades are real upgrades.
LOW = {"2": "2.1.0", "3.0": "3.0.0", "3.1": "3.1.0", "3.2": "3.2.0", "3.6": "3.6.0"}
HIGH = {"2": "2.9.3", "3.0": "3.0.5", "3.1": "3.1.4", "3.2": "3.2.2", "3.6": "3.6.2"}


@pytest.fixture(scope="module")
def compat() -> Compatibility:
    return load_compatibility(catalog=load_catalog())


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "compatibility.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("old", SERIES)
@pytest.mark.parametrize("new", SERIES)
def test_vendor_matrix(compat: Compatibility, old: str, new: str) -> None:
    expected = new in ALLOWED[old]
    assert compat.allows(LOW[old], HIGH[new]) is expected
    reason = compat.why_not(LOW[old], HIGH[new])
    assert (reason is None) is expected
    if expected:
        return
    assert reason is not None
    if SERIES.index(new) > SERIES.index(old):
        assert reason.startswith(f"SequoiaCM {old}.x can only be upgraded to")
    else:
        assert reason.startswith("SequoiaCM does not support downgrades")


@pytest.mark.parametrize(
    ("old", "new"),
    [("3.6.2", "3.6.0"), ("3.2.2", "3.2.0"), ("3.2.0", "3.1.4"), ("3.0.0", "2.9.3")],
)
def test_downgrade_is_never_allowed(compat: Compatibility, old: str, new: str) -> None:
    assert not compat.allows(old, new)
    assert compat.why_not(old, new) == f"SequoiaCM does not support downgrades ({old} to {new})"


def test_message_lists_the_targets(compat: Compatibility) -> None:
    assert compat.why_not("3.1.0", "2.9.9") is not None
    assert compat.why_not("2.1", "3.0.0") == "SequoiaCM 2.x can only be upgraded to 2.x"
    assert compat.why_not("3.2.1", "4.0.0") == (
        "SequoiaCM 3.2.x can only be upgraded to 3.2.x, 3.6.x"
    )


@pytest.mark.parametrize("old", ["1.5.0", "3.3.0", "3.5.1", "4.0.0"])
def test_unknown_source_series(compat: Compatibility, old: str) -> None:
    assert compat.why_not(old, "9.0.0") == f"no upgrade path is known from SequoiaCM {old}"


def test_same_version_is_allowed(compat: Compatibility) -> None:
    assert compat.allows("3.2.2", "3.2.2")


def test_not_a_version(compat: Compatibility) -> None:
    assert compat.why_not("latest", "3.2.2") == "'latest' is not a version"
    assert compat.why_not("3.2.0", "") == "'' is not a version"


def test_series_of(compat: Compatibility) -> None:
    assert compat.series_of("2.4.1") == "2"
    assert compat.series_of("3.2") == "3.2"
    assert compat.series_of("3.4.0") is None


def test_most_specific_series_wins(tmp_path: Path) -> None:
    compat = load_compatibility(write(tmp_path, '[series]\n"3" = ["3"]\n"3.2" = ["3.2"]\n'))
    assert compat.series_of("3.2.5") == "3.2"
    assert compat.allows("3.1.0", "3.9.0")
    assert not compat.allows("3.2.0", "3.3.0")


@pytest.mark.parametrize(
    ("olds", "new", "first"),
    [
        (["3.6.0"], "3.6.1", ("config-server",)),
        (["3.2.2", "3.6.0"], "3.6.2", ("config-server",)),
        # One host still below 3.6.1 is enough.
        (["3.6.1", "3.6.1", "3.2.0"], "3.6.1", ("config-server",)),
        (["3.6.1"], "3.6.2", ()),
        (["3.2.0"], "3.6.0", ()),
        ([], "3.6.1", ()),
    ],
)
def test_first_services(
    compat: Compatibility, olds: list[str], new: str, first: tuple[str, ...]
) -> None:
    assert compat.first_services(olds, new) == first
    assert compat.first_services(iter(olds), new) == first, "any iterable, consumed once"


def test_rules_for_explains_the_order(compat: Compatibility) -> None:
    (rule,) = compat.rules_for(["3.2.2"], "3.6.1")
    assert rule.crossing == "3.6.1"
    assert "config-server" in rule.reason
    assert compat.rules_for(["3.6.1"], "3.6.2") == ()


def test_notices(compat: Compatibility) -> None:
    assert len(compat.notices_for(["3.1.0"], "3.2.2")) == 2
    (only,) = compat.notices_for(["3.2.0"], "3.2.2")
    assert "config-server first" in only
    assert compat.notices_for(["3.2.2"], "3.6.1") == ()


def test_first_services_merge_rules_in_order(tmp_path: Path) -> None:
    text = """
[series]
"3" = ["3"]
[[order_rule]]
crossing = "3.5.0"
first = ["config-server", "service-center"]
[[order_rule]]
crossing = "3.4.0"
first = ["service-center", "gateway"]
"""
    compat = load_compatibility(write(tmp_path, text))
    assert compat.first_services(["3.3.0"], "3.5.0") == (
        "config-server", "service-center", "gateway",
    )
    assert compat.first_services(["3.4.5"], "3.5.0") == ("config-server", "service-center")


def test_unparseable_installed_version(compat: Compatibility) -> None:
    with pytest.raises(PlanError, match="cannot compare versions: not a version: 'x.1'"):
        compat.first_services(["x.1"], "3.6.1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[series\n", "invalid TOML"),
        ('[[order_rule]]\ncrossing = "3.6.1"\nfirst = ["gateway"]\n', "missing or empty [series]"),
        ('[series]\n"3.x" = ["3.x"]\n', '[series] "3.x": a series is MAJOR or MAJOR.MINOR'),
        ('[series]\n"3.2" = []\n', '[series] "3.2": targets must be a non-empty list'),
        ('[series]\n"3.2" = "3.6"\n', '[series] "3.2": targets must be a non-empty list'),
        ('[series]\n"3.2" = ["3.6.1"]\n', "target '3.6.1' is not a series"),
        ('[series]\n"3.2" = ["3.1"]\n', "target 3.1 is older"),
        ('mode = "online"\n[series]\n"3" = ["3"]\n', "unknown keys mode"),
        ('[series]\n"3" = ["3"]\n[order_rule]\ncrossing = "3.1"\n', "'order_rule' must be an array"),
        ('[series]\n"3" = ["3"]\n[[order_rule]]\ncrossing = "3.1"\n', "order_rule #1: missing first"),
        (
            '[series]\n"3" = ["3"]\n[[order_rule]]\ncrossing = "soon"\nfirst = ["gateway"]\n',
            "order_rule #1: 'crossing' must be a version",
        ),
        (
            '[series]\n"3" = ["3"]\n[[order_rule]]\ncrossing = "3.1"\nfirst = []\n',
            "order_rule #1: 'first' must be a non-empty list",
        ),
        (
            '[series]\n"3" = ["3"]\n[[order_rule]]\ncrossing = "3.1"\nfirst = ["a"]\nwhy = "x"\n',
            "order_rule #1: unknown keys why",
        ),
        (
            '[series]\n"3" = ["3"]\n[[notice]]\ncrossing = "3.1"\ntext = " "\n',
            "notice #1: 'text' must be a non-empty string",
        ),
    ],
)
def test_bad_matrix(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as info:
        load_compatibility(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_rule_services_checked_against_the_catalog(tmp_path: Path) -> None:
    text = '[series]\n"3" = ["3"]\n[[order_rule]]\ncrossing = "3.1"\nfirst = ["conifg-server"]\n'
    path = write(tmp_path, text)
    assert load_compatibility(path).first_services(["3.0"], "3.1") == ("conifg-server",)
    with pytest.raises(CatalogError, match="order_rule #1: unknown service\\(s\\) conifg-server"):
        load_compatibility(path, catalog=load_catalog())


def test_unreadable_matrix(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read compatibility matrix"):
        load_compatibility(tmp_path / "absent.toml")
