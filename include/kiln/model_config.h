// The description of a Sequential model as plain data: what Keras's `model.to_json()` holds for
// the layers kiln supports, and the weights that go with it in a model file.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "kiln/status.h"
#include "kiln/tensor.h"

namespace kiln {

// One layer's Keras config. Only the fields of its class_name are meaningful.
struct LayerConfig {
    // "InputLayer", "Dense", "Activation", "Dropout", "Flatten", "Conv2D", "MaxPooling2D",
    // "AveragePooling2D", "GlobalAveragePooling2D", "BatchNormalization", "Reshape"
    std::string class_name;
    std::string name;  // "dense", "dense_1", ... (Keras's automatic names when empty)

    // InputLayer: the shape of one sample (Keras's batch_shape without the batch dimension).
    Shape input_shape;

    // Dense
    int64_t units = 0;
    bool use_bias = true;
    std::string kernel_initializer = "glorot_uniform";
    std::string bias_initializer = "zeros";

    // Dense and Activation: a Keras activation name ("linear", "relu", "softmax", ...).
    std::string activation = "linear";

    // Dropout
    float rate = 0.0f;
    int64_t seed = -1;  // -1: none given (Keras's null)

    // Conv2D (with use_bias, kernel_initializer, bias_initializer and activation above);
    // (height, width) pairs, channels_last only.
    int64_t filters = 0;
    std::array<int64_t, 2> kernel_size = {0, 0};
    std::array<int64_t, 2> dilation_rate = {1, 1};
    // Conv2D and the pooling layers. strides {0, 0} is Keras's None: (1, 1) for Conv2D, the
    // pool_size for pooling. padding is "valid" or "same".
    std::array<int64_t, 2> strides = {0, 0};
    std::string padding = "valid";
    // MaxPooling2D, AveragePooling2D
    std::array<int64_t, 2> pool_size = {2, 2};
    // GlobalAveragePooling2D: keep the (1, 1) spatial dimensions.
    bool keepdims = false;

    // BatchNormalization (the last axis only: -1, or the input's rank counting the batch axis)
    int64_t axis = -1;
    float momentum = 0.99f;
    float epsilon = 1e-3f;
    bool center = true;  // beta
    bool scale = true;   // gamma
    std::string beta_initializer = "zeros";
    std::string gamma_initializer = "ones";
    std::string moving_mean_initializer = "zeros";
    std::string moving_variance_initializer = "ones";

    // Reshape: the shape of one sample; one entry may be -1 (inferred).
    Shape target_shape;
};

struct ModelConfig {
    std::string name = "sequential";
    std::vector<LayerConfig> layers;  // layers[0] is the InputLayer
};

// Parses the JSON of Keras's `model.to_json()` for a Sequential model (Keras 3's `batch_shape`
// or Keras 2's `batch_input_shape`; a `build_config` or the first layer's `batch_input_shape`
// when there is no InputLayer). An unknown layer class, an unknown or unsupported argument
// value, or a malformed document is named in the error.
Status model_config_from_json(const std::string& json_text, ModelConfig* out);
Status load_model_config(const std::string& path, ModelConfig* out);  // a .json file

// Writes the model as Keras JSON in the Keras-2 dialect (an explicit InputLayer with
// batch_input_shape, dtype as a string, nested {"class_name", "config"} objects), which both
// Keras 2 and Keras 3 load (shared/reference/hdf5-format.md, section 0).
std::string model_config_to_json(const ModelConfig& config);

// A weight as stored in a model file: Keras's names and layouts (a Dense kernel is
// (inputs, units), its bias (units)).
struct NamedArray {
    std::string name;  // "kernel", "bias"
    Shape shape;
    std::vector<float> values;
};

struct LayerWeights {
    std::string layer_name;
    std::vector<NamedArray> weights;  // in Keras's order for the layer
};

// Everything a saved model file holds.
struct SavedModel {
    ModelConfig config;
    std::vector<LayerWeights> weights;  // one entry per layer, weightless layers included
    // Keras's training_config as JSON (loss, metrics, optimizer_config); may be empty.
    std::string training_config_json;
};

// Writes a full model in the Keras legacy HDF5 layout (root attributes keras_version, backend,
// model_config, training_config; group model_weights with layer_names and each layer's
// weight_names), atomically: written under a temporary name beside `path`, flushed, fsynced and
// renamed over it, so a failure never leaves `path` half-written or loses the old file.
Status save_model_h5(const std::string& path, const SavedModel& model);
// Reads a file written by save_model_h5 or by Keras (`model.save("m.h5")`).
Status load_model_h5(const std::string& path, SavedModel* out);

}  // namespace kiln
