// Checks for CUDA runtime and cuBLAS status codes.
//
// KILN_CUDA_CHECK(expr) and KILN_CUBLAS_CHECK(expr) throw kiln::Error with the expression text,
// file:line and the library's own name and message for the code. KILN_CUDA_CHECK_LAUNCH() goes
// after every kernel launch: it picks up launch-configuration errors at once (a fault inside the
// kernel surfaces at the next synchronising call). Build with -DKILN_CUDA_SYNC_CHECK to also
// synchronise the device after each launch, so that a fault is reported at the kernel that made it
// (a debugging aid only: synchronising is not allowed while a stream is being captured as a graph).
//
// KILN_CUDA_WARN(expr) is for destructors and other noexcept paths: it writes the same message to
// stderr, prefixed `kiln: `, and carries on.
#pragma once

#include <cstdio>
#include <string>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "kiln/status.h"

namespace kiln {
namespace cuda_detail {

inline std::string describe(cudaError_t status) {
    return std::string(cudaGetErrorName(status)) + " (" + cudaGetErrorString(status) + ")";
}

inline std::string describe(cublasStatus_t status) {
    return std::string(cublasGetStatusName(status)) + " (" + cublasGetStatusString(status) + ")";
}

template <typename StatusT>
std::string failure_message(const char* library, StatusT status, const char* expr, const char* file,
                            int line) {
    return std::string(library) + " call `" + expr + "` failed at " + file + ":" +
           std::to_string(line) + ": " + describe(status);
}

[[noreturn]] inline void throw_cuda(cudaError_t status, const char* expr, const char* file,
                                    int line) {
    // Clear the error so that it does not resurface from an unrelated later call. A sticky error
    // (a fault inside a kernel) stays set; the context is unusable after one anyway.
    cudaGetLastError();
    throw Error(failure_message("CUDA", status, expr, file, line));
}

[[noreturn]] inline void throw_cublas(cublasStatus_t status, const char* expr, const char* file,
                                      int line) {
    throw Error(failure_message("cuBLAS", status, expr, file, line));
}

inline void warn_cuda(cudaError_t status, const char* expr, const char* file, int line) noexcept {
    cudaGetLastError();
    std::fprintf(stderr, "kiln: warning: %s\n",
                 failure_message("CUDA", status, expr, file, line).c_str());
}

}  // namespace cuda_detail
}  // namespace kiln

#define KILN_CUDA_CHECK(expr)                                                         \
    do {                                                                              \
        const cudaError_t kiln_status_ = (expr);                                      \
        if (kiln_status_ != cudaSuccess) {                                            \
            ::kiln::cuda_detail::throw_cuda(kiln_status_, #expr, __FILE__, __LINE__); \
        }                                                                             \
    } while (0)

#define KILN_CUBLAS_CHECK(expr)                                                         \
    do {                                                                                \
        const cublasStatus_t kiln_status_ = (expr);                                     \
        if (kiln_status_ != CUBLAS_STATUS_SUCCESS) {                                    \
            ::kiln::cuda_detail::throw_cublas(kiln_status_, #expr, __FILE__, __LINE__); \
        }                                                                               \
    } while (0)

#define KILN_CUDA_WARN(expr)                                                         \
    do {                                                                             \
        const cudaError_t kiln_status_ = (expr);                                     \
        if (kiln_status_ != cudaSuccess) {                                           \
            ::kiln::cuda_detail::warn_cuda(kiln_status_, #expr, __FILE__, __LINE__); \
        }                                                                            \
    } while (0)

#if defined(KILN_CUDA_SYNC_CHECK)
#define KILN_CUDA_CHECK_LAUNCH()                  \
    do {                                          \
        KILN_CUDA_CHECK(cudaGetLastError());      \
        KILN_CUDA_CHECK(cudaDeviceSynchronize()); \
    } while (0)
#else
#define KILN_CUDA_CHECK_LAUNCH() KILN_CUDA_CHECK(cudaGetLastError())
#endif
