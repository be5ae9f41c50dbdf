"""The bad-input cases that reach the test hosts: refused cleanly, and no host changed.

Besides what tests/test_badinput.py checks, nothing changed on any host: its install,
backup and upgrade directories and its running nodes (the corpus is tests/badinput/).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scmflow.sandbox import NodeSpec, Topology
from tests.badinput_corpus import (
    Case,
    RecipeContext,
    assert_refused,
    expand,
    params,
    run_scm,
    snapshot,
)
from tests.e2e.sandbox_cluster import Scenario
from tests.hosts import TestCluster

# --- cases that reach the test hosts --------------------------------------------------------


def small_topology() -> Topology:
    """Two running nodes of two services sharing sequoiacm-cloud."""
    return Topology(
        services=("service-center", "gateway"),
        nodes=(NodeSpec("service-center", 8810), NodeSpec("gateway", 8080)),
    )


@pytest.fixture(scope="module")
def badinput_hosts(
    cluster3: TestCluster,
    releases: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scenario]:
    """The three test hosts with 3.1.2 installed (small topology), for this module's host cases."""
    work = tmp_path_factory.mktemp("badinput-hosts")
    s = Scenario(cluster=cluster3, releases=releases, work=work)
    cluster3.home(s.home)
    s.cleanup()
    try:
        s.install_all("3.1.2", small_topology())
        s.config()
        yield s
    finally:
        s.cleanup()


def host_state(s: Scenario) -> dict[str, Any]:
    """Installs, backup and upgrade dirs of every host, and which nodes answer."""
    state: dict[str, Any] = {"installs": s.digests(), "running": s.running()}
    for host in s.cluster.hosts:
        for mount in ("/opt/backup", "/opt/upgrade"):
            state[f"{host.name}:{mount}"] = snapshot(host.opt_dirs[mount])
    return state


@pytest.mark.parametrize("case", params(hosts=True))
def test_refused_after_checking_hosts(
    case: Case, badinput_hosts: Scenario, releases: dict[str, Path], tmp_path: Path
) -> None:
    s = badinput_hosts
    ctx = RecipeContext(tmp=tmp_path, releases=releases)
    extra = {"cfg": str(s.work / "upgrade.cfg")}
    argv = expand(case, ctx, extra)
    before_hosts = host_state(s)
    assert all(len(ports) == 2 for ports in before_hosts["running"].values())
    before_files = snapshot(tmp_path, ignore_logs=True)
    done = run_scm(argv, cwd=tmp_path, home=s.home, env=case.env)
    assert_refused(case, argv, done)
    assert "[INFO ] Checking the upgrade configuration... (0/2)" in done.stdout, "it should reach the hosts"
    assert host_state(s) == before_hosts
    assert snapshot(tmp_path, ignore_logs=True) == before_files, "no status file, no change to the inputs"
