#include "kiln/layers.h"

#include <utility>

#include "kiln/status.h"
#include "layers_conv.h"

namespace kiln {
namespace detail {

ActivationSpec activation_or_throw(const std::string& name, const std::string& layer) {
    ActivationSpec spec;
    if (!parse_activation(name, &spec)) {
        throw Error("layer '" + layer + "': unknown activation '" + name +
                    "' (kiln has linear, relu, sigmoid, tanh, softmax, gelu, elu, leaky_relu)");
    }
    return spec;
}

const char* const kInitializers[] = {"glorot_uniform", "glorot_normal", "he_uniform", "he_normal",
                                     "lecun_uniform",  "lecun_normal",  "zeros",      "ones",
                                     "random_uniform", "random_normal"};

void check_initializer(const std::string& name, const std::string& layer) {
    for (const char* known : kInitializers) {
        if (name == known)
            return;
    }
    throw Error("layer '" + layer + "': unknown initializer '" + name + "'");
}

}  // namespace detail

namespace {

using detail::activation_or_throw;
using detail::check_initializer;

// ---- Dense -------------------------------------------------------------------------------
// y = act(x · kernel + bias), kernel (in, units) as Keras stores it.
class DenseLayer final : public Layer {
  public:
    DenseLayer(int64_t units, const std::string& activation, bool use_bias, std::string kernel_init,
               std::string bias_init)
        : units_(units),
          activation_name_(activation),
          use_bias_(use_bias),
          kernel_init_(std::move(kernel_init)),
          bias_init_(std::move(bias_init)) {}

    std::string class_name() const override { return "Dense"; }

    Shape build(const Shape& input_shape) override {
        if (units_ <= 0)
            throw Error("Dense '" + name_ + "': units must be positive");
        act_ = activation_or_throw(activation_name_, name_);
        check_initializer(kernel_init_, name_);
        check_initializer(bias_init_, name_);
        if (input_shape.size() != 1) {
            throw Error("Dense '" + name_ + "' expects a flat input (features,), got " +
                        shape_string(input_shape) + "; add a Flatten layer before it");
        }
        input_shape_ = input_shape;
        output_shape_ = {units_};
        return output_shape_;
    }

    std::vector<ParamInfo> param_info() const override {
        std::vector<ParamInfo> info{{"kernel", {input_shape_[0], units_}, kernel_init_}};
        if (use_bias_)
            info.push_back({"bias", {units_}, bias_init_});
        return info;
    }

    void allocate(Backend& backend, int64_t max_batch, DType dtype) override {
        // GELU's derivative needs its input; every other activation's can be taken from its
        // output (relu, elu and leaky_relu only test the sign, which the output keeps), so
        // they compute in place and keep no pre-activation buffer.
        if (act_.kind == Activation::kGelu) {
            z_ = Tensor(backend, {max_batch, units_}, dtype);
        }
    }

    void release_buffers() override { z_ = Tensor(); }

    void forward(const StepContext& ctx, const View& x, const View& y, int64_t n) override {
        const int64_t in = input_shape_[0];
        ActivationSpec act = act_;
        if (fused_output_ && ctx.want_logits)
            act.kind = Activation::kLinear;
        const View bias = use_bias_ ? params_[1] : View{nullptr, x.dtype, {}};
        if (!z_.defined()) {
            // The GEMM with its epilogue (one cuBLASLt call on CUDA).
            ctx.backend->dense_forward(x, params_[0], bias, y, n, in, units_, act);
            return;
        }
        const View z = pre_activation(y);  // GELU keeps its input for the backward pass
        ctx.backend->gemm(false, false, n, units_, in, 1.0f, x, params_[0], 0.0f, z);
        ctx.backend->bias_activation_forward(z, bias, y, n, units_, act);
    }

