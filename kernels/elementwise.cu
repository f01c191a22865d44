// Element-wise and row-wise ops of a dense layer: bias + activation forward, activation backward,
// the bias gradient, and the element-wise product dropout's backward uses.
//
//   bias_activation_forward  z += bias (broadcast over rows), then y = act(z)    (=, y may alias z)
//   activation_backward      dz = dy ⊙ act'(z, y); softmax: dz = y ⊙ (dy - Σ dy ⊙ y)  (=)
//   bias_grad                db = Σ_rows dz                                        (=, not +=)
//   multiply                 out = a ⊙ b                                           (=)
//
// Precision: float32 in and out. The per-element math is kernels/math.h, the same code the CPU
// backend runs. Softmax subtracts the row maximum before exp; its row sums and the bias-gradient
// column sums are float32 accumulations in a fixed order, so results are identical run to run
// (no atomics) though they round differently from the CPU's sequential sums.
#include "kernels/kernels.h"

#include <cmath>
#include <cstdint>

#include "kernels/math.h"

namespace kiln {
namespace kernels {
namespace {

constexpr int kWarp = 32;
// Softmax runs one warp per row: rows of a classifier's output are short (10 to a few thousand
// classes), so a warp covers a row in one or a few strided passes and reduces it with shuffles,
// without shared memory. 8 warps per block gives 256 threads, as for the element-wise kernels.
constexpr int kSoftmaxWarpsPerBlock = 8;
// Bias gradient: a block covers 32 columns (one warp reads 32 consecutive floats of a row, a
// coalesced 128-byte load) with 16 row lanes striding over the rows; the 16 partial sums are then
// added in a fixed order through shared memory. 512 threads per block.
constexpr int kBiasGradCols = 32;
constexpr int kBiasGradRowLanes = 16;

// ---- device helpers -------------------------------------------------------------------------

// Butterfly reductions: every lane ends with the same value, and the order of the additions is
// fixed, so the result does not vary between runs.
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

__device__ __forceinline__ size_t grid_stride_start() {
    return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ size_t grid_stride() {
    return static_cast<size_t>(gridDim.x) * blockDim.x;
}

// ---- kernels --------------------------------------------------------------------------------

// z, y: (rows×cols), may alias; bias: (cols) or null.
__global__ void bias_activation_forward_kernel(float* z, const float* bias, float* y,
                                               size_t n_elements, size_t cols, ActivationSpec act) {
    for (size_t i = grid_stride_start(); i < n_elements; i += grid_stride()) {
        float v = z[i];
        if (bias != nullptr) {
            v += bias[i % cols];
            z[i] = v;
        }
        y[i] = math::activation_forward(act.kind, act.alpha, v);
    }
}

// One warp per row. Each lane touches the same columns (lane, lane+32, ...) in every pass, so a
// lane reads back only what it wrote itself: z and y may alias.
__global__ void softmax_forward_kernel(float* z, const float* bias, float* y, int64_t rows,
                                       int64_t cols) {
    const int lane = threadIdx.x % kWarp;
    const int64_t first_row =
        static_cast<int64_t>(blockIdx.x) * kSoftmaxWarpsPerBlock + threadIdx.x / kWarp;
    const int64_t row_stride = static_cast<int64_t>(gridDim.x) * kSoftmaxWarpsPerBlock;
    for (int64_t r = first_row; r < rows; r += row_stride) {
        float* zr = z + r * cols;
        float* yr = y + r * cols;

        // add the bias and find the row maximum
        float row_max = -INFINITY;
        for (int64_t j = lane; j < cols; j += kWarp) {
            float v = zr[j];
            if (bias != nullptr) {
                v += bias[j];
                zr[j] = v;
            }
            row_max = fmaxf(row_max, v);
        }
        row_max = warp_max(row_max);

        // sum the shifted exponentials
        float sum = 0.0f;
        for (int64_t j = lane; j < cols; j += kWarp) {
            sum += exp(zr[j] - row_max);
        }
        sum = warp_sum(sum);

        // normalise: by the reciprocal, as the CPU backend does
        const float inv_sum = 1.0f / sum;
        for (int64_t j = lane; j < cols; j += kWarp) {
            yr[j] = exp(zr[j] - row_max) * inv_sum;
        }
    }
}

// z, y, dy, dz: (rows×cols); dz may alias dy (each element is read before it is written, by the
// same thread).
__global__ void activation_backward_kernel(const float* z, const float* y, const float* dy,
                                           float* dz, size_t n_elements, ActivationSpec act) {
    for (size_t i = grid_stride_start(); i < n_elements; i += grid_stride()) {
        dz[i] = dy[i] * math::activation_derivative(act.kind, act.alpha, z[i], y[i]);
    }
}

// One warp per row: dz = y ⊙ (dy - Σ_j dy_j y_j). As in the forward kernel a lane rereads only
// its own columns, so dz may alias dy.
__global__ void softmax_backward_kernel(const float* y, const float* dy, float* dz, int64_t rows,
                                        int64_t cols) {
    const int lane = threadIdx.x % kWarp;
    const int64_t first_row =
        static_cast<int64_t>(blockIdx.x) * kSoftmaxWarpsPerBlock + threadIdx.x / kWarp;
    const int64_t row_stride = static_cast<int64_t>(gridDim.x) * kSoftmaxWarpsPerBlock;
    for (int64_t r = first_row; r < rows; r += row_stride) {
        const float* yr = y + r * cols;
        const float* dyr = dy + r * cols;
        float* dzr = dz + r * cols;

        float dot = 0.0f;
        for (int64_t j = lane; j < cols; j += kWarp) {
            dot += dyr[j] * yr[j];
        }
        dot = warp_sum(dot);

        for (int64_t j = lane; j < cols; j += kWarp) {
            dzr[j] = yr[j] * (dyr[j] - dot);
        }
    }
}

// Block (kBiasGradCols × kBiasGradRowLanes); grid.x covers the columns. Thread (x, y) sums rows
// y, y + 16, ... of column blockIdx.x * 32 + x in order, then row lane 0 adds the 16 partial sums
// in order. No atomics, so the result is the same on every run.
__global__ void bias_grad_kernel(const float* dz, float* db, int64_t rows, int64_t cols) {
    __shared__ float partial[kBiasGradRowLanes][kBiasGradCols + 1];  // +1: no bank conflicts
    const int64_t col = static_cast<int64_t>(blockIdx.x) * kBiasGradCols + threadIdx.x;

    float sum = 0.0f;
    if (col < cols) {
        for (int64_t r = threadIdx.y; r < rows; r += kBiasGradRowLanes) {
            sum += dz[r * cols + col];
        }
    }
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();

    if (threadIdx.y == 0 && col < cols) {
        float total = 0.0f;
        for (int lane = 0; lane < kBiasGradRowLanes; ++lane) {
            total += partial[lane][threadIdx.x];
        }
        db[col] = total;
    }
}

__global__ void multiply_kernel(const float* a, const float* b, float* out, size_t n_elements) {
    for (size_t i = grid_stride_start(); i < n_elements; i += grid_stride()) {
        out[i] = a[i] * b[i];
    }
}

int64_t softmax_grid(int64_t rows) {
    return std::min(ceil_div(rows, kSoftmaxWarpsPerBlock), kMaxGridBlocks);
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------------

void bias_activation_forward(cudaStream_t stream, float* z, const float* bias, float* y,
                             int64_t rows, int64_t cols, ActivationSpec act) {
    KILN_NVTX_RANGE_FN();
    KILN_REQUIRE(rows >= 0 && cols >= 0, "rows", rows, "cols", cols);
    if (rows == 0 || cols == 0)
        return;
    KILN_REQUIRE(z != nullptr && y != nullptr, "z", z, "y", y);

    if (act.kind == Activation::kSoftmax) {
        softmax_forward_kernel<<<static_cast<unsigned>(softmax_grid(rows)),
                                 kSoftmaxWarpsPerBlock * kWarp, 0, stream>>>(z, bias, y, rows,
                                                                             cols);
        KILN_CUDA_CHECK_LAUNCH();
        return;
    }
    const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(cols);
    launch_1d(bias_activation_forward_kernel, stream, static_cast<int64_t>(n), kElementwiseBlock, z,
              bias, y, n, static_cast<size_t>(cols), act);
}

void activation_backward(cudaStream_t stream, const float* z, const float* y, const float* dy,
                         float* dz, int64_t rows, int64_t cols, ActivationSpec act) {
    KILN_NVTX_RANGE_FN();
    KILN_REQUIRE(rows >= 0 && cols >= 0, "rows", rows, "cols", cols);
    if (rows == 0 || cols == 0)
        return;
    KILN_REQUIRE(dy != nullptr && dz != nullptr, "dy", dy, "dz", dz);

    if (act.kind == Activation::kSoftmax) {
        KILN_REQUIRE(y != nullptr, "y", y);
        softmax_backward_kernel<<<static_cast<unsigned>(softmax_grid(rows)),
                                  kSoftmaxWarpsPerBlock * kWarp, 0, stream>>>(y, dy, dz, rows,
                                                                              cols);
        KILN_CUDA_CHECK_LAUNCH();
        return;
    }
    KILN_REQUIRE(z != nullptr && y != nullptr, "z", z, "y", y);
    const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(cols);
    launch_1d(activation_backward_kernel, stream, static_cast<int64_t>(n), kElementwiseBlock, z, y,
              dy, dz, n, act);
}

void bias_grad(cudaStream_t stream, const float* dz, float* db, int64_t rows, int64_t cols) {
    KILN_NVTX_RANGE_FN();
    KILN_REQUIRE(rows >= 0 && cols >= 0, "rows", rows, "cols", cols);
    if (cols == 0)
        return;
    KILN_REQUIRE(db != nullptr && (dz != nullptr || rows == 0), "dz", dz, "db", db);
    const int64_t grid = ceil_div(cols, kBiasGradCols);
    KILN_REQUIRE(grid <= 0x7fffffff, "cols", cols);

    const dim3 block(kBiasGradCols, kBiasGradRowLanes);
    bias_grad_kernel<<<static_cast<unsigned>(grid), block, 0, stream>>>(dz, db, rows, cols);
    KILN_CUDA_CHECK_LAUNCH();
}

void multiply(cudaStream_t stream, const float* a, const float* b, float* out, int64_t n) {
    KILN_NVTX_RANGE_FN();
    KILN_REQUIRE(n >= 0, "n", n);
    if (n == 0)
        return;
    KILN_REQUIRE(a != nullptr && b != nullptr && out != nullptr, "a", a, "b", b, "out", out);
    launch_1d(multiply_kernel, stream, n, kElementwiseBlock, a, b, out, static_cast<size_t>(n));
}

}  // namespace kernels
}  // namespace kiln
