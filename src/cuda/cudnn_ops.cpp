// Convolution and batch normalisation through cuDNN 9, float32 NHWC, on the backend's stream.
//
// Which cuDNN API. cuDNN 9 has two: the graph API (backend descriptors: operation graphs, engine
// heuristics, execution plans, variant packs; C++ users normally reach it through the
// cudnn-frontend headers, which are not installed here) and the legacy calls
// (cudnnConvolutionForward and its algorithm search, cudnnBatchNormalization*), still shipped in
// cuDNN 9's cudnn_cnn and cudnn_ops libraries and run there on the same engines. kiln uses the
// legacy calls, because:
//  - This code is written on a machine without a GPU and first runs on the test machine. The
//    legacy calls are a small, long-documented surface (four descriptors, one call per op) where
//    cuDNN itself validates every argument; the graph API needs some thirty attributes set
//    exactly right per operation before anything runs, and a mistake shows only there.
//  - They give what kiln needs here: NHWC float32 forward, backward-data and backward-filter
//    convolutions, an algorithm search that reports each algorithm's determinism (kiln keeps its
//    reductions reproducible, so it takes the fastest deterministic one), and batch
//    normalisation whose saved statistics kiln reuses.
//  - The graph API's extras are not needed yet: fusing bias and activation into the convolution
//    (kiln runs them as one kernel of its own after it), asymmetric padding (done below with a
//    padded copy in the rare case that needs it), and building CUDA-graph nodes directly (stream
//    capture records these calls as well).
// They are marked deprecated in cuDNN 9 (warnings only with CUDNN_WARN_DEPRECATED) and may go in
// a later major version.
// TODO(cudnn): move to the graph API before cuDNN 10, and fuse conv + bias + relu then.
//
// Per convolution shape a plan holds the descriptors and, per direction, the algorithm
// cudnnFind*AlgorithmEx timed fastest among the deterministic ones that fit the workspace. The
// search runs on the first call of that shape and direction, on the call's own buffers (it
// overwrites the output, which the call then writes), and blocks the host once; later calls
// only enqueue. The workspace is one fixed block allocated at the first convolution, so a step
// never allocates.
//
// Layouts. x and y are NHWC tensors. Keras's kernel (KH, KW, C, F) is, as a matrix,
// (KH·KW·C) × F; cuDNN's NHWC filter layout is (F, KH, KW, C), its transpose, so the kernel is
// transposed into scratch before use and the filter gradient transposed back (kernels/conv.cu).
// Keras's 'same' padding puts an odd cell at the end; cuDNN pads both sides alike, so a geometry
// with pad_top != pad_bottom (or left != right) runs on a zero-padded copy of x with no padding,
// and its data gradient is cropped back out of the padded gradient.
//
// Batch normalisation is cuDNN's spatial mode on x seen as (rows, C, 1, 1) NHWC, the same bytes
// as kiln's rows × channels. cuDNN's running variance is the unbiased one; Keras 3 keeps the
// biased batch variance, so cuDNN is given no running statistics and kiln updates them itself
// from the batch mean and inverse standard deviation cuDNN saves
// (kernels::batch_norm_update_moving).
#include "cuda/cudnn_ops.h"

#include <cudnn.h>

#include <array>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/cudnn_check.h"
#include "kernels/kernels.h"
#include "kiln/backend.h"
#include "kiln/status.h"

namespace kiln {
namespace cuda {
namespace {

// The convolutions' workspace, allocated once. Algorithms that want more are not considered.
// 64 MiB covers the fast implicit-GEMM and Winograd algorithms of small CNNs several times over
// and is nothing on an H200's 141 GB.
constexpr size_t kWorkspaceBytes = size_t{64} << 20;

// ---- RAII for cuDNN's handle and descriptors ----------------------------------------------------
// Copying is deleted; destruction never throws (a failure is reported on stderr).

struct HandleDeleter {
    void operator()(cudnnHandle_t h) const noexcept { KILN_CUDNN_WARN(cudnnDestroy(h)); }
};
using HandlePtr = std::unique_ptr<std::remove_pointer_t<cudnnHandle_t>, HandleDeleter>;

class TensorDesc {
  public:
    TensorDesc() { KILN_CUDNN_CHECK(cudnnCreateTensorDescriptor(&desc_)); }
    ~TensorDesc() { KILN_CUDNN_WARN(cudnnDestroyTensorDescriptor(desc_)); }
    TensorDesc(const TensorDesc&) = delete;
    TensorDesc& operator=(const TensorDesc&) = delete;
    cudnnTensorDescriptor_t get() const { return desc_; }