    void backward(const StepContext& ctx, const View& x, const View& y, const View& dy,
                  const View& dx, int64_t n) override {
        const int64_t in = input_shape_[0];
        Backend& b = *ctx.backend;
        // dz = dy ⊙ act'(z), in place; a fused output already holds dL/dz.
        if (act_.kind != Activation::kLinear && !fused_output_) {
            b.activation_backward(pre_activation(y), y, dy, dy, n, units_, act_);
        }
        // dkernel = xᵀ dz and dbias = Σ dz (one cuBLASLt call on CUDA)
        b.dense_backward_weights(x, dy, grads_[0],
                                 use_bias_ ? grads_[1] : View{nullptr, x.dtype, {}}, n, in, units_);
        if (dx.data)
            b.gemm(false, true, n, in, units_, 1.0f, dy, params_[0], 0.0f, dx);
    }

    LayerConfig config() const override {
        LayerConfig c;
        c.class_name = "Dense";
        c.name = name_;
        c.units = units_;
        c.activation = activation_name_;
        c.use_bias = use_bias_;
        c.kernel_initializer = kernel_init_;
        c.bias_initializer = bias_init_;
        return c;
    }

    Activation final_activation() const override { return act_.kind; }

  private:
    View pre_activation(const View& y) const {
        if (!z_.defined())
            return y;
        View z = z_.view();
        z.shape = y.shape;
        return z;
    }

    int64_t units_;
    std::string activation_name_;
    bool use_bias_;
    std::string kernel_init_, bias_init_;
    ActivationSpec act_;
    Tensor z_;
};

// ---- Activation --------------------------------------------------------------------------
class ActivationLayer final : public Layer {
  public:
    explicit ActivationLayer(std::string activation) : activation_name_(std::move(activation)) {}

    std::string class_name() const override { return "Activation"; }

    Shape build(const Shape& input_shape) override {
        act_ = activation_or_throw(activation_name_, name_);
        input_shape_ = output_shape_ = input_shape;
        return output_shape_;
    }

    void forward(const StepContext& ctx, const View& x, const View& y, int64_t n) override {
        ActivationSpec act = act_;
        if (fused_output_ && ctx.want_logits)
            act.kind = Activation::kLinear;
        ctx.backend->bias_activation_forward(x, View{nullptr, x.dtype, {}}, y, n, width(), act);
    }

    void backward(const StepContext& ctx, const View& x, const View& y, const View& dy,
                  const View& dx, int64_t n) override {
        if (!dx.data)
            return;
        if (fused_output_) {
            ctx.backend->copy(dx.data, dy.data,
                              static_cast<size_t>(n * width()) * dtype_size(dy.dtype));
            return;
        }
        ctx.backend->activation_backward(x, y, dy, dx, n, width(), act_);
    }

    LayerConfig config() const override {
        LayerConfig c;
        c.class_name = "Activation";
        c.name = name_;
        c.activation = activation_name_;
        return c;
    }

    Activation final_activation() const override { return act_.kind; }

  private:
    int64_t width() const { return shape_elements(input_shape_); }

    std::string activation_name_;
    ActivationSpec act_;
};

// ---- Dropout -----------------------------------------------------------------------------
// Inverted dropout, in training only: kept units are scaled by 1 / (1 - rate).
class DropoutLayer final : public Layer {
  public:
    DropoutLayer(float rate, int64_t seed) : rate_(rate), seed_(seed) {}

    std::string class_name() const override { return "Dropout"; }

    Shape build(const Shape& input_shape) override {
        if (!(rate_ >= 0.0f && rate_ < 1.0f)) {
            throw Error("Dropout '" + name_ + "': rate must be in [0, 1), got " +
                        std::to_string(rate_));
        }
        input_shape_ = output_shape_ = input_shape;
        return output_shape_;
    }

    void allocate(Backend& backend, int64_t max_batch, DType dtype) override {
        mask_ = Tensor(backend, {max_batch, shape_elements(input_shape_)}, dtype);
    }

    void release_buffers() override { mask_ = Tensor(); }

