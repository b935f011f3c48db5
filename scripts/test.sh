#!/usr/bin/env bash
# Runs flashgate's whole test suite on a Debian/Ubuntu machine with Rust.
#
# The tests start their own redis-server processes (standalone and a
# three-master cluster) and PostgreSQL on free loopback ports and remove them
# afterwards, and a Prometheus that scrapes a test gateway; this script only
# makes sure the server packages are installed. Where `docker compose` (or
# docker-compose) is installed, docker-compose.yml is checked with it too.
set -euo pipefail
cd "$(dirname "$0")/.."
want_prometheus=1
source scripts/ensure-servers.sh
cargo test --locked --all-targets "$@"
