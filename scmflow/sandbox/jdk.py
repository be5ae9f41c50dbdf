"""Sandbox JDKs: a JAVA_HOME whose `bin/java` really runs sandbox jars, and a decoy `java`.

The ctl scripts run their tool with `$JAVA_HOME/bin/java`, and the tool starts every node
as `nohup java ... -jar <jar> --spring.config.location=...`, with the first `java` on PATH.
So a sandbox JDK must run sandbox jars (nodes and tools), and the decoy, standing for the
OS's own OpenJDK 17 found first on PATH, must fail to run them the way a wrong JDK does.
"""

from __future__ import annotations

from pathlib import Path

JVM_FILE = "sandboxjvm.py"
JVM_DIR = "lib/sandbox"
DECOY_VERSION = "17.0.15"
_PAYLOAD = Path(__file__).resolve().parent / "payload"

# `-version` is answered here without starting python: tools ask it often.
_JAVA = """#!/bin/sh
# Sandbox JDK {version}: answers -version like the real java and runs sandbox jars with
# {jvm_dir}/{jvm_file} of this same JAVA_HOME (found from this script's own path).
case "$1" in
  -version|--version)
{banner}
    exit 0 ;;
esac
home=${{0%/*}}
home=${{home%/bin}}
jvm=$home/{jvm_dir}/{jvm_file}
if [ ! -f "$jvm" ]; then
  real=$(readlink -f "$0")
  jvm=${{real%/*}}/../{jvm_dir}/{jvm_file}
fi
python=python3
if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; fi
exec "$python" -S "$jvm" "$@"
"""

# The decoy reads no jar: an OpenJDK 17 given a sandbox jar (not a zip) fails like this.
_DECOY = """#!/bin/sh
# Decoy java: stands for an OS JDK {version} that comes first on PATH. It answers -version
# and fails on every program, as a JDK that cannot run SequoiaCM's jars would.
case "$1" in
  -version)
{banner}
    exit 0 ;;
esac
jar=
prev=
for arg in "$@"; do
  if [ "$prev" = "-jar" ]; then jar=$arg; break; fi
  prev=$arg
done
if [ -z "$jar" ]; then
  echo "Error: Could not find or load main class $1" >&2
elif [ ! -r "$jar" ]; then
  echo "Error: Unable to access jarfile $jar" >&2
else
  echo "Error: Invalid or corrupt jarfile $jar" >&2
fi
exit 1
"""


def make_jdk(path: Path, version: str = "1.8.0_221") -> Path:
    """Create a JAVA_HOME at `path` whose `bin/java` reports `version` and runs sandbox jars.

    Returns `path`. Everything is world-readable so any install user can run it.
    """
    bindir = path / "bin"
    jvm_dir = path / JVM_DIR
    bindir.mkdir(parents=True, exist_ok=True)
    jvm_dir.mkdir(parents=True, exist_ok=True)
    java = bindir / "java"
    java.write_text(
        _JAVA.format(
            version=version, banner=_echo(_banner(version)), jvm_dir=JVM_DIR, jvm_file=JVM_FILE
        ),
        encoding="utf-8",
    )
    java.chmod(0o755)
    jvm = jvm_dir / JVM_FILE
    jvm.write_bytes((_PAYLOAD / JVM_FILE).read_bytes())
    jvm.chmod(0o644)
    (path / "release").write_text(f'JAVA_VERSION="{version}"\n', encoding="utf-8")
    for folder in (path, bindir, path / "lib", jvm_dir):
        folder.chmod(0o755)
    return path


def make_decoy_java(bindir: Path, version: str = DECOY_VERSION) -> Path:
    """Write `bindir/java`, a decoy that answers -version as `version` and runs nothing."""
    bindir.mkdir(parents=True, exist_ok=True)
    java = bindir / "java"
    java.write_text(_DECOY.format(version=version, banner=_echo(_banner(version))),
                    encoding="utf-8")
    java.chmod(0o755)
    return java


def _echo(lines: list[str]) -> str:
    # java prints its banner on stderr
    return "\n".join(f"    echo '{line}' >&2" for line in lines)


def _banner(version: str) -> list[str]:
    if version.startswith("1."):
        update = version.partition("_")[2] or "0"
        return [
            f'java version "{version}"',
            f"Java(TM) SE Runtime Environment (build {version}-b11)",
            f"Java HotSpot(TM) 64-Bit Server VM (build 25.{update}-b11, mixed mode)",
        ]
    return [
        f'openjdk version "{version}"',
        f"OpenJDK Runtime Environment (build {version}+9)",
        f"OpenJDK 64-Bit Server VM (build {version}+9, mixed mode)",
    ]
