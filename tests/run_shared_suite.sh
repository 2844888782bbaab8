#!/bin/sh
# Runs a test program's doctest suite "shared" ("$@": the emulator when cross-compiling, then
# the program) and maps the outcome to ctest's and meson's: a failure stays a failure; else a
# "SKIPPED:" notice (../shared missing) exits 77, which both report as skipped, not passed.
# Also fails when no test case ran, or when a test did not take the skip path while ../shared
# is absent (test_support.hpp's listener says so).
out=$("$@" --test-suite=shared 2>&1)
rc=$?
printf '%s\n' "$out"
if [ $rc -ne 0 ]; then exit $rc; fi
if printf '%s\n' "$out" | grep -q 'DID NOT TAKE THE SKIP PATH'; then exit 1; fi
if ! printf '%s\n' "$out" | grep -Eq 'test cases: *[1-9]'; then echo 'no test case of the shared suite ran'; exit 1; fi
if printf '%s\n' "$out" | grep -q '^SKIPPED:'; then exit 77; fi
exit 0
