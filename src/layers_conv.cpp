// The image layers, channels-last as Keras computes them: Conv2D, MaxPooling2D, AveragePooling2D,
// GlobalAveragePooling2D, BatchNormalization and Reshape.
//
// A sample is (H, W, C); the model hands a layer (n × H·W·C) views of the NHWC bytes, and each
// layer keeps the geometry of its op (kiln/conv_ops.h), filling in the batch at each call. Every
// layer keeps its (normalised) Keras config, which config() returns with its name.
#include "layers_conv.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kiln/backend.h"
#include "kiln/conv_ops.h"
#include "kiln/status.h"

namespace kiln {
namespace detail {
namespace {

std::string pair_string(const std::array<int64_t, 2>& p) {
    return "(" + std::to_string(p[0]) + ", " + std::to_string(p[1]) + ")";
}

Padding padding_or_throw(const std::string& padding, const std::string& where) {
    if (padding == "valid")
        return Padding::kValid;
    if (padding == "same")
        return Padding::kSame;
    throw Error(where + ": padding must be 'valid' or 'same', got '" + padding + "'");
}

void require_positive(const std::array<int64_t, 2>& p, const char* what, const std::string& where) {
    if (p[0] <= 0 || p[1] <= 0) {
        throw Error(where + ": " + what + " must be positive, got " + pair_string(p));
    }
}

// An image sample is (H, W, C).
void require_image(const Shape& input_shape, const std::string& where) {
    if (input_shape.size() != 3) {
        throw Error(where + " expects images of shape (height, width, channels), got " +
                    shape_string(input_shape) +
                    "; add a Reshape layer before it (e.g. to (28, 28, 1))");
    }
}

// Fills a device view with one value, through a host buffer of the view's dtype.
void fill_value(Backend& backend, const View& v, double value) {
    const size_t n = static_cast<size_t>(v.elements());
    if (v.dtype == DType::kFloat64) {
        const std::vector<double> host(n, value);
        backend.upload(v.data, host.data(), n * sizeof(double));
    } else {
        const std::vector<float> host(n, static_cast<float>(value));
        backend.upload(v.data, host.data(), n * sizeof(float));
    }
}

View null_view(DType dtype) {
    return View{nullptr, dtype, {}};
}

// ---- Conv2D ---------------------------------------------------------------------------------
// y = act(x ⋆ kernel + bias), kernel (KH, KW, C, F) as Keras stores it.
class Conv2DLayer final : public Layer {
  public:
    explicit Conv2DLayer(LayerConfig config) : c_(std::move(config)) {
        if (c_.strides[0] == 0 && c_.strides[1] == 0)
            c_.strides = {1, 1};
    }

    std::string class_name() const override { return "Conv2D"; }

    Shape build(const Shape& input_shape) override {
        const std::string where = "Conv2D '" + name_ + "'";
        if (c_.filters <= 0)
            throw Error(where + ": filters must be positive");
        require_positive(c_.kernel_size, "kernel_size", where);
        require_positive(c_.strides, "strides", where);
        require_positive(c_.dilation_rate, "dilation_rate", where);
        // Keras refuses the combination (TensorFlow's convolution does not implement it).
        if (std::max(c_.strides[0], c_.strides[1]) > 1 &&
            std::max(c_.dilation_rate[0], c_.dilation_rate[1]) > 1) {
            throw Error(where +
                        ": strides > 1 is not supported together with dilation_rate > 1 "
                        "(strides " +
                        pair_string(c_.strides) + ", dilation_rate " +
                        pair_string(c_.dilation_rate) + "), as in Keras");
        }
        const Padding padding = padding_or_throw(c_.padding, where);
        act_ = activation_or_throw(c_.activation, name_);
        check_initializer(c_.kernel_initializer, name_);
        check_initializer(c_.bias_initializer, name_);
        require_image(input_shape, where);

        const AxisWindow h = keras_axis_window(input_shape[0], c_.kernel_size[0], c_.strides[0],
                                               c_.dilation_rate[0], padding);
        const AxisWindow w = keras_axis_window(input_shape[1], c_.kernel_size[1], c_.strides[1],
                                               c_.dilation_rate[1], padding);
        if (h.out <= 0 || w.out <= 0) {
            throw Error(where + ": the kernel " + pair_string(c_.kernel_size) + " with dilation " +
                        pair_string(c_.dilation_rate) + " does not fit the input " +
                        shape_string(input_shape) + " with padding 'valid'");
        }
        g_ = Conv2DGeometry{};
        g_.in_h = input_shape[0];
        g_.in_w = input_shape[1];
        g_.in_c = input_shape[2];
        g_.out_h = h.out;
        g_.out_w = w.out;
        g_.out_c = c_.filters;
        g_.kernel_h = c_.kernel_size[0];
        g_.kernel_w = c_.kernel_size[1];
        g_.stride_h = c_.strides[0];
        g_.stride_w = c_.strides[1];
        g_.dilation_h = c_.dilation_rate[0];
        g_.dilation_w = c_.dilation_rate[1];
        g_.pad_top = h.pad_before;
        g_.pad_bottom = h.pad_after;
        g_.pad_left = w.pad_before;
        g_.pad_right = w.pad_after;
        input_shape_ = input_shape;
        output_shape_ = {g_.out_h, g_.out_w, g_.out_c};
        return output_shape_;
    }

