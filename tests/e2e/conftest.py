"""Fixtures for end-to-end tests: real sshd test hosts on this machine (see tests/hosts.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# tests/hosts.py is imported as `tests.hosts`; make the checkout importable even when the
# project is installed as a wheel rather than in editable mode.
_CHECKOUT = str(Path(__file__).resolve().parents[2])
if _CHECKOUT not in sys.path:
    sys.path.insert(0, _CHECKOUT)

from tests.e2e.sandbox_cluster import STANDARD_PORTS, Scenario, standard_topology  # noqa: E402
from tests.hosts import TestCluster, missing_prerequisite, start_cluster  # noqa: E402

ClusterFactory = Callable[[int], TestCluster]
_E2E_DIR = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/e2e/ is e2e, marked or not; `-m "not e2e"` is the unit suite."""
    for item in items:
        if _E2E_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)


def _require_test_hosts(reason: str | None) -> None:
    """Skip (or, under CI, fail) when this machine cannot run test hosts."""
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"end-to-end test hosts cannot run here: {reason}", pytrace=False)
    pytest.skip(f"end-to-end test hosts cannot run here: {reason}")


@pytest.fixture(scope="session")
def host_cluster_factory() -> Iterator[ClusterFactory]:
    """Start clusters of K test hosts on demand; all are stopped at the end of the session."""
    clusters: list[TestCluster] = []
    checked: list[str | None] = []

    def make(k: int) -> TestCluster:
        if not checked:
            checked.append(missing_prerequisite())
        _require_test_hosts(checked[0])
        cluster = start_cluster(k)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


@pytest.fixture(scope="session")
def cluster2(host_cluster_factory: ClusterFactory) -> TestCluster:
    """Two running test hosts shared by the whole session."""
    return host_cluster_factory(2)


@pytest.fixture(scope="session")
def cluster3(host_cluster_factory: ClusterFactory) -> TestCluster:
    """Three running test hosts shared by the whole session."""
    return host_cluster_factory(3)


@pytest.fixture
def standard_scenario(
    cluster2: TestCluster, releases: dict[str, Path], tmp_path: Path
) -> Iterator[Scenario]:
    """Both hosts of cluster2 with the standard 3.1.2 install running, and a config for them."""
    s = Scenario(cluster=cluster2, releases=releases, work=tmp_path)
    cluster2.home(s.home)
    s.cleanup()
    s.install_all("3.1.2", standard_topology(STANDARD_PORTS))
    s.config()
    try:
        yield s
    finally:
        s.cleanup()
