// L1 of the suite (bench/suite.h): the host-side cost of a kernel launch, eager and in a graph.
//
// The kernel adds 1 to 1,024 floats, about a microsecond of device work or less, so that a chain
// of them is bound by how fast launches reach the GPU: per kernel, the eager chain measures the
// driver's launch path (what a step of separate launches pays), the graph chain a graph node's
// cost (performance.md section 1.1 cites 2.5-6.5 µs eager and 0.6-1.3 µs per node elsewhere).
// Both chains are timed on the host clock from the first launch to the end of a stream
// synchronisation, the way an epoch is.
#include "launch_cost.h"

#include <chrono>

#include <cuda_runtime_api.h>

#include "cuda/cuda_check.h"

namespace kiln {
namespace bench {

namespace {

constexpr int kElements = 1024;  // one block's worth: the smallest kernel that still writes
constexpr int kThreads = 256;

__global__ void add_one_kernel(float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] += 1.0f;
}

void add_one(cudaStream_t stream, float* x) {
    add_one_kernel<<<(kElements + kThreads - 1) / kThreads, kThreads, 0, stream>>>(x, kElements);
    KILN_CUDA_CHECK_LAUNCH();
}

// Owns the stream, the buffer and the graph, whatever throws.
struct Resources {
    cudaStream_t stream = nullptr;
    float* x = nullptr;
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    ~Resources() {
        if (exec)
            KILN_CUDA_WARN(cudaGraphExecDestroy(exec));
        if (graph)
            KILN_CUDA_WARN(cudaGraphDestroy(graph));
        if (x)
            KILN_CUDA_WARN(cudaFree(x));
        if (stream)
            KILN_CUDA_WARN(cudaStreamDestroy(stream));
    }
};

// Seconds per kernel of one timed chain run by `launch`.
template <typename Launch>
double time_chain(cudaStream_t stream, int kernels, Launch launch) {
    const auto start = std::chrono::steady_clock::now();
    launch();
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    return elapsed.count() / kernels;
}

}  // namespace

LaunchCost measure_launch_cost(int kernels, int repetitions) {
    Resources r;
    KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking));
    KILN_CUDA_CHECK(cudaMalloc(&r.x, kElements * sizeof(float)));
    KILN_CUDA_CHECK(cudaMemsetAsync(r.x, 0, kElements * sizeof(float), r.stream));

    const auto eager = [&] {
        for (int k = 0; k < kernels; ++k)
            add_one(r.stream, r.x);
    };
    KILN_CUDA_CHECK(cudaStreamBeginCapture(r.stream, cudaStreamCaptureModeThreadLocal));
    eager();
    KILN_CUDA_CHECK(cudaStreamEndCapture(r.stream, &r.graph));
    KILN_CUDA_CHECK(cudaGraphInstantiate(&r.exec, r.graph, 0));
    const auto replay = [&] { KILN_CUDA_CHECK(cudaGraphLaunch(r.exec, r.stream)); };

    LaunchCost cost;
    cost.kernels = kernels;
    time_chain(r.stream, kernels, eager);   // untimed: module load, first launches
    time_chain(r.stream, kernels, replay);  // untimed: the graph's upload
    for (int i = 0; i < repetitions; ++i) {
        cost.eager.push_back(time_chain(r.stream, kernels, eager));
        cost.graph.push_back(time_chain(r.stream, kernels, replay));
    }
    return cost;
}

}  // namespace bench
}  // namespace kiln
