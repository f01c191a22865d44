// Max and average pooling over NHWC images, forward and backward (Backend::pool2d_forward,
// pool2d_backward); GlobalAveragePooling2D is the average over one H × W window.
//
//   pool2d_forward   y = max or mean of each window's cells inside the image            (=)
//   pool2d_backward  dx = Σ over the windows holding the cell of their share of dy       (=)
//                    max: all of dy to the window's first largest cell (row-major order);
//                    average: dy / (the window's cells inside the image)
//
// Why kiln's own kernels and not cuDNN's pooling: Keras's 'same' padding puts the odd cell at the
// end and its average excludes padding cells from the count; cuDNN pads both sides alike, so it
// cannot express the first. These kernels walk the same windows (kernels/math.h) in the same order
// as the CPU backend and add in the same order, so both backends give the same bits.
//
// The backward pass gathers: one thread per input cell adds the contributions of the (at most
// ceil(pool / stride)² ) windows that hold it, in row-major window order, which is the order the
// CPU backend scatters them in. No atomics, so every run gives the same bits. A max window's
// largest cell is found again from x rather than stored by the forward pass.
//
// Precision: float32; the average sums in float32 in row-major cell order and divides once.
#include "kernels/kernels.h"

#include <cstdint>

#include "kernels/math.h"

