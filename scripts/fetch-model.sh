#!/usr/bin/env bash
# Downloads the default chat model, SmolLM2-135M-Instruct Q8_0 (about 145 MB), into models/ and
# checks its sha256. Needs curl or wget and a network; fails with a clear message without them.
# Usage: scripts/fetch-model.sh [DEST_DIR]      (prints the model's path on success)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/models}
name=SmolLM2-135M-Instruct-q8_0.gguf
url=https://huggingface.co/Mungert/SmolLM2-135M-Instruct-GGUF/resolve/980b4318b34b2f20e60c89d8f8a98283ec83cbd6/$name
sha=bc64cce8e1c11e4ed870633b557e04af718249c817c4cf8a6784116144ec3e28

die() { echo "fetch-model: $*" >&2; exit 1; }

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d' ' -f1
  else die "neither sha256sum nor shasum is installed"; fi
}

mkdir -p "$dest" || die "cannot create $dest"
out=$dest/$name
if [ -f "$out" ] && [ "$(sha256_of "$out")" = "$sha" ]; then
  echo "$out"
  exit 0
fi

tmp=$out.part
rm -f "$tmp"
trap 'rm -f "$tmp"' EXIT
if command -v curl >/dev/null 2>&1; then
  curl -fL --progress-bar --retry 2 --connect-timeout 15 -o "$tmp" "$url" \
    || die "download failed (no network?): $url"
elif command -v wget >/dev/null 2>&1; then
  wget -q --tries=2 --timeout=15 -O "$tmp" "$url" \
    || die "download failed (no network?): $url"
else
  die "neither curl nor wget is installed"
fi
got=$(sha256_of "$tmp")
[ "$got" = "$sha" ] || die "sha256 mismatch for $name: got $got, expected $sha"
mv "$tmp" "$out"
trap - EXIT
echo "$out"
