#!/usr/bin/env bash
# The one script for the GPU machine (no network, no apt): builds kiln, runs the whole test suite,
# compares kiln with PyTorch on the GPU and on the CPU, and leaves the record in OUT_DIR.
#
#   bench/gpu_bundle.sh         # first, on the project's Debian build machine: bench/gpu-bundle/
#   bench/run_gpu.sh OUT_DIR    # then on the GPU machine, from the repository root or anywhere
#
# Through the device tool: carry ["bench/gpu-bundle"], command "bash bench/run_gpu.sh $OUT",
# timeout_s about 500 (the budget below plus the untimed set-up and the last write).
#
# OUT_DIR gets eight files, no more (the device tool brings back at most 8):
#   summary.md         each step's result and time, the test totals, both comparison tables,
#                      the machine, the commit and the command
#   env.txt            date, commit, OS, CPU, compilers, CMake, Python and torch, CUDA libraries
#   nvidia-smi.txt     nvidia-smi as found
#   ctest.log          ctest --output-on-failure over the whole suite, label gpu included
#   ctest-junit.xml    the same as JUnit (ctest --output-junit)
#   suite-cuda.json    bench/suite.py --device cuda: `kiln bench` (M1, M2, M3, C1, V1, S1, K1,
#                      O1, L1) and every case's PyTorch peers (eager, fused, graph, compile)
#   compare-cpu.json   bench/compare.py --device cpu
#   logs.tar.gz        configure, build and comparison logs, one per run
#
# Every step runs under `timeout` inside one budget (KILN_TIME_BUDGET_S, 450 s by default), so
# the whole script ends inside 8 minutes; a step the budget cannot fit is recorded as skipped.
# The steps come in order of worth: build, tests, the GPU suite with its peers, the sanitizers,
# the CPU comparison.
#
# Optional environment:
#   KILN_GPU_BUNDLE     the bundle (default bench/gpu-bundle); without one the system's packages
#                       are used, as on the build machine
#   KILN_BUILD_DIR      the build folder (default build-gpu, apart from a developer's build/)
#   KILN_TIME_BUDGET_S  seconds for all steps together (default 450)
#   KILN_BENCH_EPOCHS   timed epochs per benchmark run (default 3)
#   KILN_BENCH_WARMUP   untimed epochs before them (default 1)
#   KILN_CMAKE_ARGS     extra configure arguments, split on spaces
#   KILN_COMPARE_ARGS   extra bench/compare.py arguments for both comparisons, split on spaces
#                       (later flags win: "--run-timeout 600 --threads 1" for a slow rehearsal)
#   KILN_PYTHON         the Python that has torch (default: the first of python3, /usr/bin/python3)
set -euo pipefail

out_arg=${1:?usage: bench/run_gpu.sh OUT_DIR}
mkdir -p "$out_arg"
out=$(cd "$out_arg" && pwd)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bundle=${KILN_GPU_BUNDLE:-$repo/bench/gpu-bundle}
build=${KILN_BUILD_DIR:-$repo/build-gpu}
budget=${KILN_TIME_BUDGET_S:-450}
epochs=${KILN_BENCH_EPOCHS:-3}
warmup=${KILN_BENCH_WARMUP:-1}
jobs=$(nproc)
multiarch=x86_64-linux-gnu

scratch=$(mktemp -d /tmp/kiln-run-gpu.XXXXXX)
logs=$scratch/logs
steps=$scratch/steps.tsv  # name, result, seconds, note
mkdir -p "$logs"
: > "$steps"
started=$SECONDS
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)

say() { echo "run_gpu: $*" >&2; }

# ---- steps, the budget and the record ------------------------------------------------------------

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >> "$steps"; }

