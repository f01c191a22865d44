// Plain descriptions of the image ops both backends run: 2-D convolution, pooling and batch
// normalisation, all channels-last (NHWC), as Keras computes them.
//
// Shape letters: N batch, H and W the input's height and width, C its channels, OH and OW the
// output's height and width, F the filters (output channels), KH and KW the window.
//
// Keras's padding rule (TensorFlow's): 'valid' keeps only windows that fit; 'same' gives
// OH = ceil(H / stride) and pads pad_total = max((OH - 1)·stride + (KH - 1)·dilation + 1 - H, 0)
// cells, floor(pad_total / 2) before and the rest, possibly one more, after.
#pragma once

#include <algorithm>
#include <cstdint>

namespace kiln {

enum class Padding { kValid, kSame };

// One axis of a window op: the output length and the padding before and after it.
struct AxisWindow {
    int64_t out = 0;
    int64_t pad_before = 0;
    int64_t pad_after = 0;
};

// Keras's output length and padding for an axis of `in` cells, a window of `window` taps
// `dilation` apart, moved `stride` cells at a time. out is 0 when no window fits ('valid' with
// in < the dilated window); callers reject that.
inline AxisWindow keras_axis_window(int64_t in, int64_t window, int64_t stride, int64_t dilation,
                                    Padding padding) {
    AxisWindow a;
    const int64_t span = (window - 1) * dilation + 1;  // the dilated window
    if (padding == Padding::kValid) {
        a.out = in >= span ? (in - span) / stride + 1 : 0;
        return a;
    }
    a.out = (in + stride - 1) / stride;
    const int64_t total = std::max<int64_t>((a.out - 1) * stride + span - in, 0);
    a.pad_before = total / 2;
    a.pad_after = total - a.pad_before;
    return a;
}

// A 2-D convolution y(N, OH, OW, F) = x(N, H, W, C) ⋆ kernel(KH, KW, C, F), cross-correlation as
// Keras computes it, the kernel in Keras's layout. Bias and activation are separate ops
// (bias_activation_forward over N·OH·OW rows of F columns).
struct Conv2DGeometry {
    int64_t batch = 0;                        // N
    int64_t in_h = 0, in_w = 0, in_c = 0;     // H, W, C
    int64_t out_h = 0, out_w = 0, out_c = 0;  // OH, OW, F
    int64_t kernel_h = 1, kernel_w = 1;       // KH, KW
    int64_t stride_h = 1, stride_w = 1;
    int64_t dilation_h = 1, dilation_w = 1;
    int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;

    int64_t x_elements() const { return batch * in_h * in_w * in_c; }
    int64_t y_elements() const { return batch * out_h * out_w * out_c; }
    int64_t kernel_elements() const { return kernel_h * kernel_w * in_c * out_c; }
    // The columns of the im2col matrix: one row of the kernel seen as (KH·KW·C, F).
    int64_t patch_size() const { return kernel_h * kernel_w * in_c; }
};

enum class PoolKind { kMax, kAverage };

// y(N, OH, OW, C) = the max or the mean of each window of x(N, H, W, C). Padding cells never
// count: a max ignores them, an average divides by the window's cells inside the image (Keras's
// 'same' average). GlobalAveragePooling2D is the average over one window of H × W.
struct Pool2DGeometry {
    PoolKind kind = PoolKind::kMax;
    int64_t batch = 0;             // N
    int64_t in_h = 0, in_w = 0;    // H, W
    int64_t channels = 0;          // C
    int64_t out_h = 0, out_w = 0;  // OH, OW
    int64_t pool_h = 1, pool_w = 1;
    int64_t stride_h = 1, stride_w = 1;
    int64_t pad_top = 0, pad_left = 0;  // the padding after follows from OH, OW

    int64_t x_elements() const { return batch * in_h * in_w * channels; }
    int64_t y_elements() const { return batch * out_h * out_w * channels; }
};

// Batch normalisation over the last axis: x is `rows` rows of `channels` values (N·H·W rows for
// an NHWC image), each channel normalised by its own statistics.
struct BatchNormGeometry {
    int64_t rows = 0;
    int64_t channels = 0;
    float momentum = 0.99f;  // moving = moving·momentum + batch·(1 - momentum)
    float epsilon = 1e-3f;   // y = gamma·(x - mean)/sqrt(variance + epsilon) + beta
};

}  // namespace kiln
