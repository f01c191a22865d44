// The CUDA backend: cuBLAS for the GEMMs, kiln's kernels (kernels/) for everything else, all on
// one non-blocking stream of device 0.
//
// - Memory comes from a stream-ordered pool of its own (cudaMallocFromPoolAsync) whose release
//   threshold is raised to "never", so freed blocks stay in the pool and the next allocation of
//   that size reuses them without a driver call.
// - cuBLAS is bound to the stream with a workspace the backend owns, so cuBLAS never allocates
//   behind the stream's back (which a CUDA graph capture would not allow). In fp32 precision
//   (the default) its math mode is pedantic: plain float32 FMA, no TF32 or BF16x9 emulation,
//   whatever the environment says. In tf32 and bf16 precision (kiln/ops.h) the GEMMs go through
//   cublasGemmEx with float32 storage and the compute type CUBLAS_COMPUTE_32F_FAST_TF32 or
//   CUBLAS_COMPUTE_32F_FAST_16BF (tensor cores, float32 accumulation); cuBLAS may run a
//   _FAST_16BF GEMM in TF32 instead, which is only more accurate.
// - The Dense layer's GEMMs go through cuBLASLt with epilogues (dense_forward: the bias added in
//   the GEMM; dense_backward_weights: the bias gradient reduced in the GEMM), with the same
//   compute types and the same workspace; a shape cuBLASLt has no algorithm for falls back to
//   the cuBLAS GEMM and kiln's kernels, and fused_gemms()/unfused_gemms() count which ran.
// - `upload` stages through pinned buffers, so the caller may reuse its host buffer at once while
//   the copy to the device is still in flight. `read` is the only call that waits for the device
//   on the caller's behalf, and it is counted. `peek` never waits.
// - Only float32 is supported; an op given another dtype throws kiln::Error naming the op.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/cudnn_ops.h"
#include "kernels/kernels.h"
#include "kiln/backend.h"
#include "kiln/status.h"

namespace kiln {
namespace {

// cuBLAS's documented recommendation for Hopper is a 32 MiB workspace; less can rule out its
// fastest (split-K) kernels on some shapes.
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;
// Upload staging: two pinned slots of 4 MiB, so one is filled by the host while the other's copy
// runs. Large enough for PCIe to run at full rate, small enough to pin without notice.
constexpr size_t kUploadChunkBytes = size_t{4} << 20;
constexpr int kUploadSlots = 2;
// Peek staging: a ring of small pinned slots. A progress display peeks once per step; four slots
// let a new copy start while the newest completed one is kept to be returned.
constexpr int kPeekSlots = 4;

// ---- RAII for the CUDA and cuBLAS handles ----------------------------------------------------
// Deleters never throw: a failure on the way down is reported on stderr and otherwise ignored.

struct StreamDeleter {
    void operator()(cudaStream_t s) const noexcept { KILN_CUDA_WARN(cudaStreamDestroy(s)); }
};
struct EventDeleter {
    void operator()(cudaEvent_t e) const noexcept { KILN_CUDA_WARN(cudaEventDestroy(e)); }
};
struct PoolDeleter {
    void operator()(cudaMemPool_t p) const noexcept { KILN_CUDA_WARN(cudaMemPoolDestroy(p)); }
};
struct DeviceMemoryDeleter {
    void operator()(void* p) const noexcept { KILN_CUDA_WARN(cudaFree(p)); }
};
struct PinnedMemoryDeleter {
    void operator()(void* p) const noexcept { KILN_CUDA_WARN(cudaFreeHost(p)); }
};
struct CublasLtDeleter {
    void operator()(cublasLtHandle_t h) const noexcept {
        const cublasStatus_t status = cublasLtDestroy(h);
        if (status != CUBLAS_STATUS_SUCCESS) {
            std::fprintf(stderr, "kiln: warning: cublasLtDestroy failed: %s\n",
                         cuda_detail::describe(status).c_str());
        }
    }
};
struct CublasDeleter {
    void operator()(cublasHandle_t h) const noexcept {
        const cublasStatus_t status = cublasDestroy(h);
        if (status != CUBLAS_STATUS_SUCCESS) {
            std::fprintf(stderr, "kiln: warning: cublasDestroy failed: %s\n",
                         cuda_detail::describe(status).c_str());
        }
    }
};

using StreamPtr = std::unique_ptr<std::remove_pointer_t<cudaStream_t>, StreamDeleter>;
using EventPtr = std::unique_ptr<std::remove_pointer_t<cudaEvent_t>, EventDeleter>;
using PoolPtr = std::unique_ptr<std::remove_pointer_t<cudaMemPool_t>, PoolDeleter>;
using DeviceMemoryPtr = std::unique_ptr<void, DeviceMemoryDeleter>;
using PinnedMemoryPtr = std::unique_ptr<void, PinnedMemoryDeleter>;
using CublasPtr = std::unique_ptr<std::remove_pointer_t<cublasHandle_t>, CublasDeleter>;
using CublasLtPtr = std::unique_ptr<std::remove_pointer_t<cublasLtHandle_t>, CublasLtDeleter>;

// ---- cuBLASLt matmuls with epilogues ----------------------------------------------------------

// One column-major matmul D(m×n) = op(A)·op(B) with an epilogue, as cuBLASLt describes it: made
// once per shape (descriptors, layouts and the heuristic's algorithm), then run with new
// pointers. `usable` is false when cuBLASLt offers no algorithm for it.
class LtMatmul {
  public:
    LtMatmul(cublasLtHandle_t lt, cublasComputeType_t compute, cublasOperation_t op_a,
             cublasOperation_t op_b, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb,
             int64_t ldd, cublasLtEpilogue_t epilogue, size_t workspace_bytes) {
        try {
            make(lt, compute, op_a, op_b, m, n, k, lda, ldb, ldd, epilogue, workspace_bytes);
        } catch (...) {
            release();
            throw;
        }
    }
    ~LtMatmul() { release(); }
    LtMatmul(const LtMatmul&) = delete;
    LtMatmul& operator=(const LtMatmul&) = delete;

    // The alignment, in bytes, the chosen algorithm may assume of every pointer.
    static constexpr uintptr_t kMinAlignment = 16;

    bool usable() const { return usable_; }
    static bool aligned(const void* p) {
        return reinterpret_cast<uintptr_t>(p) % kMinAlignment == 0;
    }

    // D = op(A)·op(B), the epilogue's vector at `bias` (added, or the bias gradient written).
    // A host-side descriptor update and one launch: capturable.
    void run(cublasLtHandle_t lt, const float* a, const float* b, float* d, const void* bias,
             void* workspace, size_t workspace_bytes, cudaStream_t stream) {
        set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
        const float one = 1.0f, zero = 0.0f;
        KILN_CUBLAS_CHECK(cublasLtMatmul(lt, desc_, &one, a, a_, b, b_, &zero, d, d_, d, d_, &algo_,
                                         workspace, workspace_bytes, stream));
    }

