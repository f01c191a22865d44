// The CPU backend: OpenBLAS for the GEMMs, loops for everything else, OpenMP threads where a
// loop is long enough to pay for them. It is the reference every CUDA op is tested against and
// what runs where there is no GPU, in float32 and (for the gradient checks) float64.
//
// Reductions (bias gradients, loss sums) run in a fixed order so that the same inputs give the
// same bits on every run, whatever the thread count.
#include <xmmintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/blas.h"
#include "cpu/cpu_conv.h"
#include "cpu/parallel.h"
#include "kernels/math.h"
#include "kiln/backend.h"
#include "kiln/status.h"
#include "scope_exit.h"

namespace kiln {
namespace {

// Below this many elements an element-wise loop runs on one thread: waking the OpenMP team
// costs a few microseconds, more than a short loop itself.
constexpr int64_t kParallelThreshold = 1 << 15;
// A GEMM of fewer multiply-adds than this runs on one thread (about 10 µs of work).
constexpr int64_t kParallelFlops = 1 << 19;
// Chunks per thread of a parallel loop: more than one, so that on a busy machine a thread the
// OS has paused holds up only a small piece of the loop.
constexpr int kChunksPerThread = 4;

// Runs body(begin, end) over [0, n) on the backend's pool, in chunks of at least `grain`
// items whose boundaries are multiples of `align`; inline when n is small.
template <typename Body>
void parallel_range(int64_t n, int64_t grain, int64_t align, Body&& body) {
    cpu::ThreadPool& pool = cpu::ThreadPool::shared();
    const int64_t max_chunks = std::min<int64_t>(pool.threads() * kChunksPerThread, n / grain);
    if (pool.threads() < 2 || max_chunks < 2) {
        body(int64_t(0), n);
        return;
    }
    const int chunks = static_cast<int>(max_chunks);
    auto bound = [&](int c) { return c == chunks ? n : (n * c / chunks) / align * align; };
    pool.parallel_for(chunks, [&](int c) { body(bound(c), bound(c + 1)); });
}

// Element-wise loops: chunks of whole vectors, parallel above kParallelThreshold elements.
template <typename Body>
void parallel_elements(int64_t n, Body&& body) {
    parallel_range(n, kParallelThreshold / 2, 16, body);
}

// Row-wise loops: body(r) for every row, parallel above kParallelThreshold elements.
template <typename Body>
void parallel_rows(int64_t rows, int64_t cols, Body&& body) {
    const int64_t grain = std::max<int64_t>(1, kParallelThreshold / 2 / std::max<int64_t>(cols, 1));
    parallel_range(rows, grain, 1, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r)
            body(r);
    });
}

// Flushes denormal floats to zero for the life of the object, then restores the caller's
// floating-point mode. Without it, Adam's moments of weights whose gradient is always zero
// (the border pixels of Fashion-MNIST) decay through the denormal range, where each operation
// takes a microcode assist: the optimizer step ran 4 times slower. TensorFlow's CPU kernels run
// with the same mode, so Keras users see the same numbers.
class FlushDenormals {
  public:
    FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFtzDaz); }
    ~FlushDenormals() { _mm_setcsr(saved_); }
    FlushDenormals(const FlushDenormals&) = delete;
    FlushDenormals& operator=(const FlushDenormals&) = delete;

  private:
    static constexpr unsigned kFtzDaz = 0x8040;  // MXCSR flush-to-zero and denormals-are-zero
    unsigned saved_;
};

// Calls body(k) with the activation as a compile-time constant k (an integral_constant), so
// that a per-element loop over math::activation_forward or activation_derivative has no switch
// inside and vectorises: the runtime switch made the ReLU of a convolution's output (2.8M
// values per batch of the convnet preset) 5 times slower than the loop's memory traffic.
template <typename Body>
void with_activation(Activation kind, Body&& body) {
    using A = Activation;
    switch (kind) {
        case A::kLinear:
            return body(std::integral_constant<A, A::kLinear>{});
        case A::kRelu:
            return body(std::integral_constant<A, A::kRelu>{});
        case A::kSigmoid:
            return body(std::integral_constant<A, A::kSigmoid>{});
        case A::kTanh:
            return body(std::integral_constant<A, A::kTanh>{});
        case A::kSoftmax:
            return body(std::integral_constant<A, A::kSoftmax>{});
        case A::kGelu:
            return body(std::integral_constant<A, A::kGelu>{});
        case A::kElu:
            return body(std::integral_constant<A, A::kElu>{});
        case A::kLeakyRelu:
            return body(std::integral_constant<A, A::kLeakyRelu>{});
    }
}

void require_float(const View& v, const char* op) {
    if (v.dtype != DType::kFloat32 && v.dtype != DType::kFloat64) {
        throw Error(std::string("cpu backend: ") + op + " does not support dtype " +
                    dtype_name(v.dtype));
    }
}

