// The Sequential model and its fit loop.
//
// One epoch on the device: a permutation, then per step a gather into the fixed batch buffers,
// forward, the loss (which adds into device accumulators), backward and one optimizer update
// over the flat parameter buffer; then validation into the same accumulators and one read of
// them. Nothing in a step waits for the host, and nothing is allocated after setup.
#include "kiln/model.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <map>
#include <regex>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "checkpoint_writer.h"
#include "kernels/math.h"
#include "kiln/interrupt.h"
#include "kiln/status.h"
#include "scope_exit.h"

namespace kiln {
namespace {

// Each parameter starts at a multiple of 16 elements (64 bytes) in the flat buffer, so that
// every view is aligned for vector loads.
constexpr int64_t kParamAlignment = 16;

int64_t align_up(int64_t n, int64_t a) {
    return (n + a - 1) / a * a;
}

// Keras's naming.to_snake_case: "Dense" -> "dense", "Conv2D" -> "conv2d",
// "BatchNormalization" -> "batch_normalization", "MaxPooling2D" -> "max_pooling2d".
std::string snake_case(const std::string& class_name) {
    std::string out = std::regex_replace(class_name, std::regex("(.)([A-Z][a-z]+)"), "$1_$2");
    out = std::regex_replace(out, std::regex("([a-z])([A-Z])"), "$1_$2");
    for (char& ch : out)
        ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return out;
}

// ---- weight initialisers (Keras's definitions, kiln's counter-based draws) ----------------
struct Fans {
    double in = 1, out = 1;
};

Fans compute_fans(const Shape& shape) {
    Fans f;
    if (shape.size() == 1) {
        f.in = f.out = static_cast<double>(shape[0]);
    } else if (shape.size() == 2) {
        f.in = static_cast<double>(shape[0]);
        f.out = static_cast<double>(shape[1]);
    } else if (shape.size() > 2) {
        // Convolution kernels (..., in, out): the receptive field multiplies both fans.
        double receptive = 1;
        for (size_t i = 0; i + 2 < shape.size(); ++i)
            receptive *= static_cast<double>(shape[i]);
        f.in = static_cast<double>(shape[shape.size() - 2]) * receptive;
        f.out = static_cast<double>(shape[shape.size() - 1]) * receptive;
    }
    return f;
}

// Uniform in [0, 1) with 53 bits, from the counter-based hash.
double uniform53(uint64_t seed, uint64_t stream, uint64_t i) {
    return static_cast<double>(math::hash3(seed, stream, i) >> 11) * (1.0 / 9007199254740992.0);
}

// A standard normal draw by Box-Muller; `truncated` redraws beyond two standard deviations, as
// Keras's TruncatedNormal does.
double normal(uint64_t seed, uint64_t stream, uint64_t i, bool truncated) {
    for (uint64_t attempt = 0;; ++attempt) {
        const uint64_t k = (i * 64 + attempt) * 2;
        const double u1 = 1.0 - uniform53(seed, stream, k);  // in (0, 1]
        const double u2 = uniform53(seed, stream, k + 1);
        const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
        if (!truncated || std::fabs(z) <= 2.0 || attempt == 63)
            return z;
    }
}

std::vector<float> initial_values(const ParamInfo& p, uint64_t seed, uint64_t stream) {
    const int64_t n = shape_elements(p.shape);
    std::vector<float> v(static_cast<size_t>(n));
    const Fans f = compute_fans(p.shape);
    // Keras scales a truncated normal's stddev by this so the truncated draw has the asked-for
    // variance.
    constexpr double kTruncatedStd = 0.87962566103423978;
    double limit = 0, stddev = 0;
    bool use_normal = false, truncated = false;
    const std::string& init = p.initializer;
    if (init == "zeros" || init == "ones") {
        std::fill(v.begin(), v.end(), init == "ones" ? 1.0f : 0.0f);
        return v;
    } else if (init == "glorot_uniform") {
        limit = std::sqrt(6.0 / (f.in + f.out));
    } else if (init == "he_uniform") {
        limit = std::sqrt(6.0 / f.in);
    } else if (init == "lecun_uniform") {
        limit = std::sqrt(3.0 / f.in);
    } else if (init == "random_uniform") {
        limit = 0.05;
    } else if (init == "glorot_normal") {
        use_normal = truncated = true;
        stddev = std::sqrt(2.0 / (f.in + f.out)) / kTruncatedStd;
    } else if (init == "he_normal") {
        use_normal = truncated = true;
        stddev = std::sqrt(2.0 / f.in) / kTruncatedStd;
    } else if (init == "lecun_normal") {
        use_normal = truncated = true;
        stddev = std::sqrt(1.0 / f.in) / kTruncatedStd;
    } else if (init == "random_normal") {
        use_normal = true;
        stddev = 0.05;
    } else {
        throw Error("unknown initializer '" + init + "' for weight '" + p.name + "'");
    }
    for (int64_t i = 0; i < n; ++i) {
        const double x = use_normal ? stddev * normal(seed, stream, uint64_t(i), truncated)
                                    : limit * (2.0 * uniform53(seed, stream, uint64_t(i)) - 1.0);
        v[static_cast<size_t>(i)] = static_cast<float>(x);
    }
    return v;
}

// Host floats into a device buffer of the model's dtype.
void upload_values(Backend& backend, const View& dst, const float* src, int64_t n) {
    if (dst.dtype == DType::kFloat32) {
        backend.upload(dst.data, src, static_cast<size_t>(n) * sizeof(float));
    } else {
        std::vector<double> wide(src, src + n);
        backend.upload(dst.data, wide.data(), wide.size() * sizeof(double));
    }
}

std::vector<float> read_values(Backend& backend, const View& src, int64_t n) {
    std::vector<float> out(static_cast<size_t>(n));
    if (src.dtype == DType::kFloat32) {
        backend.read(out.data(), src.data, out.size() * sizeof(float));
    } else {
        std::vector<double> wide(static_cast<size_t>(n));
        backend.read(wide.data(), src.data, wide.size() * sizeof(double));
        std::copy(wide.begin(), wide.end(), out.begin());
    }
    return out;
}

}  // namespace

// The device buffers of one batch size: inputs, targets, each layer's output, two gradient
// buffers used in turn, the permutation and the accumulators.
struct Sequential::Buffers {
    int64_t capacity = 0;
    Tensor x, y;                  // (capacity × inputs), (capacity × target columns)
    std::vector<Tensor> outputs;  // one per layer that does not alias its input
    std::vector<View> output_views;
    Tensor grad_a, grad_b;  // (capacity × widest layer)
    Tensor acc;             // double[2 * AccumulatorSlots::kPerSet]: training, validation
};

Sequential::Sequential(std::vector<LayerPtr> layers, layers::Input input, std::string name)
    : name_(std::move(name)), input_shape_(std::move(input.shape)), layers_(std::move(layers)) {
    build();
}

Sequential::Sequential(const ModelConfig& config) : name_(config.name) {
    if (config.layers.empty() || config.layers[0].class_name != "InputLayer") {
        throw Error("model '" + config.name + "': the first layer must be an InputLayer");
    }
    input_shape_ = config.layers[0].input_shape;
    for (size_t i = 1; i < config.layers.size(); ++i) {
        layers_.push_back(layer_from_config(config.layers[i]));
    }
    build();
}

Sequential::~Sequential() {
    release_device_state();
}

void Sequential::release_device_state() {
    // Queued checkpoints are written first (one may stage from a snapshot slot); the writer's
    // staging buffers belong to the backend.
    writer_.reset();
    if (snapshots_)
        snapshots_->release_all();
    for (auto& layer : layers_) {
        layer->release_buffers();
        layer->bind({}, {});
    }
    buffers_.reset();
    layer_inputs_.clear();
    params_ = Tensor();
    grads_ = Tensor();
    nontrainable_ = Tensor();
    opt_state_ = Tensor();
}

void Sequential::build() {
    if (input_shape_.empty())
        throw Error("model '" + name_ + "': the input shape is empty");
    for (int64_t d : input_shape_) {
        if (d <= 0) {
            throw Error("model '" + name_ + "': invalid input shape " + shape_string(input_shape_));
        }
    }
    if (layers_.empty())
        throw Error("model '" + name_ + "' has no layers");
    // Keras's automatic names: dense, dense_1, dense_2, ...
    std::map<std::string, int> seen;
    for (const auto& layer : layers_) {
        if (!layer->name().empty())
            seen[layer->name()]++;
    }
    std::map<std::string, int> counters;
    for (auto& layer : layers_) {
        if (!layer->name().empty())
            continue;
        const std::string base = snake_case(layer->class_name());
        std::string candidate;
        do {
            const int k = counters[base]++;
            candidate = k == 0 ? base : base + "_" + std::to_string(k);
        } while (seen.count(candidate));
        seen[candidate]++;
        layer->set_name(candidate);
    }
    for (const auto& [layer_name, count] : seen) {
        if (count > 1)
            throw Error("model '" + name_ + "': two layers are named '" + layer_name + "'");
    }
    Shape shape = input_shape_;
    for (auto& layer : layers_)
        shape = layer->build(shape);
}

const Shape& Sequential::output_shape() const {
    return layers_.back()->output_shape();
}

Backend& Sequential::backend() const {
    if (!backend_)
        throw Error("model '" + name_ + "' is not compiled: call compile() first");
    return *backend_;
}

void Sequential::compile(const Optimizer& optimizer, const Loss& loss,
                         const std::vector<std::string>& metrics, const CompileOptions& options) {
    const int64_t outputs = shape_elements(output_shape());
    const bool categorical = loss.kind == LossKind::kSparseCategoricalCrossentropy ||
                             loss.kind == LossKind::kCategoricalCrossentropy;
    if (categorical && outputs < 2) {
        throw Error("loss " + loss.name() + " needs at least 2 outputs; the model has " +
                    std::to_string(outputs));
    }
    if (metrics.size() > 1) {
        throw Error("kiln computes one metric per model for now; got " +
                    std::to_string(metrics.size()));
    }
    LossSpec spec;
    spec.kind = loss.kind;
    spec.from_logits = loss.from_logits;
    const int64_t target_cols = loss.kind == LossKind::kSparseCategoricalCrossentropy ? 1 : outputs;
    metric_name_.clear();
    if (!metrics.empty()) {
        spec.metric = metric_from_name(metrics[0], target_cols, outputs);
        metric_name_ = metrics[0] == "acc" ? "accuracy" : metrics[0];
    }
    // A final softmax before a categorical cross-entropy, or a sigmoid before a binary one, is
    // left to the loss, which differentiates the pair in one stable step (p - y).
    const Activation last = layers_.back()->final_activation();
    spec.fused_output =
        !loss.from_logits &&
        ((categorical && last == Activation::kSoftmax) ||
         (loss.kind == LossKind::kBinaryCrossentropy && last == Activation::kSigmoid));
    for (auto& layer : layers_)
        layer->set_fused_output(false);
    layers_.back()->set_fused_output(spec.fused_output);

    if (options.precision != Precision::kFp32 && options.dtype != DType::kFloat32) {
        throw Error("compile: precision " + precision_name(options.precision) +
                    " rounds float32 GEMM operands; dtype " + dtype_name(options.dtype) +
                    " takes precision fp32 only");
    }
    BackendSelection selection = select_backend(options.device);
    if (!selection.backend->supports(options.dtype)) {
        throw Error(std::string("compile: the ") + selection.backend->description() +
                    " backend does not support dtype " + dtype_name(options.dtype));
    }
    release_device_state();
    backend_ = std::move(selection.backend);
    device_message_ = selection.message;
    if (options.log)
        std::fprintf(options.log, "kiln: %s\n", device_message_.c_str());
    backend_->set_precision(options.precision);
    step_graphs_ = options.step_graphs;
    if (options.log && options.precision == Precision::kTf32) {
        std::fprintf(options.log,
                     "kiln: precision tf32: GEMM operands rounded to TF32; float32 sums, "
                     "weights and optimizer state\n");
    } else if (options.log && options.precision == Precision::kBf16) {
        std::fprintf(options.log,
                     "kiln: precision bf16: Dense GEMM operands rounded to bfloat16, Conv2D's "
                     "to TF32; float32 sums, weights and optimizer state\n");
    }
    dtype_ = options.dtype;
    optimizer_ = optimizer;
    loss_ = loss;
    loss_spec_ = spec;
    seed_ = options.seed;
    iterations_ = 0;
    epochs_completed_ = 0;
    run_history_.on_train_begin(Logs());
    stop_training = false;

    // Lay out every trainable parameter in one flat buffer, every non-trainable one in another,
    // and initialise them.
    struct Slot {
        int64_t offset;
        ParamInfo info;
    };
    int64_t offset = 0, fixed_offset = 0;
    std::vector<std::vector<Slot>> layout(layers_.size());
    for (size_t i = 0; i < layers_.size(); ++i) {
        for (const ParamInfo& p : layers_[i]->param_info()) {
            int64_t& next = p.trainable ? offset : fixed_offset;
            layout[i].push_back({next, p});
            next = align_up(next + shape_elements(p.shape), kParamAlignment);
        }
    }
    n_params_ = std::max<int64_t>(offset, 1);
    ++buffers_generation_;
    params_ = Tensor(*backend_, {n_params_}, dtype_);
    grads_ = Tensor(*backend_, {n_params_}, dtype_);
    nontrainable_ = Tensor(*backend_, {std::max<int64_t>(fixed_offset, 1)}, dtype_);
    backend_->fill_zero(params_.view());
    backend_->fill_zero(grads_.view());  // the padding's gradient stays zero for ever
    backend_->fill_zero(nontrainable_.view());
    const int slots = optimizer_state_slots(optimizer_.hyper);
    opt_state_ = Tensor(*backend_, {std::max<int64_t>(slots * n_params_, 1)}, dtype_);
    backend_->fill_zero(opt_state_.view());
    for (size_t i = 0; i < layers_.size(); ++i) {
        std::vector<View> p_views, g_views;
        for (size_t j = 0; j < layout[i].size(); ++j) {
            const Slot& slot = layout[i][j];
            const Tensor& home = slot.info.trainable ? params_ : nontrainable_;
            p_views.push_back(home.view().slice(slot.offset, slot.info.shape));
            g_views.push_back(slot.info.trainable
                                  ? grads_.view().slice(slot.offset, slot.info.shape)
                                  : View{nullptr, dtype_, {}});
            const std::vector<float> init = initial_values(slot.info, seed_, i * 16 + j);
            upload_values(*backend_, p_views.back(), init.data(), shape_elements(slot.info.shape));
        }
        layers_[i]->bind(std::move(p_views), std::move(g_views));
    }
}

void Sequential::ensure_buffers(int64_t batch) {
    if (buffers_ && buffers_->capacity >= batch)
        return;
    Backend& b = backend();
    auto buf = std::make_unique<Buffers>();
    buf->capacity = batch;
    const int64_t inputs = shape_elements(input_shape_);
    const int64_t target_cols =
        loss_.kind == LossKind::kSparseCategoricalCrossentropy ? 1 : shape_elements(output_shape());
    buf->x = Tensor(b, {batch, inputs}, dtype_);
    buf->y = Tensor(b, {batch, target_cols}, dtype_);
    int64_t widest = inputs;
    View previous = buf->x.view();
    for (auto& layer : layers_) {
        const int64_t width = shape_elements(layer->output_shape());
        widest = std::max(widest, width);
        if (layer->aliases_input()) {
            View v = previous;
            v.shape = {batch, width};
            buf->output_views.push_back(v);
        } else {
            buf->outputs.emplace_back(b, Shape{batch, width}, dtype_);
            buf->output_views.push_back(buf->outputs.back().view());
        }
        previous = buf->output_views.back();
        layer->allocate(b, batch, dtype_);
    }
    buf->grad_a = Tensor(b, {batch, widest}, dtype_);
    buf->grad_b = Tensor(b, {batch, widest}, dtype_);
    buf->acc = Tensor(b, {2 * AccumulatorSlots::kPerSet}, DType::kFloat64);
    buffers_ = std::move(buf);
    ++buffers_generation_;
    layer_inputs_.assign(layers_.size(), View{});
}

View Sequential::forward(const StepContext& ctx, const View& input, int64_t n) {
    View x = input;
    for (size_t i = 0; i < layers_.size(); ++i) {
        View y = buffers_->output_views[i].first_rows(n);
        if (layers_[i]->aliases_input()) {
            y.data = x.data;  // the input may be a slice of the dataset, not the batch buffer
        } else {
            layers_[i]->forward(ctx, x, y, n);
        }
        layer_inputs_[i] = x;
        x = y;
    }
    return x;
}

void Sequential::backward(const StepContext& ctx, int64_t n) {
    View dy = buffers_->grad_a.view();
    View spare = buffers_->grad_b.view();
    for (size_t k = layers_.size(); k-- > 0;) {
        Layer& layer = *layers_[k];
        if (layer.aliases_input())
            continue;  // same bytes, same gradient
        View dx = k == 0 ? View{nullptr, dtype_, {}} : spare;
        View out = buffers_->output_views[k].first_rows(n);
        layer.backward(ctx, layer_inputs_[k], out, dy, dx, n);
        std::swap(dy, spare);
    }
}

namespace {

// The index of the first NaN or infinity in v, or -1. A bit test (exponent all ones), in
// chunks the compiler vectorises, so a dataset of 47 million values takes a few milliseconds.
int64_t first_non_finite(const std::vector<float>& v) {
    constexpr size_t kChunk = 4096;
    constexpr uint32_t kExponent = 0x7f800000u;
    for (size_t begin = 0; begin < v.size(); begin += kChunk) {
        const size_t end = std::min(v.size(), begin + kChunk);
        uint32_t bad = 0;
        for (size_t i = begin; i < end; ++i)
            bad |= uint32_t((math::float_bits(v[i]) & kExponent) == kExponent);
        if (bad) {
            for (size_t i = begin; i < end; ++i) {
                if (!std::isfinite(v[i]))
                    return static_cast<int64_t>(i);
            }
        }
    }
    return -1;
}

// Throws kiln::Error naming the sample and the value when `a` holds a NaN or an infinity: a
// value that would make every loss after it NaN, found before any work starts.
void require_finite(const data::Array& a, const std::string& where) {
    const int64_t at = first_non_finite(a.values);
    if (at < 0)
        return;
    const int64_t cols = std::max<int64_t>(a.cols(), 1);
    std::ostringstream msg;
    msg << where << ": sample " << at / cols << ", value " << at % cols << " is "
        << a.values[static_cast<size_t>(at)]
        << "; kiln trains and predicts on finite values only (fill or drop the missing ones "
           "first)";
    throw Error(msg.str());
}

}  // namespace

void Sequential::check_inputs(const data::Array& x, const char* what) const {
    const int64_t per_sample = shape_elements(input_shape_);
    if (x.rows() == 0)
        throw Error(std::string(what) + " (" + x.source + ") has no samples");
    if (x.cols() != per_sample) {
        throw Error(std::string(what) + " (" + x.source + "): each sample has " +
                    std::to_string(x.cols()) + " values, but model '" + name_ +
                    "' takes inputs of shape " + shape_string(input_shape_) + " (" +
                    std::to_string(per_sample) + " values)");
    }
    require_finite(x, std::string(what) + " (" + x.source + ")");
}

void Sequential::check_targets(const data::Array& y, int64_t rows, const char* what) const {
    const std::string where = std::string(what) + " (" + y.source + ")";
    if (y.rows() != rows) {
        throw Error(where + " has " + std::to_string(y.rows()) + " rows but the inputs have " +
                    std::to_string(rows));
    }
    const int64_t outputs = shape_elements(output_shape());
    if (loss_.kind == LossKind::kSparseCategoricalCrossentropy) {
        if (y.cols() != 1) {
            throw Error(where +
                        ": sparse_categorical_crossentropy takes one class index per "
                        "sample, got " +
                        std::to_string(y.cols()) + " columns");
        }
        for (int64_t r = 0; r < rows; ++r) {
            const float v = y.values[static_cast<size_t>(r)];
            if (!(v >= 0.0f && v < static_cast<float>(outputs)) || v != std::floor(v)) {
                std::ostringstream msg;
                msg << where << ": label " << v << " at row " << r << " is not one of the "
                    << outputs << " classes (0.." << outputs - 1 << ") of the model's output";
                throw Error(msg.str());
            }
        }
    } else if (y.cols() != outputs) {
        throw Error(where + ": " + loss_.name() + " needs " + std::to_string(outputs) +
                    " target values per sample (the model's outputs), got " +
                    std::to_string(y.cols()));
    } else {
        require_finite(y, where);
    }
}

namespace {

int64_t target_columns(const Loss& loss, int64_t outputs) {
    return loss.kind == LossKind::kSparseCategoricalCrossentropy ? 1 : outputs;
}

}  // namespace

void Sequential::evaluate_on_device(const View& x, const View& y, int64_t rows, int64_t batch,
                                    const View& acc, int slot) {
    Backend& b = backend();
    const int64_t in = shape_elements(input_shape_);
    const int64_t outputs = shape_elements(output_shape());
    const int64_t yc = target_columns(loss_, outputs);
    StepContext ctx{&b,    /*training=*/false,    /*want_logits=*/true,
                    seed_, uint64_t(iterations_), View{}};
    for (int64_t offset = 0; offset < rows; offset += batch) {
        const int64_t n = std::min(batch, rows - offset);
        const View out = forward(ctx, x.slice(offset * in, {n, in}), n);
        b.loss(loss_spec_, out, y.slice(offset * yc, {n, yc}), View{nullptr, dtype_, {}}, n,
               outputs, n, acc, slot);
    }
}

Logs Sequential::logs_from(const double* acc, int slot, const std::string& prefix) const {
    Logs logs;
    const double count = acc[slot + AccumulatorSlots::kCount];
    logs.set(prefix + "loss", acc[slot + AccumulatorSlots::kLossSum] / count);
    if (!metric_name_.empty()) {
        logs.set(prefix + metric_name_, acc[slot + AccumulatorSlots::kMetricSum] / count);
    }
    return logs;
}

namespace {

// Whether two updates differ only in their per-step scalars (the rate and Adam's step size,
// which a captured step reads from StepScalars).
bool same_update_rule(OptimizerStep a, OptimizerStep b) {
    a.learning_rate = b.learning_rate = 0.0f;
    a.alpha = b.alpha = 0.0f;
    return a.kind == b.kind && a.momentum == b.momentum && a.nesterov == b.nesterov &&
           a.beta_1 == b.beta_1 && a.beta_2 == b.beta_2 && a.rho == b.rho &&
           a.epsilon == b.epsilon && a.centered == b.centered && a.weight_decay == b.weight_decay;
}

// Whether two fits' arguments (TrainingState::fit_args_json) give the same batches in the same
// order; the number of epochs does not matter.
bool same_data_order(const std::string& a, const std::string& b) {
    const auto ja = nlohmann::json::parse(a, nullptr, false);
    const auto jb = nlohmann::json::parse(b, nullptr, false);
    if (!ja.is_object() || !jb.is_object())
        return false;
    for (const char* key : {"batch_size", "validation_split", "validation_data", "shuffle"}) {
        if (!ja.contains(key) || !jb.contains(key) || ja[key] != jb[key])
            return false;
    }
    return true;
}

// The callbacks' state keys, a repeated one made unique with "#2", "#3", ... in order (the
// same callbacks in the same order give the same keys, run after run).
std::vector<std::string> unique_state_keys(const std::vector<CallbackPtr>& callbacks) {
    std::vector<std::string> keys;
    std::map<std::string, int> seen;
    for (const auto& cb : callbacks) {
        std::string key = cb->state_key();
        if (!key.empty() && ++seen[key] > 1)
            key += "#" + std::to_string(seen[key]);
        keys.push_back(key);
    }
    return keys;
}

void restore_callbacks_state(const std::vector<CallbackPtr>& callbacks,
                             const std::vector<std::string>& keys, const std::string& json) {
    if (json.empty())
        return;
    const auto state = nlohmann::json::parse(json, nullptr, false);
    if (state.is_discarded() || !state.is_object()) {
        throw Error("fit: the callbacks' state to resume from is not a JSON object");
    }
    for (const auto& [key, value] : state.items()) {
        const auto it = std::find(keys.begin(), keys.end(), key);
        if (it == keys.end()) {
            std::fprintf(stderr,
                         "kiln: resuming: the checkpoint holds the state of callback "
                         "'%s', which this fit does not have; it is ignored\n",
                         key.c_str());
            continue;
        }
        callbacks[size_t(it - keys.begin())]->restore_state(value.dump());
    }
}

}  // namespace

std::string Sequential::callbacks_state_json() const {
    nlohmann::json state = nlohmann::json::object();
    if (!active_callbacks_)
        return state.dump();
    for (size_t i = 0; i < active_callbacks_->size(); ++i) {
        if (active_state_keys_[i].empty())
            continue;
        const std::string text = (*active_callbacks_)[i]->state_json();
        auto j = nlohmann::json::parse(text, nullptr, false);
        if (j.is_discarded() || !j.is_object()) {
            throw Error("callback '" + active_state_keys_[i] +
                        "': state_json() is not a JSON object: " + text);
        }
        state[active_state_keys_[i]] = std::move(j);
    }
    return state.dump();
}

namespace {

// The reliability tests' NaN injection: KILN_INJECT_NAN="loss@S" makes the model's output NaN
// in optimizer step S (1-based), so the loss and every gradient of that step are NaN;
// "grad@S" makes one gradient NaN after step S's backward pass, so the update writes NaN into
// a weight and the following steps' losses are NaN.
struct NanInjection {
    std::string where;  // "loss" or "grad"; empty for none
    int64_t step = 0;
};

const NanInjection& nan_injection() {
    static const NanInjection injection = [] {
        NanInjection n;
        const char* spec = std::getenv("KILN_INJECT_NAN");
        if (spec == nullptr)
            return n;
        const std::string text = spec;
        const size_t at = text.find('@');
        if (at == std::string::npos ||
            (text.substr(0, at) != "loss" && text.substr(0, at) != "grad")) {
            std::fprintf(
                stderr,
                "kiln: warning: KILN_INJECT_NAN=%s is not loss@STEP or grad@STEP; ignored\n", spec);
            return n;
        }
        n.where = text.substr(0, at);
        n.step = std::atoll(text.c_str() + at + 1);
        return n;
    }();
    return injection;
}

void write_nan(Backend& b, void* at, DType dtype) {
    if (dtype == DType::kFloat64) {
        const double nan = std::numeric_limits<double>::quiet_NaN();
        b.upload(at, &nan, sizeof(nan));
    } else {
        const float nan = std::numeric_limits<float>::quiet_NaN();
        b.upload(at, &nan, sizeof(nan));
    }
}

}  // namespace

History Sequential::fit(const data::Array& x, const data::Array& y, const FitArgs& args) {
    Backend& b = backend();

    // Check everything before any work starts.
    if (args.batch_size <= 0)
        throw Error("fit: batch_size must be positive");
    if (args.epochs < 0 || args.initial_epoch < 0 || args.initial_epoch > args.epochs) {
        throw Error("fit: need 0 <= initial_epoch <= epochs, got initial_epoch " +
                    std::to_string(args.initial_epoch) + ", epochs " + std::to_string(args.epochs));
    }
    if (!(args.validation_split >= 0.0 && args.validation_split < 1.0)) {
        throw Error("fit: validation_split must be in [0, 1), got " +
                    std::to_string(args.validation_split));
    }
    check_inputs(x, "x");
    check_targets(y, x.rows(), "y");
    const int64_t in = shape_elements(input_shape_);
    const int64_t outputs = shape_elements(output_shape());
    const int64_t yc = target_columns(loss_, outputs);
    int64_t n_train = x.rows();
    int64_t n_val = 0;
    const float* val_x = nullptr;
    const float* val_y = nullptr;
    if (args.validation_data) {
        check_inputs(args.validation_data->x, "validation_data x");
        check_targets(args.validation_data->y, args.validation_data->x.rows(), "validation_data y");
        n_val = args.validation_data->x.rows();
        val_x = args.validation_data->x.values.data();
        val_y = args.validation_data->y.values.data();
    } else if (args.validation_split > 0.0) {
        // Keras: the first floor(n · (1 - split)) samples train, the rest validate, unshuffled
        // (keras/src/trainers/data_adapters/array_slicing.py, train_validation_split).
        n_train = static_cast<int64_t>(
            std::floor(static_cast<double>(x.rows()) * (1.0 - args.validation_split)));
        n_val = x.rows() - n_train;
        if (n_val == 0 || n_train == 0) {
            throw Error("fit: validation_split " + std::to_string(args.validation_split) + " of " +
                        std::to_string(x.rows()) + " samples leaves " +
                        (n_val == 0 ? "no validation samples" : "no training samples"));
        }
        val_x = x.values.data() + n_train * in;
        val_y = y.values.data() + n_train * yc;
    }

    // Callbacks: the progress bar first, so its epoch line comes before the others' messages;
    // History last, as Keras adds it. They are checked before any work, so that a configuration
    // one rejects has trained nothing and written nothing.
    const int64_t steps = (n_train + args.batch_size - 1) / args.batch_size;
    auto history = std::make_shared<History>();
    std::vector<CallbackPtr> callbacks;
    if (args.verbose > 0)
        callbacks.push_back(std::make_shared<ProgbarLogger>());
    callbacks.insert(callbacks.end(), args.callbacks.begin(), args.callbacks.end());
    callbacks.push_back(history);
    for (const auto& cb : callbacks) {
        if (!cb)
            throw Error("fit: a callback is null");
    }
    FitParams params;
    params.epochs = args.epochs;
    params.initial_epoch = args.initial_epoch;
    params.steps = steps;
    params.verbose = args.verbose;
    params.batch_log_keys = batch_log_keys(metric_name_);
    params.epoch_log_keys = epoch_log_keys(metric_name_, n_val > 0, callbacks);
    bool want_batch_logs = false;
    for (auto& cb : callbacks) {
        cb->set_model(this);
        cb->set_params(params);
        want_batch_logs = want_batch_logs || cb->wants_batch_logs();
    }
    for (const auto& cb : callbacks)
        cb->validate(params);
    active_callbacks_ = &callbacks;
    active_state_keys_ = unique_state_keys(callbacks);
    const ScopeExit inactive([this] {
        active_callbacks_ = nullptr;
        active_state_keys_.clear();
    });
    // A callback may continue an interrupted run (BackupAndRestore finding a backup); the
    // callbacks' state goes back before on_train_begin.
    int first_epoch = args.initial_epoch;
    std::string resumed_state = args.resume_callbacks_state_json;
    for (auto& cb : callbacks) {
        if (std::optional<ResumePoint> point = cb->resume_point()) {
            std::fprintf(
                stderr, "kiln: resuming from %s: epoch %d of %d, after batch %lld (step %lld)\n",
                point->source.c_str(), point->epoch + 1, args.epochs,
                static_cast<long long>(resume_within_epoch_ ? resume_within_epoch_->batch : 0),
                static_cast<long long>(iterations_));
            first_epoch = point->epoch;
            resumed_state = point->callbacks_state_json;
            params.initial_epoch = first_epoch;
            for (auto& c : callbacks)
                c->set_params(params);
            break;
        }
    }
    restore_callbacks_state(callbacks, active_state_keys_, resumed_state);

    // The dataset goes to the device once and stays there.
    Tensor x_train(b, {n_train, in}, dtype_), y_train(b, {n_train, yc}, dtype_);
    upload_values(b, x_train.view(), x.values.data(), n_train * in);
    upload_values(b, y_train.view(), y.values.data(), n_train * yc);
    Tensor x_val, y_val;
    if (n_val > 0) {
        x_val = Tensor(b, {n_val, in}, dtype_);
        y_val = Tensor(b, {n_val, yc}, dtype_);
        upload_values(b, x_val.view(), val_x, n_val * in);
        upload_values(b, y_val.view(), val_y, n_val * yc);
    }
    ensure_buffers(args.batch_size);
    Tensor perm(b, {n_train}, DType::kInt32);
    if (!args.shuffle) {
        std::vector<int32_t> identity(static_cast<size_t>(n_train));
        for (int64_t i = 0; i < n_train; ++i)
            identity[static_cast<size_t>(i)] = int32_t(i);
        perm.copy_from_host(identity.data());
    }

    stop_training = false;
    // What decides the data order, for checkpoints (a resumed run needs the same).
    fit_args_json_ = nlohmann::json{
        {"epochs", args.epochs},
        {"batch_size", args.batch_size},
        {"validation_split", args.validation_split},
        {"validation_data", args.validation_data.has_value()},
        {"shuffle",
         args.shuffle}}.dump();
    // The run's history keeps the epochs before this fit starts (a resumed run's).
    {
        const History before = run_history_;
        run_history_.on_train_begin(Logs());
        for (size_t i = 0; i < before.epoch.size() && before.epoch[i] < first_epoch; ++i) {
            Logs past;
            for (const std::string& key : before.keys)
                past.set(key, before.history.at(key)[i]);
            run_history_.on_epoch_end(before.epoch[i], past);
        }
        epochs_completed_ = first_epoch;
        batches_in_epoch_ = 0;
    }
    // A checkpoint taken within an epoch continues after its last batch, with the epoch's
    // running sums, when this fit orders the data as that run did.
    int64_t first_batch = 0;
    std::vector<double> first_sums;
    if (resume_within_epoch_ && resume_within_epoch_->epoch == first_epoch) {
        const MidEpoch& at = *resume_within_epoch_;
        std::string why;
        if (!same_data_order(at.fit_args_json, fit_args_json_)) {
            why = "this fit's batch size, validation split or shuffling differ from that run's";
        } else if (at.sums.size() != size_t(AccumulatorSlots::kPerSet)) {
            why = "the file does not hold the epoch's running sums";
        } else if (at.batch > steps) {
            why = "this fit's epoch has only " + std::to_string(steps) + " batches";
        }
        if (why.empty()) {
            first_batch = at.batch;
            first_sums = at.sums;
        } else {
            std::fprintf(stderr,
                         "kiln: warning: %s was written after batch %lld of epoch %d, but %s; "
                         "this fit redoes that epoch from its start (as Keras's "
                         "BackupAndRestore does)\n",
                         at.source.c_str(), static_cast<long long>(at.batch), at.epoch + 1,
                         why.c_str());
        }
    }
    resume_within_epoch_.reset();
    const int64_t iterations_at_start = iterations_;

    // The step's per-step values live on the device (StepScalars): written here when an epoch
    // starts or a callback changes the learning rate, moved on by each step's last op.
    Tensor scalars(b, {int64_t(sizeof(StepScalars))}, DType::kUInt8);
    float scalars_rate = 0.0f;
    auto write_scalars = [&](int64_t batch) {
        StepScalars s;
        s.iteration = iterations_;
        s.batch = batch;
        s.learning_rate = optimizer_.hyper.learning_rate;
        s.alpha = math::step_size(optimizer_.hyper, s.learning_rate, iterations_ + 1);
        b.upload(scalars.data(), &s, sizeof(s));
        scalars_rate = s.learning_rate;
    };
    StepInputs step_inputs;
    step_inputs.x = x_train.view();
    step_inputs.y = y_train.view();
    step_inputs.perm = perm.view();
    step_inputs.scalars = scalars.view();
    step_inputs.batch_size = args.batch_size;
    step_inputs.x_cols = in;
    step_inputs.y_cols = yc;

    // Step graphs: the training step of a full batch and the validation pass's full batches,
    // each captured once (after an eager run of the same shapes has made cuDNN's plans and
    // any scratch) and replayed; short batches run eagerly. A graph is made again when the
    // buffers it uses were reallocated or the update rule changed. The test hook that writes
    // NaN mid-step needs the host in every step, so it runs eagerly.
    graph_stats_ = StepGraphStats();
    graph_stats_.enabled = (step_graphs_ == StepGraphs::kOn ||
                            (step_graphs_ == StepGraphs::kAuto && b.kind() == DeviceKind::kCuda)) &&
                           nan_injection().where.empty();
    struct Captured {
        std::unique_ptr<StepGraph> graph;
        uint64_t generation = 0;
        OptimizerStep rule;
        bool warmed = false;  // an eager run of the same shapes came first
    };
    Captured train_graph, val_graph;
    auto give_up_graphs = [&](const std::exception& e) {
        graph_stats_.enabled = false;
        graph_stats_.off_reason = e.what();
        train_graph.graph.reset();
        val_graph.graph.reset();
        std::fprintf(stderr, "kiln: warning: step graphs off for the rest of this fit: %s\n",
                     e.what());
    };
    // Replays `slot`'s graph, capturing it first when it is missing or stale; false when the
    // caller must queue the ops itself (graphs off, not warmed yet, or the capture failed).
    auto run_captured = [&](Captured* slot, const std::function<void()>& body,
                            int64_t* nodes) -> bool {
        if (!graph_stats_.enabled)
            return false;
        if (!slot->warmed) {
            slot->warmed = true;
            return false;
        }
        if (!slot->graph || slot->generation != buffers_generation_ ||
            !same_update_rule(slot->rule, optimizer_.hyper)) {
            slot->graph.reset();
            try {
                slot->graph = b.capture(body);
            } catch (const Error& e) {
                give_up_graphs(e);
                return false;
            }
            slot->generation = buffers_generation_;
            slot->rule = optimizer_.hyper;
            *nodes = slot->graph->nodes();
            ++graph_stats_.captures;
        }
        slot->graph->replay();
        ++graph_stats_.replays;
        return true;
    };

    Logs logs;
    for (auto& cb : callbacks)
        cb->on_train_begin(logs);
    // fit's own accumulators, apart from the buffers': a callback's evaluate in mid-epoch
    // neither clears them nor moves them (it may reallocate the buffers for its batch size).
    Tensor fit_acc(b, {2 * AccumulatorSlots::kPerSet}, DType::kFloat64);
    const View acc = fit_acc.view();
    step_inputs.acc = acc;
    fit_sums_ = acc;
    const ScopeExit no_sums([this] { fit_sums_ = View{}; });
    // The progress display's running figures (see the peek below).
    constexpr std::chrono::milliseconds kPeekInterval{20};
    std::chrono::steady_clock::time_point last_peek{};
    Logs peeked_logs;
    for (int epoch = first_epoch; epoch < args.epochs && !stop_training; ++epoch) {
        for (auto& cb : callbacks)
            cb->on_epoch_begin(epoch, Logs());
        if (args.shuffle)
            b.permutation(perm.view(), n_train, seed_, uint64_t(epoch));
        b.fill_zero(acc);
        int64_t step = 0;
        if (epoch == first_epoch && first_batch > 0) {
            b.upload(acc.data, first_sums.data(), first_sums.size() * sizeof(double));
            step = first_batch;
            batches_in_epoch_ = first_batch;
        }
        write_scalars(step);
        peeked_logs = Logs();

        for (; step < steps; ++step) {
            // A signal's request is taken between steps: the weights are those after a whole
            // step, the state a checkpoint can continue from exactly.
            if (const int signal = interrupt_requested())
                stop_for_signal(signal, args, callbacks, epoch, iterations_at_start);
            const int64_t offset = step * args.batch_size;
            const int64_t rows = std::min(args.batch_size, n_train - offset);
            for (auto& cb : callbacks)
                cb->on_train_batch_begin(step, Logs());
            if (optimizer_.hyper.learning_rate != scalars_rate)
                write_scalars(step);  // a callback set a new rate
            const bool replayed = rows == args.batch_size &&
                                  run_captured(
                                      &train_graph, [&] { queue_train_step(step_inputs, rows); },
                                      &graph_stats_.train_nodes);
            if (!replayed) {
                queue_train_step(step_inputs, rows);
                ++graph_stats_.eager_steps;
            }
            ++iterations_;
            batches_in_epoch_ = step + 1;
            Logs batch_logs;
            if (want_batch_logs) {
                // On CUDA a peek queues a copy and an event on the stream, so the running
                // figures are asked for at most every kPeekInterval (and at an epoch's last
                // batch); between peeks the callbacks get the newest figures seen. On the CPU a
                // peek is a memcpy of 24 bytes, and every batch gets its own.
                const bool throttled = b.kind() == DeviceKind::kCuda;
                if (!throttled || step + 1 == steps ||
                    std::chrono::steady_clock::now() - last_peek >= kPeekInterval) {
                    double running[AccumulatorSlots::kPerSet];
                    if (b.peek(running, acc.data, sizeof(running)))
                        peeked_logs = logs_from(running, 0, "");
                    if (throttled)
                        last_peek = std::chrono::steady_clock::now();
                }
                batch_logs = peeked_logs;
            }
            for (auto& cb : callbacks)
                cb->on_train_batch_end(step, batch_logs);
            for (auto& cb : callbacks)
                cb->after_train_batch_end(step, batch_logs);
            if (stop_training)
                break;  // Keras leaves the epoch's steps at once (TerminateOnNaN)
        }

        if (n_val > 0) {
            for (auto& cb : callbacks)
                cb->on_test_begin(Logs());
            // The full batches (from a graph when step graphs are on), then the short one.
            const int64_t full_rows = n_val / args.batch_size * args.batch_size;
            auto queue_full = [&] {
                evaluate_on_device(x_val.view(), y_val.view(), full_rows, args.batch_size, acc,
                                   AccumulatorSlots::kPerSet);
            };
            if (full_rows > 0 && !run_captured(&val_graph, queue_full, &graph_stats_.val_nodes))
                queue_full();
            if (full_rows < n_val) {
                evaluate_on_device(x_val.view().slice(full_rows * in, {n_val - full_rows, in}),
                                   y_val.view().slice(full_rows * yc, {n_val - full_rows, yc}),
                                   n_val - full_rows, args.batch_size, acc,
                                   AccumulatorSlots::kPerSet);
            }
        }
        // The epoch's one read: training and validation sums together.
        double sums[2 * AccumulatorSlots::kPerSet];
        b.read(sums, acc.data, sizeof(sums));
        logs = logs_from(sums, 0, "");
        if (n_val > 0) {
            const Logs val = logs_from(sums, AccumulatorSlots::kPerSet, "val_");
            for (auto& cb : callbacks)
                cb->on_test_end(val);
            for (const auto& [key, value] : val.items())
                logs.set(key, value);
        }
        for (auto& cb : callbacks)
            cb->add_to_logs(epoch, &logs);
        // What a checkpoint taken by the callbacks below records.
        epochs_completed_ = epoch + 1;
        batches_in_epoch_ = 0;
        run_history_.on_epoch_end(epoch, logs);
        for (auto& cb : callbacks)
            cb->on_epoch_end(epoch, logs);
        for (auto& cb : callbacks)
            cb->after_epoch_end(epoch, logs);
    }
    // A signal that came after the last step (in the last validation, or after a callback
    // ended the run) finds the run complete: fit ends as usual, and the caller sees
    // interrupt_requested().
    // Every requested checkpoint is on disk before on_train_end (which may delete files the
    // writer has yet to write) and before fit returns.
    if (writer_)
        writer_->wait_idle();
    for (auto& cb : callbacks)
        cb->on_train_end(logs);
    if (writer_)
        writer_->wait_idle();
    return *history;
}

void Sequential::stop_for_signal(int signal, const FitArgs& args,
                                 const std::vector<CallbackPtr>& callbacks, int epoch,
                                 int64_t iterations_at_start) {
    const char* name = signal == SIGINT ? "SIGINT" : signal == SIGTERM ? "SIGTERM" : "a signal";
    const std::string at =
        (batches_in_epoch_ == 0 ? "at the end of epoch " + std::to_string(epochs_completed_)
                                : "after batch " + std::to_string(batches_in_epoch_) +
                                      " of epoch " + std::to_string(epoch + 1)) +
        " (step " + std::to_string(iterations_) + ")";
    std::string what = std::string("fit stopped by ") + name + " " + at;
    if (iterations_ == iterations_at_start) {
        what += "; nothing was trained, so no checkpoint was written";
    } else if (!args.interrupt_checkpoint.empty()) {
        CheckpointRequest request;
        request.path = args.interrupt_checkpoint;
        request.epoch = epochs_completed_;
        request.step = iterations_;
        request.callbacks_state_json = callbacks_state_json();
        const Status s = checkpoint_writer().wait(submit_checkpoint(request, /*synchronous=*/true));
        what += s.is_ok() ? "; wrote " + request.path
                          : "; could not write " + request.path + ": " + s.message();
    }
    if (iterations_ != iterations_at_start) {
        for (const auto& cb : callbacks)
            cb->on_interrupt(epoch, batches_in_epoch_);
    }
    // The callbacks' checkpoints (a best model, a backup) are on disk before fit ends.
    if (writer_)
        writer_->wait_idle();
    throw Interrupted(signal, what);
}

void Sequential::queue_train_step(const StepInputs& in, int64_t rows) {
    Backend& b = *backend_;
    const int64_t outputs = shape_elements(output_shape());
    const NanInjection& inject = nan_injection();
    const bool inject_now = !inject.where.empty() && inject.step == iterations_ + 1;
    b.gather_batch(in.x, in.perm, in.scalars, in.batch_size, rows, in.x_cols, buffers_->x.view());
    b.gather_batch(in.y, in.perm, in.scalars, in.batch_size, rows, in.y_cols, buffers_->y.view());
    const StepContext ctx{&b,    /*training=*/true,     /*want_logits=*/true,
                          seed_, uint64_t(iterations_), in.scalars};
    const View out = forward(ctx, buffers_->x.view().first_rows(rows), rows);
    if (inject_now && inject.where == "loss")
        write_nan(b, out.data, dtype_);
    b.loss(loss_spec_, out, buffers_->y.view().first_rows(rows), buffers_->grad_a.view(), rows,
           outputs, rows, in.acc, 0);
    backward(ctx, rows);
    if (inject_now && inject.where == "grad")
        write_nan(b, grads_.data(), dtype_);
    // Keras's step count starts at 1 for the first update; Adam's bias correction for it is
    // in the scalars (math::step_size), so the update kernel stays a pure per-element function.
    b.optimizer_update_step(optimizer_.hyper, in.scalars, params_.view(), grads_.view(),
                            opt_state_.view(), n_params_);
    b.advance_step(optimizer_.hyper, in.scalars);
}

Logs Sequential::evaluate(const data::Array& x, const data::Array& y, int64_t batch_size,
                          int verbose) {
    Backend& b = backend();
    if (batch_size <= 0)
        throw Error("evaluate: batch_size must be positive");
    check_inputs(x, "x");
    check_targets(y, x.rows(), "y");
    const int64_t in = shape_elements(input_shape_);
    const int64_t yc = target_columns(loss_, shape_elements(output_shape()));
    const auto start = std::chrono::steady_clock::now();
    Tensor xd(b, {x.rows(), in}, dtype_), yd(b, {x.rows(), yc}, dtype_);
    upload_values(b, xd.view(), x.values.data(), x.rows() * in);
    upload_values(b, yd.view(), y.values.data(), x.rows() * yc);
    ensure_buffers(batch_size);
    b.fill_zero(buffers_->acc.view());
    evaluate_on_device(xd.view(), yd.view(), x.rows(), batch_size, buffers_->acc.view(), 0);
    double sums[AccumulatorSlots::kPerSet];
    b.read(sums, buffers_->acc.data(), sizeof(sums));
    Logs logs = logs_from(sums, 0, "");
    if (verbose > 0) {
        const int64_t steps = (x.rows() + batch_size - 1) / batch_size;
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::string line = std::to_string(steps) + "/" + std::to_string(steps) + " [" +
                           std::string(30, '=') + "] - " + std::to_string(long(seconds)) + "s";
        for (const auto& [key, value] : logs.items())
            line += " - " + key + ": " + format_metric(value);
        std::printf("%s\n", line.c_str());
    }
    return logs;
}

data::Array Sequential::predict(const data::Array& x, int64_t batch_size) {
    Backend& b = backend();
    if (batch_size <= 0)
        throw Error("predict: batch_size must be positive");
    check_inputs(x, "x");
    const int64_t in = shape_elements(input_shape_);
    const int64_t outputs = shape_elements(output_shape());
    Tensor xd(b, {x.rows(), in}, dtype_);
    upload_values(b, xd.view(), x.values.data(), x.rows() * in);
    Tensor out(b, {x.rows(), outputs}, dtype_);
    ensure_buffers(batch_size);
    StepContext ctx{&b,    /*training=*/false,    /*want_logits=*/false,
                    seed_, uint64_t(iterations_), View{}};
    const size_t elem = dtype_size(dtype_);
    for (int64_t offset = 0; offset < x.rows(); offset += batch_size) {
        const int64_t n = std::min(batch_size, x.rows() - offset);
        const View y = forward(ctx, xd.view().slice(offset * in, {n, in}), n);
        b.copy(out.view().slice(offset * outputs, {n, outputs}).data, y.data,
               static_cast<size_t>(n * outputs) * elem);
    }
    data::Array result;
    result.shape = {x.rows(), outputs};
    result.values = read_values(b, out.view(), x.rows() * outputs);
    result.source = "predictions of " + name_;
    return result;
}

// ---- gradient checks ---------------------------------------------------------------------

double Sequential::compute_gradients(const data::Array& x, const data::Array& y) {
    Backend& b = backend();
    check_inputs(x, "x");
    check_targets(y, x.rows(), "y");
    const int64_t n = x.rows();
    const int64_t in = shape_elements(input_shape_);
    const int64_t outputs = shape_elements(output_shape());
    const int64_t yc = target_columns(loss_, outputs);
    ensure_buffers(n);
    upload_values(b, buffers_->x.view(), x.values.data(), n * in);
    upload_values(b, buffers_->y.view(), y.values.data(), n * yc);
    b.fill_zero(buffers_->acc.view());
    StepContext ctx{&b,    /*training=*/true,     /*want_logits=*/true,
                    seed_, uint64_t(iterations_), View{}};
    const View out = forward(ctx, buffers_->x.view().first_rows(n), n);
    b.loss(loss_spec_, out, buffers_->y.view().first_rows(n), buffers_->grad_a.view(), n, outputs,
           n, buffers_->acc.view(), 0);
    backward(ctx, n);
    double sums[AccumulatorSlots::kPerSet];
    b.read(sums, buffers_->acc.data(), sizeof(sums));
    return sums[AccumulatorSlots::kLossSum] / sums[AccumulatorSlots::kCount];
}

namespace {

std::vector<double> read_doubles(Backend& b, const Tensor& t) {
    std::vector<double> out(static_cast<size_t>(t.elements()));
    if (t.dtype() == DType::kFloat64) {
        b.read(out.data(), t.data(), t.bytes());
    } else {
        std::vector<float> narrow(out.size());
        b.read(narrow.data(), t.data(), t.bytes());
        std::copy(narrow.begin(), narrow.end(), out.begin());
    }
    return out;
}

}  // namespace

std::vector<double> Sequential::flat_parameters() const {
    return read_doubles(backend(), params_);
}
std::vector<double> Sequential::flat_gradients() const {
    return read_doubles(backend(), grads_);
}

void Sequential::set_flat_parameters(const std::vector<double>& values) {
    if (static_cast<int64_t>(values.size()) != n_params_) {
        throw Error("set_flat_parameters: got " + std::to_string(values.size()) +
                    " values for a buffer of " + std::to_string(n_params_));
    }
    if (dtype_ == DType::kFloat64) {
        backend().upload(params_.data(), values.data(), params_.bytes());
    } else {
        std::vector<float> narrow(values.begin(), values.end());
        backend().upload(params_.data(), narrow.data(), params_.bytes());
    }
}

// ---- weights -----------------------------------------------------------------------------

View Sequential::parameters() const {
    return params_.view();
}
size_t Sequential::parameter_bytes() const {
    return params_.bytes();
}

int64_t Sequential::count_params(bool trainable_only) const {
    int64_t n = 0;
    for (const auto& layer : layers_) {
        for (const ParamInfo& p : layer->param_info()) {
            if (p.trainable || !trainable_only)
                n += shape_elements(p.shape);
        }
    }
    return n;
}

std::vector<LayerWeights> Sequential::get_weights() const {
    // One read of each flat buffer, sliced on the host.
    const std::vector<double> trainable = read_doubles(backend(), params_);
    const std::vector<double> fixed = read_doubles(backend(), nontrainable_);
    std::vector<LayerWeights> out;
    for (const auto& layer : layers_) {
        LayerWeights lw;
        lw.layer_name = layer->name();
        const auto infos = layer->param_info();
        for (size_t j = 0; j < infos.size(); ++j) {
            const View& v = layer->params()[j];
            const Tensor& home = infos[j].trainable ? params_ : nontrainable_;
            const std::vector<double>& flat = infos[j].trainable ? trainable : fixed;
            const size_t offset = static_cast<size_t>(static_cast<const char*>(v.data) -
                                                      static_cast<const char*>(home.data())) /
                                  dtype_size(dtype_);
            NamedArray a;
            a.name = infos[j].name;
            a.shape = infos[j].shape;
            a.values.assign(flat.begin() + offset, flat.begin() + offset + v.elements());
            lw.weights.push_back(std::move(a));
        }
        out.push_back(std::move(lw));
    }
    return out;
}

void Sequential::set_weights(const std::vector<LayerWeights>& weights) {
    Backend& b = backend();
    // Keras pairs the layers that have weights, in order.
    std::vector<const LayerWeights*> given;
    for (const auto& lw : weights) {
        if (!lw.weights.empty())
            given.push_back(&lw);
    }
    std::vector<Layer*> mine;
    for (const auto& layer : layers_) {
        if (!layer->param_info().empty())
            mine.push_back(layer.get());
    }
    if (given.size() != mine.size()) {
        throw Error("set_weights: model '" + name_ + "' has " + std::to_string(mine.size()) +
                    " layers with weights, the weights given are for " +
                    std::to_string(given.size()));
    }
    for (size_t i = 0; i < mine.size(); ++i) {
        const auto infos = mine[i]->param_info();
        const LayerWeights& lw = *given[i];
        if (lw.weights.size() != infos.size()) {
            throw Error("set_weights: layer '" + mine[i]->name() + "' has " +
                        std::to_string(infos.size()) + " weights, '" + lw.layer_name + "' has " +
                        std::to_string(lw.weights.size()));
        }
        for (size_t j = 0; j < infos.size(); ++j) {
            const NamedArray& a = lw.weights[j];
            if (a.shape != infos[j].shape ||
                static_cast<int64_t>(a.values.size()) != shape_elements(infos[j].shape)) {
                throw Error("set_weights: layer '" + mine[i]->name() + "' weight '" +
                            infos[j].name + "' has shape " + shape_string(infos[j].shape) +
                            ", the given '" + a.name + "' has shape " + shape_string(a.shape));
            }
        }
    }
    for (size_t i = 0; i < mine.size(); ++i) {
        for (size_t j = 0; j < given[i]->weights.size(); ++j) {
            const NamedArray& a = given[i]->weights[j];
            upload_values(b, mine[i]->params()[j], a.values.data(),
                          static_cast<int64_t>(a.values.size()));
        }
    }
}

// ---- description and saving --------------------------------------------------------------

ModelConfig Sequential::config() const {
    ModelConfig c;
    c.name = name_;
    LayerConfig input;
    input.class_name = "InputLayer";
    input.name = "input_layer";
    input.input_shape = input_shape_;
    c.layers.push_back(input);
    for (const auto& layer : layers_)
        c.layers.push_back(layer->config());
    return c;
}

std::string Sequential::summary() const {
    auto with_commas = [](int64_t n) {
        std::string s = std::to_string(n);
        for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3)
            s.insert(size_t(i), ",");
        return s;
    };
    auto pad = [](std::string s, size_t width) {
        if (s.size() < width)
            s += std::string(width - s.size(), ' ');
        return s;
    };
    // The first column as wide as Keras's (29), or wider when a name and class need it
    // ("max_pooling2d_1 (MaxPooling2D)").
    size_t first = 29;
    for (const auto& layer : layers_) {
        first = std::max(first, layer->name().size() + layer->class_name().size() + 5);
    }
    std::ostringstream out;
    const std::string rule(first + 36, '_'), double_rule(first + 36, '=');
    out << "Model: \"" << name_ << "\"\n" << rule << "\n";
    out << pad(" Layer (type)", first) << pad("Output Shape", 26) << "Param #\n"
        << double_rule << "\n";
    for (const auto& layer : layers_) {
        Shape shape = layer->output_shape();
        std::string shape_text = "(None";
        for (int64_t d : shape)
            shape_text += ", " + std::to_string(d);
        shape_text += ")";
        int64_t n = 0;
        for (const ParamInfo& p : layer->param_info())
            n += shape_elements(p.shape);
        out << pad(" " + layer->name() + " (" + layer->class_name() + ")", first)
            << pad(shape_text, 26) << n << "\n";
    }
    out << double_rule << "\n";
    out << "Total params: " << with_commas(count_params()) << "\n";
    out << "Trainable params: " << with_commas(count_params(true)) << "\n";
    out << "Non-trainable params: " << with_commas(count_params() - count_params(true)) << "\n"
        << rule << "\n";
    return out.str();
}