  private:
    void make(cublasLtHandle_t lt, cublasComputeType_t compute, cublasOperation_t op_a,
              cublasOperation_t op_b, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb,
              int64_t ldd, cublasLtEpilogue_t epilogue, size_t workspace_bytes) {
        KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc_, compute, CUDA_R_32F));
        set(CUBLASLT_MATMUL_DESC_TRANSA, op_a);
        set(CUBLASLT_MATMUL_DESC_TRANSB, op_b);
        set(CUBLASLT_MATMUL_DESC_EPILOGUE, epilogue);
        const cudaDataType_t bias_type = CUDA_R_32F;
        set(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, bias_type);
        // Layouts of the matrices as stored (before op): A is m×k (k×m transposed), B k×n.
        const bool ta = op_a == CUBLAS_OP_T, tb = op_b == CUBLAS_OP_T;
        KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a_, CUDA_R_32F, uint64_t(ta ? k : m),
                                                     uint64_t(ta ? m : k), lda));
        KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b_, CUDA_R_32F, uint64_t(tb ? n : k),
                                                     uint64_t(tb ? k : n), ldb));
        KILN_CUBLAS_CHECK(
            cublasLtMatrixLayoutCreate(&d_, CUDA_R_32F, uint64_t(m), uint64_t(n), ldd));
        cublasLtMatmulPreference_t preference = nullptr;
        KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
        uint64_t max_workspace = workspace_bytes;
        cublasStatus_t status = cublasLtMatmulPreferenceSetAttribute(
            preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_workspace,
            sizeof(max_workspace));
        // The heuristic assumes 256-byte aligned matrices unless told otherwise; kiln's views
        // (a batch's rows, a layer's weights in the flat buffer) are only kMinAlignment-aligned,
        // which run() checks.
        const uint32_t alignment = kMinAlignment;
        for (const auto attribute : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                     CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                     CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                     CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
            if (status == CUBLAS_STATUS_SUCCESS) {
                status = cublasLtMatmulPreferenceSetAttribute(preference, attribute, &alignment,
                                                              sizeof(alignment));
            }
        }
        int found = 0;
        cublasLtMatmulHeuristicResult_t result;
        std::memset(&result, 0, sizeof(result));
        if (status == CUBLAS_STATUS_SUCCESS) {
            status = cublasLtMatmulAlgoGetHeuristic(lt, desc_, a_, b_, d_, d_, preference, 1,
                                                    &result, &found);
        }
        cublasLtMatmulPreferenceDestroy(preference);
        // No algorithm (or an epilogue this compute type does not take) is an answer: the
        // caller falls back to separate ops.
        usable_ = status == CUBLAS_STATUS_SUCCESS && found > 0;
        if (usable_)
            algo_ = result.algo;
    }

    void release() noexcept {
        if (d_)
            cublasLtMatrixLayoutDestroy(d_);
        if (b_)
            cublasLtMatrixLayoutDestroy(b_);
        if (a_)
            cublasLtMatrixLayoutDestroy(a_);
        if (desc_)
            cublasLtMatmulDescDestroy(desc_);
        d_ = b_ = a_ = nullptr;
        desc_ = nullptr;
    }

    template <typename T>
    void set(cublasLtMatmulDescAttributes_t attribute, const T& value) {
        KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, attribute, &value, sizeof(value)));
    }

    cublasLtMatmulDesc_t desc_ = nullptr;
    cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, d_ = nullptr;
    cublasLtMatmulAlgo_t algo_;
    bool usable_ = false;
};

// What tells one LtMatmul from another: the shape, the epilogue and the compute type.
using LtKey = std::tuple<int64_t, int64_t, int64_t, int, int>;  // m, n, k, epilogue, compute

EventPtr make_event() {
    cudaEvent_t event = nullptr;
    KILN_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    return EventPtr(event);
}

PinnedMemoryPtr make_pinned(size_t bytes) {
    void* ptr = nullptr;
    KILN_CUDA_CHECK(cudaMallocHost(&ptr, bytes));
    return PinnedMemoryPtr(ptr);
}

// ---- argument checks ---------------------------------------------------------------------------

void require_dtype(const char* op, const char* name, const View& v, DType want) {
    if (v.dtype != want) {
        throw Error(std::string("cuda backend: ") + op + ": " + name + " has dtype " +
                    dtype_name(v.dtype) + ", but the CUDA backend supports only " +
                    dtype_name(want) + " here");
    }
}

void require_f32(const char* op, const char* name, const View& v) {
    require_dtype(op, name, v, DType::kFloat32);
}

// As require_f32, for an optional operand (null data means absent).
void require_f32_or_null(const char* op, const char* name, const View& v) {
    if (v.data != nullptr)
        require_f32(op, name, v);
}

std::string gib_string(size_t bytes) {
    return std::to_string(std::llround(static_cast<double>(bytes) / double(size_t{1} << 30))) +
           " GiB";
}

// "13.0" from cudaDriverGetVersion's 13000: the newest CUDA version the installed driver runs.
std::string cuda_version_string(int version) {
    return std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
}

// ---- the backend -------------------------------------------------------------------------------

class CudaBackend final : public Backend {
  public:
    CudaBackend(int device, const cudaDeviceProp& prop, int driver_version, CublasPtr cublas);
    ~CudaBackend() override;

    CudaBackend(const CudaBackend&) = delete;
    CudaBackend& operator=(const CudaBackend&) = delete;

    DeviceKind kind() const override { return DeviceKind::kCuda; }
    std::string description() const override { return description_; }
    bool supports(DType dtype) const override { return dtype == DType::kFloat32; }

    void* allocate(size_t bytes) override;
    void deallocate(void* ptr, size_t bytes) noexcept override;
    void upload(void* dst, const void* src, size_t bytes) override;
    void read(void* dst, const void* src, size_t bytes) override;
    void copy(void* dst, const void* src, size_t bytes) override;
    void fill_zero(const View& x) override;
    bool peek(void* dst, const void* src, size_t bytes) override;
    void synchronize() override;
    std::unique_ptr<StagingBuffer> make_staging_buffer(size_t bytes) override;

    // For the staging buffers.
    int device() const { return device_; }
    cudaStream_t compute_stream() const { return stream_.get(); }
    // The stream checkpoint copies run on, created at the first staging buffer.
    cudaStream_t copy_stream();

