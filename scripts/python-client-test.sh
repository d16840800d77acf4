#!/usr/bin/env bash
# Tests of the Python client (clients/python) against a real `rmr1 serve` on loopback.
# Creates target/py-venv if missing, installs the package with its test extras, runs pytest.
# Needs the release binary (cargo build --release, or the one `cargo test --release` builds);
# RMR1_BIN overrides its path. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/py-venv.sh
cd clients/python
exec "../../$venv/bin/python" -m pytest "$@"
