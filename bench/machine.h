// What a benchmark figure travels with (the machine, its libraries, the commit), the peaks its
// shares are taken of, measured in the same run, and the timing of ops queued on a backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kiln/backend.h"

namespace kiln {
namespace bench {

struct MachineInfo {
    std::string host;
    std::string cpu;  // /proc/cpuinfo's model name
    int cores = 0;    // hardware threads the OS reports
    // Threads kiln's CPU pool runs (KILN_NUM_THREADS, else one per core); 0 on CUDA.
    int threads = 0;
    std::string backend;  // Backend::description(): "cpu (OpenBLAS 0.3.21 SkylakeX, ...)"
    // On the CPU: OpenBLAS's build line, the core kernels it chose and what kiln did about
    // OPENBLAS_CORETYPE. On CUDA the backend's description names the GPU and the driver.
    std::string driver;
    std::string commit;         // "<sha>", "<sha> (3 tracked files changed)", or why it is unknown
    std::string commit_source;  // "git", "bench/gpu-bundle/COMMIT" or "none"
};

// Reads the commit with `git rev-parse HEAD` in the source tree the binary was built from, or,
// in a tree without .git (the GPU machine's copy), from bench/gpu-bundle/COMMIT.
MachineInfo describe_machine(const Backend& backend);
// /proc/loadavg's 1, 5 and 15 minute figures, "1.52 1.31 1.20"; "unknown" elsewhere.
std::string load_average();

// The ceilings a case's share is taken of, each from its fastest repetition. Copies count the
// bytes read and the bytes written.
struct Peak {
    int64_t gemm_n = 0;                // an n×n by n×n float32 GEMM through Backend::gemm
    std::vector<double> gemm_seconds;  // each repetition's
    double gemm_flops_per_s = 0;       // 2n³ over the fastest
    size_t copy_bytes = 0;             // one buffer of this size copied into another
    double copy_bytes_per_s = 0;       // Backend::copy (one memcpy on the CPU)
    // The CPU only: the same copy split over every thread of kiln's pool, as the backend's
    // element-wise ops and its optimizer step are; 0 elsewhere.
    double pool_copy_bytes_per_s = 0;
    // A GPU only: the same GEMM with the backend in bf16 precision (float32 storage, bfloat16
    // operands, float32 sums: CUBLAS_COMPUTE_32F_FAST_16BF), the ceiling of the bf16 case M3;
    // 0 elsewhere.
    std::vector<double> bf16_gemm_seconds;
    double bf16_gemm_flops_per_s = 0;

    double bandwidth() const {
        return copy_bytes_per_s > pool_copy_bytes_per_s ? copy_bytes_per_s : pool_copy_bytes_per_s;
    }
};

Peak measure_peak(Backend& backend, int64_t gemm_n, size_t copy_bytes, int repetitions);

// Seconds per call of `op` (which queues work on `backend`), one figure per repetition: one
// untimed call first, then `repetitions` rounds of enough calls to take about `round_s` each
// (at least one), every round ended by a synchronisation.
std::vector<double> time_calls(Backend& backend, int repetitions, double round_s,
                               const std::function<void()>& op);

// A tensor of `n` float32 values on `backend`, every one `value`.
Tensor filled(Backend& backend, int64_t n, float value);

}  // namespace bench
}  // namespace kiln
