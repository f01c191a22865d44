// Keras `model.to_json()` documents for Sequential models, read and written.
//
// Reading accepts the dialects found in the wild (see shared/reference/hdf5-format.md §1.6):
//  - Keras 3: layers as {module, class_name, config, registered_name, build_config}, InputLayer
//    with `batch_shape`, dtype as a DTypePolicy dict;
//  - Keras 2 / tf.keras: layers as {class_name, config}, InputLayer with `batch_input_shape`, dtype
//    as a string, initializers as {class_name, config};
//  - no InputLayer, the input shape on the first layer (`batch_input_shape`, `input_shape`,
//    `input_dim`) or in the Sequential's `build_input_shape` / `build_config`.
// Anything kiln cannot honour exactly (an unknown class or argument, a regularizer, a constraint,
// an initializer with non-default arguments) is an error naming the layer and the key: silently
// training a different model than the file describes would be worse than refusing it.
//
// Writing emits the Keras-2 dialect with a fixed, conservative key set, which every Keras
// version's constructors accept (reference §1.7).
#include "kiln/model_config.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace kiln {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr const char* kSupportedClasses =
    "InputLayer, Dense, Activation, Dropout, Flatten, Conv2D, MaxPooling2D, AveragePooling2D, "
    "GlobalAveragePooling2D, BatchNormalization, Reshape";
constexpr size_t kMaxJsonFileBytes = size_t{64} << 20;
// Keras documents nest about ten levels deep. nlohmann's dump and comparisons recurse, so a
// document of a million '[' would overflow the stack when a message quotes it: values nested
// deeper than this are dropped while parsing and the document is refused.
constexpr int kMaxJsonDepth = 64;
// Keras class names are identifiers of a few dozen characters. Naming an unnamed layer runs
// std::regex over its class name, whose time grows quickly with the length: longer ones are
// refused before that.
constexpr size_t kMaxClassNameChars = 256;

const std::set<std::string> kActivations = {"linear",  "relu", "sigmoid", "tanh",
                                            "softmax", "gelu", "elu",     "leaky_relu"};

// An initializer kiln implements: its name in LayerConfig (also Keras's string alias), its Keras
// class, and the config Keras writes for its default arguments. Only default arguments are
// accepted on input, because LayerConfig keeps the name alone.
struct InitializerSpec {
    const char* name;
    const char* class_name;
    const char* defaults;  // JSON
};

constexpr InitializerSpec kInitializers[] = {
    {"glorot_uniform", "GlorotUniform", R"({"seed": null})"},
    {"glorot_normal", "GlorotNormal", R"({"seed": null})"},
    {"he_normal", "HeNormal", R"({"seed": null})"},
    {"he_uniform", "HeUniform", R"({"seed": null})"},
    {"lecun_normal", "LecunNormal", R"({"seed": null})"},
    {"lecun_uniform", "LecunUniform", R"({"seed": null})"},
    {"random_normal", "RandomNormal", R"({"mean": 0.0, "stddev": 0.05, "seed": null})"},
    {"random_uniform", "RandomUniform", R"({"minval": -0.05, "maxval": 0.05, "seed": null})"},
    {"zeros", "Zeros", "{}"},
    {"ones", "Ones", "{}"},
};

// Older Keras (2.2 and earlier) serialised the named fan-based initializers as their underlying
// VarianceScaling. "normal" there meant the truncated normal that later versions call
// "truncated_normal".
struct VarianceScalingSpec {
    double scale;
    const char* mode;
    bool normal;  // truncated normal, else uniform
    const char* name;
};

constexpr VarianceScalingSpec kVarianceScaling[] = {
    {1.0, "fan_avg", false, "glorot_uniform"}, {1.0, "fan_avg", true, "glorot_normal"},
    {2.0, "fan_in", true, "he_normal"},        {2.0, "fan_in", false, "he_uniform"},
    {1.0, "fan_in", true, "lecun_normal"},     {1.0, "fan_in", false, "lecun_uniform"},
};

// Keys a layer of any class may carry that change nothing kiln computes (or that kiln checks
// below): Keras's base-Layer arguments and the input-shape hints of a first layer.
const std::set<std::string> kCommonLayerKeys = {"name",
                                                "trainable",
                                                "dtype",
                                                "autocast",
                                                "activity_regularizer",
                                                "batch_input_shape",
                                                "batch_size",
                                                "input_shape",
                                                "input_dim"};

const std::set<std::string> kInputLayerKeys = {
    "name",        "trainable",  "dtype",  "batch_shape", "batch_input_shape", "shape",
    "input_shape", "batch_size", "sparse", "ragged",      "optional",          "input_tensor"};

const std::map<std::string, std::set<std::string>> kClassKeys = {
    {"Dense",
     {"units", "activation", "use_bias", "kernel_initializer", "bias_initializer",
      "kernel_regularizer", "bias_regularizer", "kernel_constraint", "bias_constraint", "lora_rank",
      "lora_alpha", "quantization_config"}},
    {"Activation", {"activation"}},
    {"Dropout", {"rate", "noise_shape", "seed"}},
    {"Flatten", {"data_format"}},
    {"Conv2D",
     {"filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", "groups",
      "activation", "use_bias", "kernel_initializer", "bias_initializer", "kernel_regularizer",
      "bias_regularizer", "kernel_constraint", "bias_constraint", "lora_rank", "lora_alpha"}},
    {"MaxPooling2D", {"pool_size", "strides", "padding", "data_format"}},
    {"AveragePooling2D", {"pool_size", "strides", "padding", "data_format"}},
    {"GlobalAveragePooling2D", {"data_format", "keepdims"}},
    {"BatchNormalization",
     {"axis",
      "momentum",
      "epsilon",
      "center",
      "scale",
      "beta_initializer",
      "gamma_initializer",
      "moving_mean_initializer",
      "moving_variance_initializer",
      "beta_regularizer",
      "gamma_regularizer",
      "beta_constraint",
      "gamma_constraint",
      "synchronized",
      "renorm",
      "renorm_clipping",
      "renorm_momentum",
      "fused",
      "virtual_batch_size",
      "adjustment"}},
    {"Reshape", {"target_shape"}},
};

// Keys of the object around a layer's config (Keras 3 adds module, registered_name and
// build_config; tf.keras functional models add a layer-level name).
const std::set<std::string> kLayerEntryKeys = {"class_name",      "config",       "module",
                                               "registered_name", "build_config", "name"};

Status invalid(const std::string& where, const std::string& message) {
    return Status::invalid_argument("model config: " + where + ": " + message);
}

Status unsupported(const std::string& where, const std::string& message) {
    return Status::unsupported("model config: " + where + ": " + message);
}

std::string join(const std::set<std::string>& names) {
    std::string text;
    for (const std::string& name : names)
        text += (text.empty() ? "" : ", ") + name;
    return text;
}

