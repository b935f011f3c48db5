#!/usr/bin/env bash
# Runs a whole flash sale on this machine: `flashgate demo` on its own
# throwaway Redis Cluster and PostgreSQL. Extra arguments go to the demo
# (e.g. --keep, --attempts 50000); see `flashgate demo --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-servers.sh
cargo build --locked --release --quiet
exec ./target/release/flashgate demo "$@"
