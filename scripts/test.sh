#!/usr/bin/env bash
# Installs everything the tests need (system packages included) and runs them:
# ruff, mypy, then pytest (unit tests and end-to-end tests against real sshd test hosts).
# Run as root for the end-to-end tests (network namespaces); elsewhere they are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need_pkgs+=(openssh-client)
command -v sudo >/dev/null 2>&1 || need_pkgs+=(sudo)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need_pkgs+=(util-linux)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
[ -x /usr/bin/python3 ] || need_pkgs+=(python3)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "installing system packages: ${need_pkgs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
    else
        echo "missing system packages (${need_pkgs[*]}): install them as root; end-to-end tests will be skipped" >&2
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test]'

echo "== ruff"
.venv/bin/ruff check scmflow tests bench scm.py
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
# Whole modules per worker (module fixtures run once); three workers on two cores, since the
# end-to-end tests spend part of their time waiting on nodes, timeouts and locks. Modules
# go out in collection order, longest first (tests/conftest.py); xdist would otherwise
# sort them by their number of tests, and a long module could start last and run alone.
.venv/bin/pytest -p no:cacheprovider -n "${SCMFLOW_TEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder "$@"