    void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
              const View& a, const View& b, float beta, const View& c) override;

    void bias_activation_forward(const View& z, const View& bias, const View& y, int64_t rows,
                                 int64_t cols, ActivationSpec act) override;
    void activation_backward(const View& z, const View& y, const View& dy, const View& dz,
                             int64_t rows, int64_t cols, ActivationSpec act) override;
    void bias_grad(const View& dz, const View& db, int64_t rows, int64_t cols) override;
    void dense_forward(const View& x, const View& w, const View& bias, const View& y, int64_t rows,
                       int64_t k, int64_t cols, ActivationSpec act) override;
    void dense_backward_weights(const View& x, const View& dz, const View& dw, const View& db,
                                int64_t rows, int64_t k, int64_t cols) override;
    void loss(const LossSpec& spec, const View& pred, const View& y_true, const View& grad,
              int64_t rows, int64_t cols, int64_t grad_rows, const View& acc, int slot) override;
    void dropout_forward(const View& x, const View& y, const View& mask, int64_t n, float rate,
                         uint64_t seed, uint64_t counter) override;
    void multiply(const View& a, const View& b, const View& out, int64_t n) override;

    void optimizer_update(const OptimizerStep& step, const View& params, const View& grads,
                          const View& state, int64_t n) override;

    void permutation(const View& perm, int64_t n, uint64_t seed, uint64_t stream) override;
    void gather_rows(const View& src, const View& index, int64_t offset, int64_t count,
                     int64_t cols, const View& dst) override;

    // Convolution and batch normalisation through cuDNN (cudnn_ops.cpp), pooling by kiln's
    // kernels (kernels/pooling.cu).
    void conv2d_forward(const Conv2DGeometry& g, const View& x, const View& kernel,
                        const View& bias, ActivationSpec act, const View& y) override;
    void conv2d_backward_data(const Conv2DGeometry& g, const View& dy, const View& kernel,
                              const View& dx) override;
    void conv2d_backward_filter(const Conv2DGeometry& g, const View& x, const View& dy,
                                const View& dkernel) override;
    void pool2d_forward(const Pool2DGeometry& g, const View& x, const View& y) override;
    void pool2d_backward(const Pool2DGeometry& g, const View& x, const View& y, const View& dy,
                         const View& dx) override;
    void batch_norm_forward_training(const BatchNormGeometry& g, const View& x, const View& gamma,
                                     const View& beta, const View& y, const View& moving_mean,
                                     const View& moving_variance, const View& saved_mean,
                                     const View& saved_inv_std) override;
    void batch_norm_forward_inference(const BatchNormGeometry& g, const View& x, const View& gamma,
                                      const View& beta, const View& moving_mean,
                                      const View& moving_variance, const View& y) override;
    void batch_norm_backward(const BatchNormGeometry& g, const View& x, const View& dy,
                             const View& gamma, const View& saved_mean, const View& saved_inv_std,
                             const View& dx, const View& dgamma, const View& dbeta) override;

    std::unique_ptr<StepGraph> capture(const std::function<void()>& body) override;
    void gather_batch(const View& src, const View& index, const View& scalars, int64_t batch_size,
                      int64_t count, int64_t cols, const View& dst) override;
    void dropout_forward_step(const View& x, const View& y, const View& mask, int64_t n, float rate,
                              uint64_t seed, const View& scalars) override;
    void optimizer_update_step(const OptimizerStep& hyper, const View& scalars, const View& params,
                               const View& grads, const View& state, int64_t n) override;
    void advance_step(const OptimizerStep& hyper, const View& scalars) override;

  private:
    // cuDNN's handle, plans and scratch, made at the first image op.
    cuda::CudnnOps& cudnn();
    // The handle's math mode, set only when it changes (a host-side setting, safe in a capture).
    void set_cublas_math(cublasMath_t mode);
    // The cuBLASLt matmul for a shape and epilogue in the current precision, made at its first
    // use (an eager step, before any capture); null when cuBLASLt has no algorithm for it.
    // The ops with per-step values, shared by the host-valued form and the step form (whose
    // `scalars` are read on the device; null for the host-valued one). `op` names the caller.
    void gather(const char* op, const View& src, const View& index, int64_t offset, int64_t count,
                int64_t cols, const View& dst, const StepScalars* scalars, int64_t batch_size);
    void dropout(const char* op, const View& x, const View& y, const View& mask, int64_t n,
                 float rate, uint64_t seed, uint64_t counter, const StepScalars* scalars);
    void update(const char* op, const OptimizerStep& step, const View& params, const View& grads,
                const View& state, int64_t n, const StepScalars* scalars);
    LtMatmul* lt_matmul(cublasOperation_t op_b, int64_t m, int64_t n, int64_t k, int64_t lda,
                        int64_t ldb, int64_t ldd, cublasLtEpilogue_t epilogue);

    // A block of backend-owned scratch from the pool, grown on demand.
    struct Scratch {
        void* ptr = nullptr;
        size_t bytes = 0;
    };
    void reserve(Scratch* scratch, size_t bytes);
    void release(Scratch* scratch) noexcept;

    struct PeekSlot {
        EventPtr done;           // recorded after the slot's copy
        bool pending = false;    // a copy was started and has not been seen to complete
        bool completed = false;  // holds the bytes of a finished copy
        uint64_t sequence = 0;   // when its copy was started, to find the newest
        const void* src = nullptr;
        size_t bytes = 0;
    };

    cudaStream_t stream() const { return stream_.get(); }

    // Declaration order is destruction order reversed: the stream outlives everything that
    // enqueues on it, the pool outlives the scratch, the workspace outlives the cuBLAS handle.
    const int device_;
    std::string description_;
    StreamPtr stream_;
    StreamPtr copy_stream_;  // checkpoint device-to-host copies; null until needed
    PoolPtr pool_;
    DeviceMemoryPtr cublas_workspace_;
    CublasPtr cublas_;
    cublasMath_t cublas_math_ = CUBLAS_PEDANTIC_MATH;  // as set in the constructor
    CublasLtPtr lt_;                                   // made at the first dense_* call
    std::map<LtKey, std::unique_ptr<LtMatmul>> lt_matmuls_;

    PinnedMemoryPtr upload_staging_;  // kUploadSlots × kUploadChunkBytes, allocated on first use
    EventPtr upload_done_[kUploadSlots];
    int next_upload_slot_ = 0;

    PinnedMemoryPtr peek_staging_;  // kPeekSlots × kPeekBytes
    PeekSlot peek_slots_[kPeekSlots];
    uint64_t peek_sequence_ = 0;

    Scratch loss_scratch_;
    Scratch permutation_scratch_;
    std::unique_ptr<cuda::CudnnOps> cudnn_;  // freed in the destructor, before the pool
    int64_t permutation_n_ = -1;             // the n permutation_scratch_ was sized for
    size_t permutation_bytes_ = 0;
    std::vector<void*> freed_while_capturing_;  // deallocated during a capture, freed after it
};

CudaBackend::CudaBackend(int device, const cudaDeviceProp& prop, int driver_version,
                         CublasPtr cublas)
    : device_(device), cublas_(std::move(cublas)) {
    description_ = "cuda:" + std::to_string(device_) + " " + prop.name + " (sm_" +
                   std::to_string(prop.major) + std::to_string(prop.minor) + ", " +
                   gib_string(prop.totalGlobalMem) + ", driver " +
                   cuda_version_string(driver_version) + ")";
    KILN_CUDA_CHECK(cudaSetDevice(device_));

    // the stream: non-blocking, so that nothing on the legacy default stream serialises with it
    cudaStream_t stream = nullptr;
    KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    stream_.reset(stream);

    // the memory pool: device-local, never trimmed on synchronisation
    int pools_supported = 0;
    KILN_CUDA_CHECK(
        cudaDeviceGetAttribute(&pools_supported, cudaDevAttrMemoryPoolsSupported, device_));
    if (!pools_supported) {
        throw Error(std::string(prop.name) +
                    " does not support stream-ordered memory pools (cudaMallocAsync)");
    }
    cudaMemPoolProps pool_props;
    std::memset(&pool_props, 0, sizeof(pool_props));
    pool_props.allocType = cudaMemAllocationTypePinned;
    pool_props.handleTypes = cudaMemHandleTypeNone;
    pool_props.location.type = cudaMemLocationTypeDevice;
    pool_props.location.id = device_;
    cudaMemPool_t pool = nullptr;
    KILN_CUDA_CHECK(cudaMemPoolCreate(&pool, &pool_props));
    pool_.reset(pool);
    uint64_t release_threshold = UINT64_MAX;
    KILN_CUDA_CHECK(
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &release_threshold));

    // cuBLAS: on our stream, with our workspace (set after the stream: cublasSetStream resets
    // the workspace to cuBLAS's own pool), pedantic float32 math, host scalars
    void* workspace = nullptr;
    KILN_CUDA_CHECK(cudaMalloc(&workspace, kCublasWorkspaceBytes));
    cublas_workspace_.reset(workspace);
    KILN_CUBLAS_CHECK(cublasSetStream(cublas_.get(), stream));
    KILN_CUBLAS_CHECK(cublasSetWorkspace(cublas_.get(), workspace, kCublasWorkspaceBytes));
    KILN_CUBLAS_CHECK(cublasSetMathMode(cublas_.get(), CUBLAS_PEDANTIC_MATH));
    KILN_CUBLAS_CHECK(cublasSetPointerMode(cublas_.get(), CUBLAS_POINTER_MODE_HOST));

    // staging for uploads and peeks
    for (auto& done : upload_done_)
        done = make_event();
    peek_staging_ = make_pinned(kPeekSlots * kPeekBytes);
    for (auto& slot : peek_slots_)
        slot.done = make_event();

    // the loss reduction's scratch, last: nothing after it can throw and leak it
    reserve(&loss_scratch_, kernels::loss_scratch_bytes());
}

