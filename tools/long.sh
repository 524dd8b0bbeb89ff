#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The long run (issue 6): what CI runs scaled down, at full scale.
#   1. every test suite under AddressSanitizer + UndefinedBehaviorSanitizer
#      with FIELDSYNC_TEST_SCALE=SCALE (default 20): the fault sweeps cover
#      every k, the crash tests kill SCALE times as often, the convergence and
#      network-fault runs take SCALE times as many seeds; time limits grow
#      with the scale;
#   2. each libFuzzer target for FIELDSYNC_LONG_FUZZ_SECONDS (default 600);
#   3. the hostile-load benchmark (tools/load) from a Release build.
# Every suite's figures ("# ..." lines) are gathered into
# long-results/<time>/figures.txt. Exit status: non-zero when anything failed.
# Usage: tools/long.sh [SCALE]      (also: cmake --build BUILD --target long)
set -uo pipefail
cd "$(dirname "$0")/.."

scale=${1:-${FIELDSYNC_LONG_SCALE:-20}}
fuzz_seconds=${FIELDSYNC_LONG_FUZZ_SECONDS:-600}
case $scale in
  '' | *[!0-9]* | 0) echo "usage: tools/long.sh [SCALE>=1]" >&2; exit 2 ;;
esac
tools/setup/install-deps.sh || exit 1
jobs=$(nproc 2>/dev/null || echo 2)
out=long-results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
status=0
started=$(date +%s)

echo "== long run: scale $scale, fuzzing ${fuzz_seconds}s per target; results in $out =="

echo "== 1. every suite at scale $scale (ASan + UBSan) =="
cmake -S . -B build-long-asan -DCMAKE_BUILD_TYPE=Debug -DFIELDSYNC_SANITIZE=ON \
  -DFIELDSYNC_TEST_SCALE="$scale" >/dev/null &&
  cmake --build build-long-asan -j "$jobs" >"$out/build-asan.log" 2>&1 ||
  { echo "long.sh: the sanitizer build failed (see $out/build-asan.log)" >&2; exit 1; }
FIELDSYNC_TEST_SCALE=$scale ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-long-asan -V -j "$jobs" --timeout $((1500 * scale)) \
  >"$out/ctest.log" 2>&1 || status=1
tail -n 3 "$out/ctest.log"
# ctest -V prefixes a test's output with its number: "12: # ...".
for name in $(sed -n 's/^ *[0-9]*\/[0-9]* Test *#\([0-9]*\): \([^ ]*\) .*/\1:\2/p' \
                "$out/ctest.log" | sort -t: -k1,1n); do
  num=${name%%:*}
  echo "-- ${name#*:}"
  grep -E "^$num: # " "$out/ctest.log" | sed "s/^$num: //"
done >"$out/figures.txt"

echo "== 2. fuzzing ${fuzz_seconds}s per target =="
if command -v clang >/dev/null 2>&1; then
  CC=clang cmake -S . -B build-long-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DFIELDSYNC_FUZZ=ON -DFIELDSYNC_SANITIZE=ON -DFIELDSYNC_BUILD_TOOLS=OFF \
    >/dev/null &&
    cmake --build build-long-fuzz -j "$jobs" >"$out/build-fuzz.log" 2>&1 &&
    tools/fuzz.sh build-long-fuzz "$fuzz_seconds" 2>&1 | tee "$out/fuzz.log" ||
    status=1
  { echo "-- fuzzing"; cat "$out/fuzz.log"; } >>"$out/figures.txt"
else
  echo "long.sh: clang not found; fuzzing skipped" >&2
  status=1
fi

echo "== 3. hostile load (Release) =="
cmake -S . -B build-long -DCMAKE_BUILD_TYPE=Release >/dev/null &&
  cmake --build build-long -j "$jobs" >"$out/build-release.log" 2>&1 &&
  build-long/tools/load/fieldsync-load --fieldsyncd build-long/server/fieldsyncd \
    --admin build-long/server/fieldsync-admin 2>&1 | tee "$out/load.log" ||
  status=1
{ echo "-- hostile load"; cat "$out/load.log"; } >>"$out/figures.txt"

echo "== figures ($out/figures.txt) =="
cat "$out/figures.txt"
echo "long.sh: $(( ($(date +%s) - started) / 60 )) min, status $status"
exit $status
