#!/usr/bin/env bash
# Side-by-side CPU benchmark of rmr1 against llama.cpp (through llama-cpp-python) on the same GGUF file
# and thread count: engine shapes (prefill, decode at 1/4/16 sequences) and the judge workload (LLMBar
# pairs, cold and warm prefix cache). Prints one markdown table with rmr1/llama.cpp ratios.
#
#   scripts/cpu-vs-llamacpp.sh [--threads N] [--pairs 16] [--max-new-tokens 64] [--skip-engine]
#                              [--skip-judge] [--model-dir DIR] [--json FILE]
#   scripts/cpu-vs-llamacpp.sh --setup-only     # only prepare target/peer-venv
#
# llama-cpp-python is pinned and built from source for x86-64-v3 (AVX2/FMA/F16C/BMI2, no AVX-512), the
# ISA level rmr1 is built for, never -march=native: the numbers must mean the same on machines without
# AVX-512, and a native build has produced garbage on one VM. Env: RMR1_BIN (default
# target/release/rmr1, built if missing), RMR1_SHARED_DATA (default ../shared/data), RMR1_SERVE_ARGS
# (extra `rmr1 serve` flags for the judge phases, to compare settings).
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON_VERSION=0.3.36
venv=target/peer-venv
py="$venv/bin/python"

if [ ! -x "$py" ]; then
  python3 -m venv "$venv"
fi
installed=$("$py" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null || true)
if [ "$installed" != "$LLAMA_CPP_PYTHON_VERSION" ]; then
  echo "building llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION for x86-64-v3 (takes a while) ..." >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
-DGGML_AVX_VNNI=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF -DLLAVA_BUILD=OFF" \
  FORCE_CMAKE=1 CMAKE_BUILD_PARALLEL_LEVEL=2 \
    "$py" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
      --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
fi
if ! "$py" -c 'import rmr1_client' 2>/dev/null; then
  "$py" -m pip install --quiet --disable-pip-version-check -e clients/python
fi
if [ "${1:-}" = "--setup-only" ]; then exit 0; fi

export RMR1_BIN="${RMR1_BIN:-$PWD/target/release/rmr1}"
if [ ! -x "$RMR1_BIN" ]; then
  cargo build --release
fi

model_args=()
case " $* " in
  *" --model-dir "*|*" --model-dir="*) ;;
  *) model_args=(--model-dir "$(scripts/fetch-test-model.sh | tail -n 1)") ;;
esac
exec "$py" scripts/cpu_vs_llamacpp.py "${model_args[@]}" "$@"