// Keras's naming.to_snake_case: "InputLayer" -> "input_layer", "Conv2D" -> "conv2d",
// "MaxPooling2D" -> "max_pooling2d".
std::string to_snake_case(const std::string& class_name) {
    std::string snake = std::regex_replace(class_name, std::regex("(.)([A-Z][a-z]+)"), "$1_$2");
    snake = std::regex_replace(snake, std::regex("([a-z])([A-Z])"), "$1_$2");
    for (char& c : snake)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return snake;
}

// ---- scalar values --------------------------------------------------------------------------

// JSON integers, and floats with an integral value (some writers emit 256.0).
bool as_int64(const json& value, int64_t* out) {
    if (value.is_number_unsigned()) {
        if (value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
            return false;
        }
        *out = static_cast<int64_t>(value.get<uint64_t>());
        return true;
    }
    if (value.is_number_integer()) {
        *out = value.get<int64_t>();
        return true;
    }
    if (value.is_number_float()) {
        double d = value.get<double>();
        if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e18) {
            *out = static_cast<int64_t>(d);
            return true;
        }
    }
    return false;
}

Status get_bool(const json& value, const std::string& where, const std::string& key, bool* out) {
    if (!value.is_boolean())
        return invalid(where, "'" + key + "' must be true or false");
    *out = value.get<bool>();
    return Status::ok();
}

Status require_null(const json& value, const std::string& where, const std::string& key) {
    if (value.is_null())
        return Status::ok();
    return unsupported(where, "'" + key + "' is not supported (it must be null)");
}

// A float as the shortest decimal that reads back as the same float, so 0.2f is written "0.2"
// and not "0.20000000298023224", and parsing the output gives the identical float.
json float_to_json(float value) {
    char buffer[64];
    auto [end, error] = std::to_chars(buffer, buffer + sizeof(buffer), value);
    if (error != std::errc())
        return static_cast<double>(value);
    double widened = 0.0;
    auto parsed = std::from_chars(buffer, end, widened);
    if (parsed.ec != std::errc())
        return static_cast<double>(value);
    return widened;
}

// ---- shapes and dtypes ----------------------------------------------------------------------

// A Keras shape list. With `with_batch` the first entry is the batch dimension (null or a
// number, ignored); the rest, the shape of one sample, must be known positive sizes.
Status parse_shape(const json& value, bool with_batch, const std::string& where,
                   const std::string& key, Shape* out) {
    if (!value.is_array())
        return invalid(where, "'" + key + "' must be a list");
    size_t first = with_batch ? 1 : 0;
    if (with_batch && value.empty()) {
        return invalid(where, "'" + key + "' is empty (it needs the batch dimension first)");
    }
    Shape shape;
    for (size_t i = first; i < value.size(); ++i) {
        int64_t dim = 0;
        if (value[i].is_null()) {
            return unsupported(where, "'" + key + "' has an unknown (null) dimension at index " +
                                          std::to_string(i) + "; kiln needs static shapes");
        }
        if (!as_int64(value[i], &dim) || dim <= 0) {
            return invalid(where, "'" + key + "' entry " + std::to_string(i) +
                                      " must be a positive integer, not " + value[i].dump());
        }
        shape.push_back(dim);
    }
    if (shape.empty())
        return invalid(where, "'" + key + "' gives no per-sample dimensions");
    *out = std::move(shape);
    return Status::ok();
}

// dtype: a string (Keras 2), a DTypePolicy / Policy dict (Keras 3, mixed precision), or null.
// kiln computes in float32. The mixed policies keep float32 variables, so their weights load
// exactly; kiln then computes in float32 where Keras would use 16 bits.
Status check_dtype(const json& value, const std::string& where) {
    if (value.is_null())
        return Status::ok();
    std::string name;
    if (value.is_string()) {
        name = value.get<std::string>();
    } else if (value.is_object() && value.contains("config") && value["config"].is_object() &&
               value["config"].contains("name") && value["config"]["name"].is_string()) {
        name = value["config"]["name"].get<std::string>();
    } else {
        return invalid(where, "'dtype' must be a string or a DTypePolicy, not " + value.dump());
    }
    if (name == "float32" || name == "mixed_float16" || name == "mixed_bfloat16") {
        return Status::ok();
    }
    return unsupported(where, "dtype '" + name + "' is not supported (kiln computes in float32)");
}

// ---- activations and initializers -----------------------------------------------------------

Status parse_activation(const json& value, const std::string& where, std::string* out) {
    if (value.is_null()) {  // Keras's activation=None
        *out = "linear";
        return Status::ok();
    }
    if (!value.is_string()) {
        return unsupported(
            where, "'activation' must be the name of a built-in activation, not " + value.dump());
    }
    // Only the names kiln's shared math implements; Keras's others (swish, selu, ...) would
    // otherwise be trained as something else.
    std::string name = value.get<std::string>();
    if (kActivations.count(name) == 0) {
        return unsupported(where, "activation '" + name + "' is not supported (kiln supports " +
                                      join(kActivations) + ")");
    }
    *out = std::move(name);
    return Status::ok();
}

const InitializerSpec* find_initializer(const std::string& name_or_class) {
    for (const InitializerSpec& spec : kInitializers) {
        if (name_or_class == spec.name || name_or_class == spec.class_name)
            return &spec;
    }
    return nullptr;
}

// True when `config` holds only the keys of the defaults with the default values (any seed).
// Keras >= 3.15 writes the axes a VarianceScaling initializer takes its fans from; null is the
// default (the last two axes, as kiln's fans are computed).
bool is_default_fan_axes(const std::string& key, const json& value) {
    return (key == "input_axes" || key == "output_axes") && value.is_null();
}

bool has_default_arguments(const json& config, const json& defaults, std::string* offending) {
    for (const auto& item : config.items()) {
        if (item.key() == "seed" && (item.value().is_null() || item.value().is_number_integer())) {
            continue;  // a seed only makes initialisation reproducible; kiln seeds its own RNG
        }
        if (is_default_fan_axes(item.key(), item.value()))
            continue;
        // Compared as doubles: Keras writes the same decimal text ("0.05") that the defaults
        // here hold, so equal text parses to the equal double.
        auto expected = defaults.find(item.key());
        bool same = expected != defaults.end() && item.value().is_number() &&
                    expected->is_number() && item.value().get<double>() == expected->get<double>();
        if (!same) {
            *offending = item.key() + "=" + item.value().dump();
            return false;
        }
    }
    return true;
}

