#!/usr/bin/env bash
# Builds the CPU emulation of kernels/*.cu and runs the checks against the C++ references.
#   ./run.sh               fiber scheduler (fast; default)
#   ./run.sh --os-threads  one std::thread per CUDA thread (slow stress run that can expose races
#                          between barriers)
#   any further argument is passed to the check binary (e.g. a seed to replay a run)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kernels="${KERNEL_DIR:-$here/../../kernels}"  # override to check a modified copy
out="${KERNEL_EMULATION_OUT:-${TMPDIR:-/tmp}/rmr1-kernel-emulation}"
mkdir -p "$out"
cxx="${CXX:-g++}"
defines=()
bin="$out/check"
if [[ "${1:-}" == "--os-threads" ]]; then
  defines=(-DEMU_OS_THREADS)
  bin="$out/check-os-threads"
  shift
fi
"$cxx" -std=c++20 -O2 -fno-strict-aliasing -pthread -Wall -Wextra -Wno-unknown-pragmas -Wno-unused-parameter \
  "${defines[@]}" -I "$here/include" -I "$kernels" -include emu.h \
  -o "$bin" "$here/check.cpp"
exec "$bin" "$@"
