// The compute backends. A Backend owns one device's memory and runs the ops of a training step
// on it, in order (one stream). `CpuBackend` (OpenBLAS and loops) is the reference and the
// fallback; `CudaBackend` (cuBLAS and kiln's kernels) is the product. Both call the same
// per-element math (kernels/math.h), so CI tests the math the GPU runs.
//
// Every op is asynchronous with respect to the host unless it says otherwise. The only blocking
// device-to-host transfer is `read`, and the backend counts every call, so tests can hold `fit`
// to its budget of one read per epoch.
//
// Matrices are row-major. Unless stated, an op writes its output (`=`), never accumulates.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kiln/conv_ops.h"
#include "kiln/ops.h"
#include "kiln/status.h"
#include "kiln/tensor.h"

namespace kiln {

enum class DeviceKind { kCpu, kCuda };

// One region of a staging copy: `bytes` of device memory at `src` to offset `offset` of the
// staging buffer.
struct StagingRegion {
    size_t offset = 0;
    const void* src = nullptr;
    size_t bytes = 0;
};

// Host memory a checkpoint is copied into off the device: pinned on CUDA, so the copy runs on a
// copy stream while training goes on; plain memory on the CPU, where the copy is a memcpy.
//
// The training thread calls `stage`; the checkpoint writer thread calls `wait` and then reads
// `host()`. The caller keeps the two apart: a buffer is not staged again until the thread
// reading it is done, and `host()` is not read before `wait` returns. Neither call is counted
// in Backend::reads(), and neither makes the training thread wait for the device.
class StagingBuffer {
  public:
    virtual ~StagingBuffer() = default;
    StagingBuffer(const StagingBuffer&) = delete;
    StagingBuffer& operator=(const StagingBuffer&) = delete;

    size_t bytes() const { return bytes_; }
    // Valid for bytes() bytes; holds the staged bytes once `wait` has returned.
    virtual const void* host() const = 0;

    // Queues copies of the regions, ordered after every op queued on the backend so far, and
    // returns at once. Ops queued afterwards may overwrite the device memory at once: on CUDA
    // the regions are first copied device-to-device on the compute stream (as a snapshot is),
    // and the device-to-host copy runs from there on the copy stream.
    virtual void stage(const std::vector<StagingRegion>& regions) = 0;
    // Blocks until every copy queued by the last `stage` has landed in host(). Any thread.
    virtual void wait() = 0;

  protected:
    explicit StagingBuffer(size_t bytes) : bytes_(bytes) {}

  private:
    size_t bytes_;
};

// A step recorded once by Backend::capture and replayed as recorded: the same ops on the same
// memory, their per-step values read from the StepScalars on the device (kiln/ops.h). It must
// not outlive the memory its ops use, nor the backend.
class StepGraph {
  public:
    virtual ~StepGraph() = default;
    StepGraph(const StepGraph&) = delete;
    StepGraph& operator=(const StepGraph&) = delete;

    // Queues the recorded ops, in order, after everything queued so far; returns at once.
    void replay() {
        launch();
        ++replays_;
    }
    // The recorded ops (CPU) or the graph's nodes (CUDA).
    int64_t nodes() const { return nodes_; }
    int64_t replays() const { return replays_; }

  protected:
    explicit StepGraph(int64_t nodes) : nodes_(nodes) {}
    virtual void launch() = 0;

  private:
    int64_t nodes_;
    int64_t replays_ = 0;
};

class Backend {
  public:
    virtual ~Backend() = default;

    virtual DeviceKind kind() const = 0;
    // What runs the ops, for the log line: "cpu (OpenBLAS 0.3.21, 2 threads)".
    virtual std::string description() const = 0;
    virtual bool supports(DType dtype) const = 0;

