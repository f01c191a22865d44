// The libFuzzer entry point of one fuzz target: tests/fuzz/CMakeLists.txt builds this file once
// per target with KILN_FUZZ_TARGET set to the function of fuzz_targets.h to call, and
// KILN_FUZZ_HDF5 for the targets whose loaders use HDF5.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "fuzz_targets.h"

#ifndef KILN_FUZZ_TARGET
#error "define KILN_FUZZ_TARGET to a function of fuzz_targets.h (idx, npy, csv, ...)"
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    (void)kiln::fuzz::KILN_FUZZ_TARGET(data, size);
#if KILN_FUZZ_HDF5
    // A leaked identifier keeps the file open in HDF5, so it is a bug like a leaked allocation.
    const ssize_t open = kiln::fuzz::open_hdf5_objects();
    if (open != 0) {
        std::fprintf(stderr,
                     "kiln fuzz: %zd HDF5 identifiers left open after the loader "
                     "returned\n",
                     open);
        std::abort();
    }
#endif
    return 0;
}
