"""Install a sandbox release the way SequoiaCM's installer lays out a host."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

from scmflow.catalog import Catalog, Service, load_catalog, parse_version
from scmflow.sandbox.errors import SandboxError
from scmflow.sandbox.packs import ships
from scmflow.sandbox.topology import Topology, check_topology

CUSTOMER_JARS = {
    "lib/hbase_transwarp/hbase-client-transwarp-5.2.3.jar": b"customer hbase client (transwarp)\n",
    "lib/hdfs_transwarp/hadoop-hdfs-transwarp-5.2.3.jar": b"customer hdfs client (transwarp)\n",
}


def install(
    release_root: Path,
    install_path: Path,
    topology: Topology,
    *,
    owner: tuple[int, int] | None = None,
    customer_jars: bool = False,
) -> None:
    """Install the release's version of the topology's services under `install_path`.

    Nodes get their config dirs but are not started; `owner` = (uid, gid) of the tree.
    """
    catalog = load_catalog()
    services = check_topology(topology, catalog)
    version = release_version(release_root)
    if customer_jars and "content-server" not in topology.services:
        raise SandboxError("customer jars need content-server in the topology")
    install_path.mkdir(parents=True, exist_ok=True)
    unpacked: set[str] = set()
    for service in services:
        if not ships(service, version):
            raise SandboxError(f"release {version} does not ship {service.name}")
        if service.name == "non-service":
            _copy_non_service(release_root, install_path, service)
        elif service.dir not in unpacked:
            _unpack(release_root / service.package_paths(version)[0], install_path)
            unpacked.add(service.dir)
    _drop_unselected_jars(catalog, install_path, unpacked, set(topology.services))
    _configure_nodes(catalog, install_path, topology, services)
    if customer_jars:
        _write_customer_jars(install_path / catalog.get("content-server").dir)
    if owner is not None:
        chown_tree(install_path, owner)


def release_version(release_root: Path) -> str:
    """The version of an unpacked release, read from its package names."""
    names = sorted(p.name for p in (release_root / "package").glob("*-release.tar.gz"))
    if not names:
        raise SandboxError(f"{release_root} holds no package/*-release.tar.gz")
    versions = {parse_version(n) for n in names}
    if len(versions) != 1:
        raise SandboxError(f"{release_root} mixes versions {sorted(versions)}")
    return versions.pop()


def _unpack(tarball: Path, install_path: Path) -> None:
    if not tarball.is_file():
        raise SandboxError(f"release package {tarball} is missing")
    with tarfile.open(tarball, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(install_path, filter="data")
        else:
            # Python before 3.11.4 (Debian 12's python3) has no extraction filters; the
            # packages are the sandbox's own.
            tar.extractall(install_path)  # noqa: S202


def _copy_non_service(release_root: Path, install_path: Path, service: Service) -> None:
    for name in service.package:
        source = release_root / name
        if not source.is_dir():
            raise SandboxError(f"release {release_root} lacks {name}/")
        shutil.copytree(source, install_path / name, dirs_exist_ok=True)


def _drop_unselected_jars(
    catalog: Catalog, install_path: Path, unpacked: set[str], selected: set[str]
) -> None:
    """A shared pack (sequoiacm-cloud) carries every service's jar; an install keeps only
    the selected ones, so the version-file glob finds nothing for the others."""
    for service in catalog.services:
        if service.dir in unpacked and service.name not in selected:
            for jar in (install_path / service.dir).glob(service.version_file):
                jar.unlink()


def _configure_nodes(
    catalog: Catalog, install_path: Path, topology: Topology, services: tuple[Service, ...]
) -> None:
    for service in services:
        if service.has_nodes:
            (install_path / service.dir / "log").mkdir(exist_ok=True)
        if service.node_kind == "daemon":
            _write(install_path / service.dir / "conf" / "daemon.properties",
                   "# sandbox daemon: watches the nodes of this host\nscanPeriodSeconds=60\n")
    for node in topology.nodes:
        service = catalog.get(node.service)
        if node.port is None:
            continue
        conf = install_path / service.dir / "conf" / service.name / str(node.port)
        _write(conf / "application.properties", _properties(service, node.port))
        _write(conf / "logback.xml", _LOGBACK.format(name=service.name, port=node.port))


def _properties(service: Service, port: int) -> str:
    return (
        f"server.port={port}\n"
        f"spring.application.name={service.name}\n"
        "eureka.client.serviceUrl.defaultZone=http://localhost:8800/eureka/\n"
    )


_LOGBACK = """<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>log/{name}/{port}/{name}.log</file>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"""


def _write_customer_jars(content_dir: Path) -> None:
    for rel, data in CUSTOMER_JARS.items():
        _write(content_dir / rel, data.decode())


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def chown_tree(root: Path, owner: tuple[int, int]) -> None:
    """chown `root` and everything under it (symlinks themselves, not their targets)."""
    uid, gid = owner
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.chown(Path(dirpath) / name, uid, gid, follow_symlinks=False)