Status parse_variance_scaling(const json& config, const std::string& where, const std::string& key,
                              std::string* out) {
    double scale = 1.0;
    std::string mode = "fan_in", distribution = "truncated_normal";
    for (const auto& item : config.items()) {
        const json& v = item.value();
        if (item.key() == "scale" && v.is_number()) {
            scale = v.get<double>();
        } else if (item.key() == "mode" && v.is_string()) {
            mode = v.get<std::string>();
        } else if (item.key() == "distribution" && v.is_string()) {
            distribution = v.get<std::string>();
        } else if (item.key() != "seed" && !is_default_fan_axes(item.key(), v)) {
            return unsupported(where, "'" + key + "' VarianceScaling argument '" + item.key() +
                                          "' is not supported");
        }
    }
    bool normal = distribution == "normal" || distribution == "truncated_normal";
    if (normal || distribution == "uniform") {
        for (const VarianceScalingSpec& spec : kVarianceScaling) {
            if (spec.scale == scale && mode == spec.mode && spec.normal == normal) {
                *out = spec.name;
                return Status::ok();
            }
        }
    }
    return unsupported(where, "'" + key + "' VarianceScaling(scale=" + json(scale).dump() +
                                  ", mode=" + mode + ", distribution=" + distribution +
                                  ") matches no initializer kiln supports");
}

// An initializer as a string ("glorot_uniform", "GlorotUniform") or a {class_name, config} dict,
// with or without Keras 3's module and registered_name.
Status parse_initializer(const json& value, const std::string& where, const std::string& key,
                         std::string* out) {
    std::string supported;
    for (const InitializerSpec& spec : kInitializers) {
        supported += (supported.empty() ? "" : ", ") + std::string(spec.class_name);
    }
    if (value.is_string()) {
        const InitializerSpec* spec = find_initializer(value.get<std::string>());
        if (spec == nullptr) {
            return unsupported(where, "'" + key + "' " + value.dump() +
                                          " is not supported (kiln supports " + supported + ")");
        }
        *out = spec->name;
        return Status::ok();
    }
    if (!value.is_object() || !value.contains("class_name") || !value["class_name"].is_string()) {
        return invalid(where, "'" + key +
                                  "' must be an initializer name or a {class_name, "
                                  "config} object, not " +
                                  value.dump());
    }
    const std::string class_name = value["class_name"].get<std::string>();
    json config = json::object();
    if (value.contains("config") && !value["config"].is_null())
        config = value["config"];
    if (!config.is_object())
        return invalid(where, "'" + key + "' config must be an object");

    if (class_name == "VarianceScaling")
        return parse_variance_scaling(config, where, key, out);
    const InitializerSpec* spec = find_initializer(class_name);
    if (spec == nullptr) {
        return unsupported(where, "'" + key + "' " + class_name +
                                      " is not supported (kiln supports " + supported + ")");
    }
    std::string offending;
    if (!has_default_arguments(config, json::parse(spec->defaults), &offending)) {
        return unsupported(where, "'" + key + "' " + class_name + " with " + offending +
                                      " is not supported (kiln implements the default "
                                      "arguments only)");
    }
    *out = spec->name;
    return Status::ok();
}

// ---- layers ---------------------------------------------------------------------------------

// How a layer is named in messages: "layer 2 ('dense_1', Dense)". Indices count the entries of
// the document's layer list from 0.
std::string describe_layer(size_t index, const std::string& name, const std::string& class_name) {
    std::string text = "layer " + std::to_string(index) + " (";
    if (!name.empty())
        text += "'" + name + "', ";
    return text + class_name + ")";
}

// The input-shape hints a first layer may carry when the model has no InputLayer.
Status parse_shape_hint(const json& config, const std::string& where, Shape* hint) {
    if (config.contains("batch_input_shape") && !config["batch_input_shape"].is_null()) {
        return parse_shape(config["batch_input_shape"], true, where, "batch_input_shape", hint);
    }
    if (config.contains("input_shape") && !config["input_shape"].is_null()) {
        return parse_shape(config["input_shape"], false, where, "input_shape", hint);
    }
    if (config.contains("input_dim") && !config["input_dim"].is_null()) {
        int64_t dim = 0;
        if (!as_int64(config["input_dim"], &dim) || dim <= 0) {
            return invalid(where, "'input_dim' must be a positive integer");
        }
        *hint = Shape{dim};
    }
    return Status::ok();
}

Status parse_input_layer(const json& config, const std::string& where, LayerConfig* layer) {
    struct Form {
        const char* key;
        bool with_batch;
    };
    // Keras 3 writes batch_shape, Keras 2 batch_input_shape; shape and input_shape are what a
    // hand-written document may say instead.
    const Form forms[] = {{"batch_shape", true},
                          {"batch_input_shape", true},
                          {"shape", false},
                          {"input_shape", false}};
    bool found = false;
    for (const Form& form : forms) {
        if (!config.contains(form.key) || config[form.key].is_null())
            continue;
        Status s =
            parse_shape(config[form.key], form.with_batch, where, form.key, &layer->input_shape);
        if (!s.is_ok())
            return s;
        found = true;
        break;
    }
    if (!found)
        return invalid(where, "InputLayer has no 'batch_shape' or 'batch_input_shape'");

    for (const char* flag : {"sparse", "ragged", "optional"}) {
        if (!config.contains(flag) || config[flag].is_null())
            continue;
        bool on = false;
        Status s = get_bool(config[flag], where, flag, &on);
        if (!s.is_ok())
            return s;
        if (on)
            return unsupported(where, std::string("'") + flag + "' inputs are not supported");
    }
    if (config.contains("input_tensor"))
        return require_null(config["input_tensor"], where, "input_tensor");
    return Status::ok();
}

// The arguments Dense and Conv2D share: activation, use_bias, the two initializers, and
// regularizers, constraints and LoRA, which must be off.
Status parse_kernel_arguments(const json& config, const std::string& where, LayerConfig* layer) {
    Status s;
    if (config.contains("activation")) {
        s = parse_activation(config["activation"], where, &layer->activation);
        if (!s.is_ok())
            return s;
    }
    if (config.contains("use_bias")) {
        s = get_bool(config["use_bias"], where, "use_bias", &layer->use_bias);
        if (!s.is_ok())
            return s;
    }
    if (config.contains("kernel_initializer")) {
        s = parse_initializer(config["kernel_initializer"], where, "kernel_initializer",
                              &layer->kernel_initializer);
        if (!s.is_ok())
            return s;
    }
    if (config.contains("bias_initializer")) {
        s = parse_initializer(config["bias_initializer"], where, "bias_initializer",
                              &layer->bias_initializer);
        if (!s.is_ok())
            return s;
    }
    for (const char* key : {"kernel_regularizer", "bias_regularizer", "kernel_constraint",
                            "bias_constraint", "quantization_config"}) {
        if (!config.contains(key))
            continue;
        s = require_null(config[key], where, key);
        if (!s.is_ok())
            return s;
    }
    // LoRA (Keras 3.2+) adds trainable low-rank factors; rank 0 or null means it is off, and
    // lora_alpha then means nothing.
    if (config.contains("lora_rank") && !config["lora_rank"].is_null()) {
        int64_t rank = 0;
        if (!as_int64(config["lora_rank"], &rank) || rank != 0) {
            return unsupported(where, "'lora_rank' is not supported (it must be null or 0)");
        }
    }
    return Status::ok();
}

