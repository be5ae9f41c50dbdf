"""What each pack of a sandbox release holds, derived from the service catalog."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from scmflow.catalog import Catalog, Service, compare_versions

JAR_MAGIC = "SEQUOIACM-SANDBOX-JAR"
SYSTOOLS_CTL = "scmsysctl.sh"
NODE_HELPER = "scmsandbox"  # a package directory
DAEMON_HELPER = "scmdaemon.py"
TOP_PY = "release_info.py"
_PAYLOAD = Path(__file__).resolve().parent / "payload"

TOOL_MAIN_CLASS = "com.sequoiacm.tools.Main"
SPRING_BOOT_LAUNCHER = "org.springframework.boot.loader.JarLauncher"
# Exit codes of the ctl tools (ScmExitCode): no tools jar is FILE_NOT_FIND, several SYSTEM_ERROR.
_FILE_NOT_FOUND = 4
_SYSTEM_ERROR = 8

# Like the real script, the wrapper runs its tools jar with $JAVA_HOME/bin/java; the tool's
# code is @HELPER@ from this same bin/ (passed to the sandbox JVM as sandbox.program), so
# replacing bin/ replaces both. Tokens rather than str.format: bash is full of braces.
_WRAPPER = """#!/bin/bash
# SequoiaCM sandbox @CTL@ @VERSION@: runs the @PACK@ tools jar with $JAVA_HOME/bin/java.
# Parameter expansion and globs rather than dirname/ls: no fork, since tools call this often.
self=${BASH_SOURCE[0]}
case $self in */*) bin_dir=${self%/*} ;; *) bin_dir=. ;; esac
if [ -z "$JAVA_HOME" ]; then
  echo "ERROR: JAVA_HOME is not set; set it to the JDK that runs SequoiaCM" >&2
  exit 1
fi
java=$JAVA_HOME/bin/java
if [ ! -f "$java" ] || [ ! -x "$java" ]; then
  echo "ERROR: $java does not exist or is not executable; check JAVA_HOME" >&2
  exit 1
fi
jars=("$bin_dir"/../@TOOLS_JAR@)
if [ ! -f "${jars[0]}" ]; then
  echo "ERROR: expected exactly one @PACK@/@TOOLS_JAR@, found: none" >&2
  exit @FILE_NOT_FOUND@
fi
if [ ${#jars[@]} -ne 1 ]; then
  echo "ERROR: expected exactly one @PACK@/@TOOLS_JAR@, found: ${jars[*]##*/}" >&2
  exit @SYSTEM_ERROR@
fi
exec "$java" -Xmx256m -Dsandbox.program="$bin_dir/@HELPER@" -jar "${jars[0]}" \\
  "${self##*/}" "$@"
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
    # The services of a port-node pack are Spring Boot applications; every other jar is a tool.
    main = SPRING_BOOT_LAUNCHER if pack.role == "nodes" else TOOL_MAIN_CLASS
    for jar in jars:
        files[jar] = FileSpec(jar_bytes(jar, version, pad if jar == padded else 0, main))
    if tools:
        files[tools] = FileSpec(jar_bytes(tools, version, pad if tools == padded else 0))
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
        "services": [{"name": s.name, "version_file": s.version_file} for s in pack.services],
    }
    files = {
        f"bin/{pack.ctl}": FileSpec(wrapper(pack, version).encode(), 0o755),
        **{
            f"bin/{NODE_HELPER}/{module.name}": FileSpec(module.read_bytes())
            for module in sorted((_PAYLOAD / NODE_HELPER).glob("*.py"))
        },
        "bin/sandbox.json": FileSpec((json.dumps(manifest, indent=2) + "\n").encode()),
    }
    if pack.role == "daemon":
        files[f"bin/{DAEMON_HELPER}"] = FileSpec((_PAYLOAD / DAEMON_HELPER).read_bytes(), 0o755)
    return files


def wrapper(pack: Pack, version: str) -> str:
    """The pack's ctl script (bash), which runs the pack's tools jar with $JAVA_HOME/bin/java."""
    assert pack.ctl is not None
    tokens = {
        "@CTL@": pack.ctl,
        "@VERSION@": version,
        "@PACK@": pack.dir,
        "@TOOLS_JAR@": pack.tools_jar("*") or pack.services[0].version_file,
        "@HELPER@": NODE_HELPER,
        "@FILE_NOT_FOUND@": str(_FILE_NOT_FOUND),
        "@SYSTEM_ERROR@": str(_SYSTEM_ERROR),
    }
    text = _WRAPPER
    for token, value in tokens.items():
        text = text.replace(token, value)
    return text


def jar_bytes(jar: str, version: str, pad: int = 0, main_class: str = TOOL_MAIN_CLASS) -> bytes:
    """A sandbox jar: a header the sandbox JVM and scripts read (version, Main-Class), filler."""
    artifact = Path(jar).name.removesuffix(f"-{version}.jar")
    head = f"{JAR_MAGIC} {artifact} {version}\nMain-Class: {main_class}\n"
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
