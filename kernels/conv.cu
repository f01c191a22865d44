// The small kernels around cuDNN's convolution and batch normalisation (src/cuda/cudnn_ops.cpp):
//
//   transpose                 dst(cols×rows) = src(rows×cols)ᵀ                        (=)
//   pad_nhwc                  padded = x inside zero borders, every element written    (=)
//   crop_nhwc                 x = the interior of padded                               (=)
//   batch_norm_update_moving  moving = moving·momentum + batch·(1 - momentum)          (in place)
//
// Why they exist: cuDNN's legacy filter layouts are (F, C, KH, KW) and (F, KH, KW, C), not Keras's
// (KH, KW, C, F), so the kernel is transposed on the way in and its gradient on the way out
// (a (KH·KW·C) × F matrix, a few thousand floats); cuDNN pads symmetrically only, so Keras's
// 'same' padding with one more cell at the end (odd total padding, e.g. stride 2 on an even
// size) runs on an explicitly padded copy; and cuDNN's own moving variance is the unbiased one,
// where Keras 3 keeps the biased one, so kiln updates the moving statistics itself.
//
// Precision: float32. Pad, crop and transpose move bits; the moving-statistics update is
// kernels/math.h's, the same as the CPU backend's, on a variance recovered from cuDNN's inverse
// standard deviation (absolute error a few ulp of variance + epsilon).
#include "kernels/kernels.h"

#include <cstdint>

#include "kernels/math.h"

