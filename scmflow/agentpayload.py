"""The host agent as it travels: the scmflow.agent package in one zip, run from the command line.

`bundle` zips the agent package: scmflow/agent/*.py under scmflow/agent/, an empty
scmflow/__init__.py, and a `__main__.py` at the root, so the same bytes also run by hand
as `python3 -I agent.pyz OP SPEC-JSON`. The zip travels compressed as a whole (a quarter
smaller than deflating each module) and base64-encoded, as one argument:
`python3 -I -c BOOT BUNDLE OP SPEC-JSON` (`agent_argv`) or `... BUNDLE --serve`
(`serve_argv`). That is the one command of a step (or of a serving agent), as before the
agent was a package: no extra round trip, and nothing is written on the host, so there is
no file that root or the install user runs and someone else could have replaced first.
BOOT puts an importer of the in-memory zip first on `sys.meta_path`, so no module on the
host can stand in for one of the bundle's; zipfile checks each module's CRC-32 as it reads.
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
# Runs on the host's python3 (3.6 or later): imports the agent from the zip in argv[1].
BOOT = '''\
import base64, io, sys, zipfile, zlib
from importlib.abc import Loader, MetaPathFinder
from importlib.util import spec_from_loader


class Bundle(MetaPathFinder, Loader):
    def __init__(self, data):
        self.zip = zipfile.ZipFile(io.BytesIO(data))
        self.names = set(self.zip.namelist())

    def find_spec(self, name, path=None, target=None):
        base = name.replace(".", "/")
        for file, package in ((base + "/__init__.py", True), (base + ".py", False)):
            if file in self.names:
                return spec_from_loader(name, self, origin=file, is_package=package)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        spec = module.__spec__
        code = compile(self.get_source(spec.name), "<agent>/" + spec.origin, "exec")
        exec(code, module.__dict__)

    def get_source(self, name):
        base = name.replace(".", "/")
        file = base + "/__init__.py" if base + "/__init__.py" in self.names else base + ".py"
        return self.zip.read(file).decode("utf-8")


sys.meta_path.insert(0, Bundle(zlib.decompress(base64.b64decode(sys.argv[1]))))
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
    """The argv that runs `op` with `spec` on a host: python3 with the bundle inlined."""
    return [*PYTHON, BOOT, _encoded(), op, json.dumps(spec, sort_keys=True)]


def serve_argv() -> list[str]:
    """The argv of a long-lived agent that reads requests on stdin (`protocol.serve`)."""
    return [*PYTHON, BOOT, _encoded(), SERVE]


def bundle_sources() -> dict[str, bytes]:
    """The bundle's files by their path in the zip: the agent package and its two wrappers."""
    package = resources.files("scmflow.agent")
    files = {"__main__.py": _ROOT_MAIN, "scmflow/__init__.py": _TOP_INIT}
    for entry in sorted(package.iterdir(), key=lambda e: e.name):
        if entry.is_file() and entry.name.endswith(".py"):
            files[f"scmflow/agent/{entry.name}"] = entry.read_bytes()
    return files


@functools.lru_cache(maxsize=1)
def bundle() -> bytes:
    """The agent as one zip (a zipapp, stored: see `_encoded`), the same bytes for the same sources."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in sorted(bundle_sources().items()):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return out.getvalue()


@functools.lru_cache(maxsize=1)
def _encoded() -> str:
    """The bundle as it travels in argv: compressed as a whole, then base64."""
    return base64.b64encode(zlib.compress(bundle(), 9)).decode("ascii")