CudaBackend::~CudaBackend() {
    // Let queued work finish before anything it may still use is freed.
    KILN_CUDA_WARN(cudaStreamSynchronize(stream()));
    cudnn_.reset();
    release(&permutation_scratch_);
    release(&loss_scratch_);
    KILN_CUDA_WARN(cudaStreamSynchronize(stream()));
    // The members go next, in reverse order: staging, cuBLAS, workspace, pool, stream.
}

void CudaBackend::reserve(Scratch* scratch, size_t bytes) {
    if (scratch->bytes >= bytes)
        return;
    release(scratch);
    scratch->ptr = allocate(bytes);
    scratch->bytes = bytes;
}

void CudaBackend::release(Scratch* scratch) noexcept {
    if (scratch->ptr != nullptr)
        deallocate(scratch->ptr, scratch->bytes);
    scratch->ptr = nullptr;
    scratch->bytes = 0;
}

// ---- memory ------------------------------------------------------------------------------------

void* CudaBackend::allocate(size_t bytes) {
    refuse_while_capturing("allocate");
    if (bytes == 0)
        return nullptr;
    void* ptr = nullptr;
    const cudaError_t status = cudaMallocFromPoolAsync(&ptr, bytes, pool_.get(), stream());
    if (status == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        size_t free_bytes = 0, total_bytes = 0;
        cudaMemGetInfo(&free_bytes, &total_bytes);
        cudaGetLastError();
        throw Error("cuda backend: out of device memory allocating " + std::to_string(bytes) +
                    " bytes (" + std::to_string(free_bytes) + " of " + std::to_string(total_bytes) +
                    " bytes free on " + description_ + ")");
    }
    KILN_CUDA_CHECK(status);
    return ptr;
}

void CudaBackend::deallocate(void* ptr, size_t) noexcept {
    // A free inside a capture would become part of the graph: it waits for the capture's end,
    // which then fails (a recorded op may use the memory).
    if (capturing_ && ptr != nullptr) {
        freed_while_capturing_.push_back(ptr);
        return;
    }
    if (ptr != nullptr)
        KILN_CUDA_WARN(cudaFreeAsync(ptr, stream()));
}

// Chunks go through the pinned slots in turn. Before a slot is refilled, its previous copy must
// have finished: that wait (cudaEventSynchronize) is the only one, and only uploads larger than
// one chunk, or uploads issued back to back, ever meet it. The last chunks are still in flight
// when this returns, but they read from our staging, not from `src`.
void CudaBackend::upload(void* dst, const void* src, size_t bytes) {
    refuse_while_capturing("upload");
    if (bytes == 0)
        return;
    if (!upload_staging_)
        upload_staging_ = make_pinned(kUploadSlots * kUploadChunkBytes);
    char* staging = static_cast<char*>(upload_staging_.get());
    for (size_t offset = 0; offset < bytes; offset += kUploadChunkBytes) {
        const size_t chunk = std::min(kUploadChunkBytes, bytes - offset);
        const int slot = next_upload_slot_;
        next_upload_slot_ = (next_upload_slot_ + 1) % kUploadSlots;
        char* slot_memory = staging + static_cast<size_t>(slot) * kUploadChunkBytes;

        // wait for the slot's previous copy, refill it, copy it on the stream
        KILN_CUDA_CHECK(cudaEventSynchronize(upload_done_[slot].get()));
        std::memcpy(slot_memory, static_cast<const char*>(src) + offset, chunk);
        KILN_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + offset, slot_memory, chunk,
                                        cudaMemcpyHostToDevice, stream()));
        KILN_CUDA_CHECK(cudaEventRecord(upload_done_[slot].get(), stream()));
    }
}

void CudaBackend::read(void* dst, const void* src, size_t bytes) {
    refuse_while_capturing("read");
    ++reads_;
    if (bytes == 0)
        return;
    KILN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()));
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

void CudaBackend::copy(void* dst, const void* src, size_t bytes) {
    if (bytes == 0)
        return;
    KILN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
}

void CudaBackend::fill_zero(const View& x) {
    const size_t bytes = x.bytes();
    if (bytes == 0 || x.data == nullptr)
        return;
    KILN_CUDA_CHECK(cudaMemsetAsync(x.data, 0, bytes, stream()));
}

// Each call first collects the copies that have completed, then starts a new one into a free
// slot (never the newest completed one, which is what this call returns), then returns the
// newest completed copy of the same (src, bytes). With every slot still in flight it starts
// nothing and returns the newest one it has, if any.
bool CudaBackend::peek(void* dst, const void* src, size_t bytes) {
    refuse_while_capturing("peek");
    if (bytes > kPeekBytes) {
        throw Error("cuda backend: peek of " + std::to_string(bytes) +
                    " bytes; at most kPeekBytes (" + std::to_string(kPeekBytes) + ") per call");
    }
    char* staging = static_cast<char*>(peek_staging_.get());

    // collect completions and find the newest completed copy of this source
    int newest = -1;
    for (int i = 0; i < kPeekSlots; ++i) {
        PeekSlot& slot = peek_slots_[i];
        if (slot.pending) {
            const cudaError_t status = cudaEventQuery(slot.done.get());
            if (status == cudaSuccess) {
                slot.pending = false;
                slot.completed = true;
            } else if (status == cudaErrorNotReady) {
                cudaGetLastError();  // "not ready" is an answer, not an error; leave none behind
            } else {
                KILN_CUDA_CHECK(status);
            }
        }
        if (slot.completed && slot.src == src && slot.bytes == bytes &&
            (newest < 0 || slot.sequence > peek_slots_[newest].sequence)) {
            newest = i;
        }
    }

    // start a new copy into the oldest free slot other than the newest completed one
    int target = -1;
    for (int i = 0; i < kPeekSlots; ++i) {
        const PeekSlot& slot = peek_slots_[i];
        if (slot.pending || i == newest)
            continue;
        if (target < 0 || slot.sequence < peek_slots_[target].sequence)
            target = i;
    }
    if (target >= 0 && bytes > 0) {
        PeekSlot& slot = peek_slots_[target];
        KILN_CUDA_CHECK(cudaMemcpyAsync(staging + static_cast<size_t>(target) * kPeekBytes, src,
                                        bytes, cudaMemcpyDeviceToHost, stream()));
        KILN_CUDA_CHECK(cudaEventRecord(slot.done.get(), stream()));
        slot.pending = true;
        slot.completed = false;
        slot.sequence = ++peek_sequence_;
        slot.src = src;
        slot.bytes = bytes;
    }

    if (newest < 0)
        return bytes == 0;
    std::memcpy(dst, staging + static_cast<size_t>(newest) * kPeekBytes, bytes);
    return true;
}

