// The loss op: per-sample loss and metric, the gradient of the mean loss, and the sums added
// into the device accumulators (see Backend::loss).
//
//   categorical (sparse or one-hot), from logits or a fused softmax:
//       L = Σ_c y_c (logsumexp(z) - z_c)            (from_logits)
//       L = Σ_c y_c · -log(clip(softmax(z)_c))      (fused softmax: the value Keras reports)
//       grad_c = (softmax(z)_c · Σ y - y_c) / grad_rows
//   categorical from probabilities (Keras: normalise to sum 1, clip, log):
//       L = Σ_c y_c · -log(clip(p_c / Σp))
//       grad_c = (-y_c / p_c [clip inactive] + Σ_{c: clip inactive} y_c / Σp) / grad_rows
//   element-wise (binary cross-entropy, squared and absolute error): the mean over the row of
//       kernels/math.h's per-element loss, grad_c = loss'(p_c, y_c) / cols / grad_rows
//   metric: argmax(pred) == label (first maximum wins) for the categorical losses, the fraction
//       of (pred > threshold) == y for binary accuracy (threshold 0.5, or 0 on a fused sigmoid).
//
// The grad is written (=) for the `rows` rows; the accumulators are added into (+=).
//
// Precision: float32 per sample, as the CPU backend computes it with T = float, with the same
// formulas in the same order of terms; row sums (the softmax denominator, the mean over columns)
// are float32 warp reductions, so they round differently from the CPU's sequential sums. The
// per-sample losses and metrics are summed in double, in a fixed order: per warp over its rows,
// per block over its warps, then over the blocks. No atomics: the same inputs give the same bits
// on every run.
#include "kernels/kernels.h"

#include <cmath>
#include <cstdint>

#include "kernels/math.h"

