#!/usr/bin/env bash
# `make demo`: from a fresh machine to a first execution through the API.
# Installs and starts what is missing (make setup, make services-up), starts the whole mesh
# in the background (`execmesh up`, log in .local/logs/mesh.log) unless its API already
# answers, creates an API key once (.local/demo-key), then runs examples/hello.py with the
# CLI. The mesh and the services are left running: `make demo-stop` stops the mesh,
# `make services-down` the services.
set -euo pipefail
cd "$(dirname "$0")/.."

api_url="${EXECMESH_API_URL:-http://127.0.0.1:8000}"
run_dir=.local/run
log_dir=.local/logs
mkdir -p "$run_dir" "$log_dir"

make --no-print-directory setup
make --no-print-directory services-up

# 0 when GET $1 answers 2xx (with the key in $2, if any); the venv's httpx, not curl.
answers() {
  .venv/bin/python - "$@" <<'PY'
import sys, httpx
headers = {"Authorization": f"Bearer {sys.argv[2]}"} if len(sys.argv) > 2 else {}
try:
    sys.exit(0 if httpx.get(sys.argv[1], headers=headers, timeout=2).is_success else 1)
except httpx.HTTPError:
    sys.exit(1)
PY
}
ready() { answers "$api_url/health/readiness"; }

if ! ready; then
  echo "starting the mesh in the background (log: $log_dir/mesh.log)"
  setsid .venv/bin/execmesh up >"$log_dir/mesh.log" 2>&1 < /dev/null &
  echo $! >"$run_dir/mesh.pid"
  for _ in $(seq 1 240); do
    ready && break
    if ! kill -0 "$(cat "$run_dir/mesh.pid")" 2>/dev/null; then
      echo "the mesh stopped; the end of its log:" >&2
      tail -n 30 "$log_dir/mesh.log" >&2
      exit 1
    fi
    sleep 0.5
  done
  ready || { echo "the API at $api_url is not ready after 120s: see $log_dir/mesh.log" >&2; exit 1; }
fi

key_works() {
  [[ -s .local/demo-key ]] && answers "$api_url/api/v1/runtimes" "$(cat .local/demo-key)"
}
if ! key_works; then
  .venv/bin/execmesh keys create --user demo --name "make demo" >.local/demo-key
fi
key="$(cat .local/demo-key)"

echo "\$ execmesh run examples/hello.py"
EXECMESH_API_URL="$api_url" EXECMESH_API_KEY="$key" .venv/bin/execmesh run examples/hello.py
echo
echo "The mesh is still running. Try:"
echo "  export EXECMESH_API_KEY=\$(cat .local/demo-key)"
echo "  .venv/bin/execmesh run examples/hello.py; .venv/bin/execmesh list"
echo "Stop it with: make demo-stop (and make services-down for the services)."
