#!/usr/bin/env bash
# The README's second command: install what is missing, build everything, run every test.
# Tests labelled `gpu` skip with their reason where no GPU is usable.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$repo/scripts/setup.sh"
cmake --build "$build_dir"
cd "$build_dir"
ctest --output-on-failure --timeout 900 "$@"
