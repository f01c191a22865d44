#!/usr/bin/env bash
# Makes bench/gpu-bundle/: what the GPU machine lacks to build, test and benchmark kiln.
#
#   bench/gpu_bundle.sh [BUNDLE_DIR]                 # default: bench/gpu-bundle (git ignores it)
#   bench/gpu_bundle.sh --commit-only [BUNDLE_DIR]   # only refresh COMMIT (before each device run)
#
# Run it on the project's Debian 12 build machine, where the -dev packages are installed, before
# handing the tree to the GPU machine (no network, no apt, no HDF5/OpenBLAS/GoogleTest there).
# bench/run_gpu.sh then uses the bundle. It holds:
#
#   sysroot.tar.xz   Debian's own files, unpacked with `dpkg -x` from `apt-get download`ed
#                    .debs of the versions installed here (or the mirror's rebuild where it has
#                    dropped the installed one): the headers, CMake files and static
#                    GoogleTest of the -dev packages kiln builds against, and every shared
#                    library that libhdf5 and libopenblas load (found with ldd), except glibc's
#                    and GCC's runtime, which any machine with g++ has. xz because OpenBLAS alone
#                    is 36 MB unpacked and the device tool carries 64 MiB in all.
#   fashion-mnist/   the four gzipped IDX files
#   MANIFEST         packages and versions, sizes, and how the bundle was made
#   COMMIT           `git rev-parse HEAD` and whether the tree had changes, refreshed every run
#
# Why ldd and not `apt-cache depends`: libhdf5-dev depends on much that only static linking, the
# h5cc wrapper or the other language bindings need (libcurl4-openssl-dev, libssl-dev, libjpeg-dev,
# the C++ and Fortran libraries); what the loader needs is the closure of the NEEDED entries.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
commit_only=0
if [[ ${1:-} == --commit-only ]]; then commit_only=1; shift; fi
bundle=${1:-$repo/bench/gpu-bundle}
data_dir=${KILN_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
# The bundle travels with the working tree, which must stay under the device tool's 64 MiB.
limit_mib=${KILN_BUNDLE_LIMIT_MIB:-56}
multiarch=x86_64-linux-gnu

# Packages whose headers or CMake files the build needs.
dev_packages=(libhdf5-dev libopenblas-dev libopenblas-pthread-dev nlohmann-json3-dev
              libcli11-dev libgtest-dev zlib1g-dev libfmt-dev)
# Libraries the build links directly; their run-time closure is found with ldd below.
seed_libs=("/usr/lib/$multiarch/libhdf5_serial.so.103"
           "/usr/lib/$multiarch/openblas-pthread/libopenblas.so.0"
           "/usr/lib/$multiarch/libfmt.so.9")
# Present wherever g++ and Python run; taking them along would only risk a clash.
never_bundle='^(libc6|libgcc-s1|libstdc\+\+6)$'

log() { echo "gpu_bundle: $*" >&2; }
die() { log "error: $*"; exit 1; }

# The GPU machine gets the working tree without .git: record here which commit it is.
write_commit() {
    local head changes
    head=$(git -C "$repo" rev-parse HEAD 2>/dev/null) || head=unknown
    changes=$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null | wc -l)
    {
        echo "$head"
        echo "# written $(date -u +%Y-%m-%dT%H:%M:%SZ) by bench/gpu_bundle.sh;" \
             "$changes tracked files differed from that commit"
    } > "$bundle/COMMIT"
}

if (( commit_only )); then
    [[ -d $bundle ]] || die "$bundle does not exist: run bench/gpu_bundle.sh first"
    write_commit
    log "refreshed $bundle/COMMIT: $(head -1 "$bundle/COMMIT")"
    exit 0
fi

[[ $(dpkg --print-architecture) == amd64 ]] || die "this machine is not amd64"
for f in "${seed_libs[@]}"; do
    [[ -e $f ]] || die "$f is missing: apt-get install ${dev_packages[*]}"
done
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
            t10k-labels-idx1-ubyte; do
    [[ -f $data_dir/$name.gz ]] || die "$data_dir/$name.gz is missing (dataset-fashion-mnist)"
done

work=$(mktemp -d /tmp/kiln-gpu-bundle.XXXXXX)
trap 'rm -rf "$work"' EXIT
stage=$work/root
mkdir -p "$work/debs" "$stage"

# ---- which packages -----------------------------------------------------------------------------

# The package that installed a file; usrmerge means dpkg may know it as /lib/... or /usr/lib/...
owner_of() {
    local f=$1 real out candidate
    real=$(readlink -f "$f")
    for candidate in "$f" "$real" "${f#/usr}" "${real#/usr}" "/usr$f" "/usr$real"; do
        if out=$(dpkg -S "$candidate" 2>/dev/null); then
            echo "${out%%:*}"
            return 0
        fi
    done
    die "no package owns $f"
}

runtime_libs=()
for seed in "${seed_libs[@]}"; do
    runtime_libs+=("$seed")
    while read -r lib; do runtime_libs+=("$lib"); done < <(ldd "$seed" | awk '/=> \// {print $3}')
done
mapfile -t runtime_libs < <(printf '%s\n' "${runtime_libs[@]}" | sort -u)

packages=("${dev_packages[@]}")
for lib in "${runtime_libs[@]}"; do packages+=("$(owner_of "$lib")"); done
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u | grep -Ev "$never_bundle")
log "${#packages[@]} packages: ${packages[*]}"

# ---- download and unpack ------------------------------------------------------------------------