// Calls fn<float> or fn<double> for the dtype of `v`.
template <typename Fn>
void dispatch(const View& v, const char* op, Fn&& fn) {
    require_float(v, op);
    if (v.dtype == DType::kFloat32) {
        fn(float{});
    } else {
        fn(double{});
    }
}

template <typename T>
void softmax_row(const T* z, T* y, int64_t cols) {
    T max_z = z[0];
    for (int64_t c = 1; c < cols; ++c)
        max_z = std::max(max_z, z[c]);
    T sum = 0;
    for (int64_t c = 0; c < cols; ++c) {
        y[c] = math::exp(z[c] - max_z);
        sum += y[c];
    }
    const T inv = T(1) / sum;
    for (int64_t c = 0; c < cols; ++c)
        y[c] *= inv;
}

// First index of the largest value, as argmax does in Keras.
template <typename T>
int64_t argmax(const T* x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; ++i) {
        if (x[i] > x[best])
            best = i;
    }
    return best;
}

// The loss, metric and gradient of one sample (one row). Returns the loss; writes the metric
// into *metric and, when g is non-null, d(loss)/d(pred) scaled by `scale` into g.
template <typename T>
T loss_row(const LossSpec& spec, const T* pred, const T* target, T* g, int64_t cols, T scale,
           T* metric) {
    const bool categorical = spec.kind == LossKind::kSparseCategoricalCrossentropy ||
                             spec.kind == LossKind::kCategoricalCrossentropy;
    T loss = 0;
    if (categorical) {
        const bool sparse = spec.kind == LossKind::kSparseCategoricalCrossentropy;
        const int64_t label = sparse ? static_cast<int64_t>(target[0]) : -1;
        // y_true as a vector: one-hot of the label for the sparse loss.
        auto y_at = [&](int64_t c) -> T { return sparse ? (c == label ? T(1) : T(0)) : target[c]; };
        if (spec.fused_output || spec.from_logits) {
            // pred holds logits z: p = softmax(z), computed stably.
            T max_z = pred[0];
            for (int64_t c = 1; c < cols; ++c)
                max_z = std::max(max_z, pred[c]);
            T sum = 0;
            for (int64_t c = 0; c < cols; ++c)
                sum += math::exp(pred[c] - max_z);
            const T log_sum = math::log(sum) + max_z;
            T y_sum = 0;
            for (int64_t c = 0; c < cols; ++c) {
                const T y = y_at(c);
                if (y == T(0))
                    continue;
                y_sum += y;
                // From logits the loss is the exact log-softmax; a fused softmax output keeps
                // the value Keras reports for probabilities, -log(clip(p)).
                loss += spec.from_logits ? y * (log_sum - pred[c])
                                         : y * math::neg_log_clipped(math::exp(pred[c] - log_sum));
            }
            if (g) {
                for (int64_t c = 0; c < cols; ++c) {
                    g[c] = (math::exp(pred[c] - log_sum) * y_sum - y_at(c)) * scale;
                }
            }
        } else {
            // Probabilities: Keras normalises them to sum 1, clips, and takes the log.
            T sum = 0;
            for (int64_t c = 0; c < cols; ++c)
                sum += pred[c];
            const T lo = T(math::kEpsilon), hi = T(1) - T(math::kEpsilon);
            T unclipped_y_sum = 0;  // sum of y over the classes whose clip is inactive
            for (int64_t c = 0; c < cols; ++c) {
                const T y = y_at(c);
                if (y == T(0))
                    continue;
                const T q = pred[c] / sum;
                loss += y * math::neg_log_clipped(q);
                if (q > lo && q < hi)
                    unclipped_y_sum += y;
            }
            if (g) {
                for (int64_t c = 0; c < cols; ++c) {
                    const T y = y_at(c);
                    const T q = pred[c] / sum;
                    const T direct = (y != T(0) && q > lo && q < hi) ? -y / pred[c] : T(0);
                    g[c] = (direct + unclipped_y_sum / sum) * scale;
                }
            }
        }
        const int64_t predicted = argmax(pred, cols);
        const int64_t truth = sparse ? label : argmax(target, cols);
        *metric = (spec.metric != MetricKind::kNone && predicted == truth) ? T(1) : T(0);
        return loss;
    }

    // Element-wise losses, averaged over the row (Keras's reduction over the last axis).
    const T inv_cols = T(1) / T(cols);
    T correct = 0;
    // A fused sigmoid leaves logits in pred: the 0.5 threshold on p is 0 on z.
    const T threshold = spec.fused_output ? T(0) : T(0.5);
    for (int64_t c = 0; c < cols; ++c) {
        const T p = pred[c], y = target[c];
        T d = 0;
        switch (spec.kind) {
            case LossKind::kBinaryCrossentropy: {
                const bool logits = spec.from_logits || spec.fused_output;
                // The value of a fused sigmoid is Keras's clipped one, on p = sigmoid(z).
                loss += spec.fused_output
                            ? math::binary_crossentropy(T(1) / (T(1) + math::exp(-p)), y, false)
                            : math::binary_crossentropy(p, y, logits);
                d = math::binary_crossentropy_grad(p, y, logits);
                break;
            }
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
        if (g)
            g[c] = d * inv_cols * scale;
        if (spec.metric == MetricKind::kBinaryAccuracy) {
            correct += (p > threshold ? T(1) : T(0)) == y ? T(1) : T(0);
        }
    }
    *metric = correct * inv_cols;
    return loss * inv_cols;
}

// One optimizer step over the flat buffer. Each kind gets its own loop with its scalars in
// locals, so the loop has no branch on the kind and vectorises; threads split the buffer.
template <typename T>
void update_all(const OptimizerStep& o, T* __restrict p, const T* __restrict g, T* __restrict s,
                int64_t n) {
    switch (o.kind) {
        case OptimizerKind::kSGD: {
            const T lr = T(o.learning_rate), momentum = T(o.momentum);
            const bool nesterov = o.nesterov;
            T* __restrict m = s;
            parallel_elements(n, [&](int64_t begin, int64_t end) {
                if (momentum == T(0)) {
#pragma omp simd
                    for (int64_t i = begin; i < end; ++i)
                        p[i] -= lr * g[i];
                } else {
#pragma omp simd
                    for (int64_t i = begin; i < end; ++i) {
                        math::sgd_update(lr, momentum, nesterov, p + i, g[i], m + i);
                    }
                }
            });
            return;
        }
        case OptimizerKind::kAdam:
        case OptimizerKind::kAdamW: {
            const T b1 = T(o.beta_1), b2 = T(o.beta_2), eps = T(o.epsilon), alpha = T(o.alpha);
            const T decay = math::adamw_decay<T>(o);
            T* __restrict m = s;
            T* __restrict v = s + n;
            parallel_elements(n, [&](int64_t begin, int64_t end) {
#pragma omp simd
                for (int64_t i = begin; i < end; ++i) {
                    math::adam_update(b1, b2, eps, alpha, decay, p + i, g[i], m + i, v + i);
                }
            });
            return;
        }
        case OptimizerKind::kRMSprop: {
            const T lr = T(o.learning_rate), rho = T(o.rho), momentum = T(o.momentum);
            const T eps = T(o.epsilon);
            const bool centered = o.centered;
            T* __restrict vel = s;
            T* __restrict mom = s + n;
            T* __restrict avg = s + 2 * n;
            parallel_elements(n, [&](int64_t begin, int64_t end) {
#pragma omp simd
                for (int64_t i = begin; i < end; ++i) {
                    math::rmsprop_update(lr, rho, momentum, eps, centered, p + i, g[i], vel + i,
                                         mom + i, avg + i);
                }
            });
            return;
        }
    }
}

// Checkpoint staging on the CPU: the "device" memory is host memory and every op has finished
// when it returns, so staging is a memcpy and there is nothing to wait for.
class CpuStagingBuffer final : public StagingBuffer {
  public:
    explicit CpuStagingBuffer(size_t bytes) : StagingBuffer(bytes), memory_(bytes) {}

    const void* host() const override { return memory_.data(); }
    void stage(const std::vector<StagingRegion>& regions) override {
        for (const StagingRegion& r : regions) {
            if (r.offset > bytes() || r.bytes > bytes() - r.offset) {
                throw Error("cpu backend: staging " + std::to_string(r.bytes) + " bytes at " +
                            std::to_string(r.offset) + " overruns a buffer of " +
                            std::to_string(bytes()));
            }
            std::memcpy(memory_.data() + r.offset, r.src, r.bytes);
        }
    }
    void wait() override {}

  private:
    std::vector<char> memory_;
};

class CpuBackend final : public Backend {
  public:
    CpuBackend() : blas_(blas::library()) {
        // One pool of threads: OpenBLAS runs single-threaded inside kiln's pool (cpu/parallel.h),
        // which split the large GEMMs themselves. Two pools spinning on the same cores (OpenBLAS's
        // and OpenMP's) made an epoch several times slower on 2 cores.
        blas_.set_num_threads(1);
    }

    DeviceKind kind() const override { return DeviceKind::kCpu; }

    std::string description() const override {
        std::string config = blas_.get_config();
        return "cpu (" + config.substr(0, config.find(' ', config.find(' ') + 1)) + " " +
               blas_.get_corename() + ", " + std::to_string(blas_.get_num_threads()) +
               " BLAS threads, " + std::to_string(cpu::ThreadPool::shared().threads()) +
               " threads)";
    }

    bool supports(DType dtype) const override {
        return dtype == DType::kFloat32 || dtype == DType::kFloat64;
    }

    // ---- memory --------------------------------------------------------------------------
    void* allocate(size_t bytes) override {
        refuse_while_capturing("allocate");
        // 64-byte alignment: cache lines and the widest vector loads.
        void* ptr = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!ptr)
            throw Error("cpu backend: out of memory allocating " + std::to_string(bytes) +
                        " bytes");
        return ptr;
    }
    void deallocate(void* ptr, size_t) noexcept override {
        // Freed memory a recorded op may still use: the capture fails when its body returns.
        if (capturing_)
            freed_while_capturing_ = true;
        std::free(ptr);
    }
    void upload(void* dst, const void* src, size_t bytes) override {
        refuse_while_capturing("upload");
        std::memcpy(dst, src, bytes);
    }
    void read(void* dst, const void* src, size_t bytes) override {
        refuse_while_capturing("read");
        ++reads_;
        std::memcpy(dst, src, bytes);
    }
    void copy(void* dst, const void* src, size_t bytes) override {
        if (recording_ != nullptr)
            return record([=] { copy(dst, src, bytes); });
        std::memcpy(dst, src, bytes);
    }
    void fill_zero(const View& x) override {
        if (recording_ != nullptr)
            return record([=] { fill_zero(x); });
        std::memset(x.data, 0, x.bytes());
    }
    bool peek(void* dst, const void* src, size_t bytes) override {
        refuse_while_capturing("peek");
        if (bytes > kPeekBytes)
            throw Error("peek: at most kPeekBytes per call");
        std::memcpy(dst, src, bytes);
        return true;
    }
    void synchronize() override { refuse_while_capturing("synchronize"); }
    std::unique_ptr<StagingBuffer> make_staging_buffer(size_t bytes) override {
        refuse_while_capturing("make_staging_buffer");
        return std::make_unique<CpuStagingBuffer>(bytes);
    }

    // ---- dense algebra --------------------------------------------------------------------
    void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
              const View& a, const View& b, float beta, const View& c) override {
        if (recording_ != nullptr)
            return record([=] { gemm(trans_a, trans_b, m, n, k, alpha, a, b, beta, c); });
        if (m == 0 || n == 0)
            return;
        FlushDenormals ftz;
        dispatch(c, "gemm", [&](auto t) {
            using T = decltype(t);
            const T* ap = operand(a.as<T>(), m * k, precision_, &gemm_a_, "gemm");
            const T* bp = operand(b.as<T>(), k * n, precision_, &gemm_b_, "gemm");
            gemm_parallel<T>(trans_a, trans_b, m, n, k, alpha, ap, bp, beta, c.as<T>());
        });
    }

    // ---- element-wise and row-wise ops ------------------------------------------------------
    void bias_activation_forward(const View& z, const View& bias, const View& y, int64_t rows,
                                 int64_t cols, ActivationSpec act) override {
        if (recording_ != nullptr)
            return record([=] { bias_activation_forward(z, bias, y, rows, cols, act); });
        FlushDenormals ftz;
        dispatch(z, "bias_activation_forward", [&](auto t) {
            using T = decltype(t);
            T* zp = z.as<T>();
            T* yp = y.as<T>();
            const T* bp = bias.as<T>();
            const T alpha = T(act.alpha);
            parallel_rows(rows, cols, [&](int64_t r) {
                T* zr = zp + r * cols;
                T* yr = yp + r * cols;
                if (bp) {
                    for (int64_t c = 0; c < cols; ++c)
                        zr[c] += bp[c];
                }
                if (act.kind == Activation::kSoftmax) {
                    softmax_row(zr, yr, cols);
                } else if (act.kind != Activation::kLinear || yr != zr) {
                    with_activation(act.kind, [&](auto kind) {
                        for (int64_t c = 0; c < cols; ++c) {
                            yr[c] = math::activation_forward(decltype(kind)::value, alpha, zr[c]);
                        }
                    });
                }
            });
        });
    }

    void activation_backward(const View& z, const View& y, const View& dy, const View& dz,
                             int64_t rows, int64_t cols, ActivationSpec act) override {
        if (recording_ != nullptr)
            return record([=] { activation_backward(z, y, dy, dz, rows, cols, act); });
        FlushDenormals ftz;
        dispatch(dy, "activation_backward", [&](auto t) {
            using T = decltype(t);
            const T* zp = z.as<T>();
            const T* yp = y.as<T>();
            const T* dyp = dy.as<T>();
            T* dzp = dz.as<T>();
            const T alpha = T(act.alpha);
            parallel_rows(rows, cols, [&](int64_t r) {
                const int64_t o = r * cols;
                if (act.kind == Activation::kSoftmax) {
                    T dot = 0;
                    for (int64_t c = 0; c < cols; ++c)
                        dot += dyp[o + c] * yp[o + c];
                    for (int64_t c = 0; c < cols; ++c)
                        dzp[o + c] = yp[o + c] * (dyp[o + c] - dot);
                } else {
                    with_activation(act.kind, [&](auto kind) {
                        for (int64_t c = 0; c < cols; ++c) {
                            dzp[o + c] = dyp[o + c] *
                                         math::activation_derivative(decltype(kind)::value, alpha,
                                                                     zp[o + c], yp[o + c]);
                        }
                    });
                }
            });
        });
    }

    void bias_grad(const View& dz, const View& db, int64_t rows, int64_t cols) override {
        if (recording_ != nullptr)
            return record([=] { bias_grad(dz, db, rows, cols); });
        FlushDenormals ftz;
        dispatch(dz, "bias_grad", [&](auto t) {
            using T = decltype(t);
            const T* dzp = dz.as<T>();
            T* dbp = db.as<T>();
            std::fill(dbp, dbp + cols, T(0));
            for (int64_t r = 0; r < rows; ++r) {
                const T* row = dzp + r * cols;
                for (int64_t c = 0; c < cols; ++c)
                    dbp[c] += row[c];
            }
        });
    }

    void loss(const LossSpec& spec, const View& pred, const View& y_true, const View& grad,
              int64_t rows, int64_t cols, int64_t grad_rows, const View& acc, int slot) override {
        if (recording_ != nullptr)
            return record(
                [=] { loss(spec, pred, y_true, grad, rows, cols, grad_rows, acc, slot); });
        FlushDenormals ftz;
        dispatch(pred, "loss", [&](auto t) {
            using T = decltype(t);
            const T* pp = pred.as<T>();
            const T* yp = y_true.as<T>();
            T* gp = grad.as<T>();
            const int64_t y_cols = spec.kind == LossKind::kSparseCategoricalCrossentropy ? 1 : cols;
            const T scale = T(1) / T(grad_rows);
            double loss_sum = 0, metric_sum = 0;
            for (int64_t r = 0; r < rows; ++r) {
                T metric = 0;
                loss_sum += static_cast<double>(loss_row<T>(spec, pp + r * cols, yp + r * y_cols,
                                                            gp ? gp + r * cols : nullptr, cols,
                                                            scale, &metric));
                metric_sum += static_cast<double>(metric);
            }
            double* a = acc.as<double>() + slot;
            a[AccumulatorSlots::kLossSum] += loss_sum;
            a[AccumulatorSlots::kMetricSum] += metric_sum;
            a[AccumulatorSlots::kCount] += static_cast<double>(rows);
        });
    }

    void dropout_forward(const View& x, const View& y, const View& mask, int64_t n, float rate,
                         uint64_t seed, uint64_t counter) override {
        if (recording_ != nullptr)
            return record([=] { dropout_forward(x, y, mask, n, rate, seed, counter); });
        FlushDenormals ftz;
        dispatch(x, "dropout_forward", [&](auto t) {
            using T = decltype(t);
            const T* xp = x.as<T>();
            T* yp = y.as<T>();
            T* mp = mask.as<T>();
            const T keep_scale = T(1) / (T(1) - T(rate));
            parallel_elements(n, [&](int64_t begin, int64_t end) {
                for (int64_t i = begin; i < end; ++i) {
                    const float u = math::uniform01(math::hash3(seed, counter, uint64_t(i)));
                    mp[i] = u >= rate ? keep_scale : T(0);
                    yp[i] = xp[i] * mp[i];
                }
            });
        });
    }

    void multiply(const View& a, const View& b, const View& out, int64_t n) override {
        if (recording_ != nullptr)
            return record([=] { multiply(a, b, out, n); });
        FlushDenormals ftz;
        dispatch(a, "multiply", [&](auto t) {
            using T = decltype(t);
            const T* ap = a.as<T>();
            const T* bp = b.as<T>();
            T* op = out.as<T>();
            parallel_elements(n, [&](int64_t begin, int64_t end) {
                for (int64_t i = begin; i < end; ++i)
                    op[i] = ap[i] * bp[i];
            });
        });
    }

    // ---- optimizer ------------------------------------------------------------------------
    void optimizer_update(const OptimizerStep& step, const View& params, const View& grads,
                          const View& state, int64_t n) override {
        if (recording_ != nullptr)
            return record([=] { optimizer_update(step, params, grads, state, n); });
        FlushDenormals ftz;
        dispatch(params, "optimizer_update", [&](auto t) {
            using T = decltype(t);
            update_all<T>(step, params.as<T>(), grads.as<T>(), state.as<T>(), n);
        });
    }

    // ---- data -----------------------------------------------------------------------------
    void permutation(const View& perm, int64_t n, uint64_t seed, uint64_t stream) override {
        if (recording_ != nullptr)
            return record([=] { permutation(perm, n, seed, stream); });
        if (perm.dtype != DType::kInt32)
            throw Error("permutation: perm must be int32");
        std::vector<std::pair<uint64_t, int32_t>> keyed(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) {
            keyed[i] = {math::hash3(seed, stream, uint64_t(i)), static_cast<int32_t>(i)};
        }
        std::sort(keyed.begin(), keyed.end());  // by key, then by index
        int32_t* out = perm.as<int32_t>();
        for (int64_t i = 0; i < n; ++i)
            out[i] = keyed[i].second;
    }

    void gather_rows(const View& src, const View& index, int64_t offset, int64_t count,
                     int64_t cols, const View& dst) override {
        if (recording_ != nullptr)
            return record([=] { gather_rows(src, index, offset, count, cols, dst); });
        const size_t row_bytes = static_cast<size_t>(cols) * dtype_size(src.dtype);
        const int32_t* idx = index.as<int32_t>() + offset;
        const char* s = static_cast<const char*>(src.data);
        char* d = static_cast<char*>(dst.data);
        for (int64_t r = 0; r < count; ++r) {
            std::memcpy(d + r * row_bytes, s + static_cast<size_t>(idx[r]) * row_bytes, row_bytes);
        }
    }

    // ---- convolution, pooling, normalisation (cpu_conv.cpp) ------------------------------
    void conv2d_forward(const Conv2DGeometry& g, const View& x, const View& kernel,
                        const View& bias, ActivationSpec act, const View& y) override {
        if (recording_ != nullptr)
            return record([=] { conv2d_forward(g, x, kernel, bias, act, y); });
        FlushDenormals ftz;
        dispatch(y, "conv2d_forward", [&](auto t) {
            using T = decltype(t);
            const Precision p = conv_precision(precision_);
            const T* xp = operand(x.as<T>(), g.x_elements(), p, &gemm_a_, "conv2d_forward");
            const T* kp =
                operand(kernel.as<T>(), g.kernel_elements(), p, &gemm_b_, "conv2d_forward");
            cpu::conv2d_forward<T>(blas_, image_scratch_, g, xp, kp, bias.as<T>(), act, y.as<T>());
        });
    }
    void conv2d_backward_data(const Conv2DGeometry& g, const View& dy, const View& kernel,
                              const View& dx) override {
        if (recording_ != nullptr)
            return record([=] { conv2d_backward_data(g, dy, kernel, dx); });
        FlushDenormals ftz;
        dispatch(dx, "conv2d_backward_data", [&](auto t) {
            using T = decltype(t);
            const Precision p = conv_precision(precision_);
            const T* dyp = operand(dy.as<T>(), g.y_elements(), p, &gemm_a_, "conv2d_backward_data");
            const T* kp =
                operand(kernel.as<T>(), g.kernel_elements(), p, &gemm_b_, "conv2d_backward_data");
            cpu::conv2d_backward_data<T>(blas_, image_scratch_, g, dyp, kp, dx.as<T>());
        });
    }
    void conv2d_backward_filter(const Conv2DGeometry& g, const View& x, const View& dy,
                                const View& dkernel) override {
        if (recording_ != nullptr)
            return record([=] { conv2d_backward_filter(g, x, dy, dkernel); });
        FlushDenormals ftz;
        dispatch(dkernel, "conv2d_backward_filter", [&](auto t) {
            using T = decltype(t);
            const Precision p = conv_precision(precision_);
            const T* xp = operand(x.as<T>(), g.x_elements(), p, &gemm_a_, "conv2d_backward_filter");
            const T* dyp =
                operand(dy.as<T>(), g.y_elements(), p, &gemm_b_, "conv2d_backward_filter");
            cpu::conv2d_backward_filter<T>(blas_, image_scratch_, g, xp, dyp, dkernel.as<T>());
        });
    }
    void pool2d_forward(const Pool2DGeometry& g, const View& x, const View& y) override {
        if (recording_ != nullptr)
            return record([=] { pool2d_forward(g, x, y); });
        FlushDenormals ftz;
        dispatch(y, "pool2d_forward", [&](auto t) {
            using T = decltype(t);
            cpu::pool2d_forward<T>(g, x.as<T>(), y.as<T>());
        });
    }
    void pool2d_backward(const Pool2DGeometry& g, const View& x, const View& y, const View& dy,
                         const View& dx) override {
        if (recording_ != nullptr)
            return record([=] { pool2d_backward(g, x, y, dy, dx); });
        (void)y;  // the CPU finds each window's largest cell in x again
        FlushDenormals ftz;
        dispatch(dx, "pool2d_backward", [&](auto t) {
            using T = decltype(t);
            cpu::pool2d_backward<T>(image_scratch_, g, x.as<T>(), dy.as<T>(), dx.as<T>());
        });
    }
    void batch_norm_forward_training(const BatchNormGeometry& g, const View& x, const View& gamma,
                                     const View& beta, const View& y, const View& moving_mean,
                                     const View& moving_variance, const View& saved_mean,
                                     const View& saved_inv_std) override {
        if (recording_ != nullptr)
            return record([=] {
                batch_norm_forward_training(g, x, gamma, beta, y, moving_mean, moving_variance,
                                            saved_mean, saved_inv_std);
            });
        FlushDenormals ftz;
        dispatch(y, "batch_norm_forward_training", [&](auto t) {
            using T = decltype(t);
            cpu::batch_norm_forward_training<T>(image_scratch_, g, x.as<T>(), gamma.as<T>(),
                                                beta.as<T>(), y.as<T>(), moving_mean.as<T>(),
                                                moving_variance.as<T>(), saved_mean.as<T>(),
                                                saved_inv_std.as<T>());
        });
    }
    void batch_norm_forward_inference(const BatchNormGeometry& g, const View& x, const View& gamma,
                                      const View& beta, const View& moving_mean,
                                      const View& moving_variance, const View& y) override {
        if (recording_ != nullptr)
            return record([=] {
                batch_norm_forward_inference(g, x, gamma, beta, moving_mean, moving_variance, y);
            });
        FlushDenormals ftz;
        dispatch(y, "batch_norm_forward_inference", [&](auto t) {
            using T = decltype(t);
            cpu::batch_norm_forward_inference<T>(g, x.as<T>(), gamma.as<T>(), beta.as<T>(),
                                                 moving_mean.as<T>(), moving_variance.as<T>(),
                                                 y.as<T>());
        });
    }
    void batch_norm_backward(const BatchNormGeometry& g, const View& x, const View& dy,
                             const View& gamma, const View& saved_mean, const View& saved_inv_std,
                             const View& dx, const View& dgamma, const View& dbeta) override {
        if (recording_ != nullptr)
            return record([=] {
                batch_norm_backward(g, x, dy, gamma, saved_mean, saved_inv_std, dx, dgamma, dbeta);
            });
        FlushDenormals ftz;
        dispatch(dx, "batch_norm_backward", [&](auto t) {
            using T = decltype(t);
            cpu::batch_norm_backward<T>(image_scratch_, g, x.as<T>(), dy.as<T>(), gamma.as<T>(),
                                        saved_mean.as<T>(), saved_inv_std.as<T>(), dx.as<T>(),
                                        dgamma.as<T>(), dbeta.as<T>());
        });
    }

    // ---- step graphs ----------------------------------------------------------------------
    std::unique_ptr<StepGraph> capture(const std::function<void()>& body) override {
        if (capturing_)
            throw Error("cpu backend: capture: a capture is already recording");
        std::vector<std::function<void()>> ops;
        recording_ = &ops;
        capturing_ = true;
        freed_while_capturing_ = false;
        const ScopeExit stop([this] {
            recording_ = nullptr;
            capturing_ = false;
        });
        body();
        if (freed_while_capturing_) {
            throw Error(
                "cpu backend: capture: memory was freed while recording, and a recorded "
                "op may use it");
        }
        return std::make_unique<CpuStepGraph>(std::move(ops));
    }

    void gather_batch(const View& src, const View& index, const View& scalars, int64_t batch_size,
                      int64_t count, int64_t cols, const View& dst) override {
        if (recording_ != nullptr)
            return record([=] { gather_batch(src, index, scalars, batch_size, count, cols, dst); });
        gather_rows(src, index, step_scalars(scalars).batch * batch_size, count, cols, dst);
    }

    void dropout_forward_step(const View& x, const View& y, const View& mask, int64_t n, float rate,
                              uint64_t seed, const View& scalars) override {
        if (recording_ != nullptr)
            return record([=] { dropout_forward_step(x, y, mask, n, rate, seed, scalars); });
        dropout_forward(x, y, mask, n, rate, seed, uint64_t(step_scalars(scalars).iteration));
    }

    void optimizer_update_step(const OptimizerStep& hyper, const View& scalars, const View& params,
                               const View& grads, const View& state, int64_t n) override {
        if (recording_ != nullptr)
            return record([=] { optimizer_update_step(hyper, scalars, params, grads, state, n); });
        optimizer_update(math::with_scalars(hyper, step_scalars(scalars)), params, grads, state, n);
    }

    void advance_step(const OptimizerStep& hyper, const View& scalars) override {
        if (recording_ != nullptr)
            return record([=] { advance_step(hyper, scalars); });
        math::advance_step(hyper, &step_scalars(scalars));
    }

  private:
    // The recorded ops of a capture, run in order by replay.
    class CpuStepGraph final : public StepGraph {
      public:
        explicit CpuStepGraph(std::vector<std::function<void()>> ops)
            : StepGraph(static_cast<int64_t>(ops.size())), ops_(std::move(ops)) {}

      private:
        void launch() override {
            for (const auto& op : ops_)
                op();
        }
        std::vector<std::function<void()>> ops_;
    };

    // While a capture records (recording_ set), an op keeps itself as a closure over its
    // arguments, copied, and returns at once; it runs when the graph is replayed. The check
    // comes first so that an eager call copies nothing.
    template <typename Op>
    void record(Op&& op) {
        recording_->emplace_back(std::forward<Op>(op));
    }

    static StepScalars& step_scalars(const View& scalars) {
        if (scalars.data == nullptr || scalars.bytes() < sizeof(StepScalars))
            throw Error("cpu backend: step op: scalars must hold one StepScalars");
        return *static_cast<StepScalars*>(scalars.data);
    }

    std::vector<std::function<void()>>* recording_ = nullptr;
    bool freed_while_capturing_ = false;

    // A GEMM operand of n elements as the precision wants it: x itself for kFp32, otherwise a
    // copy in `scratch` rounded to the format (math::round_to_precision, element by element, so
    // the result does not depend on the threads). One vectorised pass per operand and call:
    // the default recipe's epoch took 1.25 times fp32's CPU time in bf16 (README, Precision).
    template <typename T>
    const T* operand(const T* x, int64_t n, Precision p, cpu::ScratchBlock* scratch,
                     const char* op) {
        if (p == Precision::kFp32)
            return x;
        if constexpr (!std::is_same_v<T, float>) {
            throw Error(std::string("cpu backend: ") + op + ": precision " + precision_name(p) +
                        " rounds float32 operands; float64 takes fp32 only");
        } else {
            float* out = static_cast<float*>(scratch->get(static_cast<size_t>(n) * sizeof(float)));
            const int dropped = math::dropped_mantissa_bits(p);
            parallel_elements(n, [&](int64_t begin, int64_t end) {
                for (int64_t i = begin; i < end; ++i)
                    out[i] = math::round_mantissa(x[i], dropped);
            });
            return out;
        }
    }

    // One GEMM call of OpenBLAS on a block of C. Row-major; leading dimensions are those of
    // the whole matrices.
    template <typename T>
    void gemm_block(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const T* a, int64_t lda, const T* b, int64_t ldb, float beta, T* c,
                    int64_t ldc) const {
        const int ta = trans_a ? blas::kTrans : blas::kNoTrans;
        const int tb = trans_b ? blas::kTrans : blas::kNoTrans;
        if constexpr (std::is_same_v<T, float>) {
            blas_.sgemm(blas::kRowMajor, ta, tb, int(m), int(n), int(k), alpha, a, int(lda), b,
                        int(ldb), beta, c, int(ldc));
        } else {
            blas_.dgemm(blas::kRowMajor, ta, tb, int(m), int(n), int(k), alpha, a, int(lda), b,
                        int(ldb), beta, c, int(ldc));
        }
    }

    // Splits C across the pool's threads along its longer side (rows of C are rows of op(a),
    // columns of C are columns of op(b)), each thread one single-threaded GEMM. Below
    // kParallelFlops a GEMM runs on one thread: the split would cost more than it saves.
    template <typename T>
    void gemm_parallel(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                       const T* a, const T* b, float beta, T* c) const {
        const int64_t lda = trans_a ? m : k, ldb = trans_b ? k : n, ldc = n;
        if (m * n * k < kParallelFlops) {
            gemm_block(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
            return;
        }
        const bool split_rows = m >= n;
        // Blocks of at least 16 rows or columns, which keeps whole vector registers in each.
        parallel_range(split_rows ? m : n, 16, 16, [&](int64_t lo, int64_t hi) {
            const int64_t len = hi - lo;
            if (len == 0)
                return;
            if (split_rows) {
                // Rows lo.. of op(a): row lo of a, or column lo of a stored transposed.
                const T* a_block = trans_a ? a + lo : a + lo * lda;
                gemm_block(trans_a, trans_b, len, n, k, alpha, a_block, lda, b, ldb, beta,
                           c + lo * ldc, ldc);
            } else {
                // Columns lo.. of op(b): column lo of b, or row lo of b stored transposed.
                const T* b_block = trans_b ? b + lo * ldb : b + lo;
                gemm_block(trans_a, trans_b, m, len, k, alpha, a, lda, b_block, ldb, beta, c + lo,
                           ldc);
            }
        });
    }

    const blas::Library& blas_;
    // im2col patches and partial sums, kept between steps; one block per pool thread
    cpu::ImageScratch image_scratch_{cpu::ThreadPool::shared().threads()};
    // The rounded operands of a tf32 or bf16 GEMM or convolution, kept between steps.
    cpu::ScratchBlock gemm_a_, gemm_b_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() {
    return std::make_unique<CpuBackend>();
}

}  // namespace kiln
