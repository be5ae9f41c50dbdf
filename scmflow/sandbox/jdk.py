"""A fake JAVA_HOME: the ctl scripts only need `bin/java` to exist and run."""

from __future__ import annotations

from pathlib import Path

_JAVA = """#!/bin/sh
# Sandbox JDK: answers -version like the real one; runs no Java.
case "$1" in
  -version|--version)
{banner}
    exit 0 ;;
esac
echo "Error: the sandbox JDK cannot run Java programs" >&2
exit 1
"""


def make_jdk(path: Path, version: str = "1.8.0_221") -> Path:
    """Create a JAVA_HOME at `path` whose `bin/java -version` reports `version`; return it."""
    bindir = path / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    lines = _banner(version)
    banner = "\n".join(f"    echo '{line}' >&2" for line in lines)
    java = bindir / "java"
    java.write_text(_JAVA.format(banner=banner), encoding="utf-8")
    java.chmod(0o755)
    (path / "release").write_text(f'JAVA_VERSION="{version}"\n', encoding="utf-8")
    for folder in (path, bindir):
        folder.chmod(0o755)
    return path


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
