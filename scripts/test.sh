#!/usr/bin/env bash
# Installs what the tests need (Debian 12: apt) and runs every test configuration:
#   release   Release build, all tests (unit, golden comparisons, consumers, no-exceptions)
#   asan      Debug build (-O1) under AddressSanitizer + UndefinedBehaviorSanitizer
#   highway   Release build with TINYSLM_USE_HIGHWAY=ON
#   aarch64   cross build with g++-aarch64-linux-gnu, run under qemu-aarch64 (when the NEON path exists)
#   fuzz      the GGUF reader's libFuzzer target for a fixed time
#   meson     the meson build of the tests and examples
# Usage: scripts/test.sh [STAGE ...]   (default: all stages)
# Ends with one line "N passed, N failed" (tests summed over the stages).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
jobs=${TINYSLM_JOBS:-$(nproc 2>/dev/null || echo 2)}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(release asan highway aarch64 fuzz meson)

# --- dependencies ------------------------------------------------------------------------
packages=(cmake make g++ clang python3 pkg-config doctest-dev libhwy-dev meson ninja-build
          g++-aarch64-linux-gnu qemu-user)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null \
    || { echo "could not install ${missing[*]}"; echo "0 passed, 1 failed"; exit 1; }
fi

passed=0
failed=0
failed_stages=()

# Runs ctest in a build dir and adds its counts to the totals.
run_ctest() {  # stage build_dir [ctest args...]
  local stage=$1 dir=$2
  shift 2
  local log="$dir/ctest-summary.log"
  (cd "$dir" && ctest --output-on-failure -j "$jobs" "$@") 2>&1 | tee "$log" | grep -vE "^\s+(Start|[0-9]+/[0-9]+ Test)" || true
  local line total nfail
  line=$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" "$log" | tail -n 1)
  if [ -z "$line" ]; then
    echo "== $stage: ctest did not run"
    failed=$((failed + 1)); failed_stages+=("$stage"); return
  fi
  nfail=$(echo "$line" | sed -E 's/.*passed, ([0-9]+) tests failed out of ([0-9]+).*/\1/')
  total=$(echo "$line" | sed -E 's/.*failed out of ([0-9]+).*/\1/')
  passed=$((passed + total - nfail))
  failed=$((failed + nfail))
  [ "$nfail" -gt 0 ] && failed_stages+=("$stage")
}

# A stage that is one pass/fail step.
run_step() {  # stage command...
  local stage=$1
  shift
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); failed_stages+=("$stage"); fi
}

build() {  # stage dir cmake-args...   (BUILD_TARGETS="a b": build only those)
  local stage=$1 dir=$2
  shift 2
  echo "== $stage: configure and build ($dir)"
  if ! cmake -S "$root" -B "$dir" "$@" >"$dir.configure.log" 2>&1; then
    cat "$dir.configure.log"; return 1
  fi
  local targets=()
  for t in ${BUILD_TARGETS:-}; do targets+=(--target "$t"); done
  if ! cmake --build "$dir" -j "$jobs" "${targets[@]}" >"$dir.build.log" 2>&1; then
    grep -E "error|Error" "$dir.build.log" | head -n 40; return 1
  fi
}