    // ---- memory --------------------------------------------------------------------------
    // Stream-ordered allocation; cheap on both backends, but the training loop allocates nothing.
    virtual void* allocate(size_t bytes) = 0;
    virtual void deallocate(void* ptr, size_t bytes) noexcept = 0;
    // Host to device, ordered before the following ops. The host buffer may be reused at once.
    virtual void upload(void* dst, const void* src, size_t bytes) = 0;
    // Device to host, blocking until the bytes are there. Counted in `reads()`.
    virtual void read(void* dst, const void* src, size_t bytes) = 0;
    // Device to device, stream-ordered (snapshots, restores).
    virtual void copy(void* dst, const void* src, size_t bytes) = 0;
    virtual void fill_zero(const View& x) = 0;
    // Non-blocking peek for progress displays: starts an asynchronous copy of `bytes` (at most
    // kPeekBytes) into a host staging area and returns the newest copy that has completed, or
    // false when none has yet. Never waits, never counted as a read.
    static constexpr size_t kPeekBytes = 256;
    virtual bool peek(void* dst, const void* src, size_t bytes) = 0;
    // Blocks until every queued op has finished (tests, benchmarks, shutdown).
    virtual void synchronize() = 0;

    // Blocking device-to-host reads since construction.
    uint64_t reads() const { return reads_; }

    // Host memory for checkpoints (see StagingBuffer below), reused from one checkpoint to the
    // next. It must not outlive the backend.
    virtual std::unique_ptr<StagingBuffer> make_staging_buffer(size_t bytes) = 0;

    // ---- precision ------------------------------------------------------------------------
    // The format the later gemm and conv2d_* calls take their operands in (kiln/ops.h: the
    // Dense GEMMs in `precision`, the convolutions in conv_precision(precision)); kFp32 until
    // set. Sequential::compile sets it from CompileOptions::precision. Other ops are float32
    // in every mode. Anything but kFp32 needs float32 operands.
    void set_precision(Precision precision) { precision_ = precision; }
    Precision precision() const { return precision_; }

    // ---- dense algebra --------------------------------------------------------------------
    // c(m×n) = alpha · op(a) · op(b) + beta · c, op(x) = x or xᵀ. a is stored m×k (or k×m when
    // transposed), b k×n (or n×k). Views give the pointers and dtype; their shapes are not used.
    // a and b are rounded to precision()'s format; the sum is float32 (float64 for float64).
    virtual void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                      const View& a, const View& b, float beta, const View& c) = 0;

    // ---- element-wise and row-wise ops ------------------------------------------------------
    // z(rows×cols) += bias (broadcast over rows, when bias.data is non-null); then
    // y = act(z), row-wise for softmax. y may alias z for any activation.
    virtual void bias_activation_forward(const View& z, const View& bias, const View& y,
                                         int64_t rows, int64_t cols, ActivationSpec act) = 0;
    // dz = dy ⊙ act'(z) (the Jacobian-vector product for softmax), from the saved input z and
    // output y. dz may alias dy.
    virtual void activation_backward(const View& z, const View& y, const View& dy, const View& dz,
                                     int64_t rows, int64_t cols, ActivationSpec act) = 0;
    // db(cols) = column sums of dz(rows×cols).
    virtual void bias_grad(const View& dz, const View& db, int64_t rows, int64_t cols) = 0;

    // ---- the Dense layer's GEMMs with their epilogues ---------------------------------------
    // y(rows×cols) = act(x(rows×k) · w(k×cols) + bias): gemm, then bias_activation_forward, by
    // default (the CPU). CUDA runs it as one cuBLASLt matmul whose epilogue adds the bias and
    // applies a relu (or nothing), where cuBLASLt has an algorithm for the shape; other
    // activations keep kiln's kernel after a bias epilogue. y is written, never aliased.
    virtual void dense_forward(const View& x, const View& w, const View& bias, const View& y,
                               int64_t rows, int64_t k, int64_t cols, ActivationSpec act);
    // dw(k×cols) = xᵀ(k×rows) · dz(rows×cols) and, when db.data is non-null, db(cols) = the
    // column sums of dz: gemm, then bias_grad, by default; on CUDA one cuBLASLt matmul with
    // the bias-gradient epilogue.
    virtual void dense_backward_weights(const View& x, const View& dz, const View& dw,
                                        const View& db, int64_t rows, int64_t k, int64_t cols);
    // The dense_* calls that were queued as one fused matmul, and those that fell back to
    // separate ops (the CPU's are all separate), since construction; a captured call counts
    // once, however often its graph is replayed.
    uint64_t fused_gemms() const { return fused_gemms_; }
    uint64_t unfused_gemms() const { return unfused_gemms_; }

