// Optimizers with Keras 3's arguments, defaults and update rules. An optimizer step is one
// kernel over the model's whole flat parameter buffer.
#pragma once

#include <string>

#include "kiln/ops.h"

namespace kiln {

struct Optimizer {
    OptimizerStep hyper;

    // Keras's class name ("Adam") and the config Keras writes in training_config.
    std::string class_name() const;
    std::string config_json() const;
};

// "sgd", "adam", "adamw", "rmsprop" with Keras's defaults; a negative learning rate keeps the
// default. Throws kiln::Error for an unknown name.
Optimizer optimizer_from_name(const std::string& name, double learning_rate = -1.0);

namespace optimizers {
Optimizer SGD(float learning_rate = 0.01f, float momentum = 0.0f, bool nesterov = false);
Optimizer Adam(float learning_rate = 0.001f, float beta_1 = 0.9f, float beta_2 = 0.999f,
               float epsilon = 1e-7f);
Optimizer AdamW(float learning_rate = 0.001f, float weight_decay = 0.004f, float beta_1 = 0.9f,
                float beta_2 = 0.999f, float epsilon = 1e-7f);
Optimizer RMSprop(float learning_rate = 0.001f, float rho = 0.9f, float momentum = 0.0f,
                  float epsilon = 1e-7f, bool centered = false);
}  // namespace optimizers

}  // namespace kiln