void CudaBackend::synchronize() {
    refuse_while_capturing("synchronize");
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

// ---- checkpoint staging
// --------------------------------------------------------------------------

cudaStream_t CudaBackend::copy_stream() {
    if (!copy_stream_) {
        cudaStream_t s = nullptr;
        KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        copy_stream_.reset(s);
    }
    return copy_stream_.get();
}

// A device shadow and pinned host memory of the same size. `stage` copies the regions into the
// shadow on the compute stream, so the ops queued after it may overwrite the originals at once
// (the compute stream pays a device-to-device copy, as for a snapshot), then from the shadow to
// the host on the copy stream, which waits for the shadow copy through an event; the PCIe
// transfer overlaps the next training steps. Before the shadow is refilled the compute stream
// waits, on the device and not on the host, for the previous transfer out of it.
//
// TODO(checkpoint): the shadow doubles the device memory of what is staged (parameters and
// optimizer state); a model near the device's capacity would want chunked transfers instead.
class CudaStagingBuffer final : public StagingBuffer {
  public:
    CudaStagingBuffer(CudaBackend& backend, size_t bytes)
        : StagingBuffer(bytes), backend_(backend) {
        host_ = make_pinned(std::max<size_t>(bytes, 1));
        shadow_ready_ = make_event();
        // The writer thread sleeps in its wait rather than spinning on a core training needs.
        cudaEvent_t event = nullptr;
        KILN_CUDA_CHECK(
            cudaEventCreateWithFlags(&event, cudaEventDisableTiming | cudaEventBlockingSync));
        host_ready_.reset(event);
        copy_stream_ = backend_.copy_stream();
        shadow_ = backend_.allocate(bytes);
    }

    ~CudaStagingBuffer() override {
        // The transfer out of the shadow must be over before the shadow and the host memory go.
        if (staged_)
            KILN_CUDA_WARN(cudaEventSynchronize(host_ready_.get()));
        backend_.deallocate(shadow_, bytes());
    }

    const void* host() const override { return host_.get(); }

    void stage(const std::vector<StagingRegion>& regions) override {
        for (const StagingRegion& r : regions) {
            if (r.offset > bytes() || r.bytes > bytes() - r.offset) {
                throw Error("cuda backend: staging " + std::to_string(r.bytes) + " bytes at " +
                            std::to_string(r.offset) + " overruns a buffer of " +
                            std::to_string(bytes()));
            }
        }
        const cudaStream_t compute = backend_.compute_stream();
        char* shadow = static_cast<char*>(shadow_);
        char* host = static_cast<char*>(host_.get());

        // the previous transfer out of the shadow, then the device-to-device copies
        if (staged_)
            KILN_CUDA_CHECK(cudaStreamWaitEvent(compute, host_ready_.get(), 0));
        for (const StagingRegion& r : regions) {
            if (r.bytes == 0)
                continue;
            KILN_CUDA_CHECK(cudaMemcpyAsync(shadow + r.offset, r.src, r.bytes,
                                            cudaMemcpyDeviceToDevice, compute));
        }
        KILN_CUDA_CHECK(cudaEventRecord(shadow_ready_.get(), compute));

        // the device-to-host transfers on the copy stream, after the shadow copies
        KILN_CUDA_CHECK(cudaStreamWaitEvent(copy_stream_, shadow_ready_.get(), 0));
        for (const StagingRegion& r : regions) {
            if (r.bytes == 0)
                continue;
            KILN_CUDA_CHECK(cudaMemcpyAsync(host + r.offset, shadow + r.offset, r.bytes,
                                            cudaMemcpyDeviceToHost, copy_stream_));
        }
        KILN_CUDA_CHECK(cudaEventRecord(host_ready_.get(), copy_stream_));
        staged_ = true;
    }

    // Runs on the checkpoint writer's thread, whose current device may not be set yet.
    void wait() override {
        if (!staged_)
            return;
        KILN_CUDA_CHECK(cudaSetDevice(backend_.device()));
        KILN_CUDA_CHECK(cudaEventSynchronize(host_ready_.get()));
    }

  private:
    CudaBackend& backend_;
    cudaStream_t copy_stream_ = nullptr;  // owned by the backend
    PinnedMemoryPtr host_;
    EventPtr shadow_ready_;  // on the compute stream: the shadow holds the staged bytes
    EventPtr host_ready_;    // on the copy stream: host_ holds them
    void* shadow_ = nullptr;
    bool staged_ = false;  // an event has been recorded (never wait on one that was not)
};

std::unique_ptr<StagingBuffer> CudaBackend::make_staging_buffer(size_t bytes) {
    refuse_while_capturing("make_staging_buffer");
    return std::make_unique<CudaStagingBuffer>(*this, bytes);
}

// ---- dense algebra -----------------------------------------------------------------------------

// cuBLAS is column-major. A row-major m×n matrix is the column-major n×m matrix of its transpose,
// so C = op(A)·op(B) in row-major is Cᵀ = op(B)ᵀ·op(A)ᵀ in column-major: call cuBLAS with the
// operands swapped, each keeping its own transpose flag, and (m, n) swapped. The leading
// dimensions are the row lengths as stored: A is m×k (k×m when transposed), B is k×n (n×k).
void CudaBackend::gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                       const View& a, const View& b, float beta, const View& c) {
    require_f32("gemm", "a", a);
    require_f32("gemm", "b", b);
    require_f32("gemm", "c", c);
    if (m < 0 || n < 0 || k < 0) {
        throw Error("cuda backend: gemm: negative size m=" + std::to_string(m) +
                    ", n=" + std::to_string(n) + ", k=" + std::to_string(k));
    }
    if (m == 0 || n == 0)
        return;
    const int64_t lda = std::max<int64_t>(1, trans_a ? m : k);
    const int64_t ldb = std::max<int64_t>(1, trans_b ? k : n);
    const int64_t ldc = n;
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (precision_ == Precision::kFp32) {
        set_cublas_math(CUBLAS_PEDANTIC_MATH);
        KILN_CUBLAS_CHECK(cublasSgemm_64(cublas_.get(), op_b, op_a, n, m, k, &alpha,
                                         b.as<const float>(), ldb, a.as<const float>(), lda, &beta,
                                         c.as<float>(), ldc));
        return;
    }
    // Default math for these, so that no pedantic handle setting can override the compute type.
    set_cublas_math(CUBLAS_DEFAULT_MATH);
    const cublasComputeType_t compute = precision_ == Precision::kTf32
                                            ? CUBLAS_COMPUTE_32F_FAST_TF32
                                            : CUBLAS_COMPUTE_32F_FAST_16BF;
    KILN_CUBLAS_CHECK(cublasGemmEx_64(cublas_.get(), op_b, op_a, n, m, k, &alpha,
                                      b.as<const float>(), CUDA_R_32F, ldb, a.as<const float>(),
                                      CUDA_R_32F, lda, &beta, c.as<float>(), CUDA_R_32F, ldc,
                                      compute, CUBLAS_GEMM_DEFAULT));
}

// ---- the Dense GEMMs through cuBLASLt ----------------------------------------------------------
//
// Row-major to column-major as in gemm: y(rows×cols) = x·w is, column-major, Y(cols×rows) =
// W(cols×k)·X(k×rows), so A = w (lda = cols), B = x (ldb = k), m = cols, n = rows: the bias runs
// along m, the output's columns, as CUBLASLT_EPILOGUE_BIAS wants. dw(k×cols) = xᵀ·dz is DW(cols×k)
// = DZ(cols×rows)·Xᵀ: A = dz untransposed (BGRADA reduces A over k, here the rows, and takes only
// an untransposed A), B = x transposed, m = cols, n = k, k = rows.
//
// The forward epilogue adds the bias only. cuBLASLt also offers RELU_BIAS, but its ReLU is
// max(x, 0), which maps NaN to 0 on the GPU, and kiln's ReLU passes NaN on so that a broken
// weight shows in the loss (TerminateOnNaN; the reliability suite's NaN test); the activation
// stays kiln's kernel, run in place after the GEMM, and a linear layer (the output layer whose
// softmax the loss takes) is the GEMM alone. GELU's epilogue is the tanh approximation, not
// Keras's exact GELU, so GELU keeps its own path too.

LtMatmul* CudaBackend::lt_matmul(cublasOperation_t op_b, int64_t m, int64_t n, int64_t k,
                                 int64_t lda, int64_t ldb, int64_t ldd,
                                 cublasLtEpilogue_t epilogue) {
    const cublasComputeType_t compute =
        precision_ == Precision::kTf32   ? CUBLAS_COMPUTE_32F_FAST_TF32
        : precision_ == Precision::kBf16 ? CUBLAS_COMPUTE_32F_FAST_16BF
                                         : CUBLAS_COMPUTE_32F_PEDANTIC;
    const LtKey key{m, n, k * (op_b == CUBLAS_OP_T ? -1 : 1), int(epilogue), int(compute)};
    auto found = lt_matmuls_.find(key);
    if (found == lt_matmuls_.end()) {
        refuse_while_capturing("a first cuBLASLt matmul of a shape");
        if (!lt_) {
            cublasLtHandle_t handle = nullptr;
            KILN_CUBLAS_CHECK(cublasLtCreate(&handle));
            lt_.reset(handle);
        }
        found = lt_matmuls_
                    .emplace(key, std::make_unique<LtMatmul>(lt_.get(), compute, CUBLAS_OP_N, op_b,
                                                             m, n, k, lda, ldb, ldd, epilogue,
                                                             kCublasWorkspaceBytes))
                    .first;
    }
    return found->second->usable() ? found->second.get() : nullptr;
}

