// Layers of a Sequential model, with Keras's names, arguments and defaults.
//
// A layer does not own its parameters: the model keeps every parameter, gradient and optimizer
// state in one flat buffer each, and `bind` hands a layer its views into them. Activations are
// in buffers the model owns, sized once for the largest batch; nothing is allocated per step.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kiln/backend.h"
#include "kiln/model_config.h"
#include "kiln/ops.h"
#include "kiln/tensor.h"

namespace kiln {

// A parameter a layer asks the model for: Keras's weight name, its shape and initializer.
struct ParamInfo {
    std::string name;  // "kernel", "bias"
    Shape shape;
    std::string initializer;  // "glorot_uniform", "zeros", ...
    // Non-trainable weights (BatchNormalization's moving statistics) live in a flat buffer of
    // their own, which the optimizer never touches and snapshots and checkpoints include; the
    // layer gets no gradient view for them.
    bool trainable = true;
};

// What a forward or backward pass needs besides its tensors.
struct StepContext {
    Backend* backend = nullptr;
    bool training = false;
    // When true, a layer marked `fused_output` leaves its final softmax or sigmoid to the loss
    // (which takes its gradient in the stable fused form); predict sets it false.
    bool want_logits = false;
    uint64_t seed = 0;  // the model's seed
    uint64_t step = 0;  // training steps so far: the counter of the dropout RNG
    // In fit: the StepScalars on the device (kiln/ops.h), from which the ops take the step's
    // values (dropout's counter in place of `step`) when they run, so that the step can be
    // captured once and replayed. Null data: the values above are used.
    View step_scalars;
};

class Layer {
  public:
    virtual ~Layer() = default;

    virtual std::string class_name() const = 0;
    const std::string& name() const { return name_; }
    void set_name(std::string name) { name_ = std::move(name); }

    // Validates the input shape of one sample and returns the output shape; called once.
    virtual Shape build(const Shape& input_shape) = 0;
    const Shape& input_shape() const { return input_shape_; }
    const Shape& output_shape() const { return output_shape_; }

    virtual std::vector<ParamInfo> param_info() const { return {}; }
    // Views into the model's flat parameter and gradient buffers, in param_info() order (a
    // non-trainable weight's gradient view is empty).
    void bind(std::vector<View> params, std::vector<View> grads) {
        params_ = std::move(params);
        grads_ = std::move(grads);
    }
    const std::vector<View>& params() const { return params_; }

    // Allocates whatever per-batch state the layer keeps (a dropout mask), for up to max_batch
    // samples. Called once per fit/evaluate/predict setup, never per step.
    virtual void allocate(Backend& backend, int64_t max_batch, DType dtype) {
        (void)backend, (void)max_batch, (void)dtype;
    }
    // Frees what allocate() took; the model calls it before its backend goes away, since a
    // layer (held by shared pointer) may outlive the model.
    virtual void release_buffers() {}
    // When true, the layer's output is its input reinterpreted (Flatten): the model passes the
    // same buffer and skips forward and backward.
    virtual bool aliases_input() const { return false; }

    // y(n × out) = f(x(n × in)).
    virtual void forward(const StepContext& ctx, const View& x, const View& y, int64_t n) = 0;
    // From dy (which it may overwrite) writes the parameter gradients (=) and, when dx.data is
    // non-null, dx(n × in).
    virtual void backward(const StepContext& ctx, const View& x, const View& y, const View& dy,
                          const View& dx, int64_t n) = 0;

    virtual LayerConfig config() const = 0;

    // The activation this layer ends in, if any (the loss may fuse a final softmax or sigmoid).
    virtual Activation final_activation() const { return Activation::kLinear; }
    void set_fused_output(bool fused) { fused_output_ = fused; }
    bool fused_output() const { return fused_output_; }

  protected:
    std::string name_;
    Shape input_shape_, output_shape_;
    std::vector<View> params_, grads_;
    bool fused_output_ = false;
};

using LayerPtr = std::shared_ptr<Layer>;

// Builds a layer from its Keras config (not InputLayer). Throws kiln::Error naming the layer
// and the problem for an unknown class or argument.
LayerPtr layer_from_config(const LayerConfig& config);

namespace layers {

// The shape of one sample, as keras.Input(shape=...). Not a layer of the model; it gives the
// model its input shape.
struct Input {
    explicit Input(Shape shape) : shape(std::move(shape)) {}
    Shape shape;
};

LayerPtr Dense(int64_t units, const std::string& activation = "linear", bool use_bias = true,
               const std::string& kernel_initializer = "glorot_uniform",
               const std::string& bias_initializer = "zeros", const std::string& name = "");
LayerPtr Activation(const std::string& activation, const std::string& name = "");
LayerPtr Dropout(float rate, int64_t seed = -1, const std::string& name = "");
LayerPtr Flatten(const std::string& name = "");

// Image layers, channels-last: a sample is (height, width, channels). (height, width) pairs are
// given as {h, w}. C++ has no keyword arguments, so Conv2D takes its activation third, before
// the arguments that usually keep their defaults; the defaults are Keras's.
LayerPtr Conv2D(int64_t filters, std::array<int64_t, 2> kernel_size,
                const std::string& activation = "linear", std::array<int64_t, 2> strides = {1, 1},
                const std::string& padding = "valid", std::array<int64_t, 2> dilation_rate = {1, 1},
                bool use_bias = true, const std::string& kernel_initializer = "glorot_uniform",
                const std::string& bias_initializer = "zeros", const std::string& name = "");
// strides {0, 0}: Keras's None, the pool size.
LayerPtr MaxPooling2D(std::array<int64_t, 2> pool_size = {2, 2},
                      std::array<int64_t, 2> strides = {0, 0}, const std::string& padding = "valid",
                      const std::string& name = "");
LayerPtr AveragePooling2D(std::array<int64_t, 2> pool_size = {2, 2},
                          std::array<int64_t, 2> strides = {0, 0},
                          const std::string& padding = "valid", const std::string& name = "");
LayerPtr GlobalAveragePooling2D(bool keepdims = false, const std::string& name = "");
// Over the last axis (Keras's axis=-1): gamma and beta train, moving_mean and moving_variance
// are non-trainable weights, updated in training and used in inference.
LayerPtr BatchNormalization(float momentum = 0.99f, float epsilon = 1e-3f, bool center = true,
                            bool scale = true, const std::string& name = "");
// The shape of one sample; one entry may be -1, inferred from the others.
LayerPtr Reshape(Shape target_shape, const std::string& name = "");

}  // namespace layers
}  // namespace kiln
