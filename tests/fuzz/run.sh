#!/usr/bin/env bash
# Builds kiln's fuzz targets (tests/fuzz/CMakeLists.txt: libFuzzer with ASan and UBSan, clang)
# and fuzzes each loader for a while, starting from a copy of its seed corpus and every input
# that ever crashed it (tests/fuzz/regressions/<target>/).
#
#   tests/fuzz/run.sh [--seconds N] [--long] [--jobs J] [TARGET...]
#
#   --seconds N   fuzzing time per target (default 20, what CI runs)
#   --long        600 s per target
#   --jobs J      targets fuzzed at once (default: the number of cores)
#   TARGET        idx npy csv hdf5 model_json checkpoint (default: all)
#
# The build goes to build-fuzz/ (or $KILN_FUZZ_BUILD), the grown corpora and the logs to its
# work/ folder. One line per target says what happened:
#
#   reliability: fuzz_npy: 123456 runs in 20 s, 0 crashes, corpus 57 files
#
# A crash in kiln (a sanitizer report, an uncaught exception, a leak, a timeout over 5 s, an
# allocation over 256 MiB or RSS over 2 GiB) is copied to tests/fuzz/regressions/<target>/, its
# report is printed, and the script exits 1: fix the cause, then commit the input, which the
# replay test (fuzz_replay_test) runs from then on. A crash or hang inside libhdf5 itself
# (triage.py decides whose a crash is) is listed and kept in work/<target>/libhdf5/ but does not
# fail the run: kiln can only guard against such files where a cheap check can tell them
# (tests/fuzz/libhdf5/ keeps examples of those it cannot).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${KILN_FUZZ_BUILD:-$repo/build-fuzz}
seconds=20
jobs=$(nproc 2>/dev/null || echo 2)
all_targets=(idx npy csv hdf5 model_json checkpoint)
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --long) seconds=600; shift ;;
        --jobs) jobs=$2; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "reliability: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
    [ -d "$repo/tests/fuzz/corpus/$t" ] || {
        echo "reliability: unknown target '$t' (targets: ${all_targets[*]})" >&2
        exit 2
    }
done

# ---- build ------------------------------------------------------------------------------------
cxx=${KILN_FUZZ_CXX:-clang++}
cc=${KILN_FUZZ_CC:-clang}
if ! command -v "$cxx" >/dev/null 2>&1 || ! command -v "$cc" >/dev/null 2>&1; then
    echo "reliability: FAILED: $cxx / $cc not found; the fuzz targets need clang with the" \
         "libFuzzer runtime (Debian: apt-get install clang libclang-rt-dev; scripts/setup.sh" \
         "installs them)" >&2
    exit 1
fi
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
mkdir -p "$build"
start=$SECONDS
if [ ! -f "$build/CMakeCache.txt" ]; then
    if ! cmake -S "$repo/tests/fuzz" -B "$build" "${generator[@]}" -DCMAKE_CXX_COMPILER="$cxx" \
            -DCMAKE_C_COMPILER="$cc" > "$build/configure.log" 2>&1; then
        cat "$build/configure.log" >&2
        rm -f "$build/CMakeCache.txt"  # configure again next time, once the cause is fixed
        echo "reliability: FAILED: configuring the fuzz targets (log above)" >&2
        exit 1
    fi
fi
if ! cmake --build "$build" --parallel "$jobs" > "$build/build.log" 2>&1; then
    cat "$build/build.log" >&2
    echo "reliability: FAILED: building the fuzz targets (log above)" >&2
    exit 1
fi
echo "reliability: fuzz targets built in $((SECONDS - start)) s ($build)"

# ---- fuzz -------------------------------------------------------------------------------------
# The loaders write their input to a scratch file in $TMPDIR (fuzz_targets.h): one directory for
# this run, in memory where possible, removed at the end.
scratch_parent=${TMPDIR:-/tmp}
[ -w /dev/shm ] && scratch_parent=/dev/shm
scratch=$(mktemp -d "$scratch_parent/kiln-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:symbolize=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$repo/tests/fuzz/lsan.supp:print_suppressions=0}

# The largest input each target makes: above its largest seed, and a bound that keeps long
# regression inputs (read whole by the replay test) from slowing every mutation down.
max_len_of() {
    case "$1" in
        hdf5) echo 8192 ;;
        checkpoint) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

