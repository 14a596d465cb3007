#!/usr/bin/env bash
# Sets up what the demo needs (Debian packages, the shim's build) and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh demo
echo "demo: luajit examples/demo.lua"
luajit examples/demo.lua
