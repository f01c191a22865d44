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

// The scalars of one optimizer step. The host computes the step-dependent ones (Adam's bias
// correction) so that the update kernel is a pure per-element function.
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

}  // namespace kiln
