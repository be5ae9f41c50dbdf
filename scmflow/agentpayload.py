"""The host agent as it travels: the scmflow.agent package's sources, run from the command line.

The sources (scmflow/agent/*.py under scmflow/agent/, an empty scmflow/__init__.py and a
root `__main__.py`) travel as one JSON object of path -> text, compressed as a whole and
base64-encoded, as one argument: `python3 -I -c BOOT SOURCES OP SPEC-JSON` (`agent_argv`)
or `... SOURCES --serve` (`serve_argv`). That is the one command of a step (or of a
serving agent): no extra round trip, and nothing is written on the host, so there is no
file that root or the install user runs and someone else could have replaced first.
BOOT puts an importer of those in-memory sources first on `sys.meta_path`, so no module on
the host can stand in for one of the package's; zlib's checksum covers every byte. BOOT
imports only what the agent imports anyway (json) and builtins: a one-shot agent's start
is most of its cost. `bundle` writes the same files as a zipapp, which runs by hand as
`python3 -I agent.pyz OP SPEC-JSON`.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import zipfile
import zlib
from importlib import resources
from typing import Any

from scmflow.agent.protocol import SERVE

# -I: sudo keeps the login user's home as the working directory, and `python3 -c` would
# put it first on sys.path, so a module planted there (`base64.py`) would run as the
# target user; -I also ignores PYTHON* variables and the user's site-packages.
PYTHON = ("python3", "-I", "-c")
# Runs on the host's python3 (3.6 or later): imports the agent from the sources in argv[1].
BOOT = '''\
import binascii, json, sys, zlib
from importlib.machinery import ModuleSpec


class Sources:
    def __init__(self, files):
        self.files = files

    def find_spec(self, name, path=None, target=None):
        base = name.replace(".", "/")
        for file, package in ((base + "/__init__.py", True), (base + ".py", False)):
            if file in self.files:
                return ModuleSpec(name, self, origin=file, is_package=package)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        origin = module.__spec__.origin
        exec(compile(self.files[origin], "<agent>/" + origin, "exec"), module.__dict__)

    def get_source(self, name):
        base = name.replace(".", "/")
        return self.files.get(base + "/__init__.py", self.files.get(base + ".py"))


files = json.loads(zlib.decompress(binascii.a2b_base64(sys.argv[1])).decode("utf-8"))
sys.meta_path.insert(0, Sources(files))
from scmflow.agent.protocol import main
sys.exit(main(sys.argv[2:]))
'''
# The bundle's root: what runs when the zip itself is given to python3.
_ROOT_MAIN = b'''\
"""The scmflow host agent: python3 -I THIS.pyz OP SPEC-JSON | --serve."""
import sys

from scmflow.agent.protocol import main

sys.exit(main(sys.argv[1:]))
'''
_TOP_INIT = b'"""Only the host agent of scmflow, bundled (see scmflow/agentpayload.py)."""\n'
# A fixed timestamp: the same sources always make the same bytes.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def agent_argv(op: str, spec: dict[str, Any]) -> list[str]:
    """The argv that runs `op` with `spec` on a host: python3 with the agent's sources inlined."""
    return [*PYTHON, BOOT, _encoded(), op, json.dumps(spec, sort_keys=True)]


def serve_argv() -> list[str]:
    """The argv of a long-lived agent that reads requests on stdin (`protocol.serve`)."""
    return [*PYTHON, BOOT, _encoded(), SERVE]


def bundle_sources() -> dict[str, bytes]:
    """The agent's files by their path: the package and its two wrappers."""
    package = resources.files("scmflow.agent")
    files = {"__main__.py": _ROOT_MAIN, "scmflow/__init__.py": _TOP_INIT}
    for entry in sorted(package.iterdir(), key=lambda e: e.name):
        if entry.is_file() and entry.name.endswith(".py"):
            files[f"scmflow/agent/{entry.name}"] = entry.read_bytes()
    return files


@functools.lru_cache(maxsize=1)
def bundle() -> bytes:
    """The agent as one zipapp (stored), the same bytes for the same sources."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in sorted(bundle_sources().items()):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return out.getvalue()


@functools.lru_cache(maxsize=1)
def _encoded() -> str:
    """The sources as they travel in argv: JSON, compressed as a whole, then base64."""
    files = {name: data.decode("utf-8") for name, data in bundle_sources().items()}
    text = json.dumps(files, sort_keys=True, separators=(",", ":"))
    return base64.b64encode(zlib.compress(text.encode("utf-8"), 9)).decode("ascii")
