// Full-model files in the Keras legacy HDF5 layout (`model.save("m.h5")`), written atomically.
//
// The layout kiln writes (shared/reference/hdf5-format.md §1.3, §1.7, §1.8):
//
//   /                         attrs keras_version="2.15.0", backend="tensorflow",
//                             model_config=<Keras-2 JSON>, [training_config=<JSON>], writer
//   /model_weights            attrs layer_names=[every layer but the InputLayer],
//                                   backend, keras_version
//   /model_weights/<layer>    attr weight_names=["<layer>/kernel:0", "<layer>/bias:0"] (or [])
//   /model_weights/<layer>/<layer>/kernel:0   float32 (inputs, units)
//   /model_weights/top_level_model_weights    attr weight_names=[]
//
// keras_version says "2.15.0" because the JSON is the Keras-2 schema (tf.keras checks only for
// "1"; the TF.js converter rejects majors other than 2); the `writer` attribute says it was
// kiln. Weight names use tf.keras's "<layer>/<var>:0" form, which third-party readers hard-code.
//
// Reading follows Keras's own loader: layers are paired by position among those that have
// weights, and each layer's data comes from the datasets its weight_names list, in that order.
#include "kiln/model_config.h"

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/atomic_h5.h"
#include "io/hdf5_util.h"
#include "io/model_h5_internal.h"
#include "layers_conv.h"

#ifndef KILN_VERSION
#define KILN_VERSION "unknown"
#endif

