"""A pack (an installed service directory) as its manifest describes it, and the ctl's option parsing."""

from __future__ import annotations

import os

from .files import load_json, read_text, single_match
from .tool import INVALID_ARG, CtlError, Usage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any


# option -> (key, kind): "flag" takes no value, "one" one value, "many" one value per use
OptionSpec = dict[str, tuple[str, str]]
HELP: OptionSpec = {"-h": ("help", "flag"), "--help": ("help", "flag")}
LIST_OPTIONS: OptionSpec = {
    **HELP, "-m": ("mode", "one"), "--mode": ("mode", "one"), "-l": ("long", "flag"),
    "--long": ("long", "flag"), "-p": ("port", "one"), "--port": ("port", "one"),
}
NODE_OPTIONS: OptionSpec = {
    **HELP, "-p": ("port", "many"), "--port": ("port", "many"), "-t": ("type", "many"),
    "--type": ("type", "many"), "--all": ("all", "flag"), "--timeout": ("timeout", "one"),
}
NODES_USAGE = """usage: {ctl} list [-m local|run] [-l] [-p PORT]
       {ctl} start [--timeout SECONDS] -p PORT [-p PORT...] | -t SERVICE | -t all | --all
       {ctl} stop -p PORT [-p PORT...] | -t SERVICE | -t all | --all
"""


def parse_options(ctl: str, args: Sequence[str], spec: OptionSpec) -> dict[str, Any]:
    """The options of `args` by key; CtlError(INVALID_ARG) for anything `spec` lacks."""
    values: dict[str, Any] = {}
    index = 0
    while index < len(args):
        word = args[index]
        name, eq, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if name not in spec:
            raise CtlError(f"{ctl}: unrecognized argument: {word}", INVALID_ARG)
        key, kind = spec[name]
        index += 1
        if kind == "flag":
            if eq:
                raise CtlError(f"{ctl}: {name} takes no value", INVALID_ARG)
            if key == "help":
                raise Usage
            values[key] = True
            continue
        if not eq:
            if index >= len(args):
                raise CtlError(f"{ctl}: {name} needs a value", INVALID_ARG)
            inline = args[index]
            index += 1
        if kind == "many":
            values.setdefault(key, []).append(inline)
        else:
            values[key] = inline
    return values


def number(ctl: str, option: str, text: str, kind: type[float] | type[int] = int) -> Any:
    """`text` as an int (or float); CtlError(INVALID_ARG) when it is not one."""
    try:
        return kind(text)
    except ValueError:
        raise CtlError(f"{ctl}: {option}: invalid number '{text}'", INVALID_ARG) from None


class Pack:
    """One installed service directory (`<install>/<dir>`), as its manifest describes it."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.manifest: dict[str, Any] = load_json(
            read_text(os.path.join(root, "bin", "sandbox.json"))
        )
        self.services: list[dict[str, str]] = self.manifest["services"]

    @property
    def install_path(self) -> str:
        """The install path: the parent of every service directory."""
        return os.path.dirname(self.root)

    @property
    def role(self) -> str:
        """`nodes`, `daemon` or `systools`."""
        return str(self.manifest["role"])

    @property
    def version(self) -> str:
        """The version of the tool itself (of this bin/)."""
        return str(self.manifest["version"])

    def service(self, name: str) -> dict[str, str]:
        """The manifest entry of the service `name`."""
        for service in self.services:
            if service["name"] == name:
                return service
        known = ", ".join(s["name"] for s in self.services)
        raise CtlError(f"unknown service '{name}' (this tool handles: {known})", INVALID_ARG)

    def jar(self, service: dict[str, str]) -> str:
        """The one jar of `service`; CtlError when the glob matches none or several."""
        return single_match(self.root, service["version_file"])


def listed_name(service: dict[str, str]) -> str:
    """The node name the tools print: `getName().toUpperCase()`, hyphen kept."""
    return service["name"].upper()
