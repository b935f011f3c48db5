# Sourced by test.sh and demo.sh: installs the server packages flashgate's
# tests, demo and bench start their own throwaway servers from
# (redis-server, redis-cli/redis-benchmark, PostgreSQL with pgbench, and for
# the tests Prometheus), or says exactly what to install when it cannot.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
# The test suite also runs a real Prometheus and promtool (package prometheus).
if [ "${want_prometheus:-0}" = 1 ]; then
  { command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=(prometheus)
fi

# test.sh checks docker-compose.yml with docker compose (the plugin) or
# docker-compose, and the Alertmanager configuration with amtool.
if [ "${want_compose:-0}" = 1 ]; then
  { docker compose version || command -v docker-compose; } >/dev/null 2>&1 || missing+=(docker-compose)
  command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
fi
# The live page is tested in a real browser: headless Chromium.
if [ "${want_browser:-0}" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fi
# test.sh pip-installs its Python tools into a venv.
if [ "${want_python_venv:-0}" = 1 ]; then
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
fi

if ((${#missing[@]})); then
  echo "flashgate: installing ${missing[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "flashgate: please install: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