namespace kiln {
namespace {

constexpr const char* kKerasVersion = "2.15.0";
constexpr const char* kBackend = "tensorflow";
// Keras's group for variables owned by the model itself (none for a Sequential).
constexpr const char* kTopLevelGroup = "top_level_model_weights";

struct ExpectedWeight {
    std::string name;  // "kernel", "bias"
    Shape shape;
};

// The weights Keras creates for each layer after the InputLayer, in Keras's order, with the
// shapes that follow from the input shape: entry i describes config.layers[i + 1].
Status expected_weights(const ModelConfig& config, std::vector<std::vector<ExpectedWeight>>* out) {
    out->clear();
    if (config.layers.empty() || config.layers[0].class_name != "InputLayer") {
        return Status::invalid_argument("the model config does not start with an InputLayer");
    }
    Shape shape = config.layers[0].input_shape;  // of one sample, as it flows through
    for (size_t i = 1; i < config.layers.size(); ++i) {
        const LayerConfig& layer = config.layers[i];
        std::vector<ExpectedWeight> weights;
        if (layer.class_name == "Dense") {
            // Dense acts on the last axis: kernel (inputs, units), bias (units).
            if (shape.empty()) {
                return Status::invalid_argument("layer '" + layer.name + "' has no input features");
            }
            weights.push_back({"kernel", {shape.back(), layer.units}});
            if (layer.use_bias)
                weights.push_back({"bias", {layer.units}});
            shape.back() = layer.units;
        } else if (layer.class_name == "Flatten") {
            int64_t features = 1;
            for (int64_t d : shape)
                features *= d;
            shape = {features};
        } else if (detail::is_image_layer_class(layer.class_name)) {
            // Conv2D (kernel (kh, kw, in, out), bias), BatchNormalization (gamma, beta,
            // moving_mean, moving_variance), and the weightless pooling and Reshape: what the
            // layer itself asks for on this input.
            std::vector<ParamInfo> params;
            Status s = detail::image_layer_weights(layer, &shape, &params);
            if (!s.is_ok())
                return s;
            for (const ParamInfo& p : params)
                weights.push_back({p.name, p.shape});
        } else if (layer.class_name != "Dropout" && layer.class_name != "Activation") {
            return Status::unsupported("layer '" + layer.name + "': class " + layer.class_name +
                                       " cannot be saved");
        }
        out->push_back(std::move(weights));
    }
    return Status::ok();
}

std::string expected_names(const std::vector<ExpectedWeight>& weights) {
    std::string names;
    for (const ExpectedWeight& w : weights)
        names += (names.empty() ? "" : ", ") + w.name;
    return names;
}

// ---- saving ---------------------------------------------------------------------------------

// Checks the weights against the (normalised) config before anything touches the disk.
// `model.weights` has one entry per layer after the InputLayer, or one per layer with an empty
// entry first for the InputLayer; entries that name a layer or weight must name the right one.
Status check_weights(const ModelConfig& config, const SavedModel& model,
                     const std::vector<std::vector<ExpectedWeight>>& expected,
                     std::vector<const LayerWeights*>* paired) {
    const size_t n_layers = expected.size();
    size_t first = 0;
    if (model.weights.size() == n_layers + 1 && model.weights[0].weights.empty() &&
        (model.weights[0].layer_name.empty() ||
         model.weights[0].layer_name == config.layers[0].name)) {
        first = 1;
    } else if (model.weights.size() != n_layers) {
        return Status::invalid_argument(
            "the model has " + std::to_string(n_layers) + " layers after the InputLayer but " +
            std::to_string(model.weights.size()) + " entries of weights");
    }
    paired->clear();
    for (size_t i = 0; i < n_layers; ++i) {
        const LayerConfig& layer = config.layers[i + 1];
        const LayerWeights& given = model.weights[first + i];
        const std::string where = "layer '" + layer.name + "' (" + layer.class_name + ")";
        if (layer.name == kTopLevelGroup) {
            return Status::invalid_argument(where + ": the name is reserved by the Keras format");
        }
        if (!given.layer_name.empty() && given.layer_name != layer.name) {
            return Status::invalid_argument(where + ": its weights are labelled '" +
                                            given.layer_name + "'");
        }
        if (given.weights.size() != expected[i].size()) {
            return Status::invalid_argument(
                where + ": " + std::to_string(given.weights.size()) + " weights given, it has " +
                std::to_string(expected[i].size()) + " (" + expected_names(expected[i]) + ")");
        }
        for (size_t j = 0; j < expected[i].size(); ++j) {
            const NamedArray& w = given.weights[j];
            const ExpectedWeight& e = expected[i][j];
            if (!w.name.empty() && w.name != e.name) {
                return Status::invalid_argument(where + ": weight " + std::to_string(j) + " is '" +
                                                w.name + "', expected '" + e.name + "'");
            }
            if (w.shape != e.shape) {
                return Status::invalid_argument(where + ": " + e.name + " has shape " +
                                                h5::shape_to_string(w.shape) + ", expected " +
                                                h5::shape_to_string(e.shape));
            }
            int64_t count = 1;
            for (int64_t d : e.shape)
                count *= d;
            if (static_cast<int64_t>(w.values.size()) != count) {
                return Status::invalid_argument(
                    where + ": " + e.name + " holds " + std::to_string(w.values.size()) +
                    " values, its shape needs " + std::to_string(count));
            }
        }
        paired->push_back(&given);
    }
    return Status::ok();
}

// Writes every attribute, group and dataset of the layout above into the open file.
Status write_contents(hid_t file, const std::string& path, const std::string& config_json,
                      const SavedModel& model, const ModelConfig& config,
                      const std::vector<std::vector<ExpectedWeight>>& expected,
                      const std::vector<const LayerWeights*>& paired,
                      std::vector<WrittenWeight>* written) {
    const h5::Where root{path, "/"};
    Status s = h5::write_string_attribute(file, root, "keras_version", kKerasVersion);
    if (s.is_ok())
        s = h5::write_string_attribute(file, root, "backend", kBackend);
    if (s.is_ok())
        s = h5::write_string_attribute(file, root, "model_config", config_json);
    if (s.is_ok() && !model.training_config_json.empty()) {
        s = h5::write_string_attribute(file, root, "training_config", model.training_config_json);
    }
    if (s.is_ok()) {
        s = h5::write_string_attribute(file, root, "writer", std::string("kiln ") + KILN_VERSION);
    }
    if (!s.is_ok())
        return s;

    // model_weights and its attributes. layer_names lists weightless layers too: Keras opens a
    // group for every name it lists.
    h5::Group weights_group;
    s = h5::create_group(file, root, "model_weights", &weights_group);
    if (!s.is_ok())
        return s;
    const h5::Where weights_where = root.child("model_weights");
    std::vector<std::string> layer_names;
    for (size_t i = 1; i < config.layers.size(); ++i)
        layer_names.push_back(config.layers[i].name);
    s = h5::write_string_list_attribute(weights_group.get(), weights_where, "layer_names",
                                        layer_names);
    // tf.keras treats a model_weights group without keras_version as a Keras 1 file and
    // converts the weights; always write it.
    if (s.is_ok())
        s = h5::write_string_attribute(weights_group.get(), weights_where, "backend", kBackend);
    if (s.is_ok())
        s = h5::write_string_attribute(weights_group.get(), weights_where, "keras_version",
                                       kKerasVersion);
    if (!s.is_ok())
        return s;

    // One group per layer: weight_names, then the datasets those names address.
    for (size_t i = 0; i < paired.size(); ++i) {
        const std::string& name = layer_names[i];
        h5::Group layer_group;
        s = h5::create_group(weights_group.get(), weights_where, name, &layer_group);
        if (!s.is_ok())
            return s;
        const h5::Where layer_where = weights_where.child(name);
        std::vector<std::string> weight_names;
        for (const ExpectedWeight& e : expected[i]) {
            weight_names.push_back(name + "/" + e.name + ":0");
        }
        s = h5::write_string_list_attribute(layer_group.get(), layer_where, "weight_names",
                                            weight_names);
        for (size_t j = 0; s.is_ok() && j < weight_names.size(); ++j) {
            const NamedArray& w = paired[i]->weights[j];
            s = h5::write_float_dataset(layer_group.get(), layer_where, weight_names[j],
                                        expected[i][j].shape, w.values.data());
            if (s.is_ok() && written != nullptr) {
                written->push_back({"/model_weights/" + name + "/" + weight_names[j], &w});
            }
        }
        if (!s.is_ok())
            return s;
        if (layer_group.close() < 0)
            return h5::io_failure(layer_where, "H5Gclose failed");
    }

    h5::Group top_level;
    s = h5::create_group(weights_group.get(), weights_where, kTopLevelGroup, &top_level);
    if (s.is_ok()) {
        s = h5::write_string_list_attribute(top_level.get(), weights_where.child(kTopLevelGroup),
                                            "weight_names", {});
    }
    return s;
}

// ---- loading --------------------------------------------------------------------------------

// One layer group of a file's model_weights: its name and the weight names it lists.
struct FileLayer {
    std::string name;
    std::vector<std::string> weight_names;
};

Status read_file_layers(hid_t weights_group, const h5::Where& where,
                        std::vector<FileLayer>* layers) {
    std::vector<std::string> names;
    bool found = false;
    Status s = h5::read_string_list_attribute(weights_group, where, "layer_names", &names, &found);
    if (!s.is_ok())
        return s;
    if (!found)
        return Status::corruption(where.str() + ": no 'layer_names' attribute");

    for (const std::string& name : names) {
        // A listed name becomes a path below model_weights; refuse ones that would leave it.
        if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
            return Status::corruption(where.str() + ": invalid layer name '" + name + "'");
        }
        FileLayer layer;
        layer.name = name;
        h5::Group group;
        s = h5::open_group(weights_group, where, name, &group);
        if (s.code() == Status::Code::kNotFound) {
            return Status::corruption(where.str() + ": layer_names lists '" + name +
                                      "' but there is no such group");
        }
        if (!s.is_ok())
            return s;
        // A missing weight_names is an empty one, as Keras reads it.
        s = h5::read_string_list_attribute(group.get(), where.child(name), "weight_names",
                                           &layer.weight_names, &found);
        if (!s.is_ok())
            return s;
        layers->push_back(std::move(layer));
    }
    return Status::ok();
}

std::string list_names(const std::vector<std::string>& names) {
    std::string text;
    for (const std::string& name : names)
        text += (text.empty() ? "" : ", ") + name;
    return text.empty() ? "none" : text;
}

// The checks of step 1 of save_model_h5 and what they produce for writing.
struct PreparedModel {
    std::string config_json;
    ModelConfig config;
    std::vector<std::vector<ExpectedWeight>> expected;
    std::vector<const LayerWeights*> paired;
};

Status prepare_model(const SavedModel& model, PreparedModel* out) {
    // The JSON round trip checks the config the way a reader will, and gives unnamed layers the
    // names the file will use.
    out->config_json = model_config_to_json(model.config);
    Status s = model_config_from_json(out->config_json, &out->config);
    if (!s.is_ok())
        return s;
    s = expected_weights(out->config, &out->expected);
    if (!s.is_ok())
        return s;
    s = check_weights(out->config, model, out->expected, &out->paired);
    if (!s.is_ok())
        return s;
    if (!model.training_config_json.empty() &&
        nlohmann::json::parse(model.training_config_json, nullptr, false).is_discarded()) {
        return Status::invalid_argument("training_config is not valid JSON");
    }
    return Status::ok();
}

}  // namespace

