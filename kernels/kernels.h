// Host launchers for kiln's CUDA kernels, called by the CUDA backend (src/cuda/cuda_backend.cpp).
//
// Every launcher takes the stream first, checks its arguments (throwing kiln::Error with the
// values when they are wrong), enqueues its kernels on that stream and checks each launch. None
// of them synchronises or allocates: scratch memory comes from the caller, so that a step can
// be captured as a CUDA graph. Pointers are device pointers; matrices are row-major.
//
// This header is included by host C++ files: the declarations are plain C++. The launch helper
// at the end is device code and compiled only by nvcc.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "kiln/conv_ops.h"
#include "kiln/ops.h"

namespace kiln {
namespace kernels {

// ---- elementwise.cu ---------------------------------------------------------------------------
// z(rows×cols) += bias(cols) when bias is non-null; then y = act(z), row-wise for softmax.
// y may alias z.
void bias_activation_forward(cudaStream_t stream, float* z, const float* bias, float* y,
                             int64_t rows, int64_t cols, ActivationSpec act);
// dz = dy ⊙ act'(z, y); for softmax, dz = y ⊙ (dy - rowsum(dy ⊙ y)). dz may alias dy.
void activation_backward(cudaStream_t stream, const float* z, const float* y, const float* dy,
                         float* dz, int64_t rows, int64_t cols, ActivationSpec act);
// db(cols) = column sums of dz(rows×cols), `=`, in a fixed order (no atomics).
void bias_grad(cudaStream_t stream, const float* dz, float* db, int64_t rows, int64_t cols);
// out(n) = a ⊙ b; out may alias a or b.
void multiply(cudaStream_t stream, const float* a, const float* b, float* out, int64_t n);

// ---- loss.cu ------------------------------------------------------------------------------------
// Scratch (device memory, caller-owned) the loss launcher needs for its fixed-order reduction
// across blocks. A constant: the launcher caps its grid.
size_t loss_scratch_bytes();
// See Backend::loss. pred(rows×cols); y_true (rows) class indices stored as floats for the sparse
// loss, else (rows×cols) targets; grad(rows×cols) or null, = d(mean loss over grad_rows)/d(pred).
// `acc` points at the three doubles of one accumulator set (AccumulatorSlots), added into (+=).
void loss(cudaStream_t stream, const LossSpec& spec, const float* pred, const float* y_true,
          float* grad, int64_t rows, int64_t cols, int64_t grad_rows, double* acc, void* scratch,
          size_t scratch_bytes);

// ---- optimizer.cu -------------------------------------------------------------------------------
// One update of params(n) from grads(n); state holds optimizer_state_slots(step) consecutive
// arrays of n floats (may be null when that is zero).
// With `scalars` (device memory, may be null), the step's learning_rate and alpha are read from
// the StepScalars there when the kernel runs (math::with_scalars).
void optimizer_update(cudaStream_t stream, const OptimizerStep& step, float* params,
                      const float* grads, float* state, int64_t n,
                      const StepScalars* scalars = nullptr);
// One thread: math::advance_step on the StepScalars at `scalars` (device memory).
void advance_step(cudaStream_t stream, const OptimizerStep& step, StepScalars* scalars);

// ---- data.cu ------------------------------------------------------------------------------------
// Scratch (device memory, caller-owned) for permutations of n elements: the hash keys, the
// indices and CUB's radix-sort storage. Allocate it once per n; the permutation runs each epoch.
size_t permutation_scratch_bytes(int64_t n);
// perm(n) = 0..n-1 sorted by (math::hash3(seed, stream_id, i), i).
void permutation(cudaStream_t stream, int32_t* perm, int64_t n, uint64_t seed, uint64_t stream_id,
                 void* scratch, size_t scratch_bytes);
// dst(count×cols) = src rows index[offset .. offset+count), for elements of `element_bytes`
// (1, 2, 4 or 8) bytes. `src_rows` bounds the indices: a row outside [0, src_rows) is a broken
// invariant, and its destination row is filled with zero bytes rather than read out of bounds.
// With `scalars` (device memory, may be null) the rows start at index[offset + s.batch ·
// batch_size], s read when the kernel runs (Backend::gather_batch).
void gather_rows(cudaStream_t stream, const void* src, int64_t src_rows, const int32_t* index,
                 int64_t offset, int64_t count, int64_t cols, size_t element_bytes, void* dst,
                 const StepScalars* scalars = nullptr, int64_t batch_size = 0);
// keep_i = uniform01(hash3(seed, counter, i)) >= rate; mask_i = keep_i / (1 - rate);
// y_i = x_i · mask_i. mask may be null when no backward pass needs it. y may alias x.
// With `scalars` (device memory, may be null) the counter is s.iteration, read when the kernel
// runs (Backend::dropout_forward_step).
void dropout_forward(cudaStream_t stream, const float* x, float* y, float* mask, int64_t n,
                     float rate, uint64_t seed, uint64_t counter,
                     const StepScalars* scalars = nullptr);

// ---- conv.cu ------------------------------------------------------------------------------------
// What the cuDNN convolutions need around them (src/cuda/cudnn_ops.cpp says why).
// dst(cols×rows) = src(rows×cols)ᵀ: Keras's kernel (KH·KW·C, F) to cuDNN's (F, KH·KW·C) and back.
void transpose(cudaStream_t stream, const float* src, int64_t rows, int64_t cols, float* dst);
// padded(N, H + pad_top + pad_bottom, W + pad_left + pad_right, C) = x with zero borders (every
// element written).
void pad_nhwc(cudaStream_t stream, const float* x, int64_t n, int64_t h, int64_t w, int64_t c,
              int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
              float* padded);
// x(N, H, W, C) = the interior of padded, the inverse of pad_nhwc.
void crop_nhwc(cudaStream_t stream, const float* padded, int64_t n, int64_t h, int64_t w, int64_t c,
               int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right, float* x);
// moving = moving·momentum + batch·(1 - momentum) per channel, the batch variance recovered from
// inv_std = 1/sqrt(variance + epsilon) (what cuDNN saves).
void batch_norm_update_moving(cudaStream_t stream, const float* batch_mean,
                              const float* batch_inv_std, float* moving_mean,
                              float* moving_variance, int64_t channels, float momentum,
                              float epsilon);

// ---- pooling.cu ---------------------------------------------------------------------------------
// See Backend::pool2d_forward and pool2d_backward: y(N, OH, OW, C) from x(N, H, W, C), and
// dx (=) from x and dy. The same windows, cells and order of additions as the CPU backend, so
// the results are the same bits.
void pool2d_forward(cudaStream_t stream, const Pool2DGeometry& g, const float* x, float* y);
void pool2d_backward(cudaStream_t stream, const Pool2DGeometry& g, const float* x, const float* dy,
                     float* dx);

// ---- any file -----------------------------------------------------------------------------------
// cudaSuccess when this build holds machine code or PTX the current device can run, else the
// error the first launch would give (cudaErrorNoKernelImageForDevice, ...). Launches nothing.
cudaError_t kernel_image_status();

}  // namespace kernels
}  // namespace kiln