    void forward(const StepContext& ctx, const View& x, const View& y, int64_t n) override {
        const int64_t count = n * shape_elements(input_shape_);
        if (!ctx.training || rate_ == 0.0f) {
            ctx.backend->copy(y.data, x.data, static_cast<size_t>(count) * dtype_size(x.dtype));
            return;
        }
        // The draw depends on (seed, step): reproducible, and different every step. A layer
        // without its own seed derives one from the model's seed and its name.
        uint64_t seed = seed_ >= 0 ? static_cast<uint64_t>(seed_) : ctx.seed;
        for (char ch : name_)
            seed = seed * 131 + static_cast<unsigned char>(ch);
        if (ctx.step_scalars.data != nullptr) {
            ctx.backend->dropout_forward_step(x, y, mask_.view(), count, rate_, seed,
                                              ctx.step_scalars);
        } else {
            ctx.backend->dropout_forward(x, y, mask_.view(), count, rate_, seed, ctx.step);
        }
    }

    void backward(const StepContext& ctx, const View& x, const View& y, const View& dy,
                  const View& dx, int64_t n) override {
        (void)x, (void)y;
        if (!dx.data)
            return;
        const int64_t count = n * shape_elements(input_shape_);
        if (rate_ == 0.0f) {
            ctx.backend->copy(dx.data, dy.data, static_cast<size_t>(count) * dtype_size(dy.dtype));
            return;
        }
        ctx.backend->multiply(dy, mask_.view(), dx, count);
    }

    LayerConfig config() const override {
        LayerConfig c;
        c.class_name = "Dropout";
        c.name = name_;
        c.rate = rate_;
        c.seed = seed_;
        return c;
    }

  private:
    float rate_;
    int64_t seed_;
    Tensor mask_;
};

// ---- Flatten -----------------------------------------------------------------------------
// Row-major (channels-last) order, as Keras flattens: the bytes do not move.
class FlattenLayer final : public Layer {
  public:
    std::string class_name() const override { return "Flatten"; }

    Shape build(const Shape& input_shape) override {
        input_shape_ = input_shape;
        output_shape_ = {shape_elements(input_shape)};
        return output_shape_;
    }

    bool aliases_input() const override { return true; }
    void forward(const StepContext&, const View&, const View&, int64_t) override {}
    void backward(const StepContext&, const View&, const View&, const View&, const View&,
                  int64_t) override {}

    LayerConfig config() const override {
        LayerConfig c;
        c.class_name = "Flatten";
        c.name = name_;
        return c;
    }
};

}  // namespace

LayerPtr layer_from_config(const LayerConfig& c) {
    LayerPtr layer;
    if (c.class_name == "Dense") {
        layer = std::make_shared<DenseLayer>(c.units, c.activation, c.use_bias,
                                             c.kernel_initializer, c.bias_initializer);
    } else if (c.class_name == "Activation") {
        layer = std::make_shared<ActivationLayer>(c.activation);
    } else if (c.class_name == "Dropout") {
        layer = std::make_shared<DropoutLayer>(c.rate, c.seed);
    } else if (c.class_name == "Flatten") {
        layer = std::make_shared<FlattenLayer>();
    } else if (!(layer = detail::image_layer_from_config(c))) {
        throw Error("layer '" + c.name + "': kiln has no layer class '" + c.class_name +
                    "' (it has Dense, Activation, Dropout, Flatten, " + detail::kImageLayerClasses +
                    ")");
    }
    layer->set_name(c.name);
    return layer;
}

namespace layers {

LayerPtr Dense(int64_t units, const std::string& activation, bool use_bias,
               const std::string& kernel_initializer, const std::string& bias_initializer,
               const std::string& name) {
    LayerConfig c;
    c.class_name = "Dense";
    c.name = name;
    c.units = units;
    c.activation = activation;
    c.use_bias = use_bias;
    c.kernel_initializer = kernel_initializer;
    c.bias_initializer = bias_initializer;
    return layer_from_config(c);
}

LayerPtr Activation(const std::string& activation, const std::string& name) {
    LayerConfig c;
    c.class_name = "Activation";
    c.name = name;
    c.activation = activation;
    return layer_from_config(c);
}

LayerPtr Dropout(float rate, int64_t seed, const std::string& name) {
    LayerConfig c;
    c.class_name = "Dropout";
    c.name = name;
    c.rate = rate;
    c.seed = seed;
    return layer_from_config(c);
}

LayerPtr Flatten(const std::string& name) {
    LayerConfig c;
    c.class_name = "Flatten";
    c.name = name;
    return layer_from_config(c);
}

}  // namespace layers
}  // namespace kiln