    // The loss over `rows` samples: adds the loss sum, the metric sum and the sample count into
    // acc[slot + AccumulatorSlots::k*] (double), and, when grad.data is non-null, writes
    // grad = d(mean loss over `grad_rows`)/d(pred). y_true is (rows×1) class indices for the
    // sparse loss, otherwise (rows×cols) targets.
    virtual void loss(const LossSpec& spec, const View& pred, const View& y_true, const View& grad,
                      int64_t rows, int64_t cols, int64_t grad_rows, const View& acc, int slot) = 0;

    // Dropout with a counter-based RNG: keep = uniform(seed, counter, i) >= rate, y =
    // x·keep/(1-rate), mask = keep/(1-rate) for the backward pass. Training only.
    virtual void dropout_forward(const View& x, const View& y, const View& mask, int64_t n,
                                 float rate, uint64_t seed, uint64_t counter) = 0;
    // dx = dy ⊙ mask; dx may alias dy.
    virtual void multiply(const View& a, const View& b, const View& out, int64_t n) = 0;

    // ---- optimizer ------------------------------------------------------------------------
    // One update of every parameter in the flat buffer; state holds optimizer_state_slots(step)
    // consecutive arrays of n elements.
    virtual void optimizer_update(const OptimizerStep& step, const View& params, const View& grads,
                                  const View& state, int64_t n) = 0;

    // ---- data -----------------------------------------------------------------------------
    // perm(n, int32) = a permutation of 0..n-1 drawn from (seed, stream): the indices sorted by
    // a counter-based hash, ties by index, so both backends draw the same permutation.
    virtual void permutation(const View& perm, int64_t n, uint64_t seed, uint64_t stream) = 0;
    // dst(count×cols) = src rows index[offset .. offset+count). Both src and dst are on the device.
    virtual void gather_rows(const View& src, const View& index, int64_t offset, int64_t count,
                             int64_t cols, const View& dst) = 0;

    // ---- convolution, pooling, normalisation (NHWC; kiln/conv_ops.h) ----------------------
    // y(N, OH, OW, F) = act(x(N, H, W, C) ⋆ kernel(KH, KW, C, F) + bias(F)): Keras's Conv2D,
    // bias optional (null data). act is element-wise: a softmax (over the filters of each pixel)
    // is left to bias_activation_forward, as is any activation whose backward pass needs the
    // pre-activation (GELU).
    virtual void conv2d_forward(const Conv2DGeometry& g, const View& x, const View& kernel,
                                const View& bias, ActivationSpec act, const View& y) = 0;
    // dx(N, H, W, C) = dL/dx from dy(N, OH, OW, F) (=).
    virtual void conv2d_backward_data(const Conv2DGeometry& g, const View& dy, const View& kernel,
                                      const View& dx) = 0;
    // dkernel(KH, KW, C, F) = dL/dkernel from x and dy (=).
    virtual void conv2d_backward_filter(const Conv2DGeometry& g, const View& x, const View& dy,
                                        const View& dkernel) = 0;

    // y(N, OH, OW, C) = the max or the average of each window of x.
    virtual void pool2d_forward(const Pool2DGeometry& g, const View& x, const View& y) = 0;
    // dx = dL/dx (=) from x, y and dy. A max window sends its gradient to its first largest
    // cell (in row-major order); an average window shares it among its cells in the image.
    virtual void pool2d_backward(const Pool2DGeometry& g, const View& x, const View& y,
                                 const View& dy, const View& dx) = 0;

    // Training: y = gamma·(x - mean)·inv_std + beta with each channel's batch mean and biased
    // variance, inv_std = 1/sqrt(variance + epsilon); saves mean and inv_std (channels each) for
    // the backward pass and updates the moving statistics as Keras 3 does,
    // moving = moving·momentum + batch·(1 - momentum), with the same biased variance.
    virtual void batch_norm_forward_training(const BatchNormGeometry& g, const View& x,
                                             const View& gamma, const View& beta, const View& y,
                                             const View& moving_mean, const View& moving_variance,
                                             const View& saved_mean, const View& saved_inv_std) = 0;
    // Inference: the same with the moving statistics in place of the batch's.
    virtual void batch_norm_forward_inference(const BatchNormGeometry& g, const View& x,
                                              const View& gamma, const View& beta,
                                              const View& moving_mean, const View& moving_variance,
                                              const View& y) = 0;
    // dx, dgamma, dbeta (=) of the training forward pass, through the batch statistics.
    virtual void batch_norm_backward(const BatchNormGeometry& g, const View& x, const View& dy,
                                     const View& gamma, const View& saved_mean,
                                     const View& saved_inv_std, const View& dx, const View& dgamma,
                                     const View& dbeta) = 0;

