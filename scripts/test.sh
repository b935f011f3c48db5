#!/usr/bin/env bash
# Runs flashgate's whole test suite on a Debian/Ubuntu machine with Rust.
#
# The tests start their own redis-server processes (standalone and a
# three-master cluster) and PostgreSQL on free loopback ports and remove them
# afterwards, and a Prometheus that scrapes a test gateway; this script only
# makes sure the server packages are installed. docker-compose.yml is
# checked with `docker compose config` (or docker-compose, installed when
# neither is) and config/alertmanager.yml with amtool.
# openapi.json is checked with openapi-spec-validator, and a client generated
# from it by openapi-python-client is driven against a gateway; pip installs
# both into a venv of their own (target/tools-venv). The live page is loaded
# in headless Chromium (package chromium); its screenshot lands in
# target/test-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
want_prometheus=1
want_python_venv=1
want_compose=1
want_browser=1
source scripts/ensure-servers.sh
# Python tools the tests run, in a venv of their own.
tools=target/tools-venv
if [ ! -x "$tools/bin/openapi-spec-validator" ] || [ ! -x "$tools/bin/openapi-python-client" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q openapi-spec-validator openapi-python-client
fi
export PATH="$PWD/$tools/bin:$PATH"
cargo test --locked --workspace --all-targets "$@"
