# Sourced by the Python scripts: creates target/py-venv if missing, installs the Python client
# (clients/python, with its test extras) into it, and exports RMR1_BIN (default: the release binary
# `cargo test --release` / `cargo build --release` leave in target/). Expects to run from the repo root.
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
