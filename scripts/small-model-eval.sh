#!/usr/bin/env bash
# What a small model does as an RM-R1 judge: the first N pairs of LLMBar Natural (RewardBench's
# llmbar-natural subset) through `rmr1 eval`, for the 1.5B demo model and the 0.5B test model, printing
# each run's valid-verdict rate and accuracy. Needs the LLMBar checkout (../shared/data/llmbar or
# $RMR1_LLMBAR).
#
# Usage: scripts/small-model-eval.sh [N=20]    (about 15 s per 1.5B judgment on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20}
llmbar=${RMR1_LLMBAR:-../shared/data/llmbar}
out=${RMR1_EVAL_OUT:-target/small-model-eval}
mkdir -p "$out"
cargo build --release
python3 - "$llmbar/Dataset/LLMBar/Natural/dataset.json" "$n" "$out/llmbar-natural-$n.jsonl" <<'PY'
import json, sys
src, n, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = json.load(open(src))[:n]
with open(dst, "w") as f:
    for i, r in enumerate(rows):
        chosen, rejected = ("output_1", "output_2") if r["label"] == 1 else ("output_2", "output_1")
        f.write(json.dumps({"id": i, "subset": "llmbar-natural", "prompt": r["input"],
                            "chosen": r[chosen], "rejected": r[rejected]}) + "\n")
PY
for which in demo test; do
  if [ "$which" = demo ]; then dir=$(scripts/fetch-test-model.sh --demo | tail -1); else dir=$(scripts/fetch-test-model.sh | tail -1); fi
  log="$out/$which-llmbar-natural-$n.jsonl"
  target/release/rmr1 eval --benchmark rewardbench --data "$out/llmbar-natural-$n.jsonl" \
    --model "$dir/model.gguf" --tokenizer "$dir/tokenizer.json" --family instruct \
    --max-new-tokens 768 --concurrency 4 --seed 0 --log "$log" > "$out/$which.txt"
  python3 - "$log" "$which" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()[1:]
recs = [json.loads(l) for l in lines]
valid = sum(not r["error"] for r in recs)
right = sum(r["correct"] for r in recs)
print(f"{sys.argv[2]}: {len(recs)} pairs, valid verdicts {valid}/{len(recs)} ({100*valid/len(recs):.0f}%), "
      f"accuracy {right}/{len(recs)} ({100*right/len(recs):.0f}%)")
PY
done
