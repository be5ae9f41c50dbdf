"""`status diagram`: the pair lifecycle as a Mermaid state diagram."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from scmflow.errors import CatalogError
from scmflow.lifecyclediagram import render_diagram
from scmflow.resources import states_file


def test_diagram_has_every_state_and_transition() -> None:
    with open(states_file("pair.toml"), "rb") as handle:
        lifecycle = tomllib.load(handle)
    diagram = render_diagram()
    lines = [line.strip() for line in diagram.splitlines()]
    assert lines[0] == "stateDiagram-v2"
    assert f"[*] --> {lifecycle['lifecycle']['initial']}" in lines
    for name, spec in lifecycle["states"].items():
        assert f"note right of {name}" in lines
        if spec.get("final"):
            assert f"{name} --> [*]" in lines
        else:
            assert f"{name} --> [*]" not in lines
    arrows = [line for line in lines if "-->" in line and "[*]" not in line]
    expected = 0
    for transition in lifecycle["transitions"]:
        for source in transition["source"]:
            expected += 1
            matching = [line for line in arrows if line.startswith(f"{source} --> {transition['dest']} : ")]
            assert any(transition["trigger"] in line for line in matching), (source, transition)
    assert len(arrows) == expected
    assert lines.count("end note") == len(lifecycle["states"])
    assert "replaced --> rolled_back : rollback (restore)" in lines
    assert "pending --> rolled_back : rollback (abandon)" in lines


def test_diagram_of_another_lifecycle_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "pair.toml"
    lifecycle = (
        '[lifecycle]\ninitial = "a"\nupgrade = ["go"]\nstops_nodes = "go"\ndone = "b"\nfailed = "f"\n'
        'rolled_back = "r"\n'
        '[states.a]\ndescription = "start"\n[states.b]\nfinal = true\n[states.f]\n[states.r]\nfinal = true\n'
        '[[transitions]]\ntrigger = "go"\nsource = "a"\ndest = "b"\n'
        '[[transitions]]\ntrigger = "fail"\nsource = ["a", "b", "f", "r"]\ndest = "f"\n'
        '[[transitions]]\ntrigger = "rollback"\nsource = ["a", "f"]\ndest = "r"\naction = "undo"\n'
        '[[transitions]]\ntrigger = "retry"\nsource = "r"\ndest = "a"\n'
    )
    path.write_text(lifecycle)
    assert render_diagram(path).splitlines() == [
        "stateDiagram-v2",
        "    [*] --> a",
        "    a --> b : go",
        "    a --> f : fail",
        "    b --> f : fail",
        "    f --> f : fail",
        "    r --> f : fail",
        "    a --> r : rollback (undo)",
        "    f --> r : rollback (undo)",
        "    r --> a : retry",
        "    b --> [*]",
        "    r --> [*]",
        "    note right of a",
        "        start",
        "    end note",
    ]
    # the diagram uses the one lifecycle loader, with its checks and messages
    path.write_text(lifecycle.replace('initial = "a"', 'initial = "x"'))
    with pytest.raises(CatalogError, match="initial state 'x'"):
        render_diagram(path)
    path.write_text(lifecycle.replace('dest = "b"', 'dest = "z"'))
    with pytest.raises(CatalogError, match="transition #1"):
        render_diagram(path)
    path.write_text(lifecycle.replace('source = ["a", "f"]', 'source = ["a"]'))
    with pytest.raises(CatalogError, match="without a 'rollback' edge to 'r': f"):
        render_diagram(path)
    path.write_text("initial = ")
    with pytest.raises(CatalogError):
        render_diagram(path)
    with pytest.raises(CatalogError, match="cannot load the pair lifecycle"):
        render_diagram(tmp_path / "missing.toml")
