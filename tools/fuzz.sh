#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Runs libFuzzer targets from BUILD_DIR for SECONDS each, starting from the
# committed corpus (copied, so the repository is not touched):
#   envelope  frame decoding, unpack under the budget, validation, payloads
#   session   whole sessions against the server code in process (initial
#             store state + frames), with invariant checks
#   client    libfieldsync against a hostile server, and corrupt databases
# TARGET... picks some (default: all three). A crash, leak, timeout or broken
# invariant leaves its input in fuzz-artifacts/ and fails the run: add that
# input to tests/fuzz/corpus/<target>/found/ with the fix, so CI replays it
# forever. Prints, per target, libFuzzer's last line (executions, cov, ft,
# exec/s) and the target's own figures ("# fuzz_...").
# Usage: tools/fuzz.sh BUILD_DIR SECONDS [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: tools/fuzz.sh BUILD_DIR SECONDS [TARGET...]" >&2
  exit 2
fi
build=$1
seconds=$2
shift 2
targets=${*:-envelope session client}
mkdir -p fuzz-artifacts
for target in $targets; do
  bin="$build/tests/fuzz/fuzz_$target"
  if [ ! -x "$bin" ]; then
    echo "fuzz.sh: $bin not built (configure with CC=clang -DFIELDSYNC_FUZZ=ON)" >&2
    exit 1
  fi
  # The structure-aware targets read choices, not frames: longer inputs
  # reach deeper sessions, so allow them from the start. They run threads
  # (the server, the fake server), so one input's mallocs and frees never
  # balance and libFuzzer's per-input leak check would scan the heap after
  # nearly every input (a third of the time, for nothing): it is off, and
  # LeakSanitizer checks at exit instead, after each target has stopped
  # its threads (the replay tests in ctest check the same way).
  opts=()
  case $target in
    session | client) opts=(-max_len=2048 -len_control=0 -detect_leaks=0) ;;
  esac
  work=$(mktemp -d)
  trap 'rm -rf "$work" "$work.log"' EXIT
  cp tests/fuzz/corpus/$target/seeds/* "$work/" 2>/dev/null || true
  cp tests/fuzz/corpus/$target/found/* "$work/" 2>/dev/null || true
  echo "-- fuzz_$target: ${seconds}s"
  status=0
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$bin" -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=30 \
      "${opts[@]}" -artifact_prefix=fuzz-artifacts/ -print_final_stats=1 \
      "$work" >"$work.log" 2>&1 || status=$?
  grep -E "^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss|==[0-9]+==ERROR|SUMMARY|fuzz invariant broken|# fuzz_)|runtime error" \
    "$work.log" || true
  if [ "$status" -ne 0 ] ||
     ls fuzz-artifacts/crash-* fuzz-artifacts/leak-* fuzz-artifacts/timeout-* \
       fuzz-artifacts/oom-* >/dev/null 2>&1; then
    tail -n 40 "$work.log" >&2
    echo "fuzz.sh: fuzz_$target failed (exit $status); inputs are in fuzz-artifacts/" >&2
    rm -f "$work.log"
    exit 1
  fi
  rm -f "$work.log"
  rm -rf "$work"
  trap - EXIT
done
