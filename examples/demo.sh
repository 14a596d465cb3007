#!/usr/bin/env bash
# Sets up lj-async (Debian packages, the shim's build) and runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
luajit examples/demo.lua
