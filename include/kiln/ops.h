// Plain descriptions of the ops both backends run: activations, losses, metrics and optimizer
// updates. They carry no memory and no code; the per-element math lives in kernels/math.h.
#pragma once

#include <cstdint>
#include <string>

namespace kiln {

enum class Activation { kLinear, kRelu, kSigmoid, kTanh, kSoftmax, kGelu, kElu, kLeakyRelu };

struct ActivationSpec {
    Activation kind = Activation::kLinear;
    float alpha = 0.0f;  // elu: alpha (1.0); leaky_relu: negative_slope (0.2, Keras 3's default)
};

// Parses a Keras activation name ("relu", "softmax", "leaky_relu", ...). Returns false when the
// name is unknown.
bool parse_activation(const std::string& name, ActivationSpec* out);
std::string activation_name(Activation kind);

enum class LossKind {
    kSparseCategoricalCrossentropy,
    kCategoricalCrossentropy,
    kBinaryCrossentropy,
    kMeanSquaredError,
    kMeanAbsoluteError,
};

enum class MetricKind { kNone, kSparseCategoricalAccuracy, kCategoricalAccuracy, kBinaryAccuracy };

// One loss evaluation over a batch. `pred` is the model output (probabilities, or logits when
// `from_logits`); with `fused_output` the model's last activation (softmax for the categorical
// losses, sigmoid for binary) was not applied, `pred` holds its input, and the gradient is taken
// with respect to that input: the numerically stable fused form.
struct LossSpec {
    LossKind kind = LossKind::kSparseCategoricalCrossentropy;
    bool from_logits = false;
    bool fused_output = false;
    MetricKind metric = MetricKind::kNone;
};

// Layout of the accumulators every step adds into, in double precision on the device. One read
// per epoch brings all of them to the host.
struct AccumulatorSlots {
    static constexpr int kLossSum = 0;    // sum over samples of the per-sample loss
    static constexpr int kMetricSum = 1;  // sum over samples of the metric (e.g. correct = 1)
    static constexpr int kCount = 2;      // samples seen
    static constexpr int kPerSet = 3;     // slots per set (training, validation)
};

enum class OptimizerKind { kSGD, kAdam, kAdamW, kRMSprop };

// The scalars of one optimizer step. The step-dependent one (Adam's bias correction) is folded
// into `alpha` once per step (math::step_size), so the update kernel is a pure per-element
// function.
struct OptimizerStep {
    OptimizerKind kind = OptimizerKind::kAdam;
    float learning_rate = 1e-3f;
    float momentum = 0.0f;      // SGD, RMSprop
    bool nesterov = false;      // SGD
    float beta_1 = 0.9f;        // Adam, AdamW
    float beta_2 = 0.999f;      // Adam, AdamW
    float rho = 0.9f;           // RMSprop
    float epsilon = 1e-7f;      // Adam, AdamW, RMSprop
    bool centered = false;      // RMSprop
    float weight_decay = 0.0f;  // AdamW (decoupled)
    float alpha = 0.0f;         // Adam: learning_rate * sqrt(1 - beta_2^t) / (1 - beta_1^t)
};

// How many state slots (each the size of the parameter buffer) an optimizer keeps.
int optimizer_state_slots(const OptimizerStep& step);

// The values of a training step that change from one step to the next, kept in device memory so
// that a step captured once as a graph (Backend::capture) replays unchanged for every batch: the
// host writes them when an epoch starts (and when a callback changes the learning rate), and the
// step's last op, Backend::advance_step, moves them on to the next step. The ops that read them
// are Backend::gather_batch, dropout_forward_step and optimizer_update_step.
struct StepScalars {
    int64_t iteration = 0;       // optimizer updates before this step; dropout's RNG counter
    int64_t batch = 0;           // this step's batch in the epoch: rows index[batch · size ...)
    float learning_rate = 0.0f;  // the optimizer's rate for this step
    float alpha = 0.0f;          // Adam's step size for update iteration + 1 (0 for the others)
};

// Whether fit captures its training and validation steps as graphs and replays them
// (Backend::capture): kAuto does on CUDA, where it saves the launches, and not on the CPU,
// where there is nothing to save; kOn and kOff force it either way (kOn on the CPU replays
// recorded closures, which is how the tests hold the bookkeeping to the eager path).
enum class StepGraphs { kAuto, kOn, kOff };

// "auto", "on", "off"; parse returns false for another name.
bool parse_step_graphs(const std::string& name, StepGraphs* out);
std::string step_graphs_name(StepGraphs mode);

// The number format the GEMMs take their operands in (Dense forward and backward, Conv2D).
// Every mode accumulates in float32 and keeps weights, gradients, optimizer state and the
// activations between layers in float32; only the GEMMs' multiplicands are rounded.
//  - kFp32: float32 operands, no TF32 anywhere (the default; pedantic cuBLAS, FMA-only cuDNN).
//  - kTf32: operands rounded to TF32 (10 explicit mantissa bits, round to nearest even).
//  - kBf16: Dense operands rounded to bfloat16 (7 explicit mantissa bits, round to nearest
//    even); Conv2D's operands to TF32, since cuDNN's float32 convolutions have no bfloat16 math
//    (conv_precision).
// The CPU backend rounds copies of the operands (math::round_to_precision) before OpenBLAS;
// the CUDA backend asks cuBLAS for CUBLAS_COMPUTE_32F_FAST_TF32 / _FAST_16BF and cuDNN for
// tensor-op math, whose hardware rounding may differ from the CPU's in the last kept bit.
enum class Precision { kFp32, kTf32, kBf16 };

// What Conv2D's GEMMs use in a mode: the mode, except TF32 for kBf16.
inline Precision conv_precision(Precision p) {
    return p == Precision::kBf16 ? Precision::kTf32 : p;
}

// "fp32", "tf32", "bf16"; parse returns false for another name.
bool parse_precision(const std::string& name, Precision* out);
std::string precision_name(Precision p);

}  // namespace kiln