std::string Sequential::training_config_json() const {
    nlohmann::json metrics = nlohmann::json::array();
    if (!metric_name_.empty())
        metrics.push_back(metric_name_);
    nlohmann::json loss = loss_.name();
    if (loss_.from_logits) {
        // A loss with arguments is written as Keras serialises a loss object.
        loss = {{"class_name", loss_.class_name()}, {"config", {{"from_logits", true}}}};
    }
    nlohmann::json config = {{"loss", loss},
                             {"metrics", metrics},
                             {"weighted_metrics", nullptr},
                             {"loss_weights", nullptr},
                             {"optimizer_config", nlohmann::json::parse(optimizer_.config_json())}};
    return config.dump();
}

// ---- checkpoints -------------------------------------------------------------------------

CheckpointWriter& Sequential::checkpoint_writer() const {
    if (!writer_) {
        // Each staging buffer holds both weight buffers and the optimizer state.
        // and, for a checkpoint within an epoch, the epoch's running sums.
        const size_t bytes = params_.bytes() + nontrainable_.bytes() + opt_state_.bytes() +
                             AccumulatorSlots::kPerSet * sizeof(double);
        writer_ = std::make_unique<CheckpointWriter>(backend(), bytes);
    }
    return *writer_;
}

uint64_t Sequential::submit_checkpoint(const CheckpointRequest& request, bool synchronous) const {
    CheckpointJob job;
    job.path = request.path;
    job.weights_only = request.weights_only;
    job.synchronous = synchronous;
    job.model.config = config();
    job.model.training_config_json = training_config_json();
    job.dtype = dtype_;
    job.n_params = n_params_;

    // The staging layout: the trainable buffer, the non-trainable one, the optimizer state.
    const size_t element = dtype_size(dtype_);
    const size_t fixed_at = params_.bytes();
    job.state_offset = fixed_at + nontrainable_.bytes();
    for (const auto& layer : layers_) {
        std::vector<CheckpointJob::Weight> weights;
        const auto infos = layer->param_info();
        for (size_t j = 0; j < infos.size(); ++j) {
            const Tensor& home = infos[j].trainable ? params_ : nontrainable_;
            const size_t offset =
                static_cast<size_t>(static_cast<const char*>(layer->params()[j].data) -
                                    static_cast<const char*>(home.data()));
            weights.push_back(
                {infos[j].name, infos[j].shape, (infos[j].trainable ? 0 : fixed_at) + offset});
            if (infos[j].trainable) {
                job.trainable_ranges.emplace_back(static_cast<int64_t>(offset / element),
                                                  shape_elements(infos[j].shape));
            }
        }
        job.layers.push_back(std::move(weights));
    }

    // Live weights with the optimizer state (a file to resume from), or a snapshot's weights.
    const bool live = request.snapshot_slot < 0;
    const void* trainable_src = params_.data();
    const void* fixed_src = nontrainable_.data();
    TrainingState st;
    st.resumable = live;
    st.epoch = live ? epochs_completed_ : request.epoch;
    st.step = live ? iterations_ : request.step;
    if (!live) {
        // The slot holds copies of both flat buffers, in their layout.
        const View trainable = snapshots().trainable(request.snapshot_slot);
        const View fixed = snapshots().nontrainable(request.snapshot_slot);
        if (trainable.bytes() != params_.bytes() || fixed.bytes() != nontrainable_.bytes()) {
            throw Error(request.path + ": snapshot slot " + std::to_string(request.snapshot_slot) +
                        " does not hold this model's weights");
        }
        trainable_src = trainable.data;
        fixed_src = fixed.data;
    }
    st.seed = seed_;
    st.learning_rate = optimizer_.hyper.learning_rate;
    st.optimizer = optimizer_.class_name();
    st.optimizer_slots = live ? optimizer_state_slots(optimizer_.hyper) : 0;
    st.callbacks_state_json =
        request.callbacks_state_json.empty() ? "{}" : request.callbacks_state_json;
    st.fit_args_json = fit_args_json_;
    st.batch = live ? batches_in_epoch_ : 0;
    st.history_epochs = run_history_.epoch;
    for (const std::string& key : run_history_.keys) {
        st.history.emplace_back(key, run_history_.history.at(key));
    }
    job.state = std::move(st);

    std::vector<StagingRegion> regions = {{0, trainable_src, params_.bytes()},
                                          {fixed_at, fixed_src, nontrainable_.bytes()}};
    if (live)
        regions.push_back({job.state_offset, opt_state_.data(), opt_state_.bytes()});
    if (live && batches_in_epoch_ > 0 && fit_sums_.data != nullptr) {
        // The first set of fit's accumulators: the epoch's training sums so far.
        job.sums_offset = job.state_offset + opt_state_.bytes();
        job.sums_count = AccumulatorSlots::kPerSet;
        regions.push_back(
            {job.sums_offset, fit_sums_.data, AccumulatorSlots::kPerSet * sizeof(double)});
    }
    if (live) {
        // The snapshot slots taken (EarlyStopping's best weights) go with a file to resume
        // from: without them a resumed run could not restore the best epoch's weights.
        size_t at =
            job.state_offset + opt_state_.bytes() + AccumulatorSlots::kPerSet * sizeof(double);
        for (const int slot : snapshots().taken_slots()) {
            CheckpointJob::Snapshot snap;
            snap.name = snapshots().name(slot);
            snap.taken_at = snapshots().taken_at(slot);
            const View t = snapshots().trainable(slot), n = snapshots().nontrainable(slot);
            snap.trainable_offset = at;
            snap.trainable_count = static_cast<size_t>(t.elements());
            regions.push_back({at, t.data, t.bytes()});
            at += t.bytes();
            snap.nontrainable_offset = at;
            snap.nontrainable_count = static_cast<size_t>(n.elements());
            regions.push_back({at, n.data, n.bytes()});
            at += n.bytes();
            job.snapshots.push_back(std::move(snap));
        }
    }
    CheckpointWriter& writer = checkpoint_writer();
    if (writer.logging()) {
        // The log's CRC of the weights as they are now, read here on the training thread; the
        // writer's line gives the CRC of what it wrote (a test hook: this read waits).
        std::vector<char> host(fixed_at + nontrainable_.bytes());
        backend().read(host.data(), trainable_src, params_.bytes());
        backend().read(host.data() + fixed_at, fixed_src, nontrainable_.bytes());
        writer.log_line("submitted", job, weights_crc32(staged_weights(job, host.data())));
    }
    return writer.submit(std::move(job), regions);
}

