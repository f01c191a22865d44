#!/usr/bin/env bash
# The checkpoint writer under ThreadSanitizer: builds kiln's CPU path and
# tests/reliability/writer_threads_test.cpp with -fsanitize=thread in its own build directory
# ($KILN_TSAN_BUILD, default build-tsan beside this checkout's build), runs the test, and fails
# on any ThreadSanitizer report or test failure.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${KILN_TSAN_BUILD:-$repo/build-tsan}
flags="-fsanitize=thread -g -O1"
mkdir -p "$build"
if [[ ! -f "$build/CMakeCache.txt" ]]; then
    cmake -S "$repo" -B "$build" -G Ninja -DKILN_USE_CUDA=OFF -DKILN_BUILD_BENCH=OFF \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
        -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread -DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread \
        >"$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
fi
cmake --build "$build" --target writer_threads_test -j "$(nproc)" >"$build/build.log" 2>&1 ||
    { tail -50 "$build/build.log"; exit 1; }
report=$(mktemp -u /tmp/kiln-tsan-XXXXXX)  # ThreadSanitizer writes $report.<pid> per report
# Any report fails the run (exit code 66), and is printed in full.
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 log_path=$report"
export KILN_NUM_THREADS=2
status=0
"$build/tests/writer_threads_test" || status=$?
if compgen -G "$report.*" >/dev/null; then
    cat "$report".*
    rm -f "$report".*
    echo "reliability: writer threads under ThreadSanitizer: REPORTS (above)"
    exit 1
fi
if [[ $status -ne 0 ]]; then
    echo "writer_threads_test failed under ThreadSanitizer (exit $status)"
    exit "$status"
fi
echo "reliability: writer threads under ThreadSanitizer: 0 reports"