namespace kiln {
namespace kernels {
namespace {

constexpr int kWarp = 32;
// One warp per sample: a row (10 classes for Fashion-MNIST, up to a few thousand) is covered in
// one or a few strided passes and reduced with shuffles. 8 warps per block.
constexpr int kLossWarpsPerBlock = 8;
// Each warp takes about this many rows before the grid grows, so that a training batch of up to
// 32 rows runs in one block, which then adds into the accumulators itself (no second kernel).
constexpr int kLossRowsPerWarp = 4;
// Grid cap: 256 blocks × 8 warps = 2048 rows in flight, plenty for a validation set; the
// per-block partial sums then fit a fixed 4 KiB scratch and one warp adds them up.
constexpr int kLossMaxBlocks = 256;

// ---- device helpers -------------------------------------------------------------------------

// Butterfly sums: every lane gets the same value; the order of additions is fixed.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
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

// First index of the largest value in x[0..cols), over the warp: each lane scans its columns in
// order keeping the first strict maximum, then the lanes combine by (larger value, then smaller
// index). Equal to the CPU's sequential argmax for inputs without NaN.
__device__ __forceinline__ int64_t warp_argmax(const float* x, int64_t cols, int lane) {
    float best = -INFINITY;
    int64_t best_index = INT64_MAX;  // lanes with no column lose every comparison
    for (int64_t j = lane; j < cols; j += kWarp) {
        const float v = x[j];
        if (best_index == INT64_MAX || v > best) {
            best = v;
            best_index = j;
        }
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
        const float other = __shfl_xor_sync(0xffffffffu, best, offset);
        const int64_t other_index = __shfl_xor_sync(0xffffffffu, best_index, offset);
        if (other > best || (other == best && other_index < best_index)) {
            best = other;
            best_index = other_index;
        }
    }
    return best_index;
}

struct RowResult {
    float loss;
    float metric;
};

// The categorical losses of one row, computed by the whole warp; lane-uniform result.
// target: the row's one-hot or soft targets, or null for the sparse loss (then `label`).
__device__ RowResult categorical_row(const LossSpec& spec, const float* pred, const float* target,
                                     int64_t label, float* g, int64_t cols, float scale, int lane) {
    const bool sparse = target == nullptr;
    auto y_at = [&](int64_t c) -> float { return sparse ? (c == label ? 1.0f : 0.0f) : target[c]; };

    float loss = 0.0f;
    if (spec.fused_output || spec.from_logits) {
        // log-sum-exp of the logits, shifted by the row maximum
        float max_z = -INFINITY;
        for (int64_t c = lane; c < cols; c += kWarp)
            max_z = fmaxf(max_z, pred[c]);
        max_z = warp_max(max_z);
        float sum = 0.0f;
        for (int64_t c = lane; c < cols; c += kWarp)
            sum += exp(pred[c] - max_z);
        sum = warp_sum(sum);
        const float log_sum = log(sum) + max_z;

        // the loss terms of the classes with a non-zero target
        float y_sum = 0.0f;
        for (int64_t c = lane; c < cols; c += kWarp) {
            const float y = y_at(c);
            if (y == 0.0f)
                continue;
            y_sum += y;
            loss += spec.from_logits ? y * (log_sum - pred[c])
                                     : y * math::neg_log_clipped(exp(pred[c] - log_sum));
        }
        y_sum = warp_sum(y_sum);
        loss = warp_sum(loss);

        if (g != nullptr) {
            for (int64_t c = lane; c < cols; c += kWarp) {
                g[c] = (exp(pred[c] - log_sum) * y_sum - y_at(c)) * scale;
            }
        }
    } else {
        // probabilities: normalise to sum 1, clip, log
        float sum = 0.0f;
        for (int64_t c = lane; c < cols; c += kWarp)
            sum += pred[c];
        sum = warp_sum(sum);
        const float lo = float(math::kEpsilon), hi = 1.0f - float(math::kEpsilon);

        float unclipped_y_sum = 0.0f;  // Σ y over the classes whose clip is inactive
        for (int64_t c = lane; c < cols; c += kWarp) {
            const float y = y_at(c);
            if (y == 0.0f)
                continue;
            const float q = pred[c] / sum;
            loss += y * math::neg_log_clipped(q);
            if (q > lo && q < hi)
                unclipped_y_sum += y;
        }
        unclipped_y_sum = warp_sum(unclipped_y_sum);
        loss = warp_sum(loss);

        if (g != nullptr) {
            for (int64_t c = lane; c < cols; c += kWarp) {
                const float y = y_at(c);
                const float q = pred[c] / sum;
                const float direct = (y != 0.0f && q > lo && q < hi) ? -y / pred[c] : 0.0f;
                g[c] = (direct + unclipped_y_sum / sum) * scale;
            }
        }
    }

    RowResult result{loss, 0.0f};
    if (spec.metric != MetricKind::kNone) {
        const int64_t predicted = warp_argmax(pred, cols, lane);
        const int64_t truth = sparse ? label : warp_argmax(target, cols, lane);
        result.metric = predicted == truth ? 1.0f : 0.0f;
    }
    return result;
}

// The element-wise losses of one row, averaged over its columns; lane-uniform result.
__device__ RowResult elementwise_row(const LossSpec& spec, const float* pred, const float* target,
                                     float* g, int64_t cols, float scale, int lane) {
    const float inv_cols = 1.0f / float(cols);
    // A fused sigmoid leaves logits in pred: the 0.5 threshold on p is 0 on z.
    const float threshold = spec.fused_output ? 0.0f : 0.5f;
    const bool logits = spec.from_logits || spec.fused_output;

    float loss = 0.0f, correct = 0.0f;
    for (int64_t c = lane; c < cols; c += kWarp) {
        const float p = pred[c], y = target[c];
        float d = 0.0f;
        switch (spec.kind) {
            case LossKind::kBinaryCrossentropy:
                // The value of a fused sigmoid is Keras's clipped one, on p = sigmoid(z).
                loss += spec.fused_output
                            ? math::binary_crossentropy(1.0f / (1.0f + exp(-p)), y, false)
                            : math::binary_crossentropy(p, y, logits);
                d = math::binary_crossentropy_grad(p, y, logits);
                break;
            case LossKind::kMeanSquaredError:
                loss += math::squared_error(p, y);
                d = math::squared_error_grad(p, y);
                break;
            case LossKind::kMeanAbsoluteError:
                loss += math::absolute_error(p, y);
                d = math::absolute_error_grad(p, y);
                break;
            default:
                break;
        }
        if (g != nullptr)
            g[c] = d * inv_cols * scale;
        if (spec.metric == MetricKind::kBinaryAccuracy) {
            correct += (p > threshold ? 1.0f : 0.0f) == y ? 1.0f : 0.0f;
        }
    }
    loss = warp_sum(loss);
    correct = warp_sum(correct);
    return RowResult{loss * inv_cols, correct * inv_cols};
}

// ---- kernels --------------------------------------------------------------------------------

// pred, grad: (rows×cols); y_true: (rows) or (rows×cols). One warp per row, rows strided over
// the grid. Each block writes its loss and metric sums to partial[block] and
// partial[gridDim.x + block]; a grid of one block adds them into acc itself.
__global__ void loss_forward_kernel(LossSpec spec, const float* pred, const float* y_true,
                                    float* grad, int64_t rows, int64_t cols, float scale,
                                    double* partial, double* acc) {
    __shared__ double warp_loss[kLossWarpsPerBlock];
    __shared__ double warp_metric[kLossWarpsPerBlock];
    const int lane = threadIdx.x % kWarp;
    const int warp = threadIdx.x / kWarp;
    const bool categorical = spec.kind == LossKind::kSparseCategoricalCrossentropy ||
                             spec.kind == LossKind::kCategoricalCrossentropy;
    const bool sparse = spec.kind == LossKind::kSparseCategoricalCrossentropy;

    // each warp: its rows in increasing order (warp-uniform loop, so the shuffles are safe)
    double loss_sum = 0.0, metric_sum = 0.0;
    const int64_t row_stride = static_cast<int64_t>(gridDim.x) * kLossWarpsPerBlock;
    for (int64_t r = static_cast<int64_t>(blockIdx.x) * kLossWarpsPerBlock + warp; r < rows;
         r += row_stride) {
        const float* p = pred + r * cols;
        float* g = grad != nullptr ? grad + r * cols : nullptr;
        RowResult row;
        if (categorical) {
            const float* target = sparse ? nullptr : y_true + r * cols;
            const int64_t label = sparse ? static_cast<int64_t>(y_true[r]) : -1;
            row = categorical_row(spec, p, target, label, g, cols, scale, lane);
        } else {
            row = elementwise_row(spec, p, y_true + r * cols, g, cols, scale, lane);
        }
        loss_sum += static_cast<double>(row.loss);
        metric_sum += static_cast<double>(row.metric);
    }
    if (lane == 0) {
        warp_loss[warp] = loss_sum;
        warp_metric[warp] = metric_sum;
    }
    __syncthreads();

    // the block: its warps in order
    if (threadIdx.x == 0) {
        double block_loss = 0.0, block_metric = 0.0;
        for (int w = 0; w < kLossWarpsPerBlock; ++w) {
            block_loss += warp_loss[w];
            block_metric += warp_metric[w];
        }
        if (gridDim.x == 1) {
            acc[AccumulatorSlots::kLossSum] += block_loss;
            acc[AccumulatorSlots::kMetricSum] += block_metric;
            acc[AccumulatorSlots::kCount] += static_cast<double>(rows);
        } else {
            partial[blockIdx.x] = block_loss;
            partial[gridDim.x + blockIdx.x] = block_metric;
        }
    }
}

// One warp: lane l adds partials l, l + 32, ... in order, then a fixed butterfly; lane 0 adds
// the totals into the accumulators.
__global__ void loss_accumulate_kernel(const double* partial, int n_blocks, int64_t rows,
                                       double* acc) {
    const int lane = threadIdx.x;
    double loss = 0.0, metric = 0.0;
    for (int b = lane; b < n_blocks; b += kWarp) {
        loss += partial[b];
        metric += partial[n_blocks + b];
    }
    loss = warp_sum(loss);
    metric = warp_sum(metric);
    if (lane == 0) {
        acc[AccumulatorSlots::kLossSum] += loss;
        acc[AccumulatorSlots::kMetricSum] += metric;
        acc[AccumulatorSlots::kCount] += static_cast<double>(rows);
    }
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------------

size_t loss_scratch_bytes() {
    return 2 * kLossMaxBlocks * sizeof(double);
}

void loss(cudaStream_t stream, const LossSpec& spec, const float* pred, const float* y_true,
          float* grad, int64_t rows, int64_t cols, int64_t grad_rows, double* acc, void* scratch,
          size_t scratch_bytes) {
    KILN_NVTX_RANGE_FN();
    KILN_REQUIRE(rows >= 0 && cols > 0, "rows", rows, "cols", cols);
    KILN_REQUIRE(grad == nullptr || grad_rows >= rows, "grad_rows", grad_rows, "rows", rows);
    KILN_REQUIRE(grad == nullptr || grad_rows > 0, "grad_rows", grad_rows);
    KILN_REQUIRE(acc != nullptr, "acc", acc);
    KILN_REQUIRE(scratch != nullptr && scratch_bytes >= loss_scratch_bytes(), "scratch", scratch,
                 "scratch_bytes", scratch_bytes, "needed", loss_scratch_bytes());
    if (rows == 0)
        return;  // adds nothing, writes no gradient
    KILN_REQUIRE(pred != nullptr && y_true != nullptr, "pred", pred, "y_true", y_true);

    const int64_t grid = std::min<int64_t>(
        ceil_div(rows, static_cast<int64_t>(kLossWarpsPerBlock) * kLossRowsPerWarp),
        kLossMaxBlocks);
    const float scale = grad != nullptr ? 1.0f / static_cast<float>(grad_rows) : 0.0f;
    double* partial = static_cast<double*>(scratch);
    loss_forward_kernel<<<static_cast<unsigned>(grid), kLossWarpsPerBlock * kWarp, 0, stream>>>(
        spec, pred, y_true, grad, rows, cols, scale, partial, acc);
    KILN_CUDA_CHECK_LAUNCH();
    if (grid > 1) {
        loss_accumulate_kernel<<<1, kWarp, 0, stream>>>(partial, static_cast<int>(grid), rows, acc);
        KILN_CUDA_CHECK_LAUNCH();
    }
}

}  // namespace kernels
}  // namespace kiln
