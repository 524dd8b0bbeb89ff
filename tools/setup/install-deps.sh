#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs every Debian package fieldsync needs to build, test and run.
# Run as root on Debian (bookworm or later). Without root it prints the
# exact command to run instead. Safe to run again: it installs only what is
# missing, and skips apt entirely when nothing is.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config
  libuv1-dev libsqlite3-dev sqlite3
  libprotobuf-c-dev protobuf-c-compiler
  libssl-dev openssl libjansson-dev
  clang libclang-rt-dev
  python3
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "fieldsync: missing packages: ${missing[*]}" >&2
  echo "fieldsync: run as root:  $cmd" >&2
  exit 1
fi
echo "fieldsync: installing ${missing[*]}" >&2
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
