#!/usr/bin/env bash
# The README's first command: install what is missing, build kiln, and run the default job
# (`kiln fit`: the MLP recipe on Fashion-MNIST, then the test set). Extra arguments go to
# `kiln fit`.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$repo/scripts/setup.sh"
cmake --build "$build_dir" --target kiln
exec "$build_dir/kiln" fit "$@"