start=$(date +%s)
for stage in "${stages[@]}"; do
  t0=$(date +%s)
  case $stage in
    release)
      if build release "$root/build-release" -DCMAKE_BUILD_TYPE=Release -DTINYSLM_BUILD_TESTS=ON -DTINYSLM_BUILD_EXAMPLES=ON; then
        run_ctest release "$root/build-release"
      else failed=$((failed + 1)); failed_stages+=(release); fi ;;
    asan)
      if build asan "$root/build-asan" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-g -O1" \
           -DTINYSLM_SANITIZE=ON -DTINYSLM_BUILD_TESTS=ON -DTINYSLM_BUILD_EXAMPLES=ON; then
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
          run_ctest asan "$root/build-asan" -E "consumer_"
      else failed=$((failed + 1)); failed_stages+=(asan); fi ;;
    highway)
      # the kernels and what runs on them
      hwy_tests="test_kernels test_quant test_forward test_moe"
      if BUILD_TARGETS="$hwy_tests" build highway "$root/build-highway" -DCMAKE_BUILD_TYPE=Release \
           -DTINYSLM_USE_HIGHWAY=ON -DTINYSLM_BUILD_EXAMPLES=OFF; then
        run_ctest highway "$root/build-highway" -R "^($(echo $hwy_tests | tr ' ' '|'))(_shared)?\$"
      else failed=$((failed + 1)); failed_stages+=(highway); fi ;;
    aarch64)
      if [ -x "$root/scripts/test-aarch64.sh" ]; then
        echo "== aarch64: cross build, tests under qemu-aarch64"
        log="$root/build-aarch64.test.log"
        BUILD_DIR="$root/build-aarch64" JOBS="$jobs" "$root/scripts/test-aarch64.sh" >"$log" 2>&1
        rc=$?
        grep -vE "^\s+(Start|[0-9]+/[0-9]+ Test)" "$log" | tail -n 25
        line=$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" "$log" | tail -n 1)
        if [ -n "$line" ]; then
          nfail=$(echo "$line" | sed -E 's/.*passed, ([0-9]+) tests failed out of ([0-9]+).*/\1/')
          total=$(echo "$line" | sed -E 's/.*failed out of ([0-9]+).*/\1/')
          passed=$((passed + total - nfail)); failed=$((failed + nfail))
          [ "$nfail" -gt 0 ] && failed_stages+=(aarch64)
        fi
        if [ $rc -ne 0 ] && { [ -z "$line" ] || [ "${nfail:-0}" -eq 0 ]; }; then
          failed=$((failed + 1)); failed_stages+=(aarch64)
        fi
      else
        echo "== aarch64: skipped (scripts/test-aarch64.sh missing)"
      fi ;;
    fuzz)
      echo "== fuzz: GGUF reader, ${TINYSLM_FUZZ_SECONDS:-60}s"
      run_step fuzz env TEST_GGUF="$root/build-release/tests/test_gguf" \
        "$root/scripts/fuzz.sh" "${TINYSLM_FUZZ_SECONDS:-60}" "$root/build-fuzz" ;;
    meson)
      echo "== meson: setup, compile, test"
      if [ -f "$root/meson.build" ]; then
        rm -rf "$root/build-meson"
        if meson setup "$root/build-meson" "$root" --buildtype=release >"$root/build-meson.log" 2>&1 &&
           meson compile -C "$root/build-meson" -j "$jobs" >>"$root/build-meson.log" 2>&1; then
          if meson test -C "$root/build-meson" --num-processes "$jobs" --print-errorlogs >"$root/build-meson.test.log" 2>&1; then
            tail -n 8 "$root/build-meson.test.log"
          else
            tail -n 40 "$root/build-meson.test.log"
          fi
          ok=$(grep -E "^Ok:" "$root/build-meson.test.log" | awk '{print $2}')
          bad=$(grep -E "^(Fail|Timeout):" "$root/build-meson.test.log" | awk '{s+=$2} END {print s+0}')
          passed=$((passed + ${ok:-0})); failed=$((failed + ${bad:-0}))
          [ "${bad:-0}" -gt 0 ] && failed_stages+=(meson)
        else
          tail -n 40 "$root/build-meson.log"; failed=$((failed + 1)); failed_stages+=(meson)
        fi
      fi ;;
    *) echo "unknown stage '$stage'"; failed=$((failed + 1)); failed_stages+=("$stage") ;;
  esac
  echo "== $stage: $(( $(date +%s) - t0 ))s"
done

echo "== all stages: $(( $(date +%s) - start ))s; failed stages: ${failed_stages[*]:-none}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
