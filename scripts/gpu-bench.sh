#!/usr/bin/env bash
# Issue 6's device run, one call on the GPU machine (carry dist/ from scripts/build-cuda.sh):
#   1. scripts/gpu-check.sh first (numbers from an unverified path are labelled as such);
#   2. rmr1 bench throughput: random Qwen2.5-7B made on the GPU, ~700 shared + ~500 unique prompt
#      tokens, 512 generated (EOS ignored), concurrency 1/16/64/256;
#   3. scripts/hf_throughput.py: the same shape through transformers generate, and ours/HF per level.
# Tables go to stdout and, when $OUT is set (device tool), to files there.
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
RMR1_BIN=$bin scripts/gpu-check.sh || checks=FAILED
# A device call is scarce: measure even after a failed check, but say so above every number.
[ "$checks" = ok ] || echo "!!! gpu-check FAILED: the numbers below come from an unverified CUDA path !!!"
"$bin" bench throughput --concurrency "${CONCURRENCY:-1,16,64,256}" --json "$out/ours.json" 2>&1 | tee "$out/ours.txt"
PYTHONUNBUFFERED=1 python3 scripts/hf_throughput.py --concurrency "${CONCURRENCY:-1,16,64,256}" \
  --new-tokens "${HF_NEW_TOKENS:-512}" --ours "$out/ours.json" 2>&1 | tee "$out/hf.txt"
echo "gpu-check: $checks"
[ "$checks" = ok ]