    std::vector<ParamInfo> param_info() const override {
        std::vector<ParamInfo> info{
            {"kernel", {g_.kernel_h, g_.kernel_w, g_.in_c, g_.out_c}, c_.kernel_initializer}};
        if (c_.use_bias)
            info.push_back({"bias", {g_.out_c}, c_.bias_initializer});
        return info;
    }

    void allocate(Backend& backend, int64_t max_batch, DType dtype) override {
        // As in Dense: only GELU needs its input back; the others' derivatives come from y.
        if (act_.kind == Activation::kGelu) {
            z_ = Tensor(backend, {max_batch, shape_elements(output_shape_)}, dtype);
        }
    }

    void release_buffers() override { z_ = Tensor(); }

    void forward(const StepContext& ctx, const View& x, const View& y, int64_t n) override {
        Backend& b = *ctx.backend;
        const Conv2DGeometry g = geometry(n);
        ActivationSpec act = act_;
        if (fused_output_ && ctx.want_logits)
            act.kind = Activation::kLinear;
        const View bias = c_.use_bias ? params_[1] : null_view(x.dtype);
        // Bias and activation in the convolution, unless the activation is a softmax or needs
        // its input kept for the backward pass (GELU): then they follow as their own op.
        if (act.kind != Activation::kSoftmax && !z_.defined()) {
            b.conv2d_forward(g, x, params_[0], bias, act, y);
            return;
        }
        const View z = pre_activation(y);
        b.conv2d_forward(g, x, params_[0], null_view(x.dtype), ActivationSpec{}, z);
        b.bias_activation_forward(z, bias, y, n * g.out_h * g.out_w, g.out_c, act);
    }

    void backward(const StepContext& ctx, const View& x, const View& y, const View& dy,
                  const View& dx, int64_t n) override {
        Backend& b = *ctx.backend;
        const Conv2DGeometry g = geometry(n);
        const int64_t rows = n * g.out_h * g.out_w;
        // dz = dy ⊙ act'(z), in place, over pixels × filters; a fused output already holds dz.
        if (act_.kind != Activation::kLinear && !fused_output_) {
            b.activation_backward(pre_activation(y), y, dy, dy, rows, g.out_c, act_);
        }
        b.conv2d_backward_filter(g, x, dy, grads_[0]);
        if (c_.use_bias)
            b.bias_grad(dy, grads_[1], rows, g.out_c);
        if (dx.data)
            b.conv2d_backward_data(g, dy, params_[0], dx);
    }

    LayerConfig config() const override {
        LayerConfig c = c_;
        c.name = name_;
        return c;
    }

    // A softmax over the filters is per pixel; the loss may take it over only when there is one
    // pixel.
    Activation final_activation() const override {
        return g_.out_h * g_.out_w == 1 ? act_.kind : Activation::kLinear;
    }