fuzz_one() {
    local t=$1 work=$build/work/$1
    rm -rf "$work"
    mkdir -p "$work/corpus" "$work/artifacts" "$repo/tests/fuzz/regressions/$t"
    cp "$repo/tests/fuzz/corpus/$t"/* "$work/corpus/"
    # New inputs go to the first folder (the copy); the regressions are read, never written.
    # -fork=1 runs the fuzzing in a child process that is started again after each crash, so
    # one quick crash inside libhdf5 does not end the run: every crash input is kept in
    # artifacts/ and sorted out below.
    local began=$SECONDS code=0
    TMPDIR=$scratch "$build/fuzz_$t" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
        -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=256 -timeout=5 \
        -max_len="$(max_len_of "$t")" -artifact_prefix="$work/artifacts/" \
        "$work/corpus" "$repo/tests/fuzz/regressions/$t" > "$work/fuzz.log" 2>&1 || code=$?
    echo "$code" > "$work/exit_code"
    echo $((SECONDS - began)) > "$work/seconds"
    # Whose each crash is: kiln's, or libhdf5's alone (triage.py says how it decides).
    local inputs=()
    for a in "$work/artifacts"/*; do
        case "$(basename "$a")" in
            *.report) ;;
            crash-*|leak-*|timeout-*|oom-*) inputs+=("$a") ;;
        esac
    done
    : > "$work/triage"
    if [ ${#inputs[@]} -gt 0 ]; then
        TMPDIR=$scratch python3 "$repo/tests/fuzz/triage.py" "$build/fuzz_$t" "${inputs[@]}" \
            > "$work/triage" 2>&1 || echo "kiln	triage failed	-	-" >> "$work/triage"
    fi
}

running=0
for t in "${targets[@]}"; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    fuzz_one "$t" &
    running=$((running + 1))
done
wait || true

# ---- report -----------------------------------------------------------------------------------
failed=0
for t in "${targets[@]}"; do
    work=$build/work/$t
    log=$work/fuzz.log
    code=$(cat "$work/exit_code" 2>/dev/null || echo 1)
    # The fork parent's status lines ("#123456: cov: ... job: 3") count the runs of all jobs.
    runs=$(sed -n 's/^#\([0-9][0-9]*\): cov:.*/\1/p' "$log" | tail -1)
    took=$(cat "$work/seconds" 2>/dev/null || echo "?")
    corpus=$(find "$work/corpus" -type f | wc -l)
    kiln_crashes=$(grep -c '^kiln	' "$work/triage" 2>/dev/null || true)
    hdf5_crashes=$(grep -c '^libhdf5	' "$work/triage" 2>/dev/null || true)
    line="reliability: fuzz_$t: ${runs:-0} runs in $took s, ${kiln_crashes:-0} crashes,"
    line+=" corpus $corpus files"
    [ "${hdf5_crashes:-0}" -eq 0 ] || line+=" (and $hdf5_crashes inside libhdf5, set aside)"
    echo "$line"

    # libhdf5's own crashes and hangs on hostile files: reported, kept out of the regressions.
    if [ "${hdf5_crashes:-0}" -gt 0 ]; then
        mkdir -p "$work/libhdf5"
        while IFS=$'\t' read -r owner what where input; do
            [ "$owner" = libhdf5 ] || continue
            mv "$work/artifacts/$input" "$work/artifacts/$input.report" "$work/libhdf5/"
            echo "reliability: fuzz_$t: libhdf5 $what in $where: $work/libhdf5/$input"
        done < "$work/triage"
    fi

    # kiln's crashes fail the run and join the regressions.
    if [ "${kiln_crashes:-0}" -gt 0 ]; then
        failed=1
        while IFS=$'\t' read -r owner what where input; do
            [ "$owner" = kiln ] || continue
            echo "---- fuzz_$t: $what in $where, input $input" >&2
            tail -60 "$work/artifacts/$input.report" >&2 2>/dev/null || true
            if [ -f "$work/artifacts/$input" ]; then
                cp "$work/artifacts/$input" "$repo/tests/fuzz/regressions/$t/"
                echo "reliability: fuzz_$t: the input is in tests/fuzz/regressions/$t/$input:" \
                     "replay it with $build/fuzz_$t FILE, fix the cause, then commit the file" >&2
            fi
        done < "$work/triage"
    elif [ "$code" -ne 0 ] && [ -z "$(cat "$work/triage")" ]; then
        # The fork parent exits with the code of the last job that failed; a failure with no
        # crash input to show for it (a fuzzer that did not start, say) fails the run.
        failed=1
        tail -40 "$log" >&2
        echo "reliability: fuzz_$t: exited with code $code (log above: $log)" >&2
    fi
done
echo "reliability: fuzzing took $((SECONDS - start)) s in all, build included"
exit $failed