  private:
    cudnnTensorDescriptor_t desc_ = nullptr;
};

class FilterDesc {
  public:
    FilterDesc() { KILN_CUDNN_CHECK(cudnnCreateFilterDescriptor(&desc_)); }
    ~FilterDesc() { KILN_CUDNN_WARN(cudnnDestroyFilterDescriptor(desc_)); }
    FilterDesc(const FilterDesc&) = delete;
    FilterDesc& operator=(const FilterDesc&) = delete;
    cudnnFilterDescriptor_t get() const { return desc_; }

  private:
    cudnnFilterDescriptor_t desc_ = nullptr;
};

class ConvDesc {
  public:
    ConvDesc() { KILN_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&desc_)); }
    ~ConvDesc() { KILN_CUDNN_WARN(cudnnDestroyConvolutionDescriptor(desc_)); }
    ConvDesc(const ConvDesc&) = delete;
    ConvDesc& operator=(const ConvDesc&) = delete;
    cudnnConvolutionDescriptor_t get() const { return desc_; }

  private:
    cudnnConvolutionDescriptor_t desc_ = nullptr;
};

// A block of device memory from the backend's pool, grown on demand (before a step is ever
// captured: only first calls grow it).
class DeviceScratch {
  public:
    explicit DeviceScratch(Backend& memory) : memory_(memory) {}
    ~DeviceScratch() { release(); }
    DeviceScratch(const DeviceScratch&) = delete;
    DeviceScratch& operator=(const DeviceScratch&) = delete;

    void reserve(size_t bytes) {
        if (bytes <= bytes_)
            return;
        release();
        ptr_ = memory_.allocate(bytes);
        bytes_ = bytes;
    }
    void* get() const { return ptr_; }
    float* floats() const { return static_cast<float*>(ptr_); }
    size_t bytes() const { return bytes_; }

  private:
    void release() noexcept {
        if (ptr_ != nullptr)
            memory_.deallocate(ptr_, bytes_);
        ptr_ = nullptr;
        bytes_ = 0;
    }

