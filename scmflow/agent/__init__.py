"""The host agent: every remote step of an upgrade, run on the host in one round trip.

The control side (scmflow/agentpayload.py) bundles this package into one zip that travels
in the command line and runs it there as `python3 -I -c BOOT BUNDLE OP SPEC-JSON`, as the
install user with JAVA_HOME in the environment; nothing of it is ever written on a host.
It prints one JSON object on its last stdout line: `{"ok": true, ...}` with exit status 0,
or `{"ok": false, "error", "step"}` with 1. With `--serve` instead of OP and SPEC it
answers one request line (`{"op", "spec"}`) after another with one such reply line each,
until stdin ends (see `protocol`).

Hosts may carry Python as old as 3.6, so every module here is standard library only,
imports nothing from scmflow outside this package (and that only relatively, so the
bundle's package runs under any name), and its annotations use `typing` generics (3.6
evaluates them). ruff's pyupgrade rules that would undo that are off for this package.
"""
