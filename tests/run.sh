#!/usr/bin/env bash
# The whole test suite: sets up, then builds and runs every test with ctest
# in the normal build and in the ThreadSanitizer and AddressSanitizer+UBSan
# builds.  Exits non-zero if any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh

status=0
for variant in "build" "build-tsan:thread" "build-asan:address"; do
  dir=${variant%%:*}
  sanitize=""
  [ "$dir" = "$variant" ] || sanitize=${variant#*:}
  echo "== $dir ${sanitize:+(sanitizer: $sanitize)}"
  cmake -S . -B "$dir" -DLJA_SANITIZE="$sanitize" >/dev/null
  cmake --build "$dir" -j2 >/dev/null
  (cd "$dir" && ctest --output-on-failure --timeout 300) || status=1
done
exit $status
