// Checks for cuDNN status codes, as cuda_check.h does for CUDA and cuBLAS.
//
// KILN_CUDNN_CHECK(expr) throws kiln::Error with the expression text, file:line, cuDNN's name for
// the code and cuDNN 9's own description of the last failure (cudnnGetLastErrorString), which
// names the parameter it disliked. KILN_CUDNN_WARN(expr) writes the same to stderr and carries on
// (destructors).
#pragma once

#include <cstdio>
#include <string>

#include <cudnn.h>

#include "kiln/status.h"

namespace kiln {
namespace cuda_detail {

inline std::string cudnn_failure(cudnnStatus_t status, const char* expr, const char* file,
                                 int line) {
    std::string message = std::string("cuDNN call `") + expr + "` failed at " + file + ":" +
                          std::to_string(line) + ": " + cudnnGetErrorString(status);
    char detail[512] = {0};
    cudnnGetLastErrorString(detail, sizeof(detail));
    if (detail[0] != '\0')
        message += std::string(" (") + detail + ")";
    return message;
}

[[noreturn]] inline void throw_cudnn(cudnnStatus_t status, const char* expr, const char* file,
                                     int line) {
    throw Error(cudnn_failure(status, expr, file, line));
}

inline void warn_cudnn(cudnnStatus_t status, const char* expr, const char* file,
                       int line) noexcept {
    std::fprintf(stderr, "kiln: warning: %s\n", cudnn_failure(status, expr, file, line).c_str());
}

}  // namespace cuda_detail
}  // namespace kiln

#define KILN_CUDNN_CHECK(expr)                                                         \
    do {                                                                               \
        const cudnnStatus_t kiln_status_ = (expr);                                     \
        if (kiln_status_ != CUDNN_STATUS_SUCCESS) {                                    \
            ::kiln::cuda_detail::throw_cudnn(kiln_status_, #expr, __FILE__, __LINE__); \
        }                                                                              \
    } while (0)

#define KILN_CUDNN_WARN(expr)                                                         \
    do {                                                                              \
        const cudnnStatus_t kiln_status_ = (expr);                                    \
        if (kiln_status_ != CUDNN_STATUS_SUCCESS) {                                   \
            ::kiln::cuda_detail::warn_cudnn(kiln_status_, #expr, __FILE__, __LINE__); \
        }                                                                             \
    } while (0)
