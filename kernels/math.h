// The per-element math of every op, written once for both backends.
//
// Each function is `KILN_HD` (host and device) and templated on the scalar type, so the CPU
// backend runs it in float32 and float64 (the gradient checks) and the CUDA kernels in float32.
// Loops, reductions and library calls differ between the backends; this math does not.
#pragma once

#include <cmath>
#include <cstdint>

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
using std::sqrt;
using std::tanh;
#endif

// Keras's backend epsilon: probabilities are clipped to [kEpsilon, 1 - kEpsilon] before a log.
constexpr double kEpsilon = 1e-7;

template <typename T>
KILN_HD T clip(T x, T lo, T hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

// ---- activations ---------------------------------------------------------------------------
// Forward y = f(x). Softmax is row-wise and handled by the backends with the helpers below.
template <typename T>
KILN_HD T activation_forward(Activation kind, T alpha, T x) {
    switch (kind) {
        case Activation::kRelu: return x > T(0) ? x : T(0);
        case Activation::kSigmoid: return T(1) / (T(1) + exp(-x));
        case Activation::kTanh: return tanh(x);
        case Activation::kGelu: return T(0.5) * x * (T(1) + erf(x * T(0.70710678118654752440)));
        case Activation::kElu: return x > T(0) ? x : alpha * (exp(x) - T(1));
        case Activation::kLeakyRelu: return x > T(0) ? x : alpha * x;
        case Activation::kLinear:
        case Activation::kSoftmax:  // row-wise, never reaches here
        default: return x;
    }
}

// dy/dx from the input x and the output y (whichever is cheaper).
template <typename T>
KILN_HD T activation_derivative(Activation kind, T alpha, T x, T y) {
    switch (kind) {
        case Activation::kRelu: return x > T(0) ? T(1) : T(0);
        case Activation::kSigmoid: return y * (T(1) - y);
        case Activation::kTanh: return T(1) - y * y;
        case Activation::kGelu: {
            const T cdf = T(0.5) * (T(1) + erf(x * T(0.70710678118654752440)));
            const T pdf = exp(T(-0.5) * x * x) * T(0.39894228040143267794);
            return cdf + x * pdf;
        }
        case Activation::kElu: return x > T(0) ? T(1) : y + alpha;
        case Activation::kLeakyRelu: return x > T(0) ? T(1) : alpha;
        case Activation::kLinear:
        case Activation::kSoftmax:
        default: return T(1);
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
    if (from_logits) return T(1) / (T(1) + exp(-pred)) - target;
    const T lo = T(kEpsilon), hi = T(1) - T(kEpsilon);
    if (pred <= lo || pred >= hi) return T(0);
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
// One parameter's update. `s0..s2` are its optimizer state slots; unused ones are ignored.
template <typename T>
KILN_HD void optimizer_update(const OptimizerStep& o, T* p, T g, T* s0, T* s1, T* s2) {
    switch (o.kind) {
        case OptimizerKind::kSGD: {
            const T lr = T(o.learning_rate);
            if (o.momentum != 0.0f) {
                const T m = T(o.momentum) * *s0 - lr * g;
                *s0 = m;
                *p += o.nesterov ? T(o.momentum) * m - lr * g : m;
            } else {
                *p -= lr * g;
            }
            return;
        }
        case OptimizerKind::kAdamW:
            // Decoupled weight decay, applied before the Adam step as Keras does.
            *p -= *p * T(o.weight_decay) * T(o.learning_rate);
            // fall through
        case OptimizerKind::kAdam: {
            T m = *s0, v = *s1;
            m += (g - m) * (T(1) - T(o.beta_1));
            v += (g * g - v) * (T(1) - T(o.beta_2));
            *s0 = m;
            *s1 = v;
            *p -= (m * T(o.alpha)) / (sqrt(v) + T(o.epsilon));
            return;
        }
        case OptimizerKind::kRMSprop: {
            const T rho = T(o.rho);
            T vel = rho * *s0 + (T(1) - rho) * g * g;
            *s0 = vel;
            T denominator = vel + T(o.epsilon);
            if (o.centered) {
                const T avg = rho * *s2 + (T(1) - rho) * g;
                *s2 = avg;
                denominator = vel - avg * avg + T(o.epsilon);
            }
            const T increment = T(o.learning_rate) * g / sqrt(denominator);
            if (o.momentum > 0.0f) {
                const T mom = T(o.momentum) * *s1 + increment;
                *s1 = mom;
                *p -= mom;
            } else {
                *p -= increment;
            }
            return;
        }
    }
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

}  // namespace math
}  // namespace kiln