# run_step NAME CAP_S COMMAND...: runs COMMAND under `timeout` for CAP_S or what is left of the
# budget, whichever is less; output goes to the terminal and to logs/NAME.log.
run_step() {
    local name=$1 cap=$2
    shift 2
    local left=$((budget - (SECONDS - started)))
    local limit=$((cap < left ? cap : left))
    if ((limit < 15)); then
        record "$name" skipped 0 "${left}s of the ${budget}s budget left"
        write_record
        return 1
    fi
    say "$name (up to ${limit}s): $*"
    local begin=$SECONDS rc
    set +e
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$logs/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    local took=$((SECONDS - begin))
    case $rc in
        0) record "$name" passed "$took" ;;
        124 | 137) record "$name" "timed out" "$took" "stopped at its ${limit}s limit" ;;
        *) record "$name" failed "$took" "exit code $rc" ;;
    esac
    write_record
    return "$rc"
}

# summary.md and logs.tar.gz, rewritten after every step so that a run stopped from outside
# still leaves what it had done.
write_record() {
    tar -czf "$out/logs.tar.gz" -C "$scratch" logs 2>/dev/null || true
    {
        echo "# kiln on the GPU machine, $started_at"
        echo
        echo "- commit: ${commit:-unknown}"
        echo "- GPU: ${gpu_line:-none}"
        echo "- CPU: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')," \
             "$jobs cores"
        echo "- command: bench/run_gpu.sh OUT_DIR (budget ${budget}s; benchmarks: $epochs timed" \
             "epochs after $warmup warm-up, batch 32, fp32 without TF32)"
        echo "- bundle: ${bundle_line:-none}"
        echo "- elapsed: $((SECONDS - started))s"
        echo
        echo "| step | result | seconds | note |"
        echo "| --- | --- | --- | --- |"
        while IFS=$'\t' read -r name result took note; do
            echo "| $name | $result | $took | $note |"
        done < "$steps"
        if [[ -f $logs/ctest.log ]]; then
            echo
            echo "## Tests"
            echo
            echo '```'
            grep -E 'tests passed|tests failed|Total Test time' "$logs/ctest.log" || true
            sed -n -e '/^The following tests did not run:/,/^$/p' \
                -e '/^The following tests FAILED:/,/^$/p' "$logs/ctest.log"
            sed -n '/^Label Time Summary:/,/^$/p' "$logs/ctest.log"
            echo '```'
        fi
        if [[ -f $logs/suite-cuda.log ]]; then
            echo
            echo "## kiln bench against PyTorch, cuda"
            echo
            echo '```'
            # the table suite.py prints last, from the machine line on
            sed -n '/^machine:/,$p' "$logs/suite-cuda.log" | tail -n 60
            echo '```'
        fi
        for dev in cpu; do
            [[ -f $logs/compare-$dev.log ]] || continue
            echo
            echo "## kiln against PyTorch, $dev"
            echo
            echo '```'
            sed -n '/^engine /,$p' "$logs/compare-$dev.log"
            echo '```'
        done
    } > "$out/summary.md"
}

finish() {
    local rc=$?
    write_record
    cp "$logs/ctest.log" "$out/ctest.log" 2>/dev/null || true
    rm -rf "$scratch"
    echo
    cat "$out/summary.md"
    exit "$rc"
}
trap finish EXIT

# ---- the machine ---------------------------------------------------------------------------------

if git -C "$repo" rev-parse HEAD > /dev/null 2>&1; then
    commit="$(git -C "$repo" rev-parse HEAD) ($(git -C "$repo" status --porcelain \
        --untracked-files=no | wc -l) tracked files changed)"
elif [[ -f $bundle/COMMIT ]]; then
    # The device tool sends the tree without .git; gpu_bundle.sh wrote the commit beside it.
    commit="$(head -1 "$bundle/COMMIT") (from the bundle's COMMIT: $(sed -n 2p "$bundle/COMMIT" |
        sed 's/^# //'))"
else
    commit="unknown (no .git and no $bundle/COMMIT)"
fi

have_gpu=0
if command -v nvidia-smi > /dev/null && timeout 30 nvidia-smi -L > /dev/null 2>&1; then
    have_gpu=1
    gpu_line=$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
        --format=csv,noheader | head -1 || true)
fi
{
    if command -v nvidia-smi > /dev/null; then
        timeout 30 nvidia-smi || true
        echo
        timeout 30 nvidia-smi --format=csv --query-gpu=name,driver_version,memory.total,\
compute_cap,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,power.limit || true
    else
        echo "nvidia-smi: not on this machine"
    fi
} > "$out/nvidia-smi.txt" 2>&1