Status Sequential::request_checkpoint(const CheckpointRequest& request) {
    if (!compiled()) {
        return Status::invalid_argument(request.path + ": model '" + name_ +
                                        "' is not compiled; nothing to checkpoint");
    }
    if (request.path.empty())
        return Status::invalid_argument("a checkpoint request needs a path");
    if (request.weights_only != is_weights_file_name(request.path)) {
        return Status::invalid_argument(
            request.path + (request.weights_only
                                ? ": a weights-only checkpoint must be named *.weights.h5"
                                : ": a full-model checkpoint must not be named *.weights.h5"));
    }
    if (request.snapshot_slot >= 0) {
        bool taken = false;
        try {
            taken = snapshots().taken(request.snapshot_slot);
        } catch (const Error& e) {
            return Status::invalid_argument(request.path + ": " + e.what());
        }
        if (!taken) {
            return Status::invalid_argument(request.path + ": snapshot slot " +
                                            std::to_string(request.snapshot_slot) +
                                            " holds no weights yet");
        }
    }
    (void)submit_checkpoint(request, /*synchronous=*/false);
    return Status::ok();
}

Status Sequential::wait_for_checkpoints() {
    if (!writer_)
        return Status::ok();
    writer_->wait_idle();
    return writer_->take_first_failure();
}