  private:
    Conv2DGeometry geometry(int64_t n) const {
        Conv2DGeometry g = g_;
        g.batch = n;
        return g;
    }

    View pre_activation(const View& y) const {
        if (!z_.defined())
            return y;
        View z = z_.view();
        z.shape = y.shape;
        return z;
    }

    LayerConfig c_;
    ActivationSpec act_;
    Conv2DGeometry g_;  // batch 0
    Tensor z_;
};

// ---- MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D --------------------------------
class Pool2DLayer final : public Layer {
  public:
    Pool2DLayer(LayerConfig config, PoolKind kind, bool global)
        : c_(std::move(config)), kind_(kind), global_(global) {
        if (!global_ && c_.strides[0] == 0 && c_.strides[1] == 0)
            c_.strides = c_.pool_size;
    }

    std::string class_name() const override { return c_.class_name; }

    Shape build(const Shape& input_shape) override {
        const std::string where = c_.class_name + " '" + name_ + "'";
        require_image(input_shape, where);
        g_ = Pool2DGeometry{};
        g_.kind = kind_;
        g_.in_h = input_shape[0];
        g_.in_w = input_shape[1];
        g_.channels = input_shape[2];
        if (global_) {
            // One window over the whole image.
            g_.pool_h = g_.stride_h = g_.in_h;
            g_.pool_w = g_.stride_w = g_.in_w;
            g_.out_h = g_.out_w = 1;
            output_shape_ = c_.keepdims ? Shape{1, 1, g_.channels} : Shape{g_.channels};
        } else {
            require_positive(c_.pool_size, "pool_size", where);
            require_positive(c_.strides, "strides", where);
            const Padding padding = padding_or_throw(c_.padding, where);
            const AxisWindow h =
                keras_axis_window(g_.in_h, c_.pool_size[0], c_.strides[0], 1, padding);
            const AxisWindow w =
                keras_axis_window(g_.in_w, c_.pool_size[1], c_.strides[1], 1, padding);
            if (h.out <= 0 || w.out <= 0) {
                throw Error(where + ": the pool " + pair_string(c_.pool_size) +
                            " does not fit the input " + shape_string(input_shape) +
                            " with padding 'valid'");
            }
            g_.pool_h = c_.pool_size[0];
            g_.pool_w = c_.pool_size[1];
            g_.stride_h = c_.strides[0];
            g_.stride_w = c_.strides[1];
            g_.out_h = h.out;
            g_.out_w = w.out;
            g_.pad_top = h.pad_before;
            g_.pad_left = w.pad_before;
            output_shape_ = {g_.out_h, g_.out_w, g_.channels};
        }
        input_shape_ = input_shape;
        return output_shape_;
    }

    void forward(const StepContext& ctx, const View& x, const View& y, int64_t n) override {
        ctx.backend->pool2d_forward(geometry(n), x, y);
    }

    void backward(const StepContext& ctx, const View& x, const View& y, const View& dy,
                  const View& dx, int64_t n) override {
        if (dx.data)
            ctx.backend->pool2d_backward(geometry(n), x, y, dy, dx);
    }

    LayerConfig config() const override {
        LayerConfig c = c_;
        c.name = name_;
        return c;
    }

  private:
    Pool2DGeometry geometry(int64_t n) const {
        Pool2DGeometry g = g_;
        g.batch = n;
        return g;
    }

    LayerConfig c_;
    PoolKind kind_;
    bool global_;
    Pool2DGeometry g_;  // batch 0
};

// ---- BatchNormalization ----------------------------------------------------------------------
// Over the last axis. Training: the batch's statistics, and the moving ones updated; inference:
// the moving ones. Without scale (center), gamma (beta) is a constant one (zero) the layer keeps
// and its gradient goes to a spare buffer.
class BatchNormLayer final : public Layer {
  public:
    explicit BatchNormLayer(LayerConfig config) : c_(std::move(config)) {}

    std::string class_name() const override { return "BatchNormalization"; }