    Backend& memory_;
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

// cuDNN's sizes are int.
int to_int(int64_t value, const char* what) {
    if (value < 0 || value > INT_MAX) {
        throw Error(std::string("cudnn: ") + what + " = " + std::to_string(value) +
                    " does not fit cuDNN's int sizes");
    }
    return static_cast<int>(value);
}

std::string describe(const Conv2DGeometry& g) {
    auto pair = [](int64_t a, int64_t b) {
        return "(" + std::to_string(a) + ", " + std::to_string(b) + ")";
    };
    return "x (" + std::to_string(g.batch) + ", " + std::to_string(g.in_h) + ", " +
           std::to_string(g.in_w) + ", " + std::to_string(g.in_c) + "), " +
           std::to_string(g.out_c) + " filters " + pair(g.kernel_h, g.kernel_w) + ", strides " +
           pair(g.stride_h, g.stride_w) + ", dilation " + pair(g.dilation_h, g.dilation_w) +
           ", padding top/bottom " + pair(g.pad_top, g.pad_bottom) + " left/right " +
           pair(g.pad_left, g.pad_right);
}

using ConvKey = std::array<int64_t, 18>;

// The geometry and the math (TF32 allowed or not): an algorithm timed fastest under one math
// is not the fastest, or not even allowed, under the other.
ConvKey key_of(const Conv2DGeometry& g, bool tf32) {
    return {g.batch,      g.in_h,     g.in_w,       g.in_c,     g.out_h,     g.out_w,
            g.out_c,      g.kernel_h, g.kernel_w,   g.stride_h, g.stride_w,  g.dilation_h,
            g.dilation_w, g.pad_top,  g.pad_bottom, g.pad_left, g.pad_right, tf32 ? 1 : 0};
}

// One algorithm choice for one direction of one convolution shape.
template <typename Algo>
struct Choice {
    bool found = false;
    Algo algo{};
    size_t workspace_bytes = 0;
};

struct ConvPlan {
    Conv2DGeometry g;
    // pad_top != pad_bottom or pad_left != pad_right: cuDNN sees x zero-padded to
    // (N, padded_h, padded_w, C) and no padding of its own.
    bool explicit_padding = false;
    int64_t padded_h = 0, padded_w = 0;
    TensorDesc x;  // (N, C, H, W) NHWC, or the padded copy's size
    TensorDesc y;  // (N, F, OH, OW) NHWC
    FilterDesc w;  // (F, C, KH, KW) NHWC, i.e. (F, KH, KW, C) in memory
    ConvDesc conv;
    Choice<cudnnConvolutionFwdAlgo_t> forward;
    Choice<cudnnConvolutionBwdDataAlgo_t> backward_data;
    Choice<cudnnConvolutionBwdFilterAlgo_t> backward_filter;
};

struct BatchNormPlan {
    TensorDesc x;   // (rows, C, 1, 1) NHWC
    TensorDesc bn;  // (1, C, 1, 1), derived by cuDNN
};

// The first result (cuDNN sorts them fastest first) that succeeded, is deterministic and fits
// the workspace.
template <typename Perf>
const Perf& choose(const std::vector<Perf>& results, int returned, const char* direction,
                   const Conv2DGeometry& g) {
    std::string seen;
    for (int i = 0; i < returned; ++i) {
        const Perf& r = results[static_cast<size_t>(i)];
        if (r.status == CUDNN_STATUS_SUCCESS && r.determinism == CUDNN_DETERMINISTIC &&
            r.memory <= kWorkspaceBytes) {
            return r;
        }
        seen += (seen.empty() ? "" : "; ") + std::string("algorithm ") +
                std::to_string(static_cast<int>(r.algo)) + ": " + cudnnGetErrorString(r.status) +
                (r.determinism == CUDNN_DETERMINISTIC ? "" : ", not deterministic") + ", " +
                std::to_string(r.memory) + " bytes";
    }
    throw Error(std::string("cudnn: no deterministic ") + direction + " algorithm within " +
                std::to_string(kWorkspaceBytes >> 20) + " MiB of workspace for " + describe(g) +
                " (" + (seen.empty() ? "none returned" : seen) + ")");
}

const float kOne = 1.0f;
const float kZero = 0.0f;

}  // namespace

// ---- the implementation -------------------------------------------------------------------------

struct CudnnOps::Impl {
    Impl(cudaStream_t s, Backend& m) : stream(s), memory(m), workspace(m), filter(m), padded(m) {}

    cudnnHandle_t handle_for_use();
    ConvPlan& conv_plan(const Conv2DGeometry& g);
    BatchNormPlan& batch_norm_plan(const BatchNormGeometry& g);
    // Keras's kernel (KH·KW·C, F) into filter scratch as cuDNN's (F, KH·KW·C).
    const float* filter_for_cudnn(const Conv2DGeometry& g, const float* kernel);
    // x, or its zero-padded copy in padded scratch.
    const float* input_for_cudnn(const ConvPlan& p, const float* x);

