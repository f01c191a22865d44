#!/usr/bin/env bash
# Installs what kiln needs that this machine lacks (Debian/Ubuntu, as root or with sudo), then
# configures the build in build/. Sourced by the two commands of the README.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${KILN_BUILD_DIR:-$repo/build}

# Debian packages: compilers and build tools (clang and its libFuzzer and sanitizer runtimes for
# the fuzz targets, tests/fuzz/), the libraries kiln links, the dataset, and the Python
# packages the tests use to read kiln's files (h5py) and the PyTorch peer benchmark.
packages=(g++ cmake ninja-build pkg-config clang libclang-rt-dev
          libhdf5-dev libopenblas-dev zlib1g-dev nlohmann-json3-dev libcli11-dev libfmt-dev
          libgtest-dev dataset-fashion-mnist
          python3 python3-numpy python3-h5py python3-torch python3-venv)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "kiln setup: installing ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The CUDA backend builds wherever nvcc is; it runs only where a GPU is.
cuda=ON
if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
    echo "kiln setup: no nvcc found; building without the CUDA backend"
    cuda=OFF
fi
mkdir -p "$build_dir"
cmake -S "$repo" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_USE_CUDA=$cuda \
    > "$build_dir/configure.log" 2>&1 || { cat "$build_dir/configure.log"; exit 1; }

# Keras with a CPU backend (JAX) for the Keras interoperability tests (KILN_KERAS_PYTHON).
# Debian's Python is "externally managed" (PEP 668), so it goes into a virtual environment under
# the build directory; a self-contained one, because Keras needs a newer NumPy than Debian's,
# which Debian's h5py is not built for. Pinned to the versions the tests were written against.
pyenv="$build_dir/pyenv"
keras_packages=(keras==3.15.1 jax==0.10.2 jaxlib==0.10.2 h5py==3.16.0 numpy==2.4.6)
if ! "$pyenv/bin/python" -c 'import keras, jax, h5py' >/dev/null 2>&1; then
    echo "kiln setup: installing ${keras_packages[*]} into $pyenv for the Keras tests"
    if ! { /usr/bin/python3 -m venv "$pyenv" &&
           "$pyenv/bin/python" -m pip install -q --disable-pip-version-check \
               "${keras_packages[@]}"; } > "$build_dir/pyenv.log" 2>&1; then
        echo "kiln setup: could not install Keras (see $build_dir/pyenv.log); the Keras" \
             "interoperability tests will skip, saying why"
    fi
fi