    // ---- step graphs ------------------------------------------------------------------------
    // Records the ops `body` queues, without running them, and returns them as a graph whose
    // replay() runs them. On CUDA this is a stream capture instantiated as a CUDA graph; on the
    // CPU each op is kept as a closure over its arguments as they were when recorded, which is
    // what a CUDA graph keeps of a kernel launch: a value the host changes from step to step
    // must come from StepScalars, or the CPU's replay gets the stale one and the tests see it.
    // While recording, the calls that move data to or from the host, wait, or allocate
    // (allocate, upload, read, peek, synchronize, make_staging_buffer) throw kiln::Error and
    // a deallocate makes the capture fail: a graph keeps no host buffer and no memory it did not
    // find. If body throws, the capture is abandoned and the exception passes on.
    virtual std::unique_ptr<StepGraph> capture(const std::function<void()>& body) = 0;
    bool capturing() const { return capturing_; }

    // The ops of a step that read their per-step values from `scalars` (one StepScalars on the
    // device) when they run rather than from the host when they are queued:
    // dst(count×cols) = src rows index[s.batch·batch_size ..+count), as gather_rows.
    virtual void gather_batch(const View& src, const View& index, const View& scalars,
                              int64_t batch_size, int64_t count, int64_t cols, const View& dst) = 0;
    // dropout_forward with counter s.iteration.
    virtual void dropout_forward_step(const View& x, const View& y, const View& mask, int64_t n,
                                      float rate, uint64_t seed, const View& scalars) = 0;
    // optimizer_update with hyper's learning_rate and alpha replaced by s's.
    virtual void optimizer_update_step(const OptimizerStep& hyper, const View& scalars,
                                       const View& params, const View& grads, const View& state,
                                       int64_t n) = 0;
    // The step's last op: s.iteration and s.batch move on by one, s.alpha becomes the step size
    // of the next update (math::advance_step).
    virtual void advance_step(const OptimizerStep& hyper, const View& scalars) = 0;

  protected:
    // Throws kiln::Error naming `op` while a capture records.
    void refuse_while_capturing(const char* op) const;

    uint64_t reads_ = 0;
    uint64_t fused_gemms_ = 0;
    uint64_t unfused_gemms_ = 0;
    Precision precision_ = Precision::kFp32;
    bool capturing_ = false;
};

// The defaults are defined here, in the header, so that Backend has no key function: its
// vtable and type information come with every file that uses it (the fuzz builds link a part
// of kiln without src/backend.cpp).
inline void Backend::refuse_while_capturing(const char* op) const {
    if (capturing_) {
        throw Error(std::string(op) +
                    " while a step graph is being captured: a graph replays device work only "
                    "(no host transfers, waits or allocations)");
    }
}

inline void Backend::dense_forward(const View& x, const View& w, const View& bias, const View& y,
                                   int64_t rows, int64_t k, int64_t cols, ActivationSpec act) {
    gemm(false, false, rows, cols, k, 1.0f, x, w, 0.0f, y);
    bias_activation_forward(y, bias, y, rows, cols, act);
    ++unfused_gemms_;
}

inline void Backend::dense_backward_weights(const View& x, const View& dz, const View& dw,
                                            const View& db, int64_t rows, int64_t k, int64_t cols) {
    gemm(true, false, k, cols, rows, 1.0f, x, dz, 0.0f, dw);
    if (db.data != nullptr)
        bias_grad(dz, db, rows, cols);
    ++unfused_gemms_;
}

enum class DeviceChoice { kAuto, kCuda, kCpu };

struct BackendSelection {
    std::unique_ptr<Backend> backend;
    // One line for the log: which device was chosen and, for `auto` falling back, why.
    std::string message;
};

// `kAuto`: CUDA when a usable GPU is present, otherwise the CPU with the reason. `kCuda` throws
// kiln::Error with the reason when there is no usable GPU.
BackendSelection select_backend(DeviceChoice choice);

std::unique_ptr<Backend> make_cpu_backend();
// Null with `why` filled when kiln was built without CUDA or no usable GPU is present.
std::unique_ptr<Backend> make_cuda_backend(std::string* why);

}  // namespace kiln