Status parse_dense(const json& config, const std::string& where, LayerConfig* layer) {
    if (!config.contains("units"))
        return invalid(where, "Dense needs 'units'");
    if (!as_int64(config["units"], &layer->units) || layer->units <= 0) {
        return invalid(where, "'units' must be a positive integer, not " + config["units"].dump());
    }
    return parse_kernel_arguments(config, where, layer);
}

Status parse_dropout(const json& config, const std::string& where, LayerConfig* layer) {
    if (!config.contains("rate") || !config["rate"].is_number()) {
        return invalid(where, "Dropout needs a numeric 'rate'");
    }
    double rate = config["rate"].get<double>();
    // rate 1 would drop everything and scale by 1/(1-rate) = inf.
    if (!(rate >= 0.0 && rate < 1.0)) {
        return invalid(where, "'rate' must be in [0, 1), not " + config["rate"].dump());
    }
    layer->rate = static_cast<float>(rate);
    if (config.contains("noise_shape")) {
        Status s = require_null(config["noise_shape"], where, "noise_shape");
        if (!s.is_ok())
            return s;
    }
    if (config.contains("seed") && !config["seed"].is_null()) {
        if (!as_int64(config["seed"], &layer->seed) || layer->seed < 0) {
            return invalid(where, "'seed' must be null or a non-negative integer, not " +
                                      config["seed"].dump());
        }
    }
    return Status::ok();
}

Status parse_flatten(const json& config, const std::string& where) {
    if (!config.contains("data_format") || config["data_format"].is_null())
        return Status::ok();
    const json& format = config["data_format"];
    if (format.is_string() && format.get<std::string>() == "channels_last")
        return Status::ok();
    return unsupported(
        where, "'data_format' " + format.dump() + " is not supported (kiln uses channels_last)");
}

// ---- the image layers -------------------------------------------------------------------------

// A (height, width) argument: one integer for both, or a list of two.
Status parse_pair(const json& value, const std::string& where, const std::string& key,
                  std::array<int64_t, 2>* out) {
    int64_t a = 0, b = 0;
    if (as_int64(value, &a)) {
        b = a;
    } else if (!(value.is_array() && value.size() == 2 && as_int64(value[0], &a) &&
                 as_int64(value[1], &b))) {
        return invalid(where,
                       "'" + key + "' must be an integer or a list of two, not " + value.dump());
    }
    if (a <= 0 || b <= 0) {
        return invalid(where, "'" + key + "' must be positive, not " + value.dump());
    }
    *out = {a, b};
    return Status::ok();
}

// Keras lower-cases padding; 'causal' is Conv1D's.
Status parse_padding(const json& config, const std::string& where, std::string* out) {
    if (!config.contains("padding") || config["padding"].is_null())
        return Status::ok();
    if (!config["padding"].is_string())
        return invalid(where, "'padding' must be a string");
    std::string padding = config["padding"].get<std::string>();
    for (char& c : padding)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (padding != "valid" && padding != "same") {
        return unsupported(where, "padding " + config["padding"].dump() +
                                      " is not supported (kiln has 'valid' and 'same')");
    }
    *out = std::move(padding);
    return Status::ok();
}

Status parse_conv2d(const json& config, const std::string& where, LayerConfig* layer) {
    Status s = parse_flatten(config, where);  // data_format: channels_last only
    if (!s.is_ok())
        return s;
    if (!config.contains("filters") || !as_int64(config["filters"], &layer->filters) ||
        layer->filters <= 0) {
        return invalid(where, "Conv2D needs a positive integer 'filters'");
    }
    if (!config.contains("kernel_size"))
        return invalid(where, "Conv2D needs 'kernel_size'");
    s = parse_pair(config["kernel_size"], where, "kernel_size", &layer->kernel_size);
    if (!s.is_ok())
        return s;
    layer->strides = {1, 1};
    if (config.contains("strides") && !config["strides"].is_null()) {
        s = parse_pair(config["strides"], where, "strides", &layer->strides);
        if (!s.is_ok())
            return s;
    }
    if (config.contains("dilation_rate") && !config["dilation_rate"].is_null()) {
        s = parse_pair(config["dilation_rate"], where, "dilation_rate", &layer->dilation_rate);
        if (!s.is_ok())
            return s;
    }
    s = parse_padding(config, where, &layer->padding);
    if (!s.is_ok())
        return s;
    if (config.contains("groups") && !config["groups"].is_null()) {
        int64_t groups = 0;
        if (!as_int64(config["groups"], &groups) || groups != 1) {
            return unsupported(where, "'groups' " + config["groups"].dump() +
                                          " is not supported (grouped convolutions)");
        }
    }
    return parse_kernel_arguments(config, where, layer);
}

Status parse_pooling2d(const json& config, const std::string& where, LayerConfig* layer) {
    Status s = parse_flatten(config, where);
    if (!s.is_ok())
        return s;
    if (config.contains("pool_size") && !config["pool_size"].is_null()) {
        s = parse_pair(config["pool_size"], where, "pool_size", &layer->pool_size);
        if (!s.is_ok())
            return s;
    }
    // strides None is the pool size.
    layer->strides = layer->pool_size;
    if (config.contains("strides") && !config["strides"].is_null()) {
        s = parse_pair(config["strides"], where, "strides", &layer->strides);
        if (!s.is_ok())
            return s;
    }
    return parse_padding(config, where, &layer->padding);
}

Status parse_global_pooling2d(const json& config, const std::string& where, LayerConfig* layer) {
    Status s = parse_flatten(config, where);
    if (!s.is_ok())
        return s;
    if (config.contains("keepdims") && !config["keepdims"].is_null()) {
        return get_bool(config["keepdims"], where, "keepdims", &layer->keepdims);
    }
    return Status::ok();
}

