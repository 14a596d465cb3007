#!/usr/bin/env bash
# Installs what lj-async needs on Debian (with apt-get, as root or with sudo,
# only what is missing) and builds the shim in build/.
#   bash tests/setup.sh demo    what examples/demo.sh needs
#   bash tests/setup.sh tests   what tests/run.sh needs (the default); also
#                               unpacks OpenResty's luajit2 into
#                               build-luajit2/root (see below)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-tests}

# The shim and the demo: LuaJIT, a C compiler, CMake, libffi; the demo's C
# library is libuv.
packages=(luajit gcc libc6-dev make cmake pkg-config libffi-dev)
case $profile in
demo) packages+=(libuv1) ;;
tests)
    # The tests: LuaUnit; LuaJIT's headers (C hosts embedding it); the C
    # libraries that call back from their threads (libuv, GLib,
    # libmicrohttpd, with curl as the client); lua5.1, LuaRocks and git
    # for the loading and packaging tests.
    packages+=(libluajit-5.1-dev lua-unit libuv1-dev libglib2.0-dev libmicrohttpd-dev curl
               lua5.1 luarocks git zip unzip) ;;
*) echo "usage: $0 [demo|tests]" >&2; exit 2 ;;
esac

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]} (apt-get update, then apt-get install)"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# OpenResty's luajit2 conflicts with luajit as a Debian package, so the tests
# unpack it (and its library and headers, for the embedding tests) instead
# of installing it: build-luajit2/root/usr/bin/luajit.
luajit2=build-luajit2/root
if [ "$profile" = tests ] && [ ! -x "$luajit2/usr/bin/luajit" ]; then
    echo "setup: unpacking OpenResty's luajit2 into $luajit2 (apt-get download, dpkg -x)"
    debs=(luajit2 libluajit2-5.1-2 libluajit2-5.1-common libluajit2-5.1-dev)
    tmp=$(mktemp -d)
    chmod a+rwx "$tmp"   # apt-get downloads as its own user
    if ! (cd "$tmp" && apt-get download -q "${debs[@]}"); then
        $sudo apt-get update -q
        (cd "$tmp" && apt-get download -q "${debs[@]}")
    fi
    mkdir -p "$luajit2"
    for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$luajit2"; done
    rm -rf "$tmp"
    "$luajit2/usr/bin/luajit" -e 'print(require("tests.helpers").luajit_flavour())'
fi

echo "setup: building the shim in build/"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2
