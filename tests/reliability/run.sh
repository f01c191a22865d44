#!/usr/bin/env bash
# The reliability suite and its figures: every ctest test labelled `reliability` in a built
# tree, then the "reliability:" line each printed.
#
#   tests/reliability/run.sh [--long] [BUILD_DIR]     (BUILD_DIR defaults to build)
#
# --long (KILN_RELIABILITY_LONG=1) runs the full counts: 1000 kills, 10,000 damaged
# checkpoints, 200 signalled runs, fuzzing for 10 minutes a loader, ...; the default counts are
# the bounded ones CI runs.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$repo/build
for arg in "$@"; do
    case $arg in
        --long) export KILN_RELIABILITY_LONG=1 ;;
        *) build=$arg ;;
    esac
done
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
(cd "$build" && ctest -L reliability -V --timeout 7200) >"$log" 2>&1 || status=$?
grep -E "^[0-9]+: reliability: |^reliability: " "$log" | sed -E 's/^[0-9]+: //' || true
grep -E "tests passed|tests failed|FAILED|\*\*\*" "$log" | grep -v "^[0-9]*: " || true
exit $status
