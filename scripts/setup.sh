#!/usr/bin/env bash
# `make setup`: everything execmesh needs on a fresh machine, installed idempotently.
#
#   - the Debian packages in scripts/apt-packages.txt (pod interpreters, bubblewrap, busybox);
#   - the Python virtual environment in .venv, with the project and its dev tools;
#   - execmesh-podexec, the local node's launcher, compiled from execmesh/node/podexec.c;
#   - Redis, from Debian's packages;
#   - Apache Kafka 4.x (KRaft), its jars resolved by Maven from scripts/services/pom.xml;
#   - FerretDB 1.24.2, built from its Go module with a SQLite backend, patched so that lookups
#     by _id use the _id index (scripts/patches/).
#
# A service whose URL is set in the environment (REDIS_URL, KAFKA_BOOTSTRAP_SERVERS,
# MONGODB_URL) to anything but the local default is external: nothing is installed for it
# (`python -m execmesh.localservices local` names the local ones).
# Each step is skipped when what it would produce is already there and up to date.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=${EXECMESH_DATA_DIR:-$ROOT/.local}
VENV=$ROOT/.venv
PYTHON=${PYTHON:-python3.11}
FERRETDB_VERSION=v1.24.2
# What the built binary reports: the version plus our patch level (a new patch, a new build).
FERRETDB_BUILD=$FERRETDB_VERSION-execmesh.1

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }
fingerprint() { cat "$@" | sha256sum | cut -c1-16; }

quietly() {  # quietly NAME COMMAND...: run it, keeping its output in a log shown on failure
  local log=$DATA/logs/setup-$1.log
  shift
  mkdir -p "$DATA/logs"
  if ! "$@" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "failed: $* (full output in $log)"
  fi
}

apt_install() {  # apt_install PACKAGE...: install the Debian packages that are missing
  local missing=()
  for package in "$@"; do
    [[ $(dpkg-query -W -f='${Status}' "$package" 2>/dev/null) == "install ok installed" ]] \
      || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  say "apt-get install ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

setup_packages() {  # scripts/apt-packages.txt: interpreters for local pods, the sandbox
  local packages=() package
  while read -r package; do
    case $package in '' | '#'*) continue ;; esac
    # Redis is installed by setup_redis, and only when it is a local service.
    [ "$package" = redis-server ] || packages+=("$package")
  done <"$ROOT/scripts/apt-packages.txt"
  # Go for local pods: the upstream toolchain in /usr/local/go when there is one (Debian's
  # golang-go is older); the registry finds either.
  [ -x /usr/local/go/bin/go ] || packages+=(golang-go)
  apt_install "${packages[@]}"
}

setup_python() {
  command -v "$PYTHON" >/dev/null || PYTHON=python3
  "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
    || die "Python 3.11 is needed (tried $PYTHON); set PYTHON=/path/to/python3.11"
  [ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
  local stamp=$VENV/.execmesh-installed want
  want=$(fingerprint "$ROOT/pyproject.toml" "$ROOT/requirements.lock")
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing Python dependencies into $VENV"
    # requirements.lock pins every transitive version (regenerate: make lock).
    quietly pip "$VENV/bin/python" -m pip install -q -c "$ROOT/requirements.lock" -e "$ROOT[dev]"
    echo "$want" >"$stamp"
  fi
}

setup_redis() {
  command -v redis-server >/dev/null && return 0
  apt_install redis-server
  # Debian's package may start its own server on 6379; ours is started by `make services-up`.
  if command -v systemctl >/dev/null && systemctl is-active -q redis-server 2>/dev/null; then
    systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
}

setup_kafka() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  local pom=$ROOT/scripts/services/pom.xml libs=$DATA/kafka/libs want
  want=$(fingerprint "$pom")
  if [ "$(cat "$libs/.pom-fingerprint" 2>/dev/null)" != "$want" ]; then
    say "resolving Kafka's jars with Maven into $libs"
    rm -rf "$libs"
    mkdir -p "$libs"
    quietly maven mvn -B -q -f "$pom" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$libs"
    echo "$want" >"$libs/.pom-fingerprint"
  fi
}

setup_ferretdb() {
  local bin=$DATA/bin/ferretdb
  if [ -x "$bin" ] && [[ $("$bin" --version 2>/dev/null) == *"version: $FERRETDB_BUILD"* ]]; then
    return 0
  fi
  command -v go >/dev/null || die "Go is needed to build FerretDB (go.dev toolchain, 1.22 or newer)"
  say "building FerretDB $FERRETDB_BUILD into $bin"
  # `go install ...@v1.24.2` builds a binary that panics at start: the module zip lacks the
  # generated build/version/version.txt. Build a copy of the same module with that file.
  local module src=$DATA/src/ferretdb
  mkdir -p "$DATA/logs"
  module=$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" \
    2>"$DATA/logs/setup-ferretdb-download.log" \
    | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin).get("Dir", ""))') \
    || true
  [ -d "$module" ] || die "could not download FerretDB's Go module (see $DATA/logs/setup-ferretdb-download.log)"
  rm -rf "$src"
  mkdir -p "$src"
  cp -r "$module/." "$src"
  chmod -R u+w "$src"
  echo "$FERRETDB_BUILD" >"$src/build/version/version.txt"
  patch --quiet -p1 -d "$src" <"$ROOT/scripts/patches/ferretdb-sqlite-id-lookups.patch" \
    || die "could not apply scripts/patches/ferretdb-sqlite-id-lookups.patch to FerretDB"
  mkdir -p "$DATA/bin"
  quietly ferretdb go -C "$src" build -trimpath -o "$bin" ./cmd/ferretdb
  rm -rf "$DATA/src"
}

setup_podexec() {  # the local node's privilege-dropping launcher, from its C source
  local source=$ROOT/execmesh/node/podexec.c want bin
  # Where the node looks for it (Settings.podexec_path: EXECMESH_PODEXEC or its default).
  bin=$("$VENV/bin/python" -c 'from execmesh.settings import Settings; print(Settings.from_env().podexec_path)')
  local build=(gcc -O2 -Wall -Wextra -Werror -static -o "$bin.tmp" "$source" -lseccomp)
  # The command is part of the fingerprint: a new flag or library rebuilds it too. So is
  # the binary itself, so that one replaced by hand is built again.
  want=$(fingerprint "$source" <(echo "${build[*]}"))
  [ -x "$bin" ] && [ "$(cat "$bin.fingerprint" 2>/dev/null)" = "$want $(fingerprint "$bin")" ] &&
    return 0
  say "building $bin"
  mkdir -p "$(dirname "$bin")"
  quietly podexec "${build[@]}"
  mv "$bin.tmp" "$bin"
  echo "$want $(fingerprint "$bin")" >"$bin.fingerprint"
}

setup_packages
setup_python
setup_podexec
local_services=" $("$VENV/bin/python" -m execmesh.localservices local) "
case $local_services in *" redis "*) setup_redis ;; esac
case $local_services in *" kafka "*) setup_kafka ;; esac
case $local_services in *" ferretdb "*) setup_ferretdb ;; esac
"$VENV/bin/python" -m execmesh.localservices prepare
say "setup done; next: make services-up"
