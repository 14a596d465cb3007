#!/usr/bin/env bash
# The whole test suite: sets up (tests/setup.sh), then builds and runs every
# test with ctest in the normal, ThreadSanitizer and AddressSanitizer+UBSan
# builds, under Debian's luajit and under OpenResty's luajit2 (unpacked by
# setup.sh into build-luajit2/root; CMake's LUAJIT selects it).  Exits
# non-zero if a test fails or the tests left anything in the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh tests
luajit2=$PWD/build-luajit2/root/usr/bin/luajit

# What the checkout holds besides these builds, before and after.
builds='^!! build(-tsan|-asan|-luajit2|-luajit2-tsan|-luajit2-asan)?/$'
snapshot() { git status --porcelain --ignored 2>/dev/null | grep -Ev "$builds" || true; }
before=$(snapshot)

status=0
suite() {
    local dir=$1 sanitize=$2 luajit=$3 start=$SECONDS
    echo "== $dir: $("$luajit" -e 'print(require("tests.helpers").luajit_flavour())') at $luajit${sanitize:+, sanitizer: $sanitize}"
    cmake -S . -B "$dir" -DBUILD_TESTING=ON -DLJA_SANITIZE="$sanitize" -DLUAJIT="$luajit" >/dev/null
    cmake --build "$dir" -j2 >/dev/null
    (cd "$dir" && ctest --output-on-failure --timeout 300) || status=1
    echo "== $dir: $((SECONDS - start)) s"
}
suite build "" luajit
suite build-tsan thread luajit
suite build-asan address luajit
suite build-luajit2 "" "$luajit2"
suite build-luajit2-tsan thread "$luajit2"
suite build-luajit2-asan address "$luajit2"

after=$(snapshot)
if [ "$before" != "$after" ]; then
    echo "The tests left this in the checkout (git status):"
    diff <(echo "$before") <(echo "$after") || true
    status=1
fi
exit $status
