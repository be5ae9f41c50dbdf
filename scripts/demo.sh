#!/usr/bin/env bash
# Creates a virtualenv with scmflow installed and runs the built-in demo: a sandbox
# SequoiaCM 3.1.2 with real node processes is upgraded to 3.2.2 and rolled back, locally
# (no SSH server, root or cluster needed). Extra arguments go to `scm.py demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q -e . >/dev/null
exec .venv/bin/python scm.py demo "$@"
