#!/usr/bin/env bash
# Runs a whole flash sale on this machine: `flashgate-dev demo` on its own
# throwaway Redis Cluster and PostgreSQL. Extra arguments go to the demo
# (e.g. --keep, --attempts 50000); see `flashgate-dev demo --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-servers.sh
# The gateway (flashgate) and the tools (flashgate-dev, which starts it).
cargo build --locked --release --quiet --workspace
exec ./target/release/flashgate-dev demo "$@"
