#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# README's test command: installs what is missing (Debian, as root), then
#   1. builds with AddressSanitizer + UndefinedBehaviorSanitizer and runs
#      every test suite,
#   2. fuzzes each libFuzzer target (envelope, session, client) with clang
#      for FIELDSYNC_FUZZ_SECONDS seconds each (default 30: 90 seconds
#      in all; 0 skips),
#   3. builds normally (warnings are errors) and runs every test suite.
# ctest's closing line of the last run counts the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

tools/setup/install-deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
fuzz_seconds=${FIELDSYNC_FUZZ_SECONDS:-30}

echo "== sanitizer build (ASan + UBSan) =="
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DFIELDSYNC_SANITIZE=ON \
  -DFIELDSYNC_WERROR=ON >/dev/null
cmake --build build-asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j "$jobs"

if [ "$fuzz_seconds" -gt 0 ] && command -v clang >/dev/null 2>&1; then
  echo "== fuzzing ${fuzz_seconds}s per target (clang libFuzzer, ASan + UBSan) =="
  CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DFIELDSYNC_FUZZ=ON -DFIELDSYNC_SANITIZE=ON -DFIELDSYNC_WERROR=ON \
    -DFIELDSYNC_BUILD_TOOLS=OFF >/dev/null
  cmake --build build-fuzz -j "$jobs" --target fuzz_envelope fuzz_session \
    fuzz_client
  tools/fuzz.sh build-fuzz "$fuzz_seconds" envelope session client
fi

echo "== release build =="
cmake -S . -B build -DFIELDSYNC_WERROR=ON >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"