#if defined(__CUDACC__)
// ---- shared by the kernel files (device code) ---------------------------------------------------
#include <algorithm>
#include <sstream>
#include <string>
#include <utility>

#include <nvtx3/nvToolsExt.h>

#include "cuda/cuda_check.h"

namespace kiln {
namespace kernels {

// Threads per block for the 1-D element-wise kernels. They are bound by memory bandwidth; 256
// threads (8 warps) keeps enough loads in flight per SM and lets 8 blocks stay resident.
constexpr int kElementwiseBlock = 256;
// The grid-stride kernels cap their grid here: 2^16 blocks of 256 threads is 16M threads, far more
// than an H200's 132 SMs × 2048 resident threads, so the cap never costs occupancy.
constexpr int64_t kMaxGridBlocks = 65536;

inline int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

// "rows=4, cols=-1": the values a failed launcher check prints.
inline void append_values(std::ostringstream&) {}
template <typename T, typename... Rest>
void append_values(std::ostringstream& out, const char* name, const T& value, Rest&&... rest) {
    out << name << "=" << value << (sizeof...(rest) ? ", " : "");
    append_values(out, std::forward<Rest>(rest)...);
}
template <typename... NamedValues>
std::string named_values(NamedValues&&... values) {
    std::ostringstream out;
    append_values(out, std::forward<NamedValues>(values)...);
    return out.str();
}

// A launcher's input check: throws kiln::Error naming the launcher, the condition and the values,
// e.g. KILN_REQUIRE(rows >= 0, "rows", rows, "cols", cols).
#define KILN_REQUIRE(cond, ...)                                              \
    do {                                                                     \
        if (!(cond)) {                                                       \
            throw ::kiln::Error(std::string("kernels::") + __func__ +        \
                                ": expected " #cond ", got " +               \
                                ::kiln::kernels::named_values(__VA_ARGS__)); \
        }                                                                    \
    } while (0)

// Names a launcher's span in Nsight Systems timelines (NVTX 3 is header-only; it costs a branch
// when no profiler is attached).
class NvtxRange {
  public:
    explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
    ~NvtxRange() { nvtxRangePop(); }
    NvtxRange(const NvtxRange&) = delete;
    NvtxRange& operator=(const NvtxRange&) = delete;
};
#define KILN_NVTX_RANGE_FN() ::kiln::kernels::NvtxRange kiln_nvtx_range_(__func__)

// Launches a grid-stride kernel over n_elements with `block` threads per block and checks the
// launch. Launches nothing when n_elements is zero.
template <typename... KernelArgs, typename... Args>
void launch_1d(void (*kernel)(KernelArgs...), cudaStream_t stream, int64_t n_elements, int block,
               Args&&... args) {
    if (n_elements <= 0)
        return;
    const int64_t grid = std::min(ceil_div(n_elements, block), kMaxGridBlocks);
    kernel<<<static_cast<unsigned>(grid), block, 0, stream>>>(std::forward<Args>(args)...);
    KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kernels
}  // namespace kiln
#endif  // __CUDACC__