# The installed version of each, so that the GPU build compiles against what was tested here:
# from apt's cache if it is there, else from the mirror. A version the mirror no longer has (a
# rebuild replaced it) falls back to the mirror's current one, with a warning; MANIFEST records
# the versions actually taken.
(
    cd "$work/debs"
    for pkg in "${packages[@]}"; do
        version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) ||
            die "$pkg is not installed here"
        cached=$(ls /var/cache/apt/archives/"${pkg}_${version//:/%3a}"_*.deb 2>/dev/null |
                 head -1 || true)
        if [[ -n $cached ]]; then
            cp "$cached" .
        elif ! apt-get download -q=2 "$pkg=$version" 2>/dev/null; then
            log "warning: $pkg $version is not downloadable; taking the mirror's current version"
            apt-get download -q=2 "$pkg" 2>/dev/null ||
                die "apt-get download $pkg failed (run apt-get update?)"
        fi
    done
)
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$stage"; done

# Put /lib/... under /usr/lib/... (Debian 12 still ships some libraries in /lib).
if [[ -d $stage/lib && ! -L $stage/lib ]]; then
    mkdir -p "$stage/usr/lib"
    cp -a "$stage/lib/." "$stage/usr/lib/"
    rm -rf "${stage:?}/lib"
fi
rm -rf "${stage:?}/lib" "${stage:?}/lib64" "${stage:?}/bin" "${stage:?}/sbin" "${stage:?}/etc"

# Make absolute links relative, so the tree works wherever it is unpacked.
while IFS= read -r link; do
    target=$(readlink "$link")
    [[ $target == /* ]] || continue
    [[ $target == /lib/* ]] && target=/usr$target
    ln -sfn "$(realpath -m --relative-to="$(dirname "$link")" "$stage$target")" "$link"
done < <(find "$stage" -type l)

# ---- keep only what the build and the loader use ------------------------------------------------

usr=${stage:?}/usr
lib=$usr/lib/$multiarch
for d in share/doc share/man share/lintian share/info share/bug share/locale \
         src bin sbin libexec; do
    rm -rf "${usr:?}/$d"
done
# Static archives, except GoogleTest's (it ships no shared library); LAPACK, which kiln does
# not use (7 MB); HDF5's Fortran modules and the settings files.
find "$usr" \( -name '*.a' ! -name 'libgtest*.a' \) -delete
find "$usr" \( -name 'liblapack*' -o -name 'libblas.so*' -o -name '*.mod' \
               -o -name '*.settings' \) -delete
# Plug-in folders of the runtime libraries (OpenSSL engines, SASL, PKCS#11, Kerberos): only the
# libraries themselves are needed to load libcurl.
for d in "$lib"/*/; do
    case $(basename "$d") in
        hdf5|openblas-pthread|cmake|pkgconfig) ;;
        *) rm -rf "$d" ;;
    esac
done
find "$usr/share" -mindepth 1 -maxdepth 1 ! -name cmake ! -name pkgconfig -exec rm -rf {} +

# What Debian's alternatives would have made: the unversioned OpenBLAS names and <cblas.h>.
ln -sfn openblas-pthread/libopenblas.so "$lib/libopenblas.so"
ln -sfn openblas-pthread/libopenblas.so.0 "$lib/libopenblas.so.0"
for h in cblas.h openblas_config.h f77blas.h; do
    ln -sfn "openblas-pthread/$h" "$usr/include/$multiarch/$h"
done

# Links into packages not taken (HDF5's C++ and Fortran libraries, ...) now point nowhere.
find "$stage" -xtype l -print -delete | sed "s|^$stage|gpu_bundle: dropped dangling link |" >&2
find "$stage" -type d -empty -delete

# Every library's NEEDED entries must be in the bundle or be glibc / GCC runtime.
base_runtime='^(libc|libm|libdl|libpthread|librt|libresolv|libgcc_s|libstdc\+\+)\.so|^ld-linux'
missing=0
while IFS= read -r so; do
    while read -r needed; do
        [[ $needed =~ $base_runtime ]] && continue
        if [[ -z $(find "$stage" -name "$needed" -print -quit) ]]; then
            log "error: $so needs $needed, which is not in the bundle"
            missing=1
        fi
    done < <(readelf -d "$so" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
done < <(find "$stage" -type f -name '*.so*')
[[ $missing == 0 ]] || die "the library closure is incomplete"

# ---- write the bundle ---------------------------------------------------------------------------

rm -rf "$bundle"
mkdir -p "$bundle/fashion-mnist"
unpacked_kib=$(du -sk "$stage" | cut -f1)
XZ_OPT=${XZ_OPT:--6 -T0} tar -C "$stage" -cJf "$bundle/sysroot.tar.xz" .
cp "$data_dir"/*-ubyte.gz "$bundle/fashion-mnist/"
{
    echo "# kiln GPU bundle, made $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n)" \
         "by bench/gpu_bundle.sh"
    echo "# $(. /etc/os-release && echo "$PRETTY_NAME"), unpacked sysroot ${unpacked_kib} KiB"
    echo "# package version (the .deb unpacked with dpkg -x)"
    for deb in "$work"/debs/*.deb; do dpkg-deb -f "$deb" Package Version | paste -sd' '; done
    echo "# files"
    (cd "$bundle" && find . -type f ! -name MANIFEST ! -name COMMIT -printf '%s %p\n' | sort -k2)
} > "$bundle/MANIFEST"

write_commit
total_kib=$(du -sk "$bundle" | cut -f1)
log "wrote $bundle: $((total_kib / 1024)) MiB ($total_kib KiB;" \
    "sysroot unpacked $((unpacked_kib / 1024)) MiB)"
(( total_kib <= limit_mib * 1024 )) ||
    die "the bundle is over ${limit_mib} MiB; the device tool carries 64 MiB with the tree"