Status parse_batch_normalization(const json& config, const std::string& where, LayerConfig* layer) {
    Status s;
    if (config.contains("axis") && !config["axis"].is_null()) {
        // tf.keras writes a list of one axis ([3]); kiln checks the value when it builds the
        // layer, knowing the input's rank.
        const json& axis = config["axis"];
        const json& single = axis.is_array() && axis.size() == 1 ? axis[0] : axis;
        if (!as_int64(single, &layer->axis)) {
            return unsupported(where, "'axis' " + axis.dump() +
                                          " is not supported (kiln normalises one axis, the last)");
        }
    }
    for (const auto& [key, target] : {std::pair<const char*, float*>{"momentum", &layer->momentum},
                                      {"epsilon", &layer->epsilon}}) {
        if (!config.contains(key) || config[key].is_null())
            continue;
        if (!config[key].is_number())
            return invalid(where, std::string("'") + key + "' must be a number");
        *target = static_cast<float>(config[key].get<double>());
    }
    for (const auto& [key, target] :
         {std::pair<const char*, bool*>{"center", &layer->center}, {"scale", &layer->scale}}) {
        if (!config.contains(key) || config[key].is_null())
            continue;
        s = get_bool(config[key], where, key, target);
        if (!s.is_ok())
            return s;
    }
    const std::pair<const char*, std::string*> initializers[] = {
        {"beta_initializer", &layer->beta_initializer},
        {"gamma_initializer", &layer->gamma_initializer},
        {"moving_mean_initializer", &layer->moving_mean_initializer},
        {"moving_variance_initializer", &layer->moving_variance_initializer}};
    for (const auto& [key, target] : initializers) {
        if (!config.contains(key))
            continue;
        s = parse_initializer(config[key], where, key, target);
        if (!s.is_ok())
            return s;
    }
    for (const char* key :
         {"beta_regularizer", "gamma_regularizer", "beta_constraint", "gamma_constraint",
          "renorm_clipping", "virtual_batch_size", "adjustment"}) {
        if (!config.contains(key))
            continue;
        s = require_null(config[key], where, key);
        if (!s.is_ok())
            return s;
    }
    if (config.contains("renorm") && !config["renorm"].is_null()) {
        bool renorm = false;
        s = get_bool(config["renorm"], where, "renorm", &renorm);
        if (!s.is_ok())
            return s;
        if (renorm)
            return unsupported(where, "'renorm': true is not supported");
    }
    // synchronized (across devices) and fused (TensorFlow's kernel choice) change nothing on
    // one device; renorm_momentum means nothing without renorm.
    for (const char* key : {"synchronized", "fused"}) {
        if (config.contains(key) && !config[key].is_null() && !config[key].is_boolean()) {
            return invalid(where, std::string("'") + key + "' must be true, false or null");
        }
    }
    return Status::ok();
}

Status parse_reshape(const json& config, const std::string& where, LayerConfig* layer) {
    if (!config.contains("target_shape") || !config["target_shape"].is_array() ||
        config["target_shape"].empty()) {
        return invalid(where, "Reshape needs a non-empty list 'target_shape'");
    }
    layer->target_shape.clear();
    for (const json& d : config["target_shape"]) {
        int64_t dim = 0;
        if (!as_int64(d, &dim) || (dim <= 0 && dim != -1)) {
            return invalid(where, "'target_shape' may hold positive sizes and -1, not " +
                                      config["target_shape"].dump());
        }
        layer->target_shape.push_back(dim);
    }
    return Status::ok();
}

// Parses entry `index` of the layer list; an unnamed layer is called `default_name`. `hint`
// receives an input shape given on the layer itself (batch_input_shape, input_shape,
// input_dim), used when the model has no InputLayer.
Status parse_layer(const json& entry, size_t index, const std::string& default_name,
                   LayerConfig* layer, Shape* hint) {
    std::string where = "layer " + std::to_string(index);
    if (!entry.is_object())
        return invalid(where, "must be an object, not " + entry.dump());
    if (!entry.contains("class_name") || !entry["class_name"].is_string()) {
        return invalid(where, "has no 'class_name'");
    }
    layer->class_name = entry["class_name"].get<std::string>();
    where = describe_layer(index, "", layer->class_name);
    if (!entry.contains("config") || !entry["config"].is_object()) {
        return invalid(where, "has no 'config' object");
    }
    const json& config = entry["config"];

    // The name first, so every later message can say which layer it is about.
    const json* name = nullptr;
    if (config.contains("name"))
        name = &config["name"];
    else if (entry.contains("name"))
        name = &entry["name"];
    if (name != nullptr && !name->is_null()) {
        if (!name->is_string())
            return invalid(where, "'name' must be a string");
        layer->name = name->get<std::string>();
    }
    if (layer->name.empty())
        layer->name = default_name;
    where = describe_layer(index, layer->name, layer->class_name);

    for (const auto& item : entry.items()) {
        if (kLayerEntryKeys.count(item.key()) == 0) {
            return unsupported(where, "unknown key '" + item.key() + "' in the layer entry");
        }
    }
    // Keras 3 names the Python module of every class; anything outside Keras is a custom layer
    // whose code kiln does not have, even when its class name matches a built-in one.
    if (entry.contains("module") && !entry["module"].is_null()) {
        std::string module = entry["module"].is_string() ? entry["module"].get<std::string>() : "";
        if (module.rfind("keras", 0) != 0 && module.rfind("tf_keras", 0) != 0) {
            return unsupported(
                where, "custom layer from module " + entry["module"].dump() + " is not supported");
        }
    }
    if (entry.contains("registered_name") && !entry["registered_name"].is_null() &&
        entry["registered_name"] != entry["class_name"]) {
        return unsupported(where, "custom layer registered as " + entry["registered_name"].dump() +
                                      " is not supported");
    }

    // Unknown arguments are refused rather than ignored: they may change what the layer does.
    // InputLayer has its own key set: Keras's InputLayer takes none of the base-Layer arguments.
    const bool is_input = layer->class_name == "InputLayer";
    auto class_keys = kClassKeys.find(layer->class_name);
    if (!is_input && class_keys == kClassKeys.end()) {
        return unsupported(where, "unknown layer class '" + layer->class_name +
                                      "' (kiln supports " + kSupportedClasses + ")");
    }
    for (const auto& item : config.items()) {
        const std::string& key = item.key();
        bool known = is_input
                         ? kInputLayerKeys.count(key) > 0
                         : kCommonLayerKeys.count(key) > 0 || class_keys->second.count(key) > 0;
        if (!known)
            return unsupported(where, "unknown argument '" + key + "'");
    }

    // The arguments every layer shares.
    if (config.contains("dtype")) {
        Status s = check_dtype(config["dtype"], where);
        if (!s.is_ok())
            return s;
    }
    if (config.contains("trainable") && !config["trainable"].is_null()) {
        bool trainable = true;
        Status s = get_bool(config["trainable"], where, "trainable", &trainable);
        if (!s.is_ok())
            return s;
        // Frozen weights would be trained anyway: refuse rather than differ from Keras.
        if (!trainable && (layer->class_name == "Dense" || layer->class_name == "Conv2D" ||
                           layer->class_name == "BatchNormalization")) {
            return unsupported(where, "'trainable': false is not supported (frozen layers)");
        }
    }
    if (config.contains("autocast") && !config["autocast"].is_boolean()) {
        return invalid(where, "'autocast' must be true or false");
    }
    if (config.contains("activity_regularizer")) {
        Status s = require_null(config["activity_regularizer"], where, "activity_regularizer");
        if (!s.is_ok())
            return s;
    }

    if (is_input)
        return parse_input_layer(config, where, layer);
    Status s = parse_shape_hint(config, where, hint);
    if (!s.is_ok())
        return s;
    if (layer->class_name == "Dense")
        return parse_dense(config, where, layer);
    if (layer->class_name == "Dropout")
        return parse_dropout(config, where, layer);
    if (layer->class_name == "Flatten")
        return parse_flatten(config, where);
    if (layer->class_name == "Conv2D")
        return parse_conv2d(config, where, layer);
    if (layer->class_name == "MaxPooling2D" || layer->class_name == "AveragePooling2D") {
        return parse_pooling2d(config, where, layer);
    }
    if (layer->class_name == "GlobalAveragePooling2D") {
        return parse_global_pooling2d(config, where, layer);
    }
    if (layer->class_name == "BatchNormalization") {
        return parse_batch_normalization(config, where, layer);
    }
    if (layer->class_name == "Reshape")
        return parse_reshape(config, where, layer);
    // Activation
    if (!config.contains("activation"))
        return invalid(where, "Activation needs 'activation'");
    return parse_activation(config["activation"], where, &layer->activation);
}

