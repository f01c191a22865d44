// The per-element math of every op, written once for both backends.
//
// Each function is `KILN_HD` (host and device) and templated on the scalar type, so the CPU
// backend runs it in float32 and float64 (the gradient checks) and the CUDA kernels in float32.
// Loops, reductions and library calls differ between the backends; this math does not.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kiln/ops.h"

#if defined(__CUDACC__)
#define KILN_HD __host__ __device__ __forceinline__
#else
#define KILN_HD inline
#endif

namespace kiln {
namespace math {

#if !defined(__CUDA_ARCH__)
// On the host, the std overloads keep float math in float; device code gets CUDA's overloads.
using std::erf;
using std::exp;
using std::fabs;
using std::log;
using std::log1p;
using std::pow;
using std::sqrt;
using std::tanh;
#endif

// Keras's backend epsilon: probabilities are clipped to [kEpsilon, 1 - kEpsilon] before a log.
constexpr double kEpsilon = 1e-7;

template <typename T>
KILN_HD T clip(T x, T lo, T hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

// ---- GEMM operand formats (kiln/ops.h, Precision) --------------------------------------------
// A float32 rounded to fewer mantissa bits and kept in a float32, to nearest, ties to even:
// TF32 keeps 10 of float32's 23 explicit mantissa bits, bfloat16 7 (8 with the implicit one).
// Both keep float32's exponent, so the only overflow is IEEE's: a value past the midpoint
// between the format's largest finite value and 2^128 (FLT_MAX is) rounds to infinity.
// Infinities and NaN, payload included, pass through unchanged; subnormals round like any other
// value (a carry moves into the exponent). The CPU backend rounds its GEMM operands with this,
// element by element, so a test can compute the same operands.

KILN_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(x);
#else
    uint32_t u;
    std::memcpy(&u, &x, sizeof(u));
    return u;
#endif
}

KILN_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float x;
    std::memcpy(&x, &u, sizeof(x));
    return x;
#endif
}

// The low mantissa bits of a float32 a format drops: 13 for TF32, 16 for bfloat16.
KILN_HD int dropped_mantissa_bits(Precision p) {
    return p == Precision::kTf32 ? 13 : (p == Precision::kBf16 ? 16 : 0);
}

// x with its low `dropped` mantissa bits (0..22) rounded away.
KILN_HD float round_mantissa(float x, int dropped) {
    uint32_t u = float_bits(x);
    if (dropped <= 0 || (u & 0x7f800000u) == 0x7f800000u)
        return x;
    // Adding just under half a unit, plus the kept lowest bit, carries exactly when the dropped
    // bits are above half, or at half with an odd kept part: round to nearest, ties to even.
    const uint32_t lowest_kept = (u >> dropped) & 1u;
    u += ((1u << (dropped - 1)) - 1u) + lowest_kept;
    return bits_float(u & ~((1u << dropped) - 1u));
}

KILN_HD float round_to_precision(float x, Precision p) {
    return round_mantissa(x, dropped_mantissa_bits(p));
}

// ---- activations ---------------------------------------------------------------------------
// Forward y = f(x). Softmax is row-wise and handled by the backends with the helpers below.
template <typename T>
KILN_HD T activation_forward(Activation kind, T alpha, T x) {
    switch (kind) {
        case Activation::kRelu:
            // NaN passes through (as in PyTorch and TensorFlow): a NaN weight must show in
            // the loss, where TerminateOnNaN and check_finite see it, not vanish here.
            return x < T(0) ? T(0) : x;
        case Activation::kSigmoid:
            return T(1) / (T(1) + exp(-x));
        case Activation::kTanh:
            return tanh(x);
        case Activation::kGelu:
            return T(0.5) * x * (T(1) + erf(x * T(0.70710678118654752440)));
        case Activation::kElu:
            return x > T(0) ? x : alpha * (exp(x) - T(1));
        case Activation::kLeakyRelu:
            return x > T(0) ? x : alpha * x;
        case Activation::kLinear:
        case Activation::kSoftmax:  // row-wise, never reaches here
        default:
            return x;
    }
}

// dy/dx from the input x and the output y (whichever is cheaper).
template <typename T>
KILN_HD T activation_derivative(Activation kind, T alpha, T x, T y) {
    switch (kind) {
        case Activation::kRelu:
            return x > T(0) ? T(1) : T(0);
        case Activation::kSigmoid:
            return y * (T(1) - y);
        case Activation::kTanh:
            return T(1) - y * y;
        case Activation::kGelu: {
            const T cdf = T(0.5) * (T(1) + erf(x * T(0.70710678118654752440)));
            const T pdf = exp(T(-0.5) * x * x) * T(0.39894228040143267794);
            return cdf + x * pdf;
        }
        case Activation::kElu:
            return x > T(0) ? T(1) : y + alpha;
        case Activation::kLeakyRelu:
            return x > T(0) ? T(1) : alpha;
        case Activation::kLinear:
        case Activation::kSoftmax:
        default:
            return T(1);
    }
}

// ---- losses, per element -------------------------------------------------------------------
// Binary cross-entropy of one element, Keras's formula: probabilities clipped, or the stable
// logits form max(z, 0) - z·y + log(1 + exp(-|z|)).
template <typename T>
KILN_HD T binary_crossentropy(T pred, T target, bool from_logits) {
    if (from_logits) {
        const T z = pred;
        return (z > T(0) ? z : T(0)) - z * target + log1p(exp(-fabs(z)));
    }
    const T p = clip(pred, T(kEpsilon), T(1) - T(kEpsilon));
    return -(target * log(p) + (T(1) - target) * log(T(1) - p));
}

// d(binary_crossentropy)/d(pred). From logits (or a fused sigmoid) it is sigmoid(z) - y; from
// probabilities it is zero where the clip is active, as the clipped formula's gradient is.
template <typename T>
KILN_HD T binary_crossentropy_grad(T pred, T target, bool from_logits) {
    if (from_logits)
        return T(1) / (T(1) + exp(-pred)) - target;
    const T lo = T(kEpsilon), hi = T(1) - T(kEpsilon);
    if (pred <= lo || pred >= hi)
        return T(0);
    return (pred - target) / (pred * (T(1) - pred));
}

template <typename T>
KILN_HD T squared_error(T pred, T target) {
    const T d = pred - target;
    return d * d;
}

template <typename T>
KILN_HD T squared_error_grad(T pred, T target) {
    return T(2) * (pred - target);
}

template <typename T>
KILN_HD T absolute_error(T pred, T target) {
    return fabs(pred - target);
}

template <typename T>
KILN_HD T absolute_error_grad(T pred, T target) {
    return pred > target ? T(1) : (pred < target ? T(-1) : T(0));
}

// -log(clip(p)) for a probability, as Keras computes the categorical losses.
template <typename T>
KILN_HD T neg_log_clipped(T p) {
    return -log(clip(p, T(kEpsilon), T(1) - T(kEpsilon)));
}

// ---- optimizers (Keras 3's update rules) ---------------------------------------------------
// One parameter's update per optimizer, with its state slots. The scalars are passed by value
// so a CPU loop over them vectorises (no aliasing with the arrays it writes).
template <typename T>
KILN_HD void sgd_update(T lr, T momentum, bool nesterov, T* p, T g, T* m) {
    if (momentum != T(0)) {
        const T v = momentum * *m - lr * g;
        *m = v;
        *p += nesterov ? momentum * v - lr * g : v;
    } else {
        *p -= lr * g;
    }
}

// Adam, and AdamW when decay = weight_decay · learning_rate is non-zero (decoupled, applied
// before the Adam step as Keras does). alpha = lr · sqrt(1 - beta_2^t) / (1 - beta_1^t).
template <typename T>
KILN_HD void adam_update(T beta_1, T beta_2, T epsilon, T alpha, T decay, T* p, T g, T* m, T* v) {
    T param = *p;
    param -= param * decay;
    T mt = *m, vt = *v;
    mt += (g - mt) * (T(1) - beta_1);
    vt += (g * g - vt) * (T(1) - beta_2);
    *m = mt;
    *v = vt;
    *p = param - (mt * alpha) / (sqrt(vt) + epsilon);
}

// RMSprop; `avg` (the mean gradient) is used only when centered, `mom` only with momentum.
template <typename T>
KILN_HD void rmsprop_update(T lr, T rho, T momentum, T epsilon, bool centered, T* p, T g, T* vel,
                            T* mom, T* avg) {
    const T velocity = rho * *vel + (T(1) - rho) * g * g;
    *vel = velocity;
    T denominator = velocity + epsilon;
    if (centered) {
        const T a = rho * *avg + (T(1) - rho) * g;
        *avg = a;
        denominator = velocity - a * a + epsilon;
    }
    const T increment = lr * g / sqrt(denominator);
    if (momentum > T(0)) {
        const T m = momentum * *mom + increment;
        *mom = m;
        *p -= m;
    } else {
        *p -= increment;
    }
}

template <typename T>
KILN_HD T adamw_decay(const OptimizerStep& o) {
    return o.kind == OptimizerKind::kAdamW ? T(o.weight_decay) * T(o.learning_rate) : T(0);
}

// The update `o` describes, for one parameter; s0..s2 are its state slots (velocity or
// momentum first), unused ones ignored.
template <typename T>
KILN_HD void optimizer_update(const OptimizerStep& o, T* p, T g, T* s0, T* s1, T* s2) {
    switch (o.kind) {
        case OptimizerKind::kSGD:
            sgd_update(T(o.learning_rate), T(o.momentum), o.nesterov, p, g, s0);
            return;
        case OptimizerKind::kAdam:
        case OptimizerKind::kAdamW:
            adam_update(T(o.beta_1), T(o.beta_2), T(o.epsilon), T(o.alpha), adamw_decay<T>(o), p, g,
                        s0, s1);
            return;
        case OptimizerKind::kRMSprop:
            rmsprop_update(T(o.learning_rate), T(o.rho), T(o.momentum), T(o.epsilon), o.centered, p,
                           g, s0, s1, s2);
            return;
    }
}

// Adam's bias-corrected step size for update t (1-based), lr · sqrt(1 - beta_2^t) / (1 - beta_1^t)
// in double, as Keras folds it; 0 for the optimizers that take no step size.
KILN_HD float step_size(const OptimizerStep& o, float learning_rate, int64_t t) {
    if (o.kind != OptimizerKind::kAdam && o.kind != OptimizerKind::kAdamW)
        return 0.0f;
    const double n = static_cast<double>(t);
    return static_cast<float>(double(learning_rate) * sqrt(1.0 - pow(double(o.beta_2), n)) /
                              (1.0 - pow(double(o.beta_1), n)));
}

// The update's scalars with the step-dependent ones taken from the device's StepScalars.
KILN_HD OptimizerStep with_scalars(OptimizerStep o, const StepScalars& s) {
    o.learning_rate = s.learning_rate;
    o.alpha = s.alpha;
    return o;
}

// What Backend::advance_step does at the end of a step: on to the next update and batch.
KILN_HD void advance_step(const OptimizerStep& o, StepScalars* s) {
    s->iteration += 1;
    s->batch += 1;
    s->alpha = step_size(o, s->learning_rate, s->iteration + 1);
}

// ---- counter-based random numbers ----------------------------------------------------------
// SplitMix64's finaliser: a bijective mix of 64 bits. hash(seed, stream, i) gives independent,
// reproducible draws with no state, the same on every backend and in any order of evaluation.
KILN_HD uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

KILN_HD uint64_t hash3(uint64_t seed, uint64_t stream, uint64_t i) {
    return mix64(mix64(mix64(seed) ^ stream) ^ i);
}

// Uniform in [0, 1) with 24 random bits: exact in float32.
KILN_HD float uniform01(uint64_t bits) {
    return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
}

// ---- windows of convolution and pooling (NHWC) ---------------------------------------------
// Along one axis, output o's window starts at o·stride - pad_before (negative inside the
// padding). These give the cells of a window that lie in the image and, the other way round, the
// outputs whose window holds a given input cell; the CPU loops and the CUDA kernels both call
// them, so both see the same windows in the same order.

// The window of output `o`, clipped to the image: cells [*lo, *hi) of an axis of `in` cells.
KILN_HD void pool_window(int64_t o, int64_t stride, int64_t pad_before, int64_t window, int64_t in,
                         int64_t* lo, int64_t* hi) {
    const int64_t start = o * stride - pad_before;
    *lo = start > 0 ? start : 0;
    *hi = start + window < in ? start + window : in;
}

// The outputs [*lo, *hi) of an axis of `out` whose window holds input cell `i` (empty when
// *lo >= *hi).
KILN_HD void covering_outputs(int64_t i, int64_t stride, int64_t pad_before, int64_t window,
                              int64_t out, int64_t* lo, int64_t* hi) {
    // o covers i when o·stride - pad_before <= i < o·stride - pad_before + window.
    const int64_t first = i + pad_before - window + 1;  // o·stride >= first
    int64_t l = first <= 0 ? 0 : (first + stride - 1) / stride;
    int64_t h = (i + pad_before) / stride + 1;  // o·stride <= i + pad_before
    if (h > out)
        h = out;
    *lo = l;
    *hi = h;
}

// ---- batch normalisation ---------------------------------------------------------------------
// y = gamma·(x - mean)·inv_std + beta.
template <typename T>
KILN_HD T batch_norm_apply(T x, T mean, T inv_std, T gamma, T beta) {
    return gamma * ((x - mean) * inv_std) + beta;
}

template <typename T>
KILN_HD T batch_norm_inv_std(T variance, T epsilon) {
    return T(1) / sqrt(variance + epsilon);
}

// Keras 3's moving statistics: moving·momentum + batch·(1 - momentum).
template <typename T>
KILN_HD T moving_average(T moving, T batch, T momentum) {
    return moving * momentum + batch * (T(1) - momentum);
}

// The batch variance back from inv_std = 1/sqrt(variance + epsilon), where a library returns only
// inv_std (cuDNN's saved statistics). Its absolute error is a few ulp of (variance + epsilon).
template <typename T>
KILN_HD T variance_from_inv_std(T inv_std, T epsilon) {
    return T(1) / (inv_std * inv_std) - epsilon;
}

// dL/dx of one element of the training forward pass, through the batch mean and variance:
// gamma·inv_std·(dy - mean(dy) - x̂·mean(dy·x̂)), x̂ = (x - mean)·inv_std, where the two means over
// the channel's rows are dbeta / rows and dgamma / rows.
template <typename T>
KILN_HD T batch_norm_backward_data(T x, T dy, T mean, T inv_std, T gamma, T mean_dy,
                                   T mean_dy_xhat) {
    const T xhat = (x - mean) * inv_std;
    return gamma * inv_std * (dy - mean_dy - xhat * mean_dy_xhat);
}

}  // namespace math
}  // namespace kiln
