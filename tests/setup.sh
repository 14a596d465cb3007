#!/usr/bin/env bash
# Installs what lj-async needs on Debian (as root, when something is missing)
# and builds the shim in build/.  Used by examples/demo.sh and tests/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(luajit libluajit-5.1-dev lua-unit libffi-dev libuv1-dev libglib2.0-dev
          libmicrohttpd-dev curl cmake make gcc pkg-config luarocks)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2 >/dev/null
