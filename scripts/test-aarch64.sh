#!/bin/sh
# Cross-builds the kernel, quant and threads tests for AArch64 and runs them under qemu-user
# (-cpu max: NEON with dotprod and i8mm). Exits non-zero when a build or a test fails.
#   scripts/test-aarch64.sh            (build dir: build-aarch64/, override with BUILD_DIR)
# Needs: g++-aarch64-linux-gnu, qemu-user (Debian: apt-get install g++-aarch64-linux-gnu qemu-user).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-aarch64}
jobs=${JOBS:-2}
tests="test_kernels test_quant test_threads"

for tool in aarch64-linux-gnu-g++ qemu-aarch64; do
  command -v "$tool" >/dev/null 2>&1 || { echo "test-aarch64: $tool not found" >&2; exit 2; }
done

cmake -S "$root" -B "$build" -DCMAKE_TOOLCHAIN_FILE="$root/cmake/aarch64-linux-gnu.cmake" \
  -DCMAKE_BUILD_TYPE=Release -DTINYSLM_BUILD_EXAMPLES=OFF -DTINYSLM_INSTALL=OFF >/dev/null
present=""
for t in $tests; do
  [ -f "$root/tests/$t.cpp" ] && present="$present $t"
done
# shellcheck disable=SC2086
cmake --build "$build" -j "$jobs" --target $present
regex=$(echo $present | sed 's/ /|/g')
cd "$build"
ctest --output-on-failure -R "^($regex)(_shared)?\$"
