#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Runs each libFuzzer target from BUILD_DIR for SECONDS, starting from the
# committed corpus (copied, so the repository is not touched). A crash
# leaves its input in fuzz-artifacts/ and fails the run: add that input to
# tests/fuzz/corpus/<target>/found/ with the fix, so CI replays it forever.
# Usage: tools/fuzz.sh BUILD_DIR SECONDS
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 2 ]; then
  echo "usage: tools/fuzz.sh BUILD_DIR SECONDS" >&2
  exit 2
fi
build=$1
seconds=$2
mkdir -p fuzz-artifacts
for target in envelope; do
  bin="$build/tests/fuzz/fuzz_$target"
  if [ ! -x "$bin" ]; then
    echo "fuzz.sh: $bin not built (configure with CC=clang -DFIELDSYNC_FUZZ=ON)" >&2
    exit 1
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cp tests/fuzz/corpus/$target/seeds/* "$work/"
  cp tests/fuzz/corpus/$target/found/* "$work/" 2>/dev/null || true
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 \
    "$bin" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
      -artifact_prefix=fuzz-artifacts/ -print_final_stats=1 "$work" \
      2>&1 | grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss|==[0-9]+==ERROR|SUMMARY)" || true
  if ls fuzz-artifacts/crash-* fuzz-artifacts/leak-* fuzz-artifacts/timeout-* >/dev/null 2>&1; then
    echo "fuzz.sh: fuzz_$target found a failure; inputs are in fuzz-artifacts/" >&2
    exit 1
  fi
  rm -rf "$work"
  trap - EXIT
done
