#!/usr/bin/env python3
"""Generate single_include/tinyslm.hpp from include/tinyslm.hpp.

Every quoted #include of a header under include/ is replaced by that header's text (each
header once, in first-use order); system includes stay as they are.

  python3 scripts/amalgamate.py           # write single_include/tinyslm.hpp
  python3 scripts/amalgamate.py --check   # exit 1 if the checked-in copy is stale
  python3 scripts/amalgamate.py --out PATH  # write the amalgamation to PATH instead
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = os.path.join(ROOT, "include")
OUT = os.path.join(ROOT, "single_include", "tinyslm.hpp")
QUOTED = re.compile(r'^\s*#\s*include\s*"([^"]+)"')
PRAGMA_ONCE = re.compile(r"^\s*#\s*pragma\s+once\b")

BANNER = """\
// tinyslm — single-header edition.
// GENERATED FILE, DO NOT EDIT: made by scripts/amalgamate.py from include/.
// Edit the headers under include/ and run `python3 scripts/amalgamate.py`.
#pragma once
"""


def inline(path, seen, out):
    path = os.path.normpath(path)
    if path in seen:
        return
    seen.add(path)
    rel = os.path.relpath(path, INCLUDE)
    out.append(f"\n// ---- begin {rel} ----\n")
    with open(path, encoding="utf-8") as f:
        for line in f:
            if PRAGMA_ONCE.match(line):
                continue
            m = QUOTED.match(line)
            if m:
                candidates = [os.path.join(os.path.dirname(path), m.group(1)),
                              os.path.join(INCLUDE, m.group(1))]
                target = next((c for c in candidates if os.path.isfile(c)), None)
                if target is None:
                    sys.exit(f"amalgamate: {rel}: cannot find \"{m.group(1)}\"")
                inline(target, seen, out)
                continue
            out.append(line)
    out.append(f"// ---- end {rel} ----\n")


def generate():
    out = [BANNER]
    inline(os.path.join(INCLUDE, "tinyslm.hpp"), set(), out)
    return "".join(out)


def main():
    text = generate()
    if "--check" in sys.argv[1:]:
        try:
            with open(OUT, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != text:
            print("single_include/tinyslm.hpp is stale: run python3 scripts/amalgamate.py")
            return 1
        print("single_include/tinyslm.hpp is up to date")
        return 0
    out = OUT
    if "--out" in sys.argv[1:]:
        i = sys.argv.index("--out")
        if i + 1 >= len(sys.argv):
            sys.exit("amalgamate: --out needs a path")
        out = sys.argv[i + 1]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
