#!/usr/bin/env bash
# `make demo-stop`: stop the mesh that examples/demo.sh started in the background.
# honcho starts each process in a session of its own, so stopping the manager alone would
# leave them running: every process group under it is sent SIGTERM, then SIGKILL.
set -uo pipefail
cd "$(dirname "$0")/.."
pid_file=.local/run/mesh.pid
if [[ ! -s $pid_file ]]; then
  echo "no mesh started by make demo"
  exit 0
fi
manager="$(cat "$pid_file")"

descendants() {
  local child
  for child in $(ps -o pid= --ppid "$1"); do
    echo "$child"
    descendants "$child"
  done
}

groups() {
  { echo "$manager"; descendants "$manager"; } | while read -r pid; do
    ps -o pgid= -p "$pid" 2>/dev/null
  done | sort -u
}

targets="$(groups)"
for signal in TERM KILL; do
  for group in $targets; do kill "-$signal" -- "-$group" 2>/dev/null; done
  for _ in $(seq 1 20); do
    alive=0
    for group in $targets; do kill -0 -- "-$group" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.5
  done
  [[ $alive == 0 ]] && break
done
rm -f "$pid_file"
echo "mesh stopped"
