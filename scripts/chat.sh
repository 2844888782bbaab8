#!/usr/bin/env bash
# Builds tinyslm (Release) and starts the chat program on a default model:
#   $TINYSLM_MODEL, else the first models/*.gguf, else ../shared/models/stories260K.gguf,
#   else the model scripts/fetch-model.sh downloads (SmolLM2-135M-Instruct Q8_0).
# Usage: scripts/chat.sh [chat flags...]     e.g. scripts/chat.sh -t 2 --temp 0.7
# Environment: TINYSLM_MODEL (model path), TINYSLM_BUILD_DIR (default build-release),
#              TINYSLM_JOBS (build jobs, default 2).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${TINYSLM_BUILD_DIR:-$root/build-release}
jobs=${TINYSLM_JOBS:-2}

die() { echo "chat.sh: $*" >&2; exit 1; }

model=${TINYSLM_MODEL:-}
if [ -z "$model" ]; then
  for f in "$root"/models/*.gguf; do
    [ -f "$f" ] && { model=$f; break; }
  done
fi
if [ -z "$model" ]; then
  shared=${TINYSLM_SHARED:-$root/../shared}
  [ -f "$shared/models/stories260K.gguf" ] && model=$shared/models/stories260K.gguf
fi
if [ -z "$model" ]; then
  echo "chat.sh: no model found; trying to download the default one" >&2
  model=$("$root/scripts/fetch-model.sh") || die "no model: set TINYSLM_MODEL=path/to/model.gguf or put one in models/"
fi
[ -f "$model" ] || die "model not found: $model"

# A fresh Debian/Ubuntu machine may lack the compiler and CMake: install them with apt.
if ! command -v cmake >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "needs cmake and a C++20 compiler (g++ 12 or clang 14)"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "chat.sh: installing cmake and g++ with apt" >&2
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq cmake make g++ >/dev/null \
    || die "could not install cmake and g++"
fi

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DTINYSLM_BUILD_TESTS=OFF >/dev/null || die "cmake configure failed"
cmake --build "$build" --target chat -j "$jobs" >/dev/null || die "build failed (run: cmake --build $build --target chat)"
echo "chat.sh: $model" >&2
exec "$build/examples/chat" -m "$model" "$@"