void CudaBackend::dense_forward(const View& x, const View& w, const View& bias, const View& y,
                                int64_t rows, int64_t k, int64_t cols, ActivationSpec act) {
    require_f32("dense_forward", "x", x);
    require_f32("dense_forward", "w", w);
    require_f32_or_null("dense_forward", "bias", bias);
    require_f32("dense_forward", "y", y);
    if (rows <= 0 || cols <= 0 || k <= 0 || act.kind == Activation::kSoftmax) {
        Backend::dense_forward(x, w, bias, y, rows, k, cols, act);
        return;
    }
    const cublasLtEpilogue_t epilogue =
        bias.data != nullptr ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    LtMatmul* mm = lt_matmul(CUBLAS_OP_N, cols, rows, k, cols, k, cols, epilogue);
    if (mm == nullptr || !LtMatmul::aligned(x.data) || !LtMatmul::aligned(w.data) ||
        !LtMatmul::aligned(y.data) || !LtMatmul::aligned(bias.data)) {
        Backend::dense_forward(x, w, bias, y, rows, k, cols, act);
        return;
    }
    mm->run(lt_.get(), w.as<const float>(), x.as<const float>(), y.as<float>(), bias.data,
            cublas_workspace_.get(), kCublasWorkspaceBytes, stream());
    if (act.kind != Activation::kLinear) {
        kernels::bias_activation_forward(stream(), y.as<float>(), nullptr, y.as<float>(), rows,
                                         cols, act);
    }
    ++fused_gemms_;
}

void CudaBackend::dense_backward_weights(const View& x, const View& dz, const View& dw,
                                         const View& db, int64_t rows, int64_t k, int64_t cols) {
    require_f32("dense_backward_weights", "x", x);
    require_f32("dense_backward_weights", "dz", dz);
    require_f32("dense_backward_weights", "dw", dw);
    require_f32_or_null("dense_backward_weights", "db", db);
    LtMatmul* mm = nullptr;
    if (rows > 0 && cols > 0 && k > 0) {
        const cublasLtEpilogue_t epilogue =
            db.data != nullptr ? CUBLASLT_EPILOGUE_BGRADA : CUBLASLT_EPILOGUE_DEFAULT;
        mm = lt_matmul(CUBLAS_OP_T, cols, k, rows, cols, k, cols, epilogue);
    }
    if (mm == nullptr || !LtMatmul::aligned(x.data) || !LtMatmul::aligned(dz.data) ||
        !LtMatmul::aligned(dw.data) || !LtMatmul::aligned(db.data)) {
        Backend::dense_backward_weights(x, dz, dw, db, rows, k, cols);
        return;
    }
    mm->run(lt_.get(), dz.as<const float>(), x.as<const float>(), dw.as<float>(), db.data,
            cublas_workspace_.get(), kCublasWorkspaceBytes, stream());
    ++fused_gemms_;
}

void CudaBackend::set_cublas_math(cublasMath_t mode) {
    if (mode == cublas_math_)
        return;
    KILN_CUBLAS_CHECK(cublasSetMathMode(cublas_.get(), mode));
    cublas_math_ = mode;
}

// ---- element-wise and row-wise ops -------------------------------------------------------------

void CudaBackend::bias_activation_forward(const View& z, const View& bias, const View& y,
                                          int64_t rows, int64_t cols, ActivationSpec act) {
    require_f32("bias_activation_forward", "z", z);
    require_f32_or_null("bias_activation_forward", "bias", bias);
    require_f32("bias_activation_forward", "y", y);
    kernels::bias_activation_forward(stream(), z.as<float>(), bias.as<const float>(), y.as<float>(),
                                     rows, cols, act);
}

void CudaBackend::activation_backward(const View& z, const View& y, const View& dy, const View& dz,
                                      int64_t rows, int64_t cols, ActivationSpec act) {
    require_f32_or_null("activation_backward", "z", z);
    require_f32("activation_backward", "y", y);
    require_f32("activation_backward", "dy", dy);
    require_f32("activation_backward", "dz", dz);
    kernels::activation_backward(stream(), z.as<const float>(), y.as<const float>(),
                                 dy.as<const float>(), dz.as<float>(), rows, cols, act);
}

void CudaBackend::bias_grad(const View& dz, const View& db, int64_t rows, int64_t cols) {
    require_f32("bias_grad", "dz", dz);
    require_f32("bias_grad", "db", db);
    kernels::bias_grad(stream(), dz.as<const float>(), db.as<float>(), rows, cols);
}

void CudaBackend::loss(const LossSpec& spec, const View& pred, const View& y_true, const View& grad,
                       int64_t rows, int64_t cols, int64_t grad_rows, const View& acc, int slot) {
    require_f32("loss", "pred", pred);
    require_f32("loss", "y_true", y_true);
    require_f32_or_null("loss", "grad", grad);
    require_dtype("loss", "acc", acc, DType::kFloat64);
    if (slot < 0 || acc.data == nullptr) {
        throw Error(std::string("cuda backend: loss: needs accumulators and a slot >= 0, got ") +
                    (acc.data ? "accumulators" : "no accumulators") + " and slot " +
                    std::to_string(slot));
    }
    kernels::loss(stream(), spec, pred.as<const float>(), y_true.as<const float>(),
                  grad.as<float>(), rows, cols, grad_rows, acc.as<double>() + slot,
                  loss_scratch_.ptr, loss_scratch_.bytes);
}

void CudaBackend::dropout_forward(const View& x, const View& y, const View& mask, int64_t n,
                                  float rate, uint64_t seed, uint64_t counter) {
    dropout("dropout_forward", x, y, mask, n, rate, seed, counter, nullptr);
}

void CudaBackend::dropout(const char* op, const View& x, const View& y, const View& mask, int64_t n,
                          float rate, uint64_t seed, uint64_t counter, const StepScalars* scalars) {
    require_f32(op, "x", x);
    require_f32(op, "y", y);
    require_f32_or_null(op, "mask", mask);
    kernels::dropout_forward(stream(), x.as<const float>(), y.as<float>(), mask.as<float>(), n,
                             rate, seed, counter, scalars);
}

void CudaBackend::multiply(const View& a, const View& b, const View& out, int64_t n) {
    require_f32("multiply", "a", a);
    require_f32("multiply", "b", b);
    require_f32("multiply", "out", out);
    kernels::multiply(stream(), a.as<const float>(), b.as<const float>(), out.as<float>(), n);
}

// ---- optimizer ---------------------------------------------------------------------------------

void CudaBackend::optimizer_update(const OptimizerStep& step, const View& params, const View& grads,
                                   const View& state, int64_t n) {
    update("optimizer_update", step, params, grads, state, n, nullptr);
}

void CudaBackend::update(const char* op, const OptimizerStep& step, const View& params,
                         const View& grads, const View& state, int64_t n,
                         const StepScalars* scalars) {
    require_f32(op, "params", params);
    require_f32(op, "grads", grads);
    require_f32_or_null(op, "state", state);
    kernels::optimizer_update(stream(), step, params.as<float>(), grads.as<const float>(),
                              state.as<float>(), n, scalars);
}

// ---- data --------------------------------------------------------------------------------------

