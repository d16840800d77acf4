#!/usr/bin/env bash
# The main job: fetch the small real model, start the judge server on it, send one judgment from the
# example file (reasoning streams as it is generated), print a few metrics, stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-test-model.sh
cargo build --release
model="${RMR1_TEST_MODEL_DIR:-$HOME/.cache/rmr1/test-model}/model.gguf"
grpc=127.0.0.1:${RMR1_PORT:-50051}
metrics=127.0.0.1:${RMR1_METRICS_PORT:-9090}
# The small model is a Qwen2.5 instruct model, so it gets the instruct family's prompts.
target/release/rmr1 serve --model "$model" --family instruct --listen "$grpc" --metrics-listen "$metrics" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
target/release/rmr1 judge --addr "http://$grpc" --wait 300 --max-new-tokens 256 \
  --file deploy/clients/example-judgment.json
if command -v curl >/dev/null; then
  echo "--- metrics (http://$metrics/metrics), a few lines:"
  curl -s "http://$metrics/metrics" | grep -E '^rmr1_(judge_verdicts_total|prompt_tokens_total|generation_tokens_total|prefix_cache_hits_total|time_to_first_token_seconds_count)' || true
fi
