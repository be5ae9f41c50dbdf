"""The agent as it travels: the package's sources inlined in the command line, run from memory."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import zipfile
import zlib
from pathlib import Path

from scmflow.agentcall import parse_agent_output
from scmflow.agentpayload import BOOT, PYTHON, agent_argv, bundle, bundle_sources, serve_argv

PACKAGE = Path(__file__).resolve().parents[1] / "scmflow" / "agent"


def test_the_bundle_holds_every_module_of_the_package_and_a_root_main() -> None:
    names = zipfile.ZipFile(io.BytesIO(bundle())).namelist()
    modules = sorted(f"scmflow/agent/{p.name}" for p in PACKAGE.glob("*.py"))
    assert sorted(names) == sorted(["__main__.py", "scmflow/__init__.py", *modules])
    assert "scmflow/agent/tarcheck.py" in names and "scmflow/agent/__main__.py" in names


def test_the_bundle_is_the_same_bytes_for_the_same_sources() -> None:
    bundle.cache_clear()
    first = bundle()
    bundle.cache_clear()
    assert bundle() == first
    assert bundle_sources()["scmflow/agent/protocol.py"] == (PACKAGE / "protocol.py").read_bytes()


def test_the_command_line_carries_the_bundle_and_nothing_is_written(tmp_path: Path) -> None:
    argv = agent_argv("exists", {"paths": ["/"]})
    assert argv[:4] == [*PYTHON, BOOT] and argv[5:] == ["exists", '{"paths": ["/"]}']
    carried = json.loads(zlib.decompress(base64.b64decode(argv[4])))
    assert carried == {name: data.decode() for name, data in bundle_sources().items()}
    assert serve_argv() == [*PYTHON, BOOT, argv[4], "--serve"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert parse_agent_output(done.stdout) == {"ok": True, "exists": ["/"]}
    assert list(tmp_path.iterdir()) == []


def test_the_bundle_runs_as_a_zipapp_too(tmp_path: Path) -> None:
    zipapp = tmp_path / "agent.pyz"
    zipapp.write_bytes(bundle())
    done = subprocess.run(
        ["python3", "-I", str(zipapp), "exists", json.dumps({"paths": [str(zipapp)]})],
        capture_output=True, text=True, timeout=60,
    )
    assert parse_agent_output(done.stdout) == {"ok": True, "exists": [str(zipapp)]}


def test_no_module_on_the_hosts_path_stands_in_for_one_of_the_bundle(tmp_path: Path) -> None:
    # Even without -I (which keeps the working directory and PYTHONPATH off sys.path), the
    # bundle's importer comes first: a planted scmflow/agent/protocol.py never runs.
    planted = tmp_path / "scmflow" / "agent"
    planted.mkdir(parents=True)
    marker = tmp_path / "marker"
    for init in (tmp_path / "scmflow" / "__init__.py", planted / "__init__.py"):
        init.write_text("")
    (planted / "protocol.py").write_text(f"open({str(marker)!r}, 'w').write('planted')\n")
    argv = [a for a in agent_argv("exists", {"paths": ["/"]}) if a != "-I"]
    done = subprocess.run(
        argv, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert parse_agent_output(done.stdout) == {"ok": True, "exists": ["/"]}
    assert not marker.exists()


def test_a_failing_op_shows_the_bundled_source_in_its_trace() -> None:
    argv = agent_argv("probe", {"install_path": "/nonexistent", "services": [{"name": "x"}]})
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    reply = parse_agent_output(done.stdout)
    assert reply["ok"] is False and reply["error"].startswith("KeyError")
    assert '"<agent>/scmflow/agent/operations.py"' in reply["trace"]
    assert "reply.update(handler(ctx))" in reply["trace"]


def test_a_one_shot_agent_imports_no_more_than_it_needs() -> None:
    # A one-shot agent's start is most of its cost: BOOT, and an op that handles no package,
    # node or health check, import none of the modules those need. What the interpreter
    # loaded before BOOT (site, .pth files) is not BOOT's doing.
    prefix = (
        "import sys; before = set(sys.modules); sys.argv = sys.argv[1:]\n"
        "sys.exit = lambda code: print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    argv = agent_argv("exists", {"paths": ["/"]})
    done = subprocess.run([*argv[:3], prefix + argv[3], *argv[3:]], capture_output=True,
                          text=True, timeout=60)
    loaded = set(done.stdout.splitlines()[-1].split())
    assert {"json", "scmflow.agent.operations", "scmflow.agent.locks"} <= loaded, loaded
    heavy = {"zipfile", "importlib.abc", "base64", "socket", "hashlib", "traceback", "tarfile",
             "scmflow.agent.steps", "scmflow.agent.packages", "scmflow.agent.health"}
    assert loaded & heavy == set()
