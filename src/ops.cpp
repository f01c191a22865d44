#include "kiln/ops.h"

namespace kiln {

bool parse_activation(const std::string& name, ActivationSpec* out) {
    ActivationSpec spec;
    if (name == "linear" || name.empty()) {
        spec.kind = Activation::kLinear;
    } else if (name == "relu") {
        spec.kind = Activation::kRelu;
    } else if (name == "sigmoid") {
        spec.kind = Activation::kSigmoid;
    } else if (name == "tanh") {
        spec.kind = Activation::kTanh;
    } else if (name == "softmax") {
        spec.kind = Activation::kSoftmax;
    } else if (name == "gelu") {
        spec.kind = Activation::kGelu;  // exact (erf) form, Keras's default approximate=False
    } else if (name == "elu") {
        spec.kind = Activation::kElu;
        spec.alpha = 1.0f;
    } else if (name == "leaky_relu") {
        spec.kind = Activation::kLeakyRelu;
        spec.alpha = 0.2f;  // Keras 3's keras.activations.leaky_relu default negative_slope
    } else {
        return false;
    }
    *out = spec;
    return true;
}

std::string activation_name(Activation kind) {
    switch (kind) {
        case Activation::kLinear:
            return "linear";
        case Activation::kRelu:
            return "relu";
        case Activation::kSigmoid:
            return "sigmoid";
        case Activation::kTanh:
            return "tanh";
        case Activation::kSoftmax:
            return "softmax";
        case Activation::kGelu:
            return "gelu";
        case Activation::kElu:
            return "elu";
        case Activation::kLeakyRelu:
            return "leaky_relu";
    }
    return "linear";
}

int optimizer_state_slots(const OptimizerStep& step) {
    switch (step.kind) {
        case OptimizerKind::kSGD:
            return step.momentum != 0.0f ? 1 : 0;
        case OptimizerKind::kAdam:
        case OptimizerKind::kAdamW:
            return 2;
        case OptimizerKind::kRMSprop:
            return 3;  // velocity, momentum, average gradient
    }
    return 0;
}

bool parse_precision(const std::string& name, Precision* out) {
    if (name == "fp32") {
        *out = Precision::kFp32;
    } else if (name == "tf32") {
        *out = Precision::kTf32;
    } else if (name == "bf16") {
        *out = Precision::kBf16;
    } else {
        return false;
    }
    return true;
}

std::string precision_name(Precision p) {
    switch (p) {
        case Precision::kFp32:
            return "fp32";
        case Precision::kTf32:
            return "tf32";
        case Precision::kBf16:
            return "bf16";
    }
    return "fp32";
}

bool parse_step_graphs(const std::string& name, StepGraphs* out) {
    if (name == "auto") {
        *out = StepGraphs::kAuto;
    } else if (name == "on") {
        *out = StepGraphs::kOn;
    } else if (name == "off") {
        *out = StepGraphs::kOff;
    } else {
        return false;
    }
    return true;
}

std::string step_graphs_name(StepGraphs mode) {
    switch (mode) {
        case StepGraphs::kAuto:
            return "auto";
        case StepGraphs::kOn:
            return "on";
        case StepGraphs::kOff:
            return "off";
    }
    return "auto";
}

}  // namespace kiln
