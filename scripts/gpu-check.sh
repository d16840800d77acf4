#!/usr/bin/env bash
# The CUDA engine's acceptance check, run on the GPU machine in one call (see README, "GPU"):
#   1. every kernel against its CPU reference on fresh random inputs (rmr1 gpu-check kernels);
#   2. a random-weight Qwen2 with Qwen2.5 head sizes (head_dim 128, 7:1 GQA) run by rmr1 and by
#      Hugging Face transformers on the same GPU: logits and greedy tokens, incl. a prefix-cache hit.
# Prints the table last. Exit status: 0 only if every check passed.
# Binary: $RMR1_BIN, else dist/rmr1-cuda.gz (from scripts/build-cuda.sh, carried to the machine).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# CUDA 13 libraries: the toolkit's, else the ones torch's cu13 wheels bring.
wheel_libs=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib:${wheel_libs}:${LD_LIBRARY_PATH:-}
bin=${RMR1_BIN:-}
if [ -z "$bin" ]; then
  bin=/tmp/rmr1-cuda
  gunzip -c dist/rmr1-cuda.gz > "$bin" && chmod +x "$bin" || { echo "no dist/rmr1-cuda.gz: run scripts/build-cuda.sh" >&2; exit 2; }
fi
if ldd "$bin" | grep "not found"; then
  echo "missing shared libraries for $bin (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)" >&2
  exit 2
fi
work=${GPU_CHECK_WORK:-$(mktemp -d)}
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader || true
start=$(date +%s)
"$bin" gpu-check kernels --json "$work/kernels.json"
echo "kernel checks: exit $? after $(( $(date +%s) - start )) s"
PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --bin "$bin" --work "$work" --kernels-json "$work/kernels.json"
status=$?
echo "gpu-check: $(( $(date +%s) - start )) s in all"
exit $status
