#!/usr/bin/env bash
# The CUDA engine's acceptance check, run on the GPU machine in one call (see README, "GPU"):
#   1. every kernel against its CPU reference on fresh random inputs (rmr1 gpu-check kernels), at the
#      served models' head shapes and contexts past 10k tokens;
#   2. the same kernels under compute-sanitizer's memcheck when the machine has one that works;
#   3. random-weight Qwen2 models with the served shapes (0.5B, 7B, 14B/32B heads and widths, 3 layers,
#      the real vocabulary) run by rmr1 and by Hugging Face transformers on the same GPU: logits at
#      contexts past 10k, greedy tokens through the engine, a prefix-cache hit.
# Everything runs with CUDA_LAUNCH_BLOCKING=1 (unless set otherwise): this is a correctness check, and
# synchronous launches pin a fault to the kernel that caused it. Speed is scripts/gpu-bench.sh's.
# Prints the table last. Exit status: 0 only if every check passed.
# Binary: $RMR1_BIN, else dist/rmr1-cuda.gz (from scripts/build-cuda.sh, carried to the machine).
# GPU_CHECK_SHAPES (default "0.5b 7b 32b") picks the model shapes.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CUDA_LAUNCH_BLOCKING=${CUDA_LAUNCH_BLOCKING:-1}
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
echo "kernel checks: exit $? after $(( $(date +%s) - start )) s (CUDA_LAUNCH_BLOCKING=$CUDA_LAUNCH_BLOCKING)"

# compute-sanitizer: a failure is a finding; a sanitizer that cannot attach to this device (gVisor
# machines refuse it) is reported as not run, not as a pass.
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
extra="$work/extra_rows.json"
echo "[]" > "$extra"
if [ -n "$sanitizer" ]; then
  "$sanitizer" --tool memcheck --error-exitcode 97 "$bin" gpu-check kernels --json "$work/kernels-memcheck.json" \
    > "$work/memcheck.log" 2>&1
  rc=$?
  tail -n 5 "$work/memcheck.log"
  python3 scripts/gpu_check.py --sanitizer-row "$work/memcheck.log" "$rc" --out-row "$extra"
else
  python3 scripts/gpu_check.py --sanitizer-row "" 0 --out-row "$extra"
fi

status=0
first=1
for shape in ${GPU_CHECK_SHAPES:-0.5b 7b 32b}; do
  mkdir -p "$work/$shape"
  kernels_json=()
  if [ $first = 1 ]; then kernels_json=(--kernels-json "$work/kernels.json" --extra-rows "$extra"); fi
  PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --bin "$bin" --work "$work/$shape" --shape "$shape" \
    "${kernels_json[@]}" --append-to "$work/table.json" || status=1
  first=0
done
python3 scripts/gpu_check.py --print-table "$work/table.json" || status=1
echo "gpu-check: $(( $(date +%s) - start )) s in all"
exit $status