    cudaStream_t stream;
    Backend& memory;
    bool tf32 = false;  // the convolutions may use TF32 tensor cores (set_precision)
    // Declaration order is destruction order reversed: the plans' descriptors go first, then
    // the scratch (freed on the stream, after the work that uses it), then the handle.
    HandlePtr handle;
    DeviceScratch workspace;  // kWorkspaceBytes, for every convolution
    DeviceScratch filter;     // a kernel or its gradient in cuDNN's layout
    DeviceScratch padded;     // x or dx with explicit padding
    std::map<ConvKey, std::unique_ptr<ConvPlan>> conv_plans;
    std::map<std::pair<int64_t, int64_t>, std::unique_ptr<BatchNormPlan>> batch_norm_plans;
};

cudnnHandle_t CudnnOps::Impl::handle_for_use() {
    if (!handle) {
        cudnnHandle_t h = nullptr;
        KILN_CUDNN_CHECK(cudnnCreate(&h));
        handle.reset(h);
        KILN_CUDNN_CHECK(cudnnSetStream(h, stream));
    }
    return handle.get();
}

ConvPlan& CudnnOps::Impl::conv_plan(const Conv2DGeometry& g) {
    const ConvKey key = key_of(g, tf32);
    auto found = conv_plans.find(key);
    if (found != conv_plans.end())
        return *found->second;

    auto plan = std::make_unique<ConvPlan>();
    plan->g = g;
    plan->explicit_padding = g.pad_top != g.pad_bottom || g.pad_left != g.pad_right;
    plan->padded_h = g.in_h + (plan->explicit_padding ? g.pad_top + g.pad_bottom : 0);
    plan->padded_w = g.in_w + (plan->explicit_padding ? g.pad_left + g.pad_right : 0);
    const int pad_h = plan->explicit_padding ? 0 : to_int(g.pad_top, "pad_top");
    const int pad_w = plan->explicit_padding ? 0 : to_int(g.pad_left, "pad_left");

    KILN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(
        plan->x.get(), CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, to_int(g.batch, "batch"),
        to_int(g.in_c, "in_c"), to_int(plan->padded_h, "in_h"), to_int(plan->padded_w, "in_w")));
    KILN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(
        plan->y.get(), CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, to_int(g.batch, "batch"),
        to_int(g.out_c, "out_c"), to_int(g.out_h, "out_h"), to_int(g.out_w, "out_w")));
    KILN_CUDNN_CHECK(cudnnSetFilter4dDescriptor(
        plan->w.get(), CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, to_int(g.out_c, "out_c"),
        to_int(g.in_c, "in_c"), to_int(g.kernel_h, "kernel_h"), to_int(g.kernel_w, "kernel_w")));
    KILN_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(
        plan->conv.get(), pad_h, pad_w, to_int(g.stride_h, "stride_h"),
        to_int(g.stride_w, "stride_w"), to_int(g.dilation_h, "dilation_h"),
        to_int(g.dilation_w, "dilation_w"), CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    // fp32: plain float32 FMA, no TF32, the same math as the CUDA backend's pedantic cuBLAS and
    // the CPU reference. tf32: cuDNN's default math, which allows TF32 tensor cores for float32
    // data (the CPU reference then rounds its operands to TF32).
    KILN_CUDNN_CHECK(
        cudnnSetConvolutionMathType(plan->conv.get(), tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));

    // cuDNN must agree with Keras's output size (a broken invariant otherwise).
    int n = 0, c = 0, h = 0, w = 0;
    KILN_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(plan->conv.get(), plan->x.get(),
                                                           plan->w.get(), &n, &c, &h, &w));
    if (n != g.batch || c != g.out_c || h != g.out_h || w != g.out_w) {
        throw Error("cudnn: the output of " + describe(g) + " is (" + std::to_string(n) + ", " +
                    std::to_string(h) + ", " + std::to_string(w) + ", " + std::to_string(c) +
                    ") in cuDNN, but (" + std::to_string(g.batch) + ", " + std::to_string(g.out_h) +
                    ", " + std::to_string(g.out_w) + ", " + std::to_string(g.out_c) +
                    ") by Keras's rule");
    }

    // Scratch for this shape: the workspace once, the filter and the padded copy as large as
    // the largest shape needs.
    workspace.reserve(kWorkspaceBytes);
    filter.reserve(static_cast<size_t>(g.kernel_elements()) * sizeof(float));
    if (plan->explicit_padding) {
        padded.reserve(static_cast<size_t>(g.batch * plan->padded_h * plan->padded_w * g.in_c) *
                       sizeof(float));
    }
    ConvPlan& result = *plan;
    conv_plans.emplace(key, std::move(plan));
    return result;
}

const float* CudnnOps::Impl::filter_for_cudnn(const Conv2DGeometry& g, const float* kernel) {
    kernels::transpose(stream, kernel, g.patch_size(), g.out_c, filter.floats());
    return filter.floats();
}

const float* CudnnOps::Impl::input_for_cudnn(const ConvPlan& p, const float* x) {
    if (!p.explicit_padding)
        return x;
    const Conv2DGeometry& g = p.g;
    kernels::pad_nhwc(stream, x, g.batch, g.in_h, g.in_w, g.in_c, g.pad_top, g.pad_bottom,
                      g.pad_left, g.pad_right, padded.floats());
    return padded.floats();
}