namespace kiln {
namespace kernels {
namespace {

__device__ __forceinline__ size_t grid_stride_start() {
    return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ size_t grid_stride() {
    return static_cast<size_t>(gridDim.x) * blockDim.x;
}

// The offset of cell (n, h, w, channel 0) in an NHWC tensor of h_size × w_size × channels.
__device__ __forceinline__ int64_t nhwc(int64_t n, int64_t h, int64_t w, int64_t h_size,
                                        int64_t w_size, int64_t channels) {
    return ((n * h_size + h) * w_size + w) * channels;
}

// ---- kernels --------------------------------------------------------------------------------

// One thread per output element (n, oh, ow, c); c is fastest, so a warp reads 32 consecutive
// channels of each cell.
__global__ void pool2d_forward_kernel(Pool2DGeometry g, const float* x, float* y,
                                      size_t n_elements) {
    for (size_t i = grid_stride_start(); i < n_elements; i += grid_stride()) {
        const int64_t c = static_cast<int64_t>(i % g.channels);
        int64_t t = static_cast<int64_t>(i / g.channels);
        const int64_t ow = t % g.out_w;
        t /= g.out_w;
        const int64_t oh = t % g.out_h;
        const int64_t n = t / g.out_h;
        int64_t h0, h1, w0, w1;
        math::pool_window(oh, g.stride_h, g.pad_top, g.pool_h, g.in_h, &h0, &h1);
        math::pool_window(ow, g.stride_w, g.pad_left, g.pool_w, g.in_w, &w0, &w1);
        if (g.kind == PoolKind::kMax) {
            float best = x[nhwc(n, h0, w0, g.in_h, g.in_w, g.channels) + c];
            for (int64_t h = h0; h < h1; ++h) {
                for (int64_t w = w0; w < w1; ++w) {
                    const float v = x[nhwc(n, h, w, g.in_h, g.in_w, g.channels) + c];
                    best = v > best ? v : best;
                }
            }
            y[i] = best;
        } else {
            float sum = 0.0f;
            for (int64_t h = h0; h < h1; ++h) {
                for (int64_t w = w0; w < w1; ++w) {
                    sum += x[nhwc(n, h, w, g.in_h, g.in_w, g.channels) + c];
                }
            }
            y[i] = sum / static_cast<float>((h1 - h0) * (w1 - w0));
        }
    }
}

// One thread per input element (n, h, w, c).
__global__ void pool2d_backward_kernel(Pool2DGeometry g, const float* x, const float* dy, float* dx,
                                       size_t n_elements) {
    for (size_t i = grid_stride_start(); i < n_elements; i += grid_stride()) {
        const int64_t c = static_cast<int64_t>(i % g.channels);
        int64_t t = static_cast<int64_t>(i / g.channels);
        const int64_t w = t % g.in_w;
        t /= g.in_w;
        const int64_t h = t % g.in_h;
        const int64_t n = t / g.in_h;
        int64_t oh0, oh1, ow0, ow1;
        math::covering_outputs(h, g.stride_h, g.pad_top, g.pool_h, g.out_h, &oh0, &oh1);
        math::covering_outputs(w, g.stride_w, g.pad_left, g.pool_w, g.out_w, &ow0, &ow1);
        float sum = 0.0f;
        for (int64_t oh = oh0; oh < oh1; ++oh) {
            int64_t h0, h1;
            math::pool_window(oh, g.stride_h, g.pad_top, g.pool_h, g.in_h, &h0, &h1);
            for (int64_t ow = ow0; ow < ow1; ++ow) {
                int64_t w0, w1;
                math::pool_window(ow, g.stride_w, g.pad_left, g.pool_w, g.in_w, &w0, &w1);
                const float d = dy[nhwc(n, oh, ow, g.out_h, g.out_w, g.channels) + c];
                if (g.kind == PoolKind::kMax) {
                    // The window's first largest cell, as the forward pass and the CPU find it.
                    int64_t best_h = h0, best_w = w0;
                    float best = x[nhwc(n, h0, w0, g.in_h, g.in_w, g.channels) + c];
                    for (int64_t hh = h0; hh < h1; ++hh) {
                        for (int64_t ww = w0; ww < w1; ++ww) {
                            const float v = x[nhwc(n, hh, ww, g.in_h, g.in_w, g.channels) + c];
                            if (v > best) {
                                best = v;
                                best_h = hh;
                                best_w = ww;
                            }
                        }
                    }
                    if (best_h == h && best_w == w)
                        sum += d;
                } else {
                    sum += d / static_cast<float>((h1 - h0) * (w1 - w0));
                }
            }
        }
        dx[i] = sum;
    }
}

void check_geometry(const Pool2DGeometry& g) {
    KILN_REQUIRE(g.batch >= 0 && g.in_h > 0 && g.in_w > 0 && g.channels > 0 && g.out_h > 0 &&
                     g.out_w > 0 && g.pool_h > 0 && g.pool_w > 0 && g.stride_h > 0 &&
                     g.stride_w > 0 && g.pad_top >= 0 && g.pad_left >= 0 && g.pad_top < g.pool_h &&
                     g.pad_left < g.pool_w,
                 "batch", g.batch, "in_h", g.in_h, "in_w", g.in_w, "channels", g.channels, "out_h",
                 g.out_h, "out_w", g.out_w, "pool_h", g.pool_h, "pool_w", g.pool_w, "stride_h",
                 g.stride_h, "stride_w", g.stride_w, "pad_top", g.pad_top, "pad_left", g.pad_left);
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------------

void pool2d_forward(cudaStream_t stream, const Pool2DGeometry& g, const float* x, float* y) {
    KILN_NVTX_RANGE_FN();
    check_geometry(g);
    const int64_t count = g.y_elements();
    if (count == 0)
        return;
    KILN_REQUIRE(x != nullptr && y != nullptr, "x", x, "y", y);
    launch_1d(pool2d_forward_kernel, stream, count, kElementwiseBlock, g, x, y,
              static_cast<size_t>(count));
}

void pool2d_backward(cudaStream_t stream, const Pool2DGeometry& g, const float* x, const float* dy,
                     float* dx) {
    KILN_NVTX_RANGE_FN();
    check_geometry(g);
    const int64_t count = g.x_elements();
    if (count == 0)
        return;
    KILN_REQUIRE(x != nullptr && dy != nullptr && dx != nullptr, "x", x, "dy", dy, "dx", dx);
    launch_1d(pool2d_backward_kernel, stream, count, kElementwiseBlock, g, x, dy, dx,
              static_cast<size_t>(count));
}

}  // namespace kernels
}  // namespace kiln
