#!/usr/bin/env bash
# Tests of the Python client (clients/python) against a real `rmr1 serve` on loopback.
# Creates target/py-venv if missing, installs the package with its test extras, runs pytest.
# Needs the release binary (cargo build --release, or the one `cargo test --release` builds);
# RMR1_BIN overrides its path. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e 'clients/python[test]'
export RMR1_BIN="${RMR1_BIN:-$PWD/target/release/rmr1}"
if [ ! -x "$RMR1_BIN" ]; then
  echo "rmr1 binary not found at $RMR1_BIN: run cargo build --release first (or set RMR1_BIN)" >&2
  exit 1
fi
cd clients/python
exec "../../$venv/bin/python" -m pytest "$@"
