"""The pair lifecycle (states/pair.toml) drawn as a Mermaid state diagram."""

from __future__ import annotations

import textwrap
from pathlib import Path

from scmflow.lifecycle import load_lifecycle

_NOTE_WIDTH = 60


def render_diagram(pair_toml_path: Path | None = None) -> str:
    """A Mermaid `stateDiagram-v2` of the pair lifecycle in states/pair.toml (or the file given)."""
    lifecycle = load_lifecycle(pair_toml_path)
    lines = ["stateDiagram-v2", f"    [*] --> {lifecycle.initial}"]
    for transition in lifecycle.transitions:
        label = transition.trigger
        if transition.action and transition.action != label:
            label += f" ({transition.action})"
        lines.extend(f"    {source} --> {transition.dest} : {label}" for source in transition.source)
    lines.extend(f"    {name} --> [*]" for name in lifecycle.states if name in lifecycle.final)
    for name, text in lifecycle.states.items():
        description = text.replace(";", ",").strip()
        if description:
            lines.append(f"    note right of {name}")
            lines.extend(f"        {line}" for line in textwrap.wrap(description, _NOTE_WIDTH))
            lines.append("    end note")
    return "\n".join(lines) + "\n"
