#!/usr/bin/env bash
# Issue 6's device run, one call on the GPU machine (carry dist/ from scripts/build-cuda.sh):
#   1. scripts/gpu-check.sh first (numbers from an unverified path are labelled as such);
#   2. rmr1 bench throughput: random Qwen2.5-7B made on the GPU, ~700 shared + ~500 unique prompt
#      tokens, 512 generated (EOS ignored), concurrency 1/16/64/256;
#   3. scripts/hf_throughput.py: the same shape through transformers generate, and ours/HF per level.
# Tables go to stdout and, when $OUT is set (device tool), to files there.
# One device call holds at most 10 minutes, and a session's device time is 15 minutes with the start
# included, so the check and the bench are best two calls on the same warm machine:
#   call 1: scripts/gpu-check.sh               (its phases are budgeted to end inside ~9 minutes)
#   call 2: GPU_BENCH_CHECK=skip scripts/gpu-bench.sh
# Each bench phase has a budget too (GPU_BENCH_OURS_S, GPU_BENCH_HF_S), so a slow phase still leaves
# the other's numbers.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# CUDA 13 libraries: the toolkit's, else the ones torch's cu13 wheels bring.
wheel_libs=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib:${wheel_libs}:${LD_LIBRARY_PATH:-}
out=${OUT:-$(mktemp -d)}
bin=/tmp/rmr1-cuda
gunzip -c dist/rmr1-cuda.gz > "$bin" && chmod +x "$bin" || exit 2
checks=ok
if [ "${GPU_BENCH_CHECK:-run}" = skip ]; then
  checks="skipped in this call (run scripts/gpu-check.sh first, in the call before)"
else
  RMR1_BIN=$bin scripts/gpu-check.sh || checks=FAILED
  # A device call is scarce: measure even after a failed check, but say so above every number.
  [ "$checks" = ok ] || echo "!!! gpu-check FAILED: the numbers below come from an unverified CUDA path !!!"
fi
timeout --kill-after=10 "${GPU_BENCH_OURS_S:-240}" \
  "$bin" bench throughput --concurrency "${CONCURRENCY:-1,16,64,256}" --json "$out/ours.json" 2>&1 | tee "$out/ours.txt"
echo "rmr1 bench throughput: exit ${PIPESTATUS[0]}"
PYTHONUNBUFFERED=1 timeout --kill-after=10 "${GPU_BENCH_HF_S:-240}" \
  python3 scripts/hf_throughput.py --concurrency "${CONCURRENCY:-1,16,64,256}" \
  --new-tokens "${HF_NEW_TOKENS:-512}" --ours "$out/ours.json" 2>&1 | tee "$out/hf.txt"
echo "transformers reference: exit ${PIPESTATUS[0]}"
echo "gpu-check: $checks"
[ "$checks" != FAILED ]