# ---- the bundle: Debian's headers and libraries, and the dataset ---------------------------------

cmake_args=(-G Ninja -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release)
ldlib=
if [[ -f $bundle/sysroot.tar.xz ]]; then
    # Unpacked in the build folder at a fixed path, so that CMake's cached paths stay valid.
    sysroot=$build/bundle-sysroot
    rm -rf "$sysroot"
    mkdir -p "$sysroot"
    if command -v xz > /dev/null; then
        tar -C "$sysroot" -xJf "$bundle/sysroot.tar.xz"
    else
        # No xz binary: Python's tarfile reads xz with its own lzma module.
        python3 - "$bundle/sysroot.tar.xz" "$sysroot" << 'EOF'
import sys, tarfile
with tarfile.open(sys.argv[1]) as archive:
    trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    archive.extractall(sys.argv[2], **trusted)
EOF
    fi
    libdir=$sysroot/usr/lib/$multiarch
    packages=$(grep -c '^Package:' "$bundle/MANIFEST" 2> /dev/null || echo '?')
    bundle_line="$bundle ($packages packages)"

    # The loader gets only the libraries this machine lacks (and always the two kiln links), so
    # that nothing else that runs here, Python and PyTorch included, sees a second copy of a
    # library it already has.
    ldlib=$sysroot/ldlib
    mkdir -p "$ldlib"
    system_has() {
        local d
        for d in /lib/$multiarch /usr/lib/$multiarch /lib64 /usr/lib64 /usr/lib /usr/local/lib; do
            [[ -e $d/$1 ]] && return 0
        done
        # Elsewhere on the loader's path (ld.so.conf), where the listed file really exists.
        local path
        path=$(ldconfig -p 2> /dev/null | awk -v n="$1" '$1 == n {print $NF; exit}')
        [[ -n $path && -e $path ]]
    }
    while IFS= read -r so; do
        soname=$(readelf -d "$so" 2> /dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
        [[ -n $soname ]] || continue
        case $soname in
            libhdf5_serial.so.* | libopenblas.so.*) ln -sfn "$so" "$ldlib/$soname" ;;
            *) system_has "$soname" || ln -sfn "$so" "$ldlib/$soname" ;;
        esac
    done < <(find "$libdir" -type f -name 'lib*.so*')
    export LD_LIBRARY_PATH=$ldlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

    # Point every find_* of the project at the bundle; rpath-link lets the linker resolve what
    # libhdf5 and libopenblas themselves load.
    link_flags="-Wl,-rpath-link,$ldlib -Wl,-rpath-link,$libdir"
    cmake_args+=(
        "-DCMAKE_PREFIX_PATH=$sysroot/usr"
        "-DHDF5_ROOT=$libdir/hdf5/serial"
        "-DBLA_VENDOR=OpenBLAS"
        "-DOPENBLAS_CBLAS_DIR=$sysroot/usr/include/$multiarch/openblas-pthread"
        "-DCLI11_INCLUDE_DIR=$sysroot/usr/include"
        "-DZLIB_ROOT=$sysroot/usr"
        "-DCMAKE_EXE_LINKER_FLAGS=$link_flags"
        "-DCMAKE_SHARED_LINKER_FLAGS=$link_flags"
    )
else
    say "no $bundle/sysroot.tar.xz: building against this machine's own packages"
fi

data=/usr/share/datasets/fashion-mnist
if [[ -d $bundle/fashion-mnist ]]; then
    data=$bundle/fashion-mnist
    # Also where kiln looks for the name "fashion-mnist", when this machine has nothing there.
    if [[ ! -e /usr/share/datasets/fashion-mnist ]] &&
        mkdir -p /usr/share/datasets 2> /dev/null &&
        ln -s "$data" /usr/share/datasets/fashion-mnist 2> /dev/null; then
        say "linked /usr/share/datasets/fashion-mnist -> $data"
    fi
fi
export KILN_FASHION_MNIST_DIR=$data

