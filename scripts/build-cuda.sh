#!/usr/bin/env bash
# Builds the CUDA binary here (no GPU needed) and packs it for the GPU machine, which has no Rust:
#   dist/rmr1-cuda.gz   the stripped release binary, gzipped to fit the 64 MiB a device call carries.
# Uses ../shared/tools/cuda-toolchain.sh (nvcc 13.0.88, matching the GPU machines' driver) and its
# own target dir, since the CUDA build's RUSTFLAGS differ from the CPU build's. Cold: ~25 minutes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
toolchain=${CUDA_TOOLCHAIN:-$root/../shared/tools/cuda-toolchain.sh}
eval "$("$toolchain")"
# The toolchain's RUSTFLAGS replace .cargo/config.toml's, so restate the CPU features here.
export RUSTFLAGS="${RUSTFLAGS:-} -C target-cpu=x86-64-v3"
cargo build --release --features cuda --target-dir target-cuda
mkdir -p dist
gzip -1 -c target-cuda/release/rmr1 > dist/rmr1-cuda.gz
ls -l target-cuda/release/rmr1 dist/rmr1-cuda.gz