BatchNormPlan& CudnnOps::Impl::batch_norm_plan(const BatchNormGeometry& g) {
    const std::pair<int64_t, int64_t> key{g.rows, g.channels};
    auto found = batch_norm_plans.find(key);
    if (found != batch_norm_plans.end())
        return *found->second;
    auto plan = std::make_unique<BatchNormPlan>();
    KILN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan->x.get(), CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT,
                                                to_int(g.rows, "rows"),
                                                to_int(g.channels, "channels"), 1, 1));
    KILN_CUDNN_CHECK(
        cudnnDeriveBNTensorDescriptor(plan->bn.get(), plan->x.get(), CUDNN_BATCHNORM_SPATIAL));
    BatchNormPlan& result = *plan;
    batch_norm_plans.emplace(key, std::move(plan));
    return result;
}

// ---- the ops ------------------------------------------------------------------------------------

CudnnOps::CudnnOps(cudaStream_t stream, Backend& memory)
    : impl_(std::make_unique<Impl>(stream, memory)) {}

CudnnOps::~CudnnOps() = default;

void CudnnOps::set_precision(Precision precision) {
    impl_->tf32 = conv_precision(precision) != Precision::kFp32;
}

void CudnnOps::conv2d_forward(const Conv2DGeometry& g, const float* x, const float* kernel,
                              float* y) {
    if (g.batch == 0)
        return;
    Impl& m = *impl_;
    const cudnnHandle_t handle = m.handle_for_use();
    ConvPlan& p = m.conv_plan(g);
    const float* input = m.input_for_cudnn(p, x);
    const float* w = m.filter_for_cudnn(g, kernel);
    if (!p.forward.found) {
        int max_count = 0;
        KILN_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(handle, &max_count));
        std::vector<cudnnConvolutionFwdAlgoPerf_t> results(static_cast<size_t>(max_count));
        int returned = 0;
        KILN_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(
            handle, p.x.get(), input, p.w.get(), w, p.conv.get(), p.y.get(), y, max_count,
            &returned, results.data(), m.workspace.get(), m.workspace.bytes()));
        const cudnnConvolutionFwdAlgoPerf_t& best = choose(results, returned, "forward", g);
        p.forward = {true, best.algo, best.memory};
    }
    KILN_CUDNN_CHECK(cudnnConvolutionForward(handle, &kOne, p.x.get(), input, p.w.get(), w,
                                             p.conv.get(), p.forward.algo, m.workspace.get(),
                                             p.forward.workspace_bytes, &kZero, p.y.get(), y));
}

void CudnnOps::conv2d_backward_data(const Conv2DGeometry& g, const float* dy, const float* kernel,
                                    float* dx) {
    if (g.batch == 0)
        return;
    Impl& m = *impl_;
    const cudnnHandle_t handle = m.handle_for_use();
    ConvPlan& p = m.conv_plan(g);
    const float* w = m.filter_for_cudnn(g, kernel);
    float* out = p.explicit_padding ? m.padded.floats() : dx;
    if (!p.backward_data.found) {
        int max_count = 0;
        KILN_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(handle, &max_count));
        std::vector<cudnnConvolutionBwdDataAlgoPerf_t> results(static_cast<size_t>(max_count));
        int returned = 0;
        KILN_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(
            handle, p.w.get(), w, p.y.get(), dy, p.conv.get(), p.x.get(), out, max_count, &returned,
            results.data(), m.workspace.get(), m.workspace.bytes()));
        const cudnnConvolutionBwdDataAlgoPerf_t& best =
            choose(results, returned, "backward-data", g);
        p.backward_data = {true, best.algo, best.memory};
    }
    KILN_CUDNN_CHECK(cudnnConvolutionBackwardData(
        handle, &kOne, p.w.get(), w, p.y.get(), dy, p.conv.get(), p.backward_data.algo,
        m.workspace.get(), p.backward_data.workspace_bytes, &kZero, p.x.get(), out));
    if (p.explicit_padding) {
        kernels::crop_nhwc(m.stream, out, g.batch, g.in_h, g.in_w, g.in_c, g.pad_top, g.pad_bottom,
                           g.pad_left, g.pad_right, dx);
    }
}