// The scratch is sized once per n (the training set's size does not change between epochs), so
// an epoch's permutation allocates nothing. Run one permutation of a size before capturing it
// in a CUDA graph.
void CudaBackend::permutation(const View& perm, int64_t n, uint64_t seed, uint64_t stream_id) {
    require_dtype("permutation", "perm", perm, DType::kInt32);
    if (n <= 0)
        return;
    if (n != permutation_n_) {
        permutation_bytes_ = kernels::permutation_scratch_bytes(n);
        permutation_n_ = n;
    }
    reserve(&permutation_scratch_, permutation_bytes_);
    kernels::permutation(stream(), perm.as<int32_t>(), n, seed, stream_id, permutation_scratch_.ptr,
                         permutation_scratch_.bytes);
}

void CudaBackend::gather_rows(const View& src, const View& index, int64_t offset, int64_t count,
                              int64_t cols, const View& dst) {
    gather("gather_rows", src, index, offset, count, cols, dst, nullptr, 0);
}

void CudaBackend::gather(const char* op, const View& src, const View& index, int64_t offset,
                         int64_t count, int64_t cols, const View& dst, const StepScalars* scalars,
                         int64_t batch_size) {
    require_dtype(op, "index", index, DType::kInt32);
    if (dst.dtype != src.dtype) {
        throw Error(std::string("cuda backend: ") + op + ": src has dtype " +
                    dtype_name(src.dtype) + " but dst has " + dtype_name(dst.dtype));
    }
    // The source's row count bounds the indices when its view has a shape.
    const int64_t src_rows = (src.shape.empty() || cols <= 0) ? INT64_MAX : src.elements() / cols;
    kernels::gather_rows(stream(), src.data, src_rows, index.as<const int32_t>(), offset, count,
                         cols, dtype_size(src.dtype), dst.data, scalars, batch_size);
}

// ---- step graphs -------------------------------------------------------------------------------

namespace {

struct GraphDeleter {
    void operator()(cudaGraph_t g) const noexcept { KILN_CUDA_WARN(cudaGraphDestroy(g)); }
};
struct GraphExecDeleter {
    void operator()(cudaGraphExec_t g) const noexcept { KILN_CUDA_WARN(cudaGraphExecDestroy(g)); }
};
using GraphPtr = std::unique_ptr<std::remove_pointer_t<cudaGraph_t>, GraphDeleter>;
using GraphExecPtr = std::unique_ptr<std::remove_pointer_t<cudaGraphExec_t>, GraphExecDeleter>;

// An instantiated CUDA graph, launched on the backend's stream.
class CudaStepGraph final : public StepGraph {
  public:
    CudaStepGraph(GraphExecPtr exec, cudaStream_t stream, int64_t nodes)
        : StepGraph(nodes), exec_(std::move(exec)), stream_(stream) {}
    // Launches still in flight finish before the executable graph goes.
    ~CudaStepGraph() override { KILN_CUDA_WARN(cudaStreamSynchronize(stream_)); }

  private:
    void launch() override { KILN_CUDA_CHECK(cudaGraphLaunch(exec_.get(), stream_)); }

    GraphExecPtr exec_;
    cudaStream_t stream_;
};

StepScalars* device_scalars(const char* op, const View& scalars) {
    if (scalars.data == nullptr || scalars.bytes() < sizeof(StepScalars)) {
        throw Error(std::string("cuda backend: ") + op +
                    ": scalars must hold one StepScalars in device memory");
    }
    return static_cast<StepScalars*>(scalars.data);
}

}  // namespace

// A stream capture in thread-local mode: only this thread's calls are checked against the
// capture, so the checkpoint writer's thread may wait on its own events meanwhile. Every op
// queued by `body` goes to stream(), and the kernels, cuBLAS calls (with the workspace set in
// the constructor) and cuDNN calls (plans and workspace made by an eager step of the same
// shapes first) are all capturable; what is not refuses (refuse_while_capturing) before it
// reaches the driver.
std::unique_ptr<StepGraph> CudaBackend::capture(const std::function<void()>& body) {
    if (capturing_)
        throw Error("cuda backend: capture: a capture is already recording");
    KILN_CUDA_CHECK(cudaStreamBeginCapture(stream(), cudaStreamCaptureModeThreadLocal));
    capturing_ = true;
    auto end_capture = [this]() -> GraphPtr {
        capturing_ = false;
        cudaGraph_t graph = nullptr;
        const cudaError_t status = cudaStreamEndCapture(stream(), &graph);
        GraphPtr owned(graph);
        for (void* ptr : freed_while_capturing_)
            deallocate(ptr, 0);
        const bool freed = !freed_while_capturing_.empty();
        freed_while_capturing_.clear();
        KILN_CUDA_CHECK(status);
        if (freed) {
            throw Error(
                "cuda backend: capture: memory was freed while recording, and a recorded "
                "op may use it");
        }
        return owned;
    };
    try {
        body();
    } catch (...) {
        try {
            end_capture();
        } catch (const std::exception& e) {
            std::fprintf(stderr, "kiln: warning: ending an abandoned capture: %s\n", e.what());
        }
        cudaGetLastError();  // an invalidated capture leaves its error behind; it is reported
        throw;
    }
    GraphPtr graph = end_capture();
    size_t nodes = 0;
    KILN_CUDA_CHECK(cudaGraphGetNodes(graph.get(), nullptr, &nodes));
    cudaGraphExec_t exec = nullptr;
    KILN_CUDA_CHECK(cudaGraphInstantiateWithFlags(&exec, graph.get(), 0));
    return std::make_unique<CudaStepGraph>(GraphExecPtr(exec), stream(),
                                           static_cast<int64_t>(nodes));
}

void CudaBackend::gather_batch(const View& src, const View& index, const View& scalars,
                               int64_t batch_size, int64_t count, int64_t cols, const View& dst) {
    gather("gather_batch", src, index, 0, count, cols, dst, device_scalars("gather_batch", scalars),
           batch_size);
}

void CudaBackend::dropout_forward_step(const View& x, const View& y, const View& mask, int64_t n,
                                       float rate, uint64_t seed, const View& scalars) {
    dropout("dropout_forward_step", x, y, mask, n, rate, seed, 0,
            device_scalars("dropout_forward_step", scalars));
}

void CudaBackend::optimizer_update_step(const OptimizerStep& hyper, const View& scalars,
                                        const View& params, const View& grads, const View& state,
                                        int64_t n) {
    update("optimizer_update_step", hyper, params, grads, state, n,
           device_scalars("optimizer_update_step", scalars));
}

void CudaBackend::advance_step(const OptimizerStep& hyper, const View& scalars) {
    kernels::advance_step(stream(), hyper, device_scalars("advance_step", scalars));
}

// ---- convolution, pooling, normalisation -------------------------------------------------------

cuda::CudnnOps& CudaBackend::cudnn() {
    if (!cudnn_)
        cudnn_ = std::make_unique<cuda::CudnnOps>(stream(), *this);
    cudnn_->set_precision(precision_);
    return *cudnn_;
}

// cuDNN's convolution, then kiln's bias + activation kernel in place.
// TODO(cudnn): fuse the bias and ReLU into the convolution (cuDNN's graph API, see
// cudnn_ops.cpp) and save a pass over y.
void CudaBackend::conv2d_forward(const Conv2DGeometry& g, const View& x, const View& kernel,
                                 const View& bias, ActivationSpec act, const View& y) {
    require_f32("conv2d_forward", "x", x);
    require_f32("conv2d_forward", "kernel", kernel);
    require_f32_or_null("conv2d_forward", "bias", bias);
    require_f32("conv2d_forward", "y", y);
    if (act.kind == Activation::kSoftmax) {
        throw Error(
            "cuda backend: conv2d_forward takes element-wise activations only (a "
            "softmax goes through bias_activation_forward)");
    }
    cudnn().conv2d_forward(g, x.as<const float>(), kernel.as<const float>(), y.as<float>());
    if (bias.data != nullptr || act.kind != Activation::kLinear) {
        kernels::bias_activation_forward(stream(), y.as<float>(), bias.as<const float>(),
                                         y.as<float>(), g.batch * g.out_h * g.out_w, g.out_c, act);
    }
}

