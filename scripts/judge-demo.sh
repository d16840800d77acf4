#!/usr/bin/env bash
# The main job: fetch the demo model (Qwen2.5-Coder-1.5B-Instruct Q4_K_M, the smallest that writes a
# whole RM-R1 judgment), start the judge server on it, judge the example pair (the reasoning streams
# as it is generated, then the parsed judgment), judge it again in both orders (position-debiased),
# print a few metrics, stop the server.
#
# RMR1_DEMO_SMALL=1 uses the 0.5B test model instead (faster; it rarely writes a valid verdict).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${RMR1_DEMO_SMALL:-}" ]; then
  dir=$(scripts/fetch-test-model.sh | tail -1)
else
  dir=$(scripts/fetch-test-model.sh --demo | tail -1)
fi
cargo build --release
grpc=127.0.0.1:${RMR1_PORT:-50051}
metrics=127.0.0.1:${RMR1_METRICS_PORT:-9090}
pair=${RMR1_DEMO_PAIR:-deploy/clients/example-judgment.json}
# Qwen2.5 instruct models get the instruct family's prompts (system prompt + pair).
target/release/rmr1 serve --model "$dir/model.gguf" --tokenizer "$dir/tokenizer.json" \
  --family instruct --listen "$grpc" --metrics-listen "$metrics" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
echo "=== $pair, as given (A first):"
target/release/rmr1 judge --addr "http://$grpc" --wait 600 --max-new-tokens 768 --file "$pair"
echo
echo "=== the same pair in both orders (A/B and B/A, combined: position-debiased):"
target/release/rmr1 judge --addr "http://$grpc" --max-new-tokens 768 --both-orders --quiet --file "$pair"
if command -v curl >/dev/null; then
  echo
  echo "=== metrics (http://$metrics/metrics), a few lines:"
  curl -s "http://$metrics/metrics" | grep -E '^rmr1_(judge_verdicts_total|prompt_tokens_total|generation_tokens_total|prefix_cache_hits_total|time_to_first_token_seconds_count)' || true
fi