# The Python for the peers: chosen once the bundle's libraries are on the loader's path.
py=${KILN_PYTHON:-}
if [[ -z $py ]]; then
    for candidate in python3 /usr/bin/python3; do
        if command -v "$candidate" > /dev/null && "$candidate" -c 'import torch' 2> /dev/null; then
            py=$(command -v "$candidate")
            break
        fi
    done
fi
[[ -n $py ]] || say "warning: no Python with torch found; the comparisons will fail"

# cuBLAS and cuDNN: where the CUDA toolkit lacks them but PyTorch's nvidia-* packages have them,
# give CMake and the loader their headers and libraries (with the unversioned names a linker
# wants). Nothing is done where the toolkit has them.
cuda_note="toolkit as found"
nvcc_path=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2> /dev/null || true)
if [[ -n $nvcc_path && -n $py ]]; then
    cuda_root=$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")
    in_toolkit() {
        [[ -n $(find "$cuda_root/" -maxdepth 4 -name "$1" -print -quit 2> /dev/null) ]]
    }
    missing=()
    in_toolkit libcublas.so || missing+=(cublas)
    in_toolkit cudnn.h || [[ -e /usr/include/cudnn.h || -e /usr/include/$multiarch/cudnn.h ]] ||
        missing+=(cudnn)
    if ((${#missing[@]})); then
        mapfile -t nvdirs < <("$py" -c 'import nvidia; print("\n".join(nvidia.__path__))' \
            2> /dev/null || true)
        if ((${#nvdirs[@]})); then
            shim=$build/cuda-shim
            rm -rf "$shim"
            mkdir -p "$shim/lib" "$shim/include"
            for lib in "${missing[@]}"; do
                while IFS= read -r f; do
                    soname=$(readelf -d "$f" 2> /dev/null |
                        sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
                    base=$(basename "$f")
                    ln -sfn "$f" "$shim/lib/${soname:-$base}"
                    ln -sfn "$f" "$shim/lib/${base%%.so*}.so"
                done < <(find "${nvdirs[@]}" -type f -name "lib${lib}*.so*")
                while IFS= read -r h; do
                    ln -sfn "$h" "$shim/include/$(basename "$h")"
                done < <(find "${nvdirs[@]}" -name "${lib}*.h")
            done
            cmake_args+=("-DCMAKE_LIBRARY_PATH=$shim/lib" "-DCMAKE_INCLUDE_PATH=$shim/include"
                         "-DCMAKE_CXX_FLAGS=-isystem $shim/include"
                         "-DCMAKE_CUDA_FLAGS=-isystem $shim/include")
            export LD_LIBRARY_PATH=$shim/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
            cuda_note="${missing[*]} not in $cuda_root: taken from ${nvdirs[*]} via $shim"
        else
            cuda_note="${missing[*]} not in $cuda_root, and no nvidia Python packages"
        fi
    fi
fi
# Build tools: nvcc where CUDA installs it, ninja from the Python packages if not on the PATH
# (else Makefiles).
if ! command -v nvcc > /dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
    PATH=/usr/local/cuda/bin:$PATH
fi
if ! command -v ninja > /dev/null && [[ -n $py ]]; then
    ninja_dir=$("$py" -c 'import ninja; print(ninja.BIN_DIR)' 2> /dev/null || true)
    if [[ -n $ninja_dir ]]; then PATH=$ninja_dir:$PATH; fi
fi
command -v ninja > /dev/null || cmake_args[1]="Unix Makefiles"

if [[ -n ${KILN_CMAKE_ARGS:-} ]]; then
    read -ra extra <<< "$KILN_CMAKE_ARGS"
    cmake_args+=("${extra[@]}")
fi

{
    echo "date: $started_at"
    echo "commit: $commit"
    echo "host: $(uname -n) - $(uname -srm)"
    grep -E '^(PRETTY_NAME)=' /etc/os-release 2> /dev/null || true
    echo "cpu: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2-) x $jobs"
    echo "memory: $(awk '/^MemTotal/ {print $2 " kB"}' /proc/meminfo)"
    echo "gpu: ${gpu_line:-none}"
    echo "python: ${py:-none} $( [[ -n $py ]] && "$py" -c 'import sys, torch
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu available", torch.cuda.is_available())' 2>&1)"
    echo "nvcc: ${nvcc_path:-none}"
    echo "cuda libraries: $cuda_note"
    echo "bundle: ${bundle_line:-none}"
    echo "bundle libraries given to the loader: $( [[ -n $ldlib ]] && ls "$ldlib" | tr '\n' ' ')"
    echo "dataset: $data"
    echo "configure: cmake ${cmake_args[*]}"
    for tool in cmake ninja g++ "${nvcc_path:-nvcc}" ctest; do
        echo "== $tool --version"
        "$tool" --version 2>&1 | head -4 || echo "$tool: not found"
    done
    if [[ -f $bundle/MANIFEST ]]; then
        echo "== bundle MANIFEST"
        cat "$bundle/MANIFEST"
    fi
} > "$out/env.txt" 2>&1
write_record

# ---- build and test ------------------------------------------------------------------------------

status=0
if ! run_step configure 90 cmake "${cmake_args[@]}"; then
    status=1
    record build "not run" 0 "configure did not pass"
elif ! run_step build 240 cmake --build "$build" --parallel "$jobs"; then
    status=1
    # A bench_fit left from an earlier build is not this tree's: compare.py reports kiln missing.
    rm -f "$build/bench/bench_fit"
fi
if ((status != 0)); then
    record ctest "not run" 0 "the build did not pass"
else
    # The reliability suite runs on the build machine (it needs clang and builds of its own).
    ctest_args=(--test-dir "$build" --output-on-failure --parallel "$jobs" --timeout 120
                -LE reliability)
    # (grep without -q: with pipefail, an early exit of grep -q would fail the pipe)
    if ctest --help 2> /dev/null | grep -- --output-junit > /dev/null; then
        ctest_args+=(--output-junit "$out/ctest-junit.xml")
    fi
    run_step ctest 150 ctest "${ctest_args[@]}" || status=1
    cp "$logs/ctest.log" "$out/ctest.log" 2> /dev/null || true
fi

# ---- kiln against PyTorch ------------------------------------------------------------------------

compare=("${py:-python3}" "$repo/bench/compare.py" --kiln "$build/bench/bench_fit"
         --epochs "$epochs" --warmup-epochs "$warmup" --data "$data")
read -ra compare_extra <<< "${KILN_COMPARE_ARGS:-}"
if ((have_gpu)); then
    # The GPU first: it is what the machine is lent for. The whole suite, kiln's cases and each
    # case's peers in every mode (torch.compile's are the longest), with kiln's step graphs and
    # cuBLASLt epilogues on (their defaults on CUDA).
    run_step suite-cuda 270 "${py:-python3}" "$repo/bench/suite.py" --kiln "$build/kiln" \
        --device cuda --epochs "$epochs" --warmup-epochs "$warmup" --data "$data" \
        --peer-modes eager,fused,graph,compile --run-timeout 120 \
        --log-dir "$logs/suite-cuda" --json "$out/suite-cuda.json" || status=1
else
    record suite-cuda skipped 0 "no GPU (nvidia-smi -L found none)"
fi
# compute-sanitizer over the CUDA-against-CPU tests: memcheck (out-of-bounds and misaligned
# accesses, leaks) and racecheck (shared-memory hazards); any error fails the step.
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if ((have_gpu)) && [[ -x $sanitizer && -x $build/tests/cuda_test ]]; then
    run_step memcheck 60 "$sanitizer" --tool memcheck --leak-check full --error-exitcode 9 \
        "$build/tests/cuda_test" || status=1
    run_step racecheck 40 "$sanitizer" --tool racecheck --error-exitcode 9 \
        "$build/tests/cuda_test" --gtest_filter='*Loss*:*BiasGrad*:*Permutation*' || status=1
else
    record memcheck skipped 0 "no GPU, compute-sanitizer or cuda_test"
fi
run_step compare-cpu 120 "${compare[@]}" --device cpu --run-timeout 55 \
    --log-dir "$logs/compare-cpu" --json "$out/compare-cpu.json" "${compare_extra[@]}" ||
    status=1

exit "$status"