Status Sequential::last_checkpoint_status(const std::string& path) const {
    return writer_ ? writer_->last_status(path) : Status::ok();
}

CheckpointStats Sequential::checkpoint_stats() const {
    return writer_ ? writer_->stats() : CheckpointStats();
}

Status Sequential::save(const std::string& path) const {
    backend();  // throws for a model that is not compiled
    if (is_weights_file_name(path)) {
        return Status::invalid_argument(path +
                                        ": a full model file must not be named "
                                        "*.weights.h5 (use save_weights)");
    }
    CheckpointRequest request;
    request.path = path;
    return checkpoint_writer().wait(submit_checkpoint(request, /*synchronous=*/true));
}

Status Sequential::save_weights(const std::string& path) const {
    backend();
    if (!is_weights_file_name(path)) {
        return Status::invalid_argument(path +
                                        ": save_weights needs a name ending in "
                                        ".weights.h5, as Keras 3 does");
    }
    CheckpointRequest request;
    request.path = path;
    request.weights_only = true;
    return checkpoint_writer().wait(submit_checkpoint(request, /*synchronous=*/true));
}

Status Sequential::apply_weights(const CheckpointContents& contents, const std::string& path) {
    std::vector<LayerWeights> weights;
    if (!contents.weights_only) {
        weights = contents.model.weights;
    } else {
        // Keras's keys for this model's layers, matched to the file's groups.
        std::vector<std::string> classes;
        for (const auto& layer : layers_)
            classes.push_back(layer->class_name());
        const std::vector<std::string> keys = keras_weight_keys(classes);
        for (const LayerWeights& group : contents.keras_layers) {
            if (!group.weights.empty() &&
                std::find(keys.begin(), keys.end(), group.layer_name) == keys.end()) {
                return Status::invalid_argument(path + ": the file has weights for layers/" +
                                                group.layer_name + ", which model '" + name_ +
                                                "' does not have (its layers are " +
                                                [&] {
                                                    std::string all;
                                                    for (const auto& k : keys)
                                                        all += (all.empty() ? "" : ", ") + k;
                                                    return all;
                                                }() +
                                                ")");
            }
        }
        for (size_t i = 0; i < layers_.size(); ++i) {
            const auto infos = layers_[i]->param_info();
            const LayerWeights* group = nullptr;
            for (const LayerWeights& g : contents.keras_layers) {
                if (g.layer_name == keys[i])
                    group = &g;
            }
            LayerWeights lw;
            lw.layer_name = layers_[i]->name();
            const std::string where =
                path + ": layer '" + layers_[i]->name() + "' (layers/" + keys[i] + ")";
            const size_t given = group ? group->weights.size() : 0;
            if (given != infos.size()) {
                return Status::invalid_argument(where + ": the file has " + std::to_string(given) +
                                                " weights, the layer " +
                                                std::to_string(infos.size()));
            }
            for (size_t j = 0; j < infos.size(); ++j) {
                NamedArray a = group->weights[j];
                if (a.shape != infos[j].shape) {
                    return Status::invalid_argument(
                        where + ": weight " + std::to_string(j) + " (" + infos[j].name +
                        ") has shape " + shape_string(infos[j].shape) + ", the file's vars/" +
                        a.name + " has shape " + shape_string(a.shape));
                }
                a.name = infos[j].name;
                lw.weights.push_back(std::move(a));
            }
            weights.push_back(std::move(lw));
        }
    }
    try {
        set_weights(weights);
    } catch (const Error& e) {
        return Status::invalid_argument(path + ": " + e.what());
    }
    return Status::ok();
}