// Gives every unnamed layer Keras's automatic name: the snake-cased class, then _1, _2, ...
// Names already taken by other layers are skipped, so the result is always unique.
void assign_default_names(std::vector<LayerConfig>* layers) {
    std::set<std::string> taken;
    for (const LayerConfig& layer : *layers) {
        if (!layer.name.empty())
            taken.insert(layer.name);
    }
    std::map<std::string, int> counters;
    for (LayerConfig& layer : *layers) {
        if (!layer.name.empty())
            continue;
        const std::string base = to_snake_case(layer.class_name);
        int& counter = counters[base];
        std::string candidate;
        do {
            candidate = counter == 0 ? base : base + "_" + std::to_string(counter);
            ++counter;
        } while (taken.count(candidate) > 0);
        layer.name = candidate;
        taken.insert(candidate);
    }
}

// ---- the document ---------------------------------------------------------------------------

// ---- sizes ----------------------------------------------------------------------------------

// Bounds on what a description may declare, checked before anything is built or allocated: a
// description is a few hundred bytes, and Dense(units=2^40) in one would otherwise become a
// multi-terabyte (or overflowing) allocation when the model is compiled. 2^32 float32
// parameters are 16 GiB, 64 GiB with their gradients and Adam's two slots.
constexpr int64_t kMaxParameters = int64_t{1} << 32;
// The elements of one sample at any layer's output (the input included).
constexpr int64_t kMaxSampleElements = int64_t{1} << 31;

int64_t saturating_mul(int64_t a, int64_t b) {
    int64_t r = 0;
    return __builtin_mul_overflow(a, b, &r) ? std::numeric_limits<int64_t>::max() : r;
}

int64_t saturating_add(int64_t a, int64_t b) {
    int64_t r = 0;
    return __builtin_add_overflow(a, b, &r) ? std::numeric_limits<int64_t>::max() : r;
}

int64_t saturating_elements(const Shape& shape) {
    int64_t n = 1;
    for (int64_t d : shape)
        n = saturating_mul(n, d);
    return n;
}

std::string shape_text(const Shape& shape) {
    std::string text = "(";
    for (size_t i = 0; i < shape.size(); ++i)
        text += (i ? ", " : "") + std::to_string(shape[i]);
    return text + (shape.size() == 1 ? ",)" : ")");
}

// Walks the layers with an upper bound of each one's output shape (convolution and pooling
// never grow the spatial dimensions; the layers check the exact shapes when the model is
// built) and bounds the parameters each would allocate, so that a model too large to build is
// refused here, naming the layer. `offset` is 1 when the InputLayer was added (message indices
// count the document's own layers).
Status check_sizes(const ModelConfig& model, size_t offset) {
    Shape shape = model.layers[0].input_shape;
    int64_t total = 0;
    for (size_t i = 0; i < model.layers.size(); ++i) {
        const LayerConfig& layer = model.layers[i];
        const std::string where =
            describe_layer(i - std::min(i, offset), layer.name, layer.class_name);
        const int64_t channels = shape.empty() ? 1 : shape.back();
        int64_t params = 0;
        std::string what;  // the largest weight, for the message
        if (layer.class_name == "Dense") {
            params = saturating_add(saturating_mul(channels, layer.units),
                                    layer.use_bias ? layer.units : 0);
            what =
                "a (" + std::to_string(channels) + ", " + std::to_string(layer.units) + ") kernel";
            if (!shape.empty())
                shape.back() = layer.units;
        } else if (layer.class_name == "Conv2D") {
            const int64_t window = saturating_mul(layer.kernel_size[0], layer.kernel_size[1]);
            params = saturating_add(saturating_mul(saturating_mul(window, channels), layer.filters),
                                    layer.use_bias ? layer.filters : 0);
            what = "a (" + std::to_string(layer.kernel_size[0]) + ", " +
                   std::to_string(layer.kernel_size[1]) + ", " + std::to_string(channels) + ", " +
                   std::to_string(layer.filters) + ") kernel";
            if (!shape.empty())
                shape.back() = layer.filters;
        } else if (layer.class_name == "BatchNormalization") {
            params = saturating_mul(4, channels);
            what = "4 vectors of " + std::to_string(channels);
        } else if (layer.class_name == "GlobalAveragePooling2D") {
            shape = layer.keepdims ? Shape{1, 1, channels} : Shape{channels};
        } else if (layer.class_name == "Flatten") {
            shape = {saturating_elements(shape)};
        } else if (layer.class_name == "Reshape") {
            const int64_t elements = saturating_elements(shape);
            int64_t known = 1;
            for (int64_t d : layer.target_shape)
                known = d > 0 ? saturating_mul(known, d) : known;
            shape = layer.target_shape;
            for (int64_t& d : shape)
                d = d > 0 ? d : elements / std::max<int64_t>(known, 1);
        }
        // InputLayer, Activation, Dropout and the pooling layers keep (or shrink) the shape.

        const std::string count = params == std::numeric_limits<int64_t>::max()
                                      ? std::string("more than 2^63")
                                      : std::to_string(params);
        if (params > kMaxParameters) {
            return invalid(where, "declares " + count + " parameters (" + what +
                                      "), more than kiln builds (" +
                                      std::to_string(kMaxParameters) + ")");
        }
        const int64_t sample = saturating_elements(shape);
        if (sample > kMaxSampleElements) {
            return invalid(where, "its output of shape " + shape_text(shape) + " holds " +
                                      (sample == std::numeric_limits<int64_t>::max()
                                           ? std::string("more than 2^63")
                                           : std::to_string(sample)) +
                                      " elements per sample, more than kiln builds (" +
                                      std::to_string(kMaxSampleElements) + ")");
        }
        total = saturating_add(total, params);
        if (total > kMaxParameters) {
            return invalid(where, "its " + count + " parameters (" + what +
                                      ") bring the model past the " +
                                      std::to_string(kMaxParameters) + " parameters kiln builds");
        }
    }
    return Status::ok();
}

