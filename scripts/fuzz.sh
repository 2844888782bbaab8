#!/usr/bin/env bash
# Builds the GGUF reader's libFuzzer target with clang and runs it for a fixed time, seeded
# with the malformed and valid files that tests/test_gguf.cpp builds.
#   scripts/fuzz.sh [SECONDS] [BUILD_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
build=${2:-$root/build-fuzz}
test_gguf=${TEST_GGUF:-$root/build-release/tests/test_gguf}
mkdir -p "$build/seeds" "$build/corpus"
clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$root/include" "$root/fuzz/fuzz_gguf.cpp" -o "$build/fuzz_gguf"
if [ -x "$test_gguf" ]; then
  TINYSLM_FUZZ_SEED_DIR="$build/seeds" "$test_gguf" >/dev/null
fi
echo "fuzz: $(ls "$build/seeds" | wc -l) seed files, running for ${seconds}s"
"$build/fuzz_gguf" -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 "$build/corpus" "$build/seeds" 2>&1 | tail -n 12