Status Sequential::load_weights(const std::string& path) {
    backend();
    CheckpointContents contents;
    Status s = load_checkpoint(path, &contents);
    if (!s.is_ok())
        return s;
    return apply_weights(contents, path);
}

Status Sequential::restore_training_state(const std::string& path, TrainingState* state) {
    Backend& b = backend();
    if (writer_)
        writer_->wait_idle();  // the file may be one of ours, still being written
    CheckpointContents contents;
    Status s = load_checkpoint(path, &contents);
    if (!s.is_ok())
        return s;
    if (!contents.training) {
        return Status::invalid_argument(path +
                                        ": has no kiln training state to resume from "
                                        "(not written by kiln); load_weights reads its weights");
    }
    const TrainingState& st = *contents.training;
    if (!st.resumable) {
        return Status::invalid_argument(path +
                                        ": holds a snapshot of the weights (such as the "
                                        "best ones), which does not go with the optimizer's "
                                        "state; resume from a checkpoint of the live weights");
    }
    const int slots = optimizer_state_slots(optimizer_.hyper);
    const int64_t n_trainable = count_params(/*trainable_only=*/true);
    if (st.optimizer != optimizer_.class_name() || st.optimizer_slots != slots ||
        static_cast<int64_t>(st.optimizer_state.size()) != slots * n_trainable) {
        return Status::invalid_argument(
            path + ": the file's optimizer state is " + st.optimizer + " with " +
            std::to_string(st.optimizer_slots) + " slots of " +
            std::to_string(st.optimizer_slots ? st.optimizer_state.size() / st.optimizer_slots
                                              : 0) +
            " values; model '" + name_ + "' has " + optimizer_.class_name() + " with " +
            std::to_string(slots) + " slots of " + std::to_string(n_trainable));
    }
    s = apply_weights(contents, path);
    if (!s.is_ok())
        return s;

    // The optimizer's state, back into the padded flat layout.
    if (slots > 0) {
        std::vector<double> padded(static_cast<size_t>(slots * n_params_), 0.0);
        const float* in = st.optimizer_state.data();
        for (int k = 0; k < slots; ++k) {
            for (const auto& layer : layers_) {
                const auto infos = layer->param_info();
                for (size_t j = 0; j < infos.size(); ++j) {
                    if (!infos[j].trainable)
                        continue;
                    const int64_t offset = (static_cast<const char*>(layer->params()[j].data) -
                                            static_cast<const char*>(params_.data())) /
                                           static_cast<int64_t>(dtype_size(dtype_));
                    const int64_t count = shape_elements(infos[j].shape);
                    std::copy(in, in + count, padded.begin() + k * n_params_ + offset);
                    in += count;
                }
            }
        }
        if (dtype_ == DType::kFloat64) {
            b.upload(opt_state_.data(), padded.data(), padded.size() * sizeof(double));
        } else {
            std::vector<float> narrow(padded.begin(), padded.end());
            b.upload(opt_state_.data(), narrow.data(), narrow.size() * sizeof(float));
        }
    }

    // The counters every RNG and the optimizer's bias correction depend on, and the history.
    iterations_ = st.step;
    seed_ = st.seed;
    optimizer_.hyper.learning_rate = static_cast<float>(st.learning_rate);
    epochs_completed_ = st.epoch;
    batches_in_epoch_ = 0;
    fit_args_json_ = st.fit_args_json;
    resume_within_epoch_.reset();
    snapshots().stash(st.snapshots);
    if (st.batch != 0) {
        MidEpoch at;
        at.epoch = st.epoch;
        at.batch = st.batch;
        at.sums = st.epoch_sums;
        at.fit_args_json = st.fit_args_json;
        at.source = path;
        resume_within_epoch_ = std::move(at);
    }
    run_history_.on_train_begin(Logs());
    for (size_t i = 0; i < st.history_epochs.size(); ++i) {
        Logs past;
        for (const auto& [key, values] : st.history)
            past.set(key, values[i]);
        run_history_.on_epoch_end(st.history_epochs[i], past);
    }
    if (state)
        *state = st;
    return Status::ok();
}