Status parse_document(const json& doc, ModelConfig* out) {
    if (!doc.is_object())
        return Status::invalid_argument("model config: must be a JSON object");

    // {"class_name": "Sequential", "config": {...}} (possibly with keras_version, backend,
    // module, build_config around it), or the Sequential's config itself.
    const json* config = &doc;
    if (doc.contains("class_name")) {
        if (doc["class_name"] != "Sequential") {
            return Status::unsupported("model config: model class " + doc["class_name"].dump() +
                                       " is not supported (kiln reads Sequential models)");
        }
        if (!doc.contains("config"))
            return Status::invalid_argument("model config: no 'config'");
        config = &doc["config"];
    } else if (!doc.contains("layers")) {
        return Status::invalid_argument(
            "model config: not a Keras model (no 'class_name' and no 'layers')");
    }

    ModelConfig model;
    const json* layers = config;  // very old Keras wrote the config as the bare layer list
    Shape build_shape;
    if (config->is_object()) {
        if (config->contains("name") && !(*config)["name"].is_null()) {
            if (!(*config)["name"].is_string()) {
                return Status::invalid_argument("model config: 'name' must be a string");
            }
            model.name = (*config)["name"].get<std::string>();
        }
        if (!config->contains("layers")) {
            return Status::invalid_argument("model config: the Sequential has no 'layers'");
        }
        layers = &(*config)["layers"];
        if (config->contains("dtype")) {
            Status s = check_dtype((*config)["dtype"], "the Sequential");
            if (!s.is_ok())
                return s;
        }
        // A frozen model would be trained by kiln regardless, as would a frozen layer.
        if (config->contains("trainable") && (*config)["trainable"].is_boolean() &&
            !(*config)["trainable"].get<bool>()) {
            return Status::unsupported("model config: 'trainable': false is not supported");
        }
        // Keras 3 records the built input shape twice: in the config and in build_config.
        const json* build = nullptr;
        if (config->contains("build_input_shape") && !(*config)["build_input_shape"].is_null()) {
            build = &(*config)["build_input_shape"];
        } else if (doc.contains("build_config") && doc["build_config"].is_object() &&
                   doc["build_config"].contains("input_shape") &&
                   !doc["build_config"]["input_shape"].is_null()) {
            build = &doc["build_config"]["input_shape"];
        }
        if (build != nullptr) {
            Status s =
                parse_shape(*build, true, "the Sequential", "build_input_shape", &build_shape);
            if (!s.is_ok())
                return s;
        }
    }
    if (!layers->is_array()) {
        return Status::invalid_argument("model config: 'layers' must be a list");
    }
    if (layers->empty())
        return Status::invalid_argument("model config: the model has no layers");

    // Keras's automatic names for unnamed layers, settled before parsing so that every
    // message can name its layer. A missing InputLayer is named too, being added below.
    const bool has_input = (*layers)[0].is_object() && (*layers)[0].contains("class_name") &&
                           (*layers)[0]["class_name"] == "InputLayer";
    std::vector<LayerConfig> names(has_input ? 0 : 1);
    if (!has_input)
        names[0].class_name = "InputLayer";
    for (const json& entry : *layers) {
        LayerConfig stub;
        if (entry.is_object() && entry.contains("class_name") && entry["class_name"].is_string()) {
            stub.class_name = entry["class_name"].get<std::string>();
        }
        if (stub.class_name.size() > kMaxClassNameChars) {
            return unsupported("layer " + std::to_string(names.size() - (has_input ? 0 : 1)),
                               "a class_name of " + std::to_string(stub.class_name.size()) +
                                   " characters is not a Keras layer class");
        }
        if (entry.is_object() && entry.contains("config") && entry["config"].is_object() &&
            entry["config"].contains("name") && entry["config"]["name"].is_string()) {
            stub.name = entry["config"]["name"].get<std::string>();
        }
        names.push_back(std::move(stub));
    }
    assign_default_names(&names);
    const size_t offset = has_input ? 0 : 1;  // names[i + offset] is entry i's

    // Each layer; the first one's shape hint stands in for a missing InputLayer.
    Shape first_hint;
    for (size_t i = 0; i < layers->size(); ++i) {
        LayerConfig layer;
        Shape hint;
        Status s = parse_layer((*layers)[i], i, names[i + offset].name, &layer, &hint);
        if (!s.is_ok())
            return s;
        if (layer.class_name == "InputLayer" && i != 0) {
            return invalid(describe_layer(i, layer.name, layer.class_name),
                           "an InputLayer must be the first layer");
        }
        if (i == 0)
            first_hint = hint;
        model.layers.push_back(std::move(layer));
    }
    if (model.layers[0].class_name != "InputLayer") {
        // Without an InputLayer Keras takes the input shape from the first layer's arguments,
        // or, for a model built by calling it, from build_input_shape.
        LayerConfig input;
        input.class_name = "InputLayer";
        input.name = names[0].name;
        input.input_shape = !first_hint.empty() ? first_hint : build_shape;
        if (input.input_shape.empty()) {
            return Status::invalid_argument(
                "model config: the model has no input shape (no InputLayer, no "
                "batch_input_shape on the first layer, no build_input_shape)");
        }
        model.layers.insert(model.layers.begin(), std::move(input));
    }

    // Names must be unique, and usable as HDF5 group names.
    std::map<std::string, size_t> seen;
    for (size_t i = 0; i < model.layers.size(); ++i) {
        const LayerConfig& layer = model.layers[i];
        const std::string where =
            describe_layer(i - std::min(i, offset), layer.name, layer.class_name);
        if (layer.name.find('/') != std::string::npos) {
            return invalid(where, "layer names must not contain '/'");
        }
        auto [it, inserted] = seen.emplace(layer.name, i);
        if (!inserted) {
            return invalid(where, "the name '" + layer.name +
                                      "' is already used by another layer "
                                      "(Keras requires unique names)");
        }
    }
    Status s = check_sizes(model, offset);
    if (!s.is_ok())
        return s;
    *out = std::move(model);
    return Status::ok();
}

// ---- writing --------------------------------------------------------------------------------

ordered_json pair_to_json(const std::array<int64_t, 2>& pair) {
    return ordered_json::array({pair[0], pair[1]});
}

ordered_json initializer_to_json(const std::string& name) {
    ordered_json object = ordered_json::object();
    const InitializerSpec* spec = find_initializer(name);
    object["class_name"] = spec != nullptr ? spec->class_name : name;
    object["config"] =
        spec != nullptr ? ordered_json::parse(spec->defaults) : ordered_json::object();
    return object;
}

// The keys every layer gets, in the order Keras writes them. trainable is always true because the
// reader refuses frozen layers; dtype is the only policy kiln computes in.
ordered_json base_layer_config(const LayerConfig& layer) {
    ordered_json config = ordered_json::object();
    config["name"] = layer.name;
    config["trainable"] = true;
    config["dtype"] = "float32";
    return config;
}

