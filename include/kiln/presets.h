// Ready-made model descriptions for the command line and the benchmarks.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/model_config.h"

namespace kiln {
namespace presets {

// Keras's "Simple MNIST convnet" (keras-io examples/vision/mnist_convnet.py) for 28×28×1 images:
// Input(28, 28, 1) → Conv2D(32, 3, relu) → MaxPooling2D(2) → Conv2D(64, 3, relu) →
// MaxPooling2D(2) → Flatten → Dropout(0.5) → Dense(10, softmax); 34,826 parameters.
inline ModelConfig mnist_convnet() {
    ModelConfig c;
    LayerConfig input;
    input.class_name = "InputLayer";
    input.name = "input_layer";
    input.input_shape = {28, 28, 1};
    c.layers.push_back(input);
    for (int64_t filters : {32, 64}) {
        LayerConfig conv;
        conv.class_name = "Conv2D";
        conv.filters = filters;
        conv.kernel_size = {3, 3};
        conv.activation = "relu";
        c.layers.push_back(conv);
        LayerConfig pool;
        pool.class_name = "MaxPooling2D";
        pool.pool_size = {2, 2};
        c.layers.push_back(pool);
    }
    LayerConfig flatten;
    flatten.class_name = "Flatten";
    c.layers.push_back(flatten);
    LayerConfig dropout;
    dropout.class_name = "Dropout";
    dropout.rate = 0.5f;
    c.layers.push_back(dropout);
    LayerConfig dense;
    dense.class_name = "Dense";
    dense.units = 10;
    dense.activation = "softmax";
    c.layers.push_back(dense);
    return c;
}

}  // namespace presets
}  // namespace kiln