namespace kiln {
namespace kernels {
namespace {

// Transpose tiles: 32×32 floats through shared memory, so that both the reads and the writes
// are coalesced; the extra column keeps the tile's columns in different banks. 32×8 threads,
// each moving 4 elements.
constexpr int kTransposeTile = 32;
constexpr int kTransposeRows = 8;

__device__ __forceinline__ size_t grid_stride_start() {
    return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ size_t grid_stride() {
    return static_cast<size_t>(gridDim.x) * blockDim.x;
}

// ---- kernels --------------------------------------------------------------------------------

// Grid (ceil(cols / 32), ceil(rows / 32)); block (32, 8).
__global__ void transpose_kernel(const float* src, int64_t rows, int64_t cols, float* dst) {
    __shared__ float tile[kTransposeTile][kTransposeTile + 1];
    const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kTransposeTile;
    const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTransposeTile;
    for (int i = threadIdx.y; i < kTransposeTile; i += kTransposeRows) {
        const int64_t r = row0 + i, c = col0 + threadIdx.x;
        if (r < rows && c < cols)
            tile[i][threadIdx.x] = src[r * cols + c];
    }
    __syncthreads();
    // dst row = src column
    for (int i = threadIdx.y; i < kTransposeTile; i += kTransposeRows) {
        const int64_t r = col0 + i, c = row0 + threadIdx.x;
        if (r < cols && c < rows)
            dst[r * rows + c] = tile[threadIdx.x][i];
    }
}

// One thread per element of padded (N, HP, WP, C).
__global__ void pad_nhwc_kernel(const float* x, int64_t h, int64_t w, int64_t c, int64_t pad_top,
                                int64_t pad_left, int64_t hp, int64_t wp, float* padded,
                                size_t n_elements) {
    for (size_t i = grid_stride_start(); i < n_elements; i += grid_stride()) {
        const int64_t ch = static_cast<int64_t>(i % c);
        int64_t t = static_cast<int64_t>(i / c);
        const int64_t col = t % wp - pad_left;
        t /= wp;
        const int64_t row = t % hp - pad_top;
        const int64_t n = t / hp;
        const bool inside = row >= 0 && row < h && col >= 0 && col < w;
        padded[i] = inside ? x[((n * h + row) * w + col) * c + ch] : 0.0f;
    }
}

// One thread per element of x (N, H, W, C).
__global__ void crop_nhwc_kernel(const float* padded, int64_t h, int64_t w, int64_t c,
                                 int64_t pad_top, int64_t pad_left, int64_t hp, int64_t wp,
                                 float* x, size_t n_elements) {
    for (size_t i = grid_stride_start(); i < n_elements; i += grid_stride()) {
        const int64_t ch = static_cast<int64_t>(i % c);
        int64_t t = static_cast<int64_t>(i / c);
        const int64_t col = t % w;
        t /= w;
        const int64_t row = t % h;
        const int64_t n = t / h;
        x[i] = padded[((n * hp + row + pad_top) * wp + col + pad_left) * c + ch];
    }
}

__global__ void batch_norm_update_moving_kernel(const float* batch_mean, const float* batch_inv_std,
                                                float* moving_mean, float* moving_variance,
                                                size_t channels, float momentum, float epsilon) {
    for (size_t i = grid_stride_start(); i < channels; i += grid_stride()) {
        const float variance = math::variance_from_inv_std(batch_inv_std[i], epsilon);
        moving_mean[i] = math::moving_average(moving_mean[i], batch_mean[i], momentum);
        moving_variance[i] = math::moving_average(moving_variance[i], variance, momentum);
    }
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------------

void transpose(cudaStream_t stream, const float* src, int64_t rows, int64_t cols, float* dst) {
    KILN_NVTX_RANGE_FN();
    KILN_REQUIRE(rows >= 0 && cols >= 0, "rows", rows, "cols", cols);
    if (rows == 0 || cols == 0)
        return;
    KILN_REQUIRE(src != nullptr && dst != nullptr && src != dst, "src", src, "dst", dst);
    const int64_t grid_x = ceil_div(cols, kTransposeTile), grid_y = ceil_div(rows, kTransposeTile);
    KILN_REQUIRE(grid_x <= 0x7fffffff && grid_y <= 65535, "rows", rows, "cols", cols);
    const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
    const dim3 block(kTransposeTile, kTransposeRows);
    transpose_kernel<<<grid, block, 0, stream>>>(src, rows, cols, dst);
    KILN_CUDA_CHECK_LAUNCH();
}

void pad_nhwc(cudaStream_t stream, const float* x, int64_t n, int64_t h, int64_t w, int64_t c,
              int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
              float* padded) {
    KILN_NVTX_RANGE_FN();
    KILN_REQUIRE(n >= 0 && h > 0 && w > 0 && c > 0 && pad_top >= 0 && pad_bottom >= 0 &&
                     pad_left >= 0 && pad_right >= 0,
                 "n", n, "h", h, "w", w, "c", c, "pad_top", pad_top, "pad_bottom", pad_bottom,
                 "pad_left", pad_left, "pad_right", pad_right);
    const int64_t hp = h + pad_top + pad_bottom, wp = w + pad_left + pad_right;
    const size_t count = static_cast<size_t>(n * hp * wp * c);
    if (count == 0)
        return;
    KILN_REQUIRE(x != nullptr && padded != nullptr, "x", x, "padded", padded);
    launch_1d(pad_nhwc_kernel, stream, static_cast<int64_t>(count), kElementwiseBlock, x, h, w, c,
              pad_top, pad_left, hp, wp, padded, count);
}

void crop_nhwc(cudaStream_t stream, const float* padded, int64_t n, int64_t h, int64_t w, int64_t c,
               int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right, float* x) {
    KILN_NVTX_RANGE_FN();
    KILN_REQUIRE(n >= 0 && h > 0 && w > 0 && c > 0 && pad_top >= 0 && pad_bottom >= 0 &&
                     pad_left >= 0 && pad_right >= 0,
                 "n", n, "h", h, "w", w, "c", c, "pad_top", pad_top, "pad_bottom", pad_bottom,
                 "pad_left", pad_left, "pad_right", pad_right);
    const int64_t hp = h + pad_top + pad_bottom, wp = w + pad_left + pad_right;
    const size_t count = static_cast<size_t>(n * h * w * c);
    if (count == 0)
        return;
    KILN_REQUIRE(x != nullptr && padded != nullptr, "x", x, "padded", padded);
    launch_1d(crop_nhwc_kernel, stream, static_cast<int64_t>(count), kElementwiseBlock, padded, h,
              w, c, pad_top, pad_left, hp, wp, x, count);
}

void batch_norm_update_moving(cudaStream_t stream, const float* batch_mean,
                              const float* batch_inv_std, float* moving_mean,
                              float* moving_variance, int64_t channels, float momentum,
                              float epsilon) {
    KILN_NVTX_RANGE_FN();
    KILN_REQUIRE(channels >= 0, "channels", channels);
    if (channels == 0)
        return;
    KILN_REQUIRE(batch_mean != nullptr && batch_inv_std != nullptr && moving_mean != nullptr &&
                     moving_variance != nullptr,
                 "batch_mean", batch_mean, "batch_inv_std", batch_inv_std, "moving_mean",
                 moving_mean, "moving_variance", moving_variance);
    launch_1d(batch_norm_update_moving_kernel, stream, channels, kElementwiseBlock, batch_mean,
              batch_inv_std, moving_mean, moving_variance, static_cast<size_t>(channels), momentum,
              epsilon);
}

}  // namespace kernels
}  // namespace kiln