ordered_json layer_to_json(const LayerConfig& layer) {
    ordered_json config;
    if (layer.class_name == "InputLayer") {
        // batch_input_shape, not batch_shape: tf.keras 2 rejects the latter, Keras 3 converts.
        ordered_json shape = ordered_json::array();
        shape.push_back(nullptr);
        for (int64_t d : layer.input_shape)
            shape.push_back(d);
        config = ordered_json::object();
        config["batch_input_shape"] = shape;
        config["dtype"] = "float32";
        config["sparse"] = false;
        config["name"] = layer.name;
    } else if (layer.class_name == "Dense") {
        config = base_layer_config(layer);
        config["units"] = layer.units;
        config["activation"] = layer.activation;
        config["use_bias"] = layer.use_bias;
        config["kernel_initializer"] = initializer_to_json(layer.kernel_initializer);
        config["bias_initializer"] = initializer_to_json(layer.bias_initializer);
        for (const char* key : {"kernel_regularizer", "bias_regularizer", "activity_regularizer",
                                "kernel_constraint", "bias_constraint"}) {
            config[key] = nullptr;
        }
    } else if (layer.class_name == "Activation") {
        config = base_layer_config(layer);
        config["activation"] = layer.activation;
    } else if (layer.class_name == "Dropout") {
        config = base_layer_config(layer);
        config["rate"] = float_to_json(layer.rate);
        config["noise_shape"] = nullptr;
        // -1 is how LayerConfig spells Keras's seed=None.
        config["seed"] = layer.seed >= 0 ? ordered_json(layer.seed) : ordered_json(nullptr);
    } else if (layer.class_name == "Flatten") {
        config = base_layer_config(layer);
        config["data_format"] = "channels_last";
    } else if (layer.class_name == "Conv2D") {
        // groups is left out: it is always 1 here, and tf.keras before 2.3 rejects the key.
        config = base_layer_config(layer);
        config["filters"] = layer.filters;
        config["kernel_size"] = pair_to_json(layer.kernel_size);
        config["strides"] = pair_to_json(layer.strides[0] == 0 && layer.strides[1] == 0
                                             ? std::array<int64_t, 2>{1, 1}
                                             : layer.strides);
        config["padding"] = layer.padding;
        config["data_format"] = "channels_last";
        config["dilation_rate"] = pair_to_json(layer.dilation_rate);
        config["activation"] = layer.activation;
        config["use_bias"] = layer.use_bias;
        config["kernel_initializer"] = initializer_to_json(layer.kernel_initializer);
        config["bias_initializer"] = initializer_to_json(layer.bias_initializer);
        for (const char* key : {"kernel_regularizer", "bias_regularizer", "activity_regularizer",
                                "kernel_constraint", "bias_constraint"}) {
            config[key] = nullptr;
        }
    } else if (layer.class_name == "MaxPooling2D" || layer.class_name == "AveragePooling2D") {
        config = base_layer_config(layer);
        config["pool_size"] = pair_to_json(layer.pool_size);
        config["padding"] = layer.padding;
        config["strides"] = pair_to_json(
            layer.strides[0] == 0 && layer.strides[1] == 0 ? layer.pool_size : layer.strides);
        config["data_format"] = "channels_last";
    } else if (layer.class_name == "GlobalAveragePooling2D") {
        config = base_layer_config(layer);
        config["data_format"] = "channels_last";
        config["keepdims"] = layer.keepdims;
    } else if (layer.class_name == "BatchNormalization") {
        config = base_layer_config(layer);
        config["axis"] = layer.axis;
        config["momentum"] = float_to_json(layer.momentum);
        config["epsilon"] = float_to_json(layer.epsilon);
        config["center"] = layer.center;
        config["scale"] = layer.scale;
        config["beta_initializer"] = initializer_to_json(layer.beta_initializer);
        config["gamma_initializer"] = initializer_to_json(layer.gamma_initializer);
        config["moving_mean_initializer"] = initializer_to_json(layer.moving_mean_initializer);
        config["moving_variance_initializer"] =
            initializer_to_json(layer.moving_variance_initializer);
        for (const char* key :
             {"beta_regularizer", "gamma_regularizer", "beta_constraint", "gamma_constraint"}) {
            config[key] = nullptr;
        }
    } else if (layer.class_name == "Reshape") {
        config = base_layer_config(layer);
        config["target_shape"] = layer.target_shape;
    } else {
        // Not a class kiln writes; keep the name so the reader's error can point at it.
        config = ordered_json::object();
        config["name"] = layer.name;
    }
    ordered_json entry = ordered_json::object();
    entry["class_name"] = layer.class_name;
    entry["config"] = std::move(config);
    return entry;
}

}  // namespace

Status model_config_from_json(const std::string& json_text, ModelConfig* out) {
    json doc;
    bool too_deep = false;
    const json::parser_callback_t limit_depth = [&too_deep](int depth, json::parse_event_t event,
                                                            json& /*parsed*/) {
        const bool opens =
            event == json::parse_event_t::object_start || event == json::parse_event_t::array_start;
        if (opens && depth >= kMaxJsonDepth) {
            too_deep = true;
            return false;  // drop the value, and everything inside it
        }
        return true;
    };
    try {
        doc = json::parse(json_text, limit_depth);
    } catch (const json::exception& e) {
        // parse_error, and out_of_range for a number beyond double's range ("1e999").
        return Status::invalid_argument(std::string("model config: malformed JSON: ") + e.what());
    }
    if (too_deep) {
        return Status::invalid_argument("model config: nested more than " +
                                        std::to_string(kMaxJsonDepth) +
                                        " levels deep; not a Keras model description");
    }
    // parse_document checks types before every access; this catch is the backstop that keeps
    // an unforeseen shape of document an error rather than a crash.
    try {
        return parse_document(doc, out);
    } catch (const json::exception& e) {
        return Status::invalid_argument(std::string("model config: ") + e.what());
    }
}

Status load_model_config(const std::string& path, ModelConfig* out) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        int error = errno;
        if (error == ENOENT)
            return Status::not_found(path + ": no such file");
        return Status::io_error(path + ": cannot open: " + std::strerror(error));
    }
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad())
        return Status::io_error(path + ": read failed");
    // A model description is a few kilobytes; anything this large is the wrong file (a dataset
    // passed by mistake), better refused than parsed into memory as a DOM.
    if (text.tellp() > static_cast<std::streamoff>(kMaxJsonFileBytes)) {
        return Status::invalid_argument(path + ": larger than a model description can be");
    }
    return model_config_from_json(text.str(), out).with_context(path);
}

std::string model_config_to_json(const ModelConfig& config) {
    std::vector<LayerConfig> layers = config.layers;
    assign_default_names(&layers);
    ordered_json layer_list = ordered_json::array();
    for (const LayerConfig& layer : layers)
        layer_list.push_back(layer_to_json(layer));

    ordered_json model = ordered_json::object();
    model["name"] = config.name.empty() ? "sequential" : config.name;
    model["layers"] = std::move(layer_list);
    ordered_json doc = ordered_json::object();
    doc["class_name"] = "Sequential";
    doc["config"] = std::move(model);
    return doc.dump();
}

}  // namespace kiln
