#!/usr/bin/env bash
# rmr1's LoRA formats against the Python reference implementations (not run in CI: it installs
# torch, transformers and peft from PyPI, ~5 GB). scripts/verify_peft.py makes a tiny random Qwen2
# with transformers and a random LoRA adapter with peft, then checks, at f32 (max |Δlogit| ≤ 1e-4):
#   - rmr1 reads PEFT's adapter: `rmr1 debug logits --adapter` (merged at load) vs PeftModel;
#   - transformers reads rmr1's merged export (`rmr1 export --adapter`) vs PeftModel and vs rmr1;
#   - PEFT reads an adapter written by rmr1 (`rmr1 debug resave-adapter`) vs the original.
# The venv is target/peft-venv (reused). PyPI's torch wheel brings CUDA libraries (~4 GB) even
# for CPU use; it installs in a couple of minutes here and nothing else is needed.
# Binary: $RMR1_BIN, else built with cargo (release) into ${CARGO_TARGET_DIR:-target}.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=target/peft-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import torch, transformers, peft, safetensors, numpy' 2>/dev/null; then
  "$venv/bin/pip" install -q torch transformers peft safetensors numpy
fi
bin=${RMR1_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --bin rmr1
  bin=${CARGO_TARGET_DIR:-target}/release/rmr1
fi
work=${VERIFY_PEFT_WORK:-$(mktemp -d)}
"$venv/bin/python" -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'
PYTHONUNBUFFERED=1 "$venv/bin/python" scripts/verify_peft.py --bin "$bin" --work "$work"