    Shape build(const Shape& input_shape) override {
        const std::string where = "BatchNormalization '" + name_ + "'";
        if (input_shape.empty())
            throw Error(where + ": needs an input with a feature axis");
        // Keras counts the batch axis: the last axis of a (H, W, C) sample is 3.
        const int64_t last = static_cast<int64_t>(input_shape.size());
        if (c_.axis != -1 && c_.axis != last) {
            throw Error(where + ": axis " + std::to_string(c_.axis) +
                        " is not supported; kiln normalises the last axis (-1 or " +
                        std::to_string(last) + " for inputs of shape " + shape_string(input_shape) +
                        ")");
        }
        if (!(c_.momentum >= 0.0f && c_.momentum <= 1.0f)) {
            throw Error(where + ": momentum must be in [0, 1], got " + std::to_string(c_.momentum));
        }
        if (!(c_.epsilon > 0.0f)) {
            throw Error(where + ": epsilon must be positive, got " + std::to_string(c_.epsilon));
        }
        for (const std::string* init :
             {&c_.gamma_initializer, &c_.beta_initializer, &c_.moving_mean_initializer,
              &c_.moving_variance_initializer}) {
            check_initializer(*init, name_);
        }
        channels_ = input_shape.back();
        input_shape_ = output_shape_ = input_shape;
        return output_shape_;
    }

    // Keras's order: gamma, beta, then the non-trainable moving_mean and moving_variance.
    std::vector<ParamInfo> param_info() const override {
        std::vector<ParamInfo> info;
        if (c_.scale)
            info.push_back({"gamma", {channels_}, c_.gamma_initializer});
        if (c_.center)
            info.push_back({"beta", {channels_}, c_.beta_initializer});
        info.push_back({"moving_mean", {channels_}, c_.moving_mean_initializer, false});
        info.push_back({"moving_variance", {channels_}, c_.moving_variance_initializer, false});
        return info;
    }

    void allocate(Backend& backend, int64_t max_batch, DType dtype) override {
        backend_ = &backend;
        max_batch_ = max_batch;
        dtype_ = dtype;
        saved_mean_ = Tensor(backend, {channels_}, dtype);
        saved_inv_std_ = Tensor(backend, {channels_}, dtype);
        backend.fill_zero(saved_mean_.view());
        backend.fill_zero(saved_inv_std_.view());
        if (!c_.scale) {
            ones_ = Tensor(backend, {channels_}, dtype);
            fill_value(backend, ones_.view(), 1.0);
            spare_dgamma_ = Tensor(backend, {channels_}, dtype);
        }
        if (!c_.center) {
            zeros_ = Tensor(backend, {channels_}, dtype);
            backend.fill_zero(zeros_.view());
            spare_dbeta_ = Tensor(backend, {channels_}, dtype);
        }
    }

    void release_buffers() override {
        saved_mean_ = Tensor();
        saved_inv_std_ = Tensor();
        ones_ = Tensor();
        zeros_ = Tensor();
        spare_dgamma_ = Tensor();
        spare_dbeta_ = Tensor();
        spare_dx_ = Tensor();
        backend_ = nullptr;
    }

    void forward(const StepContext& ctx, const View& x, const View& y, int64_t n) override {
        Backend& b = *ctx.backend;
        const BatchNormGeometry g = geometry(n);
        if (ctx.training) {
            b.batch_norm_forward_training(g, x, gamma(), beta(), y, moving_mean(),
                                          moving_variance(), saved_mean_.view(),
                                          saved_inv_std_.view());
        } else {
            b.batch_norm_forward_inference(g, x, gamma(), beta(), moving_mean(), moving_variance(),
                                           y);
        }
    }

    void backward(const StepContext& ctx, const View& x, const View& y, const View& dy,
                  const View& dx, int64_t n) override {
        (void)y;
        Backend& b = *ctx.backend;
        const View dgamma = c_.scale ? grads_[0] : spare_dgamma_.view();
        const View dbeta = c_.center ? grads_[c_.scale ? 1 : 0] : spare_dbeta_.view();
        View out = dx;
        if (!out.data) {
            // The first layer: its input gradient is wanted by no one, but the op writes one.
            // Allocated once, at the first backward pass that needs it.
            if (!spare_dx_.defined()) {
                spare_dx_ = Tensor(*backend_, {max_batch_, shape_elements(input_shape_)}, dtype_);
            }
            out = spare_dx_.view();
        }
        b.batch_norm_backward(geometry(n), x, dy, gamma(), saved_mean_.view(),
                              saved_inv_std_.view(), out, dgamma, dbeta);
    }

