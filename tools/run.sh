#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# README's main command: installs what is missing (Debian, as root), builds
# everything, and runs the main job: the field-visit demo (tools/demo/demo.sh:
# a server and four offline replicas on loopback), or, in a build without the
# server and client, the protocol self-check.
set -euo pipefail
cd "$(dirname "$0")/.."

tools/setup/install-deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build >/dev/null
cmake --build build -j "$jobs" >/dev/null

if [ -x build/server/fieldsyncd ] && [ -x build/client/fieldsync ]; then
  exec tools/demo/demo.sh build
fi

echo "fieldsync protocol self-check"
echo "-- decoding one valid frame of every message type:"
build/tests/fuzz/fuzz_envelope_replay --valid tests/fuzz/corpus/envelope/seeds
echo "-- protocol micro-benchmark:"
build/tools/bench_proto "${FIELDSYNC_BENCH_ITERS:-200000}"