void CudaBackend::conv2d_backward_data(const Conv2DGeometry& g, const View& dy, const View& kernel,
                                       const View& dx) {
    require_f32("conv2d_backward_data", "dy", dy);
    require_f32("conv2d_backward_data", "kernel", kernel);
    require_f32("conv2d_backward_data", "dx", dx);
    cudnn().conv2d_backward_data(g, dy.as<const float>(), kernel.as<const float>(), dx.as<float>());
}

void CudaBackend::conv2d_backward_filter(const Conv2DGeometry& g, const View& x, const View& dy,
                                         const View& dkernel) {
    require_f32("conv2d_backward_filter", "x", x);
    require_f32("conv2d_backward_filter", "dy", dy);
    require_f32("conv2d_backward_filter", "dkernel", dkernel);
    cudnn().conv2d_backward_filter(g, x.as<const float>(), dy.as<const float>(),
                                   dkernel.as<float>());
}

void CudaBackend::pool2d_forward(const Pool2DGeometry& g, const View& x, const View& y) {
    require_f32("pool2d_forward", "x", x);
    require_f32("pool2d_forward", "y", y);
    kernels::pool2d_forward(stream(), g, x.as<const float>(), y.as<float>());
}

void CudaBackend::pool2d_backward(const Pool2DGeometry& g, const View& x, const View& y,
                                  const View& dy, const View& dx) {
    (void)y;  // a max window's largest cell is found again in x
    require_f32("pool2d_backward", "x", x);
    require_f32("pool2d_backward", "dy", dy);
    require_f32("pool2d_backward", "dx", dx);
    kernels::pool2d_backward(stream(), g, x.as<const float>(), dy.as<const float>(),
                             dx.as<float>());
}

void CudaBackend::batch_norm_forward_training(const BatchNormGeometry& g, const View& x,
                                              const View& gamma, const View& beta, const View& y,
                                              const View& moving_mean, const View& moving_variance,
                                              const View& saved_mean, const View& saved_inv_std) {
    const char* op = "batch_norm_forward_training";
    for (const auto& [name, v] : {std::pair<const char*, const View*>{"x", &x},
                                  {"gamma", &gamma},
                                  {"beta", &beta},
                                  {"y", &y},
                                  {"moving_mean", &moving_mean},
                                  {"moving_variance", &moving_variance},
                                  {"saved_mean", &saved_mean},
                                  {"saved_inv_std", &saved_inv_std}}) {
        require_f32(op, name, *v);
    }
    cudnn().batch_norm_forward_training(g, x.as<const float>(), gamma.as<const float>(),
                                        beta.as<const float>(), y.as<float>(),
                                        moving_mean.as<float>(), moving_variance.as<float>(),
                                        saved_mean.as<float>(), saved_inv_std.as<float>());
}

void CudaBackend::batch_norm_forward_inference(const BatchNormGeometry& g, const View& x,
                                               const View& gamma, const View& beta,
                                               const View& moving_mean, const View& moving_variance,
                                               const View& y) {
    const char* op = "batch_norm_forward_inference";
    for (const auto& [name, v] : {std::pair<const char*, const View*>{"x", &x},
                                  {"gamma", &gamma},
                                  {"beta", &beta},
                                  {"moving_mean", &moving_mean},
                                  {"moving_variance", &moving_variance},
                                  {"y", &y}}) {
        require_f32(op, name, *v);
    }
    cudnn().batch_norm_forward_inference(g, x.as<const float>(), gamma.as<const float>(),
                                         beta.as<const float>(), moving_mean.as<const float>(),
                                         moving_variance.as<const float>(), y.as<float>());
}

void CudaBackend::batch_norm_backward(const BatchNormGeometry& g, const View& x, const View& dy,
                                      const View& gamma, const View& saved_mean,
                                      const View& saved_inv_std, const View& dx, const View& dgamma,
                                      const View& dbeta) {
    const char* op = "batch_norm_backward";
    for (const auto& [name, v] : {std::pair<const char*, const View*>{"x", &x},
                                  {"dy", &dy},
                                  {"gamma", &gamma},
                                  {"saved_mean", &saved_mean},
                                  {"saved_inv_std", &saved_inv_std},
                                  {"dx", &dx},
                                  {"dgamma", &dgamma},
                                  {"dbeta", &dbeta}}) {
        require_f32(op, name, *v);
    }
    cudnn().batch_norm_backward(g, x.as<const float>(), dy.as<const float>(),
                                gamma.as<const float>(), saved_mean.as<const float>(),
                                saved_inv_std.as<const float>(), dx.as<float>(), dgamma.as<float>(),
                                dbeta.as<float>());
}

}  // namespace

// ---- selection ---------------------------------------------------------------------------------

// Every failure before the backend exists is an answer ("no usable GPU, because ..."), not an
// exception: this path runs on every machine without a GPU, CI included, and must stay quiet.
std::unique_ptr<Backend> make_cuda_backend(std::string* why) {
    auto no_gpu = [why](const std::string& reason) -> std::unique_ptr<Backend> {
        if (why != nullptr)
            *why = "no usable CUDA GPU: " + reason;
        return nullptr;
    };

    // a device at all (no driver, an old driver, no device: all land here)
    int count = 0;
    cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
        cudaGetLastError();
        return no_gpu(cudaGetErrorString(status));
    }
    if (count == 0)
        return no_gpu("the CUDA driver reports no devices");

    // device 0 (CUDA_VISIBLE_DEVICES picks which GPU that is), and code this build can run on it
    const int device = 0;
    status = cudaSetDevice(device);
    if (status != cudaSuccess) {
        cudaGetLastError();
        return no_gpu(std::string("cudaSetDevice(0) failed: ") + cudaGetErrorString(status));
    }
    cudaDeviceProp prop;
    status = cudaGetDeviceProperties(&prop, device);
    if (status != cudaSuccess) {
        cudaGetLastError();
        return no_gpu(std::string("cudaGetDeviceProperties failed: ") + cudaGetErrorString(status));
    }
    status = kernels::kernel_image_status();
    if (status != cudaSuccess) {
        return no_gpu(std::string(prop.name) + " is sm_" + std::to_string(prop.major) +
                      std::to_string(prop.minor) + ", which this build has no code for (" +
                      cudaGetErrorString(status) +
                      "); rebuild with that architecture in KILN_CUDA_ARCHITECTURES");
    }
    int driver_version = 0;
    status = cudaDriverGetVersion(&driver_version);
    if (status != cudaSuccess) {
        cudaGetLastError();
        return no_gpu(std::string("cudaDriverGetVersion failed: ") + cudaGetErrorString(status));
    }

    // cuBLAS
    cublasHandle_t handle = nullptr;
    const cublasStatus_t cublas_status = cublasCreate(&handle);
    if (cublas_status != CUBLAS_STATUS_SUCCESS) {
        return no_gpu(std::string("cublasCreate failed: ") + cublasGetStatusString(cublas_status));
    }
    CublasPtr cublas(handle);

    // the backend itself; a failure here (out of memory, ...) is reported the same way
    try {
        return std::make_unique<CudaBackend>(device, prop, driver_version, std::move(cublas));
    } catch (const Error& e) {
        return no_gpu(std::string("setting up ") + prop.name + " failed: " + e.what());
    } catch (const std::bad_alloc&) {
        return no_gpu("out of host memory while setting up the CUDA backend");
    }
}

}  // namespace kiln
