"""What each pack of a sandbox release holds, derived from the service catalog."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from scmflow.catalog import Catalog, Service, compare_versions

JAR_MAGIC = "SEQUOIACM-SANDBOX-JAR"
SYSTOOLS_CTL = "scmsysctl.sh"
NODE_HELPER = "scmsandbox.py"
DAEMON_HELPER = "scmdaemon.py"
TOP_PY = "release_info.py"
_PAYLOAD = Path(__file__).resolve().parent / "payload"

_WRAPPER = """#!/bin/bash
# SequoiaCM sandbox {ctl} {version}: the real script's interface, carried out by
# {helper} from this same bin/ directory, so replacing bin/ replaces both.
# Parameter expansion rather than dirname/basename: no fork, since tools call this often.
self=${{BASH_SOURCE[0]}}
case $self in */*) bin_dir=${{self%/*}} ;; *) bin_dir=. ;; esac
python=python3
if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; fi
exec "$python" -S "$bin_dir/{helper}" "${{self##*/}}" "$@"
"""


@dataclass(frozen=True)
class FileSpec:
    """One file of a pack: bytes and mode."""

    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class Pack:
    """A service directory's tarball: the catalog services that share `dir`."""

    dir: str
    tarball: str
    ctl: str | None
    role: str
    services: tuple[Service, ...]

    @property
    def jar_dir(self) -> str:
        """`jars` or `lib`: the first part of the version-file glob."""
        return self.services[0].version_file.split("/", 1)[0]

    def tools_jar(self, version: str) -> str | None:
        """The shared tools jar of a pack whose services run port nodes."""
        if self.role != "nodes":
            return None
        return f"{self.jar_dir}/{self.dir}-tools-{version}.jar"


def release_packs(catalog: Catalog, version: str) -> tuple[Pack, ...]:
    """One pack per service directory, in catalog order (non-service excluded)."""
    by_dir: dict[str, list[Service]] = {}
    for service in catalog.services:
        if service.dir:
            by_dir.setdefault(service.dir, []).append(service)
    return tuple(_pack(services, version) for services in by_dir.values())


def _pack(services: list[Service], version: str) -> Pack:
    first = services[0]
    role = {"port": "nodes", "daemon": "daemon", "none": "systools"}[first.node_kind]
    ctl = first.ctl if first.ctl else SYSTOOLS_CTL
    return Pack(first.dir, first.package_paths(version)[0], ctl, role, tuple(services))


def ships(service: Service, version: str) -> bool:
    """Whether release `version` carries `service` (`since` in the catalog)."""
    return service.since is None or compare_versions(version, service.since) >= 0


def pack_files(pack: Pack, version: str, pad: int = 0) -> dict[str, FileSpec]:
    """Files of the pack's tarball, relative to its top directory, `pad` random bytes added."""
    files: dict[str, FileSpec] = {}
    jars = [s.version_file.replace("*", version) for s in pack.services if ships(s, version)]
    tools = pack.tools_jar(version)
    padded = tools or jars[0]
    for jar in [*jars, *([tools] if tools else [])]:
        files[jar] = FileSpec(jar_bytes(jar, version, pad if jar == padded else 0))
    files.update(_bin_files(pack, version))
    files[TOP_PY] = FileSpec(
        f'"""SequoiaCM sandbox {pack.dir}, release {version}."""\n\nVERSION = "{version}"\n'
        .encode()
    )
    return files


def _bin_files(pack: Pack, version: str) -> dict[str, FileSpec]:
    assert pack.ctl is not None
    manifest = {
        "pack": pack.dir,
        "version": version,
        "role": pack.role,
        "tools_jar": pack.tools_jar("*"),
        "services": [
            {"name": s.name, "printed": s.printed, "version_file": s.version_file}
            for s in pack.services
        ],
    }
    wrapper = _WRAPPER.format(ctl=pack.ctl, version=version, helper=NODE_HELPER)
    files = {
        f"bin/{pack.ctl}": FileSpec(wrapper.encode(), 0o755),
        f"bin/{NODE_HELPER}": FileSpec((_PAYLOAD / NODE_HELPER).read_bytes(), 0o755),
        "bin/sandbox.json": FileSpec((json.dumps(manifest, indent=2) + "\n").encode()),
    }
    if pack.role == "daemon":
        files[f"bin/{DAEMON_HELPER}"] = FileSpec((_PAYLOAD / DAEMON_HELPER).read_bytes(), 0o755)
    return files


def jar_bytes(jar: str, version: str, pad: int = 0) -> bytes:
    """A sandbox jar: a header line the scripts read the version from, then filler."""
    artifact = Path(jar).name.removesuffix(f"-{version}.jar")
    head = f"{JAR_MAGIC} {artifact} {version}\nMain-Class: com.sequoiacm.sandbox.Main\n"
    return head.encode() + random_bytes(f"{version}:{jar}", pad)


def random_bytes(seed: str, size: int) -> bytes:
    """Incompressible bytes that depend only on `seed` and `size`."""
    return random.Random(seed).randbytes(size) if size > 0 else b""


def non_service_files(version: str) -> dict[str, FileSpec]:
    """doc/ and tools/ of the release root (driver/ holds a tarball, built separately)."""
    return {
        "doc/README.txt": FileSpec(f"SequoiaCM {version} documentation (sandbox)\n".encode()),
        "doc/html/index.html": FileSpec(
            f"<html><body><h1>SequoiaCM {version}</h1></body></html>\n".encode()
        ),
        f"tools/sequoiacm-tools-{version}.jar": FileSpec(
            jar_bytes(f"sequoiacm-tools-{version}.jar", version)
        ),
        "tools/README.txt": FileSpec(f"SequoiaCM {version} tools (sandbox)\n".encode()),
    }


def driver_files(version: str) -> dict[str, FileSpec]:
    """Contents of `driver/sequoiacm-driver-X-release.tar.gz`."""
    top = f"sequoiacm-driver-{version}"
    jar = f"sequoiacm-driver-core-{version}.jar"
    return {
        f"{top}/lib/{jar}": FileSpec(jar_bytes(jar, version)),
        f"{top}/README.txt": FileSpec(f"SequoiaCM Java driver {version} (sandbox)\n".encode()),
    }