    LayerConfig config() const override {
        LayerConfig c = c_;
        c.name = name_;
        return c;
    }

  private:
    BatchNormGeometry geometry(int64_t n) const {
        BatchNormGeometry g;
        g.rows = n * (shape_elements(input_shape_) / channels_);
        g.channels = channels_;
        g.momentum = c_.momentum;
        g.epsilon = c_.epsilon;
        return g;
    }

    // Views in param_info() order.
    View gamma() const { return c_.scale ? params_[0] : ones_.view(); }
    View beta() const { return c_.center ? params_[c_.scale ? 1 : 0] : zeros_.view(); }
    size_t moving_index() const { return size_t(c_.scale) + size_t(c_.center); }
    View moving_mean() const { return params_[moving_index()]; }
    View moving_variance() const { return params_[moving_index() + 1]; }

    LayerConfig c_;
    int64_t channels_ = 0;
    Backend* backend_ = nullptr;
    int64_t max_batch_ = 0;
    DType dtype_ = DType::kFloat32;
    Tensor saved_mean_, saved_inv_std_;  // (channels): the last training batch's statistics
    Tensor ones_, zeros_;                // gamma without scale, beta without center
    Tensor spare_dgamma_, spare_dbeta_, spare_dx_;
};

// ---- Reshape ----------------------------------------------------------------------------------
// The bytes do not move: the output is the input seen with another shape.
class ReshapeLayer final : public Layer {
  public:
    explicit ReshapeLayer(LayerConfig config) : c_(std::move(config)) {}

    std::string class_name() const override { return "Reshape"; }

    Shape build(const Shape& input_shape) override {
        const std::string where = "Reshape '" + name_ + "'";
        if (c_.target_shape.empty())
            throw Error(where + ": target_shape is empty");
        const int64_t elements = shape_elements(input_shape);
        int64_t known = 1, unknown = -1;
        for (size_t i = 0; i < c_.target_shape.size(); ++i) {
            const int64_t d = c_.target_shape[i];
            if (d == -1 && unknown < 0) {
                unknown = static_cast<int64_t>(i);
            } else if (d <= 0) {
                throw Error(where + ": target_shape " + shape_string(c_.target_shape) +
                            " may hold positive sizes and one -1 only");
            } else {
                known *= d;
            }
        }
        Shape out = c_.target_shape;
        if (unknown >= 0) {
            if (elements % known != 0) {
                throw Error(where + ": cannot reshape " + shape_string(input_shape) + " to " +
                            shape_string(c_.target_shape));
            }
            out[static_cast<size_t>(unknown)] = elements / known;
        }
        if (shape_elements(out) != elements) {
            throw Error(where + ": cannot reshape " + shape_string(input_shape) + " (" +
                        std::to_string(elements) + " values) to " + shape_string(c_.target_shape) +
                        " (" + std::to_string(shape_elements(out)) + " values)");
        }
        input_shape_ = input_shape;
        output_shape_ = out;
        return output_shape_;
    }

    bool aliases_input() const override { return true; }
    void forward(const StepContext&, const View&, const View&, int64_t) override {}
    void backward(const StepContext&, const View&, const View&, const View&, const View&,
                  int64_t) override {}

    LayerConfig config() const override {
        LayerConfig c = c_;
        c.name = name_;
        return c;
    }

