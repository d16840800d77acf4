#!/usr/bin/env bash
# Load and fault suite of the gRPC server (clients/python/benchmarks/load_suite.py): starts its own
# `rmr1 serve` on loopback over a tiny random model and drives unary, batch, cancel-storm and
# deadline-storm phases through it; exits non-zero when a call was lost, answered twice or failed
# unexpectedly, or the server's gauges are not back at 0 afterwards.
# Creates target/py-venv if missing and installs the Python client into it (as python-client-test.sh).
# Needs the release binary (cargo build --release); RMR1_BIN overrides its path.
# Extra arguments go to the suite (--help lists them; --json FILE writes the report).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/py-venv.sh
exec "$venv/bin/python" clients/python/benchmarks/load_suite.py "$@"
