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
#
# A device call is scarce and ends at its time limit, so every phase has a budget (seconds, below) and
# a phase that overruns, crashes or reports nothing becomes a failed row rather than a missing one. Rows,
# logs and the table are written under $OUT/gpu-check as they come (the device tool returns $OUT even
# from a call killed at its limit); the random models stay in a scratch folder, outside $OUT.
# Prints the table last. Exit status: 0 only if every check passed.
# Binary: $RMR1_BIN, else dist/rmr1-cuda.gz (from scripts/build-cuda.sh, carried to the machine).
# GPU_CHECK_SHAPES (default "0.5b 7b 32b") picks the model shapes.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CUDA_LAUNCH_BLOCKING=${CUDA_LAUNCH_BLOCKING:-1}
kernels_s=${GPU_CHECK_KERNELS_S:-120}
memcheck_s=${GPU_CHECK_MEMCHECK_S:-150}
shape_s=${GPU_CHECK_SHAPE_S:-150}
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
scratch=${GPU_CHECK_WORK:-$(mktemp -d)}
results=${OUT:+$OUT/gpu-check}
results=${results:-$scratch/results}
mkdir -p "$scratch" "$results"
table="$results/table.json"
echo "[]" > "$table"
check() { python3 scripts/gpu_check.py "$@"; }
rows() { python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' "$table"; }

# phase NAME SECONDS LOG CMD...: runs CMD under its budget with its output in LOG (and on stdout).
# Afterwards $phase_rc is its exit status, and a phase that timed out gets a failed row here.
phase() {
  local name=$1 seconds=$2 log=$3
  shift 3
  local t0=$(date +%s)
  timeout --kill-after=10 "$seconds" "$@" 2>&1 | tee "$log"
  phase_rc=${PIPESTATUS[0]}
  echo "$name: exit $phase_rc after $(( $(date +%s) - t0 )) s"
  if [ "$phase_rc" = 124 ] || [ "$phase_rc" = 137 ]; then
    check --failed-row "$name" "timed out after its budget of $seconds s" --append-to "$table"
  fi
}

nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader || true
start=$(date +%s)
phase "kernels: rmr1 gpu-check kernels" "$kernels_s" "$results/kernels.log" \
  "$bin" gpu-check kernels --json "$results/kernels.json"
echo "(CUDA_LAUNCH_BLOCKING=$CUDA_LAUNCH_BLOCKING)"
if [ "$phase_rc" != 124 ] && [ "$phase_rc" != 137 ]; then
  check --append-rows "$results/kernels.json" "kernels: rmr1 gpu-check kernels" "exit $phase_rc" \
    --append-to "$table"
fi

# compute-sanitizer: a failure is a finding; a sanitizer that cannot attach to this device (gVisor
# machines refuse it) is reported as not run, not as a pass.
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$sanitizer" ]; then
  phase "kernels under compute-sanitizer memcheck" "$memcheck_s" "$results/memcheck.log" \
    "$sanitizer" --tool memcheck --error-exitcode 97 "$bin" gpu-check kernels --json "$scratch/kernels-memcheck.json"
  if [ "$phase_rc" != 124 ] && [ "$phase_rc" != 137 ]; then
    check --sanitizer-row "$results/memcheck.log" "$phase_rc" --append-to "$table"
  fi
else
  check --sanitizer-row "" 0 --append-to "$table"
fi

for shape in ${GPU_CHECK_SHAPES:-0.5b 7b 32b}; do
  mkdir -p "$scratch/$shape"
  before=$(rows)
  phase "model $shape" "$shape_s" "$results/model-$shape.log" env PYTHONUNBUFFERED=1 \
    python3 scripts/gpu_check.py --bin "$bin" --work "$scratch/$shape" --shape "$shape" --append-to "$table"
  if [ "$phase_rc" != 0 ] && [ "$(rows)" = "$before" ]; then
    check --failed-row "model $shape: check ran" "exit $phase_rc: $(tail -n 1 "$results/model-$shape.log")" \
      --append-to "$table"
  fi
  rm -rf "$scratch/$shape/qwen2-random"  # GBs at the 32B widths
done
check --print-table "$table"
status=$?
echo "gpu-check: $(( $(date +%s) - start )) s in all; rows and logs in $results"
exit $status