Status check_model_h5(const SavedModel& model) {
    PreparedModel prepared;
    return prepare_model(model, &prepared);
}

Status write_model_h5(hid_t file, const std::string& path, const SavedModel& model,
                      std::vector<WrittenWeight>* written) {
    PreparedModel prepared;
    Status s = prepare_model(model, &prepared);
    if (!s.is_ok())
        return s;
    return write_contents(file, path, prepared.config_json, model, prepared.config,
                          prepared.expected, prepared.paired, written);
}

Status save_model_h5(const std::string& path, const SavedModel& model) {
    const std::string context = path + ": cannot save the model";
    // 1. Validate everything before touching the disk.
    Status s = check_model_h5(model);
    if (!s.is_ok())
        return s.with_context(context);
    // 2. Write under a temporary name beside the target and publish it atomically.
    h5::HDF5Session session;
    s = h5::publish_atomically(
        path, [&](hid_t file) { return write_model_h5(file, path, model, nullptr); });
    return s.with_context(context);
}

Status load_model_h5(const std::string& path, SavedModel* out) {
    h5::HDF5Session session;
    h5::File file;
    Status s = h5::open_file_read(path, &file);
    if (!s.is_ok())
        return s;
    return read_model_h5(file.get(), path, out);
}

Status read_model_h5(hid_t file, const std::string& path, SavedModel* out) {
    const h5::Where root{path, "/"};

    // 1. The architecture, and the training config when there is one.
    SavedModel saved;
    std::string config_json;
    Status s = h5::read_string_attribute(file, root, "model_config", &config_json);
    if (s.code() == Status::Code::kNotFound) {
        return Status::corruption(path +
                                  ": no 'model_config' attribute; not a full Keras model "
                                  "file (a weights-only file needs the model's config)");
    }
    if (!s.is_ok())
        return s;
    s = model_config_from_json(config_json, &saved.config);
    if (!s.is_ok())
        return s.with_context(path);
    bool exists = false;
    s = h5::attribute_exists(file, root, "training_config", &exists);
    if (s.is_ok() && exists) {
        s = h5::read_string_attribute(file, root, "training_config", &saved.training_config_json);
    }
    if (!s.is_ok())
        return s;

    // 2. The file's layer groups and the weights the config says each layer has.
    h5::Group weights_group;
    s = h5::open_group(file, root, "model_weights", &weights_group);
    if (s.code() == Status::Code::kNotFound) {
        return Status::corruption(path + ": no 'model_weights' group");
    }
    if (!s.is_ok())
        return s;
    const h5::Where weights_where = root.child("model_weights");
    std::vector<FileLayer> file_layers;
    s = read_file_layers(weights_group.get(), weights_where, &file_layers);
    if (!s.is_ok())
        return s;
    std::vector<std::vector<ExpectedWeight>> expected;
    s = expected_weights(saved.config, &expected);
    if (!s.is_ok())
        return s.with_context(path + ": model_config");

    // 3. Pair layers by position among those with weights, as Keras does; the names in the file
    //    need not match the config's.
    // Weightless entries are skipped on both sides, so files that list more weightless layers
    // (an InputLayer, as some old Keras versions did) still pair up.
    std::vector<size_t> file_weighted, model_weighted;
    std::vector<std::string> file_names, model_names;
    for (size_t i = 0; i < file_layers.size(); ++i) {
        if (file_layers[i].weight_names.empty())
            continue;
        file_weighted.push_back(i);
        file_names.push_back(file_layers[i].name);
    }
    for (size_t i = 0; i < expected.size(); ++i) {
        if (expected[i].empty())
            continue;
        model_weighted.push_back(i);
        model_names.push_back(saved.config.layers[i + 1].name);
    }
    if (file_weighted.size() != model_weighted.size()) {
        return Status::corruption(path + ": the file has weights for " +
                                  std::to_string(file_weighted.size()) + " layers (" +
                                  list_names(file_names) + ") but its model_config has " +
                                  std::to_string(model_weighted.size()) + " layers with weights (" +
                                  list_names(model_names) + ")");
    }

    // One entry per layer after the InputLayer, weightless ones included and left empty, so
    // saved.weights[i] always belongs to saved.config.layers[i + 1].
    for (size_t i = 0; i < expected.size(); ++i) {
        saved.weights.push_back(LayerWeights{saved.config.layers[i + 1].name, {}});
    }
    for (size_t k = 0; k < model_weighted.size(); ++k) {
        const FileLayer& file_layer = file_layers[file_weighted[k]];
        const size_t index = model_weighted[k];
        const LayerConfig& layer = saved.config.layers[index + 1];
        const std::vector<ExpectedWeight>& wanted = expected[index];
        std::string where = path + ": layer '" + layer.name + "'";
        if (file_layer.name != layer.name)
            where += " (file group '" + file_layer.name + "')";

        if (file_layer.weight_names.size() != wanted.size()) {
            return Status::corruption(
                where + ": the file has " + std::to_string(file_layer.weight_names.size()) +
                " weights (" + list_names(file_layer.weight_names) + "), " + layer.class_name +
                " needs " + std::to_string(wanted.size()) + " (" + expected_names(wanted) + ")");
        }
        h5::Group group;
        s = h5::open_group(weights_group.get(), weights_where, file_layer.name, &group);
        if (!s.is_ok())
            return s;
        const h5::Where group_where = weights_where.child(file_layer.name);
        for (size_t j = 0; j < wanted.size(); ++j) {
            // The data is wherever weight_names says (e.g. "dense/kernel:0" or
            // "sequential/dense/kernel"); the role comes from the position.
            const std::string& weight_name = file_layer.weight_names[j];
            NamedArray array;
            array.name = wanted[j].name;
            h5::DatasetInfo info;
            s = h5::read_float_dataset(group.get(), group_where, weight_name, &info, &array.values);
            if (!s.is_ok())
                return s;
            if (info.shape != wanted[j].shape) {
                return Status::corruption(where + ": weight '" + weight_name + "' has shape " +
                                          h5::shape_to_string(info.shape) + "; the model needs " +
                                          h5::shape_to_string(wanted[j].shape) + " for its " +
                                          wanted[j].name);
            }
            array.shape = std::move(info.shape);
            saved.weights[index].weights.push_back(std::move(array));
        }
    }
    *out = std::move(saved);
    return Status::ok();
}

}  // namespace kiln