std::unique_ptr<Sequential> load_model(const std::string& path, const CompileOptions& options) {
    CheckpointContents contents;
    throw_if_error(load_checkpoint(path, &contents));
    if (!contents.has_config) {
        throw Error(path +
                    ": a weights-only file holds no model config (unless kiln wrote it); "
                    "build the model and call load_weights");
    }
    const SavedModel& saved = contents.model;
    auto model = std::make_unique<Sequential>(saved.config);
    Optimizer optimizer = optimizers::Adam();
    Loss loss = losses::SparseCategoricalCrossentropy();
    std::vector<std::string> metrics = {"accuracy"};
    if (!saved.training_config_json.empty()) {
        const auto tc = nlohmann::json::parse(saved.training_config_json, nullptr, false);
        if (tc.is_discarded() || !tc.is_object()) {
            throw Error(path + ": training_config is not valid JSON");
        }
        if (tc.contains("loss")) {
            const auto& l = tc["loss"];
            if (l.is_string()) {
                loss = loss_from_name(l.get<std::string>());
            } else if (l.is_object() && l.contains("class_name")) {
                const bool logits = l.contains("config") && l["config"].value("from_logits", false);
                loss = loss_from_name(l["class_name"].get<std::string>(), logits);
            }
        }
        metrics.clear();
        if (tc.contains("metrics") && tc["metrics"].is_array()) {
            for (const auto& m : tc["metrics"]) {
                if (m.is_string())
                    metrics.push_back(m.get<std::string>());
            }
        }
        if (tc.contains("optimizer_config") && tc["optimizer_config"].is_object()) {
            const auto& oc = tc["optimizer_config"];
            std::string cls = oc.value("class_name", "Adam");
            for (char& ch : cls)
                ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
            if (cls.rfind("custom>", 0) == 0)
                cls = cls.substr(7);
            const auto cfg = oc.value("config", nlohmann::json::object());
            optimizer = optimizer_from_name(cls, cfg.value("learning_rate", -1.0));
            OptimizerStep& h = optimizer.hyper;
            h.momentum = cfg.value("momentum", h.momentum);
            h.nesterov = cfg.value("nesterov", h.nesterov);
            h.beta_1 = cfg.value("beta_1", h.beta_1);
            h.beta_2 = cfg.value("beta_2", h.beta_2);
            h.epsilon = cfg.value("epsilon", h.epsilon);
            h.rho = cfg.value("rho", h.rho);
            h.centered = cfg.value("centered", h.centered);
            if (cfg.contains("weight_decay") && cfg["weight_decay"].is_number()) {
                h.weight_decay = cfg["weight_decay"].get<float>();
            }
        }
    }
    model->compile(optimizer, loss, metrics, options);
    model->set_weights(saved.weights);
    return model;
}

}  // namespace kiln
