#include "cpu/blas.h"

#include <cpuid.h>
#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#include "kiln/status.h"

namespace kiln {
namespace blas {
namespace {

// The kernel family this CPU can run, from CPUID leaf 7 (AVX2, AVX-512) and leaf 1 (FMA):
// what OpenBLAS itself would choose for a CPU model it knows. Empty: leave OpenBLAS's choice.
std::string coretype_for_this_cpu() {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return "";
    const bool fma = ecx & (1u << 12);
    const bool osxsave = ecx & (1u << 27);
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
        return "";
    const bool avx2 = ebx & (1u << 5);
    const bool avx512 = (ebx & (1u << 16)) && (ebx & (1u << 17)) && (ebx & (1u << 30)) &&
                        (ebx & (1u << 31));  // F, DQ, BW, VL
    if (!osxsave)
        return "";
    // The OS must save the wide registers too (XCR0: SSE, AVX, and the three AVX-512 states).
    unsigned xcr0_lo, xcr0_hi;
    __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    const bool os_avx = (xcr0_lo & 0x6) == 0x6;
    const bool os_avx512 = (xcr0_lo & 0xe6) == 0xe6;
    if (avx512 && os_avx512)
        return "SkylakeX";
    if (avx2 && fma && os_avx)
        return "Haswell";
    return "";
}

template <typename F>
F symbol(void* handle, const char* name, const char* path) {
    void* p = dlsym(handle, name);
    if (!p)
        throw Error(std::string("OpenBLAS (") + path + ") has no symbol " + name);
    return reinterpret_cast<F>(p);
}

Library load() {
    Library lib;
    const char* preset = std::getenv("OPENBLAS_CORETYPE");
    if (preset && *preset) {
        lib.coretype_note = std::string("OPENBLAS_CORETYPE=") + preset + " as set";
    } else {
        const std::string core = coretype_for_this_cpu();
        if (!core.empty()) {
            setenv("OPENBLAS_CORETYPE", core.c_str(), 0);
            lib.coretype_note = "OPENBLAS_CORETYPE=" + core + " from the CPU's features";
        }
    }
    const char* candidates[] = {"libopenblas.so.0", "libopenblas.so"};
    void* handle = nullptr;
    const char* path = nullptr;
    std::string errors;
    for (const char* c : candidates) {
        handle = dlopen(c, RTLD_NOW | RTLD_LOCAL);
        if (handle) {
            path = c;
            break;
        }
        errors += std::string(" ") + dlerror() + ";";
    }
    if (!handle) {
        throw Error(
            "the CPU backend needs OpenBLAS (Debian: libopenblas0), which could not be "
            "loaded:" +
            errors);
    }
    using Sgemm = decltype(lib.sgemm);
    using Dgemm = decltype(lib.dgemm);
    lib.sgemm = symbol<Sgemm>(handle, "cblas_sgemm", path);
    lib.dgemm = symbol<Dgemm>(handle, "cblas_dgemm", path);
    lib.get_num_threads = symbol<int (*)()>(handle, "openblas_get_num_threads", path);
    lib.set_num_threads = symbol<void (*)(int)>(handle, "openblas_set_num_threads", path);
    lib.get_config = symbol<char* (*)()>(handle, "openblas_get_config", path);
    lib.get_corename = symbol<char* (*)()>(handle, "openblas_get_corename", path);
    return lib;  // the handle stays open for the life of the process
}

}  // namespace

const Library& library() {
    static std::once_flag once;
    static Library lib;
    std::call_once(once, [] { lib = load(); });
    return lib;
}

}  // namespace blas
}  // namespace kiln