void CudnnOps::conv2d_backward_filter(const Conv2DGeometry& g, const float* x, const float* dy,
                                      float* dkernel) {
    Impl& m = *impl_;
    if (g.batch == 0) {
        KILN_CUDA_CHECK(cudaMemsetAsync(
            dkernel, 0, static_cast<size_t>(g.kernel_elements()) * sizeof(float), m.stream));
        return;
    }
    const cudnnHandle_t handle = m.handle_for_use();
    ConvPlan& p = m.conv_plan(g);
    const float* input = m.input_for_cudnn(p, x);
    float* dw = m.filter.floats();
    if (!p.backward_filter.found) {
        int max_count = 0;
        KILN_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(handle, &max_count));
        std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> results(static_cast<size_t>(max_count));
        int returned = 0;
        KILN_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(
            handle, p.x.get(), input, p.y.get(), dy, p.conv.get(), p.w.get(), dw, max_count,
            &returned, results.data(), m.workspace.get(), m.workspace.bytes()));
        const cudnnConvolutionBwdFilterAlgoPerf_t& best =
            choose(results, returned, "backward-filter", g);
        p.backward_filter = {true, best.algo, best.memory};
    }
    KILN_CUDNN_CHECK(cudnnConvolutionBackwardFilter(
        handle, &kOne, p.x.get(), input, p.y.get(), dy, p.conv.get(), p.backward_filter.algo,
        m.workspace.get(), p.backward_filter.workspace_bytes, &kZero, p.w.get(), dw));
    // cuDNN's (F, KH·KW·C) back to Keras's (KH·KW·C, F).
    kernels::transpose(m.stream, dw, g.out_c, g.patch_size(), dkernel);
}

void CudnnOps::batch_norm_forward_training(const BatchNormGeometry& g, const float* x,
                                           const float* gamma, const float* beta, float* y,
                                           float* moving_mean, float* moving_variance,
                                           float* saved_mean, float* saved_inv_std) {
    if (g.rows == 0)
        return;
    Impl& m = *impl_;
    const cudnnHandle_t handle = m.handle_for_use();
    BatchNormPlan& p = m.batch_norm_plan(g);
    // No running statistics for cuDNN (null, with a factor it then ignores): see the top.
    KILN_CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(
        handle, CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, p.x.get(), x, p.x.get(), y, p.bn.get(),
        gamma, beta, 1.0, nullptr, nullptr, static_cast<double>(g.epsilon), saved_mean,
        saved_inv_std));
    kernels::batch_norm_update_moving(m.stream, saved_mean, saved_inv_std, moving_mean,
                                      moving_variance, g.channels, g.momentum, g.epsilon);
}

void CudnnOps::batch_norm_forward_inference(const BatchNormGeometry& g, const float* x,
                                            const float* gamma, const float* beta,
                                            const float* moving_mean, const float* moving_variance,
                                            float* y) {
    if (g.rows == 0)
        return;
    Impl& m = *impl_;
    const cudnnHandle_t handle = m.handle_for_use();
    BatchNormPlan& p = m.batch_norm_plan(g);
    KILN_CUDNN_CHECK(cudnnBatchNormalizationForwardInference(
        handle, CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, p.x.get(), x, p.x.get(), y, p.bn.get(),
        gamma, beta, moving_mean, moving_variance, static_cast<double>(g.epsilon)));
}

void CudnnOps::batch_norm_backward(const BatchNormGeometry& g, const float* x, const float* dy,
                                   const float* gamma, const float* saved_mean,
                                   const float* saved_inv_std, float* dx, float* dgamma,
                                   float* dbeta) {
    if (g.rows == 0)
        return;
    Impl& m = *impl_;
    const cudnnHandle_t handle = m.handle_for_use();
    BatchNormPlan& p = m.batch_norm_plan(g);
    KILN_CUDNN_CHECK(cudnnBatchNormalizationBackward(
        handle, CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, &kOne, &kZero, p.x.get(), x, p.x.get(), dy,
        p.x.get(), dx, p.bn.get(), gamma, dgamma, dbeta, static_cast<double>(g.epsilon), saved_mean,
        saved_inv_std));
}

}  // namespace cuda
}  // namespace kiln