  private:
    LayerConfig c_;
};

}  // namespace

bool is_image_layer_class(const std::string& class_name) {
    return class_name == "Conv2D" || class_name == "MaxPooling2D" ||
           class_name == "AveragePooling2D" || class_name == "GlobalAveragePooling2D" ||
           class_name == "BatchNormalization" || class_name == "Reshape";
}

LayerPtr image_layer_from_config(const LayerConfig& c) {
    if (c.class_name == "Conv2D")
        return std::make_shared<Conv2DLayer>(c);
    if (c.class_name == "MaxPooling2D") {
        return std::make_shared<Pool2DLayer>(c, PoolKind::kMax, false);
    }
    if (c.class_name == "AveragePooling2D") {
        return std::make_shared<Pool2DLayer>(c, PoolKind::kAverage, false);
    }
    if (c.class_name == "GlobalAveragePooling2D") {
        return std::make_shared<Pool2DLayer>(c, PoolKind::kAverage, true);
    }
    if (c.class_name == "BatchNormalization")
        return std::make_shared<BatchNormLayer>(c);
    if (c.class_name == "Reshape")
        return std::make_shared<ReshapeLayer>(c);
    return nullptr;
}

Status image_layer_weights(const LayerConfig& config, Shape* shape,
                           std::vector<ParamInfo>* weights) {
    try {
        LayerPtr layer = image_layer_from_config(config);
        if (!layer) {
            return Status::unsupported("layer '" + config.name + "': " + config.class_name +
                                       " is not an image layer");
        }
        layer->set_name(config.name);
        *shape = layer->build(*shape);
        *weights = layer->param_info();
    } catch (const Error& e) {
        return Status::invalid_argument(e.what());
    }
    return Status::ok();
}

}  // namespace detail

// ---- the public constructors ------------------------------------------------------------------

namespace layers {

LayerPtr Conv2D(int64_t filters, std::array<int64_t, 2> kernel_size, const std::string& activation,
                std::array<int64_t, 2> strides, const std::string& padding,
                std::array<int64_t, 2> dilation_rate, bool use_bias,
                const std::string& kernel_initializer, const std::string& bias_initializer,
                const std::string& name) {
    LayerConfig c;
    c.class_name = "Conv2D";
    c.name = name;
    c.filters = filters;
    c.kernel_size = kernel_size;
    c.activation = activation;
    c.strides = strides;
    c.padding = padding;
    c.dilation_rate = dilation_rate;
    c.use_bias = use_bias;
    c.kernel_initializer = kernel_initializer;
    c.bias_initializer = bias_initializer;
    return layer_from_config(c);
}

namespace {

LayerPtr pooling(const char* class_name, std::array<int64_t, 2> pool_size,
                 std::array<int64_t, 2> strides, const std::string& padding,
                 const std::string& name) {
    LayerConfig c;
    c.class_name = class_name;
    c.name = name;
    c.pool_size = pool_size;
    c.strides = strides;
    c.padding = padding;
    return layer_from_config(c);
}

}  // namespace

LayerPtr MaxPooling2D(std::array<int64_t, 2> pool_size, std::array<int64_t, 2> strides,
                      const std::string& padding, const std::string& name) {
    return pooling("MaxPooling2D", pool_size, strides, padding, name);
}

LayerPtr AveragePooling2D(std::array<int64_t, 2> pool_size, std::array<int64_t, 2> strides,
                          const std::string& padding, const std::string& name) {
    return pooling("AveragePooling2D", pool_size, strides, padding, name);
}

LayerPtr GlobalAveragePooling2D(bool keepdims, const std::string& name) {
    LayerConfig c;
    c.class_name = "GlobalAveragePooling2D";
    c.name = name;
    c.keepdims = keepdims;
    return layer_from_config(c);
}

LayerPtr BatchNormalization(float momentum, float epsilon, bool center, bool scale,
                            const std::string& name) {
    LayerConfig c;
    c.class_name = "BatchNormalization";
    c.name = name;
    c.momentum = momentum;
    c.epsilon = epsilon;
    c.center = center;
    c.scale = scale;
    return layer_from_config(c);
}

LayerPtr Reshape(Shape target_shape, const std::string& name) {
    LayerConfig c;
    c.class_name = "Reshape";
    c.name = name;
    c.target_shape = std::move(target_shape);
    return layer_from_config(c);
}

}  // namespace layers
}  // namespace kiln
