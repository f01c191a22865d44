#include "kiln/optimizers.h"

#include <cctype>
#include <cstdio>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "kiln/status.h"

namespace kiln {

std::string Optimizer::class_name() const {
    switch (hyper.kind) {
        case OptimizerKind::kSGD:
            return "SGD";
        case OptimizerKind::kAdam:
            return "Adam";
        case OptimizerKind::kAdamW:
            return "AdamW";
        case OptimizerKind::kRMSprop:
            return "RMSprop";
    }
    return "";
}

std::string Optimizer::config_json() const {
    // Floats go through their shortest decimal form so the JSON shows 0.001, as Keras writes
    // it, not 0.0010000000474974513.
    auto f = [](float v) {
        char text[32];
        std::snprintf(text, sizeof(text), "%.7g", static_cast<double>(v));
        return std::strtod(text, nullptr);
    };
    nlohmann::json config;
    std::string lowercase = class_name();
    for (char& ch : lowercase)
        ch = static_cast<char>(std::tolower(ch));
    config["name"] = lowercase;
    config["learning_rate"] = f(hyper.learning_rate);
    switch (hyper.kind) {
        case OptimizerKind::kSGD:
            config["momentum"] = f(hyper.momentum);
            config["nesterov"] = hyper.nesterov;
            break;
        case OptimizerKind::kAdamW:
            config["weight_decay"] = f(hyper.weight_decay);
            [[fallthrough]];
        case OptimizerKind::kAdam:
            config["beta_1"] = f(hyper.beta_1);
            config["beta_2"] = f(hyper.beta_2);
            config["epsilon"] = f(hyper.epsilon);
            config["amsgrad"] = false;
            break;
        case OptimizerKind::kRMSprop:
            config["rho"] = f(hyper.rho);
            config["momentum"] = f(hyper.momentum);
            config["epsilon"] = f(hyper.epsilon);
            config["centered"] = hyper.centered;
            break;
    }
    return nlohmann::json{{"class_name", class_name()}, {"config", config}}.dump();
}

Optimizer optimizer_from_name(const std::string& name, double learning_rate) {
    Optimizer opt;
    if (name == "sgd") {
        opt = optimizers::SGD();
    } else if (name == "adam") {
        opt = optimizers::Adam();
    } else if (name == "adamw") {
        opt = optimizers::AdamW();
    } else if (name == "rmsprop") {
        opt = optimizers::RMSprop();
    } else {
        throw Error("unknown optimizer '" + name + "' (kiln has sgd, adam, adamw, rmsprop)");
    }
    if (learning_rate >= 0.0)
        opt.hyper.learning_rate = static_cast<float>(learning_rate);
    return opt;
}

namespace optimizers {

Optimizer SGD(float learning_rate, float momentum, bool nesterov) {
    if (momentum < 0.0f || momentum > 1.0f) {
        throw Error("SGD: momentum must be in [0, 1], got " + std::to_string(momentum));
    }
    Optimizer o;
    o.hyper.kind = OptimizerKind::kSGD;
    o.hyper.learning_rate = learning_rate;
    o.hyper.momentum = momentum;
    o.hyper.nesterov = nesterov;
    return o;
}

Optimizer Adam(float learning_rate, float beta_1, float beta_2, float epsilon) {
    Optimizer o;
    o.hyper.kind = OptimizerKind::kAdam;
    o.hyper.learning_rate = learning_rate;
    o.hyper.beta_1 = beta_1;
    o.hyper.beta_2 = beta_2;
    o.hyper.epsilon = epsilon;
    return o;
}

Optimizer AdamW(float learning_rate, float weight_decay, float beta_1, float beta_2,
                float epsilon) {
    Optimizer o = Adam(learning_rate, beta_1, beta_2, epsilon);
    o.hyper.kind = OptimizerKind::kAdamW;
    o.hyper.weight_decay = weight_decay;
    return o;
}

Optimizer RMSprop(float learning_rate, float rho, float momentum, float epsilon, bool centered) {
    Optimizer o;
    o.hyper.kind = OptimizerKind::kRMSprop;
    o.hyper.learning_rate = learning_rate;
    o.hyper.rho = rho;
    o.hyper.momentum = momentum;
    o.hyper.epsilon = epsilon;
    o.hyper.centered = centered;
    return o;
}

}  // namespace optimizers
}  // namespace kiln
