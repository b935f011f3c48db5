#!/usr/bin/env bash
# Runs flashgate's whole test suite on a Debian/Ubuntu machine with Rust.
#
# The tests start their own redis-server processes (standalone and a
# three-master cluster) on free loopback ports and remove them afterwards;
# this script only makes sure the server packages are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)

if ((${#missing[@]})); then
  echo "test.sh: installing ${missing[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "test.sh: please install: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

cargo test --locked --all-targets "$@"
