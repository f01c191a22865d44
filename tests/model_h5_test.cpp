// Full-model .h5 files: bit-exact round trips, readability by h5py, loading files written the way
// Keras writes them, atomic saves that never damage an existing file, malformed files as errors,
// and HDF5 datasets as data arrays.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <hdf5.h>

#include "io/hdf5_util.h"
#include "kiln/data.h"
#include "kiln/model_config.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

constexpr const char* kPython = "/usr/bin/python3";

// A fresh directory under the test temp dir, removed with its contents.
class TempDir {
  public:
    TempDir() {
        std::string pattern = testing::TempDir() + "kiln_h5_XXXXXX";
        std::vector<char> buffer(pattern.begin(), pattern.end());
        buffer.push_back('\0');
        if (mkdtemp(buffer.data()) == nullptr)
            ADD_FAILURE() << "mkdtemp failed";
        path_ = buffer.data();
    }
    ~TempDir() {
        std::error_code ignored;
        fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ignored);
        fs::remove_all(path_, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    const std::string& path() const { return path_; }
    std::string file(const std::string& name) const { return path_ + "/" + name; }

    // Names directly inside, sorted: shows any temporary a save left behind.
    std::vector<std::string> entries() const {
        std::vector<std::string> names;
        for (const auto& entry : fs::directory_iterator(path_)) {
            names.push_back(entry.path().filename().string());
        }
        std::sort(names.begin(), names.end());
        return names;
    }

  private:
    std::string path_;
};

std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// ---- Python (h5py) --------------------------------------------------------------------------

bool python_has_h5py() {
    static const bool available =
        std::system("/usr/bin/python3 -c 'import h5py, numpy' >/dev/null 2>&1") == 0;
    return available;
}

#define SKIP_WITHOUT_H5PY()                                                                \
    if (!python_has_h5py()) {                                                              \
        GTEST_SKIP() << kPython << " cannot import h5py and numpy (Debian: python3-h5py)"; \
    }

// Runs `script` with `args`; returns the exit status, with stdout and stderr in *output.
int run_python(const TempDir& dir, const std::string& script, const std::string& args,
               std::string* output) {
    const std::string script_path = dir.file("check.py");
    const std::string output_path = dir.file("python.out");
    write_bytes(script_path, script);
    const std::string command =
        std::string(kPython) + " " + script_path + " " + args + " >" + output_path + " 2>&1";
    int status = std::system(command.c_str());
    *output = read_bytes(output_path);
    fs::remove(script_path);
    fs::remove(output_path);
    return status;
}

// The same formula in C++ and numpy, exact in float32 (small integers over a power of two), so
// values can be compared bit for bit across the two languages.
const char* kPythonPattern = R"(
import numpy as np
def pattern(seed, n):
    i = np.arange(n, dtype=np.int64)
    return (((i * 7919 + seed * 104729) % 1000) - 500).astype(np.float32) / np.float32(64)
)";

std::vector<float> pattern(int seed, int64_t n) {
    std::vector<float> values(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        values[i] = static_cast<float>((i * 7919 + seed * 104729) % 1000 - 500) / 64.0f;
    }
    return values;
}

// ---- models ---------------------------------------------------------------------------------

LayerConfig make_layer(const std::string& class_name, const std::string& name) {
    LayerConfig layer;
    layer.class_name = class_name;
    layer.name = name;
    return layer;
}

// Input(12) -> Dense(8, relu) -> Dropout(0.25) -> Dense(5, relu) -> Dense(3, softmax), with
// pattern values: the weight j of entry i in `weights` uses pattern(10 * i + j).
SavedModel small_model() {
    SavedModel model;
    LayerConfig input = make_layer("InputLayer", "input_1");
    input.input_shape = {12};
    LayerConfig dense = make_layer("Dense", "dense");
    dense.units = 8;
    dense.activation = "relu";
    LayerConfig dropout = make_layer("Dropout", "dropout");
    dropout.rate = 0.25f;
    LayerConfig dense_1 = make_layer("Dense", "dense_1");
    dense_1.units = 5;
    dense_1.activation = "relu";
    LayerConfig dense_2 = make_layer("Dense", "dense_2");
    dense_2.units = 3;
    dense_2.activation = "softmax";
    model.config.layers = {input, dense, dropout, dense_1, dense_2};

    const Shape shapes[4][2] = {{{12, 8}, {8}}, {}, {{8, 5}, {5}}, {{5, 3}, {3}}};
    const int counts[4] = {2, 0, 2, 2};
    for (int i = 0; i < 4; ++i) {
        LayerWeights layer{model.config.layers[i + 1].name, {}};
        for (int j = 0; j < counts[i]; ++j) {
            const Shape& shape = shapes[i][j];
            int64_t n = 1;
            for (int64_t d : shape)
                n *= d;
            layer.weights.push_back({j == 0 ? "kernel" : "bias", shape, pattern(10 * i + j, n)});
        }
        model.weights.push_back(std::move(layer));
    }
    model.training_config_json =
        R"({"loss": "categorical_crossentropy", "metrics": ["accuracy"], )"
        R"("weighted_metrics": null, "loss_weights": null, "optimizer_config": )"
        R"({"class_name": "Adam", "config": {"name": "adam", "learning_rate": 0.001}}})";
    return model;
}

// Compares weights bit for bit (NaN payloads and signed zeros included).
void expect_same_weights(const std::vector<LayerWeights>& a, const std::vector<LayerWeights>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
        SCOPED_TRACE("layer " + a[i].layer_name);
        EXPECT_EQ(a[i].layer_name, b[i].layer_name);
        ASSERT_EQ(a[i].weights.size(), b[i].weights.size());
        for (size_t j = 0; j < a[i].weights.size(); ++j) {
            const NamedArray& x = a[i].weights[j];
            const NamedArray& y = b[i].weights[j];
            EXPECT_EQ(x.name, y.name);
            EXPECT_EQ(x.shape, y.shape);
            ASSERT_EQ(x.values.size(), y.values.size());
            for (size_t k = 0; k < x.values.size(); ++k) {
                uint32_t bx, by;
                std::memcpy(&bx, &x.values[k], 4);
                std::memcpy(&by, &y.values[k], 4);
                ASSERT_EQ(bx, by) << x.name << "[" << k << "]: " << x.values[k] << " vs "
                                  << y.values[k];
            }
        }
    }
}

// Replaces the root attribute `model_config` of an existing file (to build mismatches).
void replace_model_config(const std::string& path, const std::string& json_text) {
    h5::File file(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    ASSERT_TRUE(file.valid());
    ASSERT_GE(H5Adelete(file.get(), "model_config"), 0);
    ASSERT_TRUE(
        h5::write_string_attribute(file.get(), h5::Where{path, "/"}, "model_config", json_text)
            .is_ok());
    ASSERT_GE(file.close(), 0);
}

// ---- round trips ----------------------------------------------------------------------------

TEST(ModelH5, SaveLoadRoundTripIsBitExact) {
    TempDir dir;
    SavedModel model = small_model();
    // Values that a lossy path would mangle: signed zero, a denormal, infinities, a NaN with a
    // payload, the extremes.
    std::vector<float>& kernel = model.weights[0].weights[0].values;
    const uint32_t nan_bits = 0x7fc01234u;
    std::memcpy(&kernel[0], &nan_bits, 4);
    kernel[1] = -0.0f;
    kernel[2] = std::numeric_limits<float>::denorm_min();
    kernel[3] = std::numeric_limits<float>::infinity();
    kernel[4] = -std::numeric_limits<float>::max();
    kernel[5] = std::numeric_limits<float>::min();
    const std::string path = dir.file("model.h5");
    Status s = save_model_h5(path, model);
    ASSERT_TRUE(s.is_ok()) << s.message();

    SavedModel loaded;
    s = load_model_h5(path, &loaded);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(model_config_to_json(loaded.config), model_config_to_json(model.config));
    EXPECT_EQ(loaded.training_config_json, model.training_config_json);
    expect_same_weights(model.weights, loaded.weights);
    EXPECT_EQ(dir.entries(), std::vector<std::string>({"model.h5"}));
}

TEST(ModelH5, DefaultMlpRoundTrip) {
    // 784-256-128-10 as the CLI builds it: names left to Keras's defaults, one weights entry
    // per layer including the InputLayer's empty one.
    SavedModel model;
    LayerConfig input = make_layer("InputLayer", "");
    input.input_shape = {784};
    model.config.layers.push_back(input);
    model.weights.push_back({"", {}});
    const int64_t sizes[] = {784, 256, 128, 10};
    for (int i = 0; i < 3; ++i) {
        LayerConfig dense = make_layer("Dense", "");
        dense.units = sizes[i + 1];
        dense.activation = i < 2 ? "relu" : "softmax";
        model.config.layers.push_back(dense);
        model.weights.push_back(
            {"",
             {{"kernel", {sizes[i], sizes[i + 1]}, pattern(i, sizes[i] * sizes[i + 1])},
              {"bias", {sizes[i + 1]}, pattern(100 + i, sizes[i + 1])}}});
    }
    TempDir dir;
    const std::string path = dir.file("mlp.h5");
    Status s = save_model_h5(path, model);
    ASSERT_TRUE(s.is_ok()) << s.message();
    SavedModel loaded;
    s = load_model_h5(path, &loaded);
    ASSERT_TRUE(s.is_ok()) << s.message();

    ASSERT_EQ(loaded.config.layers.size(), 4u);
    EXPECT_EQ(loaded.config.layers[0].name, "input_layer");
    ASSERT_EQ(loaded.weights.size(), 3u);  // one per layer after the InputLayer
    const char* names[] = {"dense", "dense_1", "dense_2"};
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(loaded.weights[i].layer_name, names[i]);
        ASSERT_EQ(loaded.weights[i].weights.size(), 2u);
        EXPECT_EQ(loaded.weights[i].weights[0].values, model.weights[i + 1].weights[0].values);
        EXPECT_EQ(loaded.weights[i].weights[1].values, model.weights[i + 1].weights[1].values);
    }
    EXPECT_TRUE(loaded.training_config_json.empty());
}

TEST(ModelH5, SameModelGivesSameBytes) {
    // No timestamps in the file: a checkpoint's hash depends on its contents only.
    TempDir dir;
    SavedModel model = small_model();
    ASSERT_TRUE(save_model_h5(dir.file("a.h5"), model).is_ok());
    sleep(1);  // a recorded time would now differ
    ASSERT_TRUE(save_model_h5(dir.file("b.h5"), model).is_ok());
    EXPECT_TRUE(read_bytes(dir.file("a.h5")) == read_bytes(dir.file("b.h5")));
}

// ---- h5py -----------------------------------------------------------------------------------

TEST(ModelH5, ReadableByH5py) {
    SKIP_WITHOUT_H5PY();
    TempDir dir;
    const std::string path = dir.file("model.h5");
    Status s = save_model_h5(path, small_model());
    ASSERT_TRUE(s.is_ok()) << s.message();

    const std::string script = std::string(kPythonPattern) + R"(
import json, sys
import h5py
f = h5py.File(sys.argv[1], "r")

# Root attributes: scalar strings that h5py reads as str, as Keras expects.
assert f.attrs["keras_version"] == "2.15.0", f.attrs["keras_version"]
assert f.attrs["backend"] == "tensorflow", f.attrs["backend"]
assert isinstance(f.attrs["model_config"], str), type(f.attrs["model_config"])
config = json.loads(f.attrs["model_config"])
assert config["class_name"] == "Sequential", config
layers = config["config"]["layers"]
assert [l["class_name"] for l in layers] == ["InputLayer", "Dense", "Dropout", "Dense", "Dense"]
assert layers[0]["config"]["batch_input_shape"] == [None, 12], layers[0]
assert layers[1]["config"]["units"] == 8 and layers[1]["config"]["activation"] == "relu"
assert layers[2]["config"]["rate"] == 0.25, layers[2]
assert json.loads(f.attrs["training_config"])["loss"] == "categorical_crossentropy"

# model_weights: 1-D name lists (never scalars: Keras iterates them).
weights = f["model_weights"]
assert weights.attrs["keras_version"] == "2.15.0" and weights.attrs["backend"] == "tensorflow"
assert weights.attrs["layer_names"].shape == (4,), weights.attrs["layer_names"].shape
names = list(weights.attrs["layer_names"])
assert names == ["dense", "dropout", "dense_1", "dense_2"], names
shapes = {"dense": [(12, 8), (8,)], "dropout": [], "dense_1": [(8, 5), (5,)],
          "dense_2": [(5, 3), (3,)]}
for i, name in enumerate(names):
    group = weights[name]
    weight_names = list(group.attrs["weight_names"])
    expected = [name + "/" + v + ":0" for v in ["kernel", "bias"][:len(shapes[name])]]
    assert weight_names == expected, (name, weight_names)
    assert group.attrs["weight_names"].shape == (len(expected),)
    for j, (weight_name, shape) in enumerate(zip(weight_names, shapes[name])):
        dataset = group[weight_name]
        assert dataset.dtype == np.dtype("<f4"), dataset.dtype
        assert dataset.shape == shape, (weight_name, dataset.shape)
        assert dataset.chunks is None and dataset.compression is None
        want = pattern(10 * i + j, int(np.prod(shape))).reshape(shape)
        got = dataset[()]
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), weight_name
    # tf.keras layout: model_weights/<layer>/<layer>/kernel:0
    if shapes[name]:
        assert name + "/" + name + "/kernel:0" in weights
assert list(weights["top_level_model_weights"].attrs["weight_names"]) == []
print("ok")
)";
    std::string output;
    int status = run_python(dir, script, path, &output);
    EXPECT_EQ(status, 0) << output;
}

// Writes a file the way Keras does through h5py (bytes names, Keras's chunked attributes), in
// two variants, then loads it with kiln. The config's layers are fc1 (Dense 8), dropout, fc2
// (Dense 3); fc1's weights use pattern(0), pattern(1), fc2's pattern(20), pattern(21).
const char* kKerasWriter = R"(
import json, sys
import h5py
path, variant = sys.argv[1], sys.argv[2]
init = {"class_name": "GlorotUniform", "config": {"seed": None}}
zeros = {"class_name": "Zeros", "config": {}}
def dense(name, units, activation):
    return {"class_name": "Dense", "config": {"name": name, "trainable": True, "dtype": "float32",
        "units": units, "activation": activation, "use_bias": True, "kernel_initializer": init,
        "bias_initializer": zeros, "kernel_regularizer": None, "bias_regularizer": None,
        "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None}}
config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
    {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 12], "dtype": "float32",
     "sparse": False, "ragged": False, "name": "input_1"}},
    dense("fc1", 8, "relu"),
    {"class_name": "Dropout", "config": {"name": "dropout", "trainable": True,
     "dtype": "float32", "rate": 0.5, "noise_shape": None, "seed": None}},
    dense("fc2", 3, "softmax")]}}
dtype = np.float32
with h5py.File(path, "w") as f:
    f.attrs["keras_version"] = b"2.11.0"
    f.attrs["backend"] = b"tensorflow"
    f.attrs["model_config"] = json.dumps(config).encode("utf8")
    w = f.create_group("model_weights")
    w.attrs["backend"] = b"tensorflow"
    w.attrs["keras_version"] = b"2.11.0"
    if variant == "keras2":
        # tf.keras 2: vlen bytes list for layer_names, "<layer>/<var>:0" weight names.
        groups = ["fc1", "dropout", "fc2"]
        w.attrs["layer_names"] = [g.encode("utf8") for g in groups]
        weight_names = {"fc1": ["fc1/kernel:0", "fc1/bias:0"],
                        "fc2": ["fc2/kernel:0", "fc2/bias:0"]}
    else:
        # Keras 3 paths, group names that differ from the config's (pairing is positional),
        # layer_names split into fixed-length pieces, float64 data.
        groups = ["dense", "dropout", "dense_1"]
        w.attrs["layer_names0"] = np.array([b"dense", b"dropout"])
        w.attrs["layer_names1"] = np.array([b"dense_1"])
        weight_names = {"dense": ["sequential/dense/kernel", "sequential/dense/bias"],
                        "dense_1": ["sequential/dense_1/kernel", "sequential/dense_1/bias"]}
        dtype = np.float64
    seeds = {groups[0]: 0, groups[2]: 20}
    shapes = {groups[0]: [(12, 8), (8,)], groups[2]: [(8, 3), (3,)]}
    for g in groups:
        group = w.create_group(g)
        if g == "dropout":
            if variant == "keras2":
                group.attrs["weight_names"] = []   # h5py: float64 array of shape (0,)
            continue                               # keras3 variant: attribute left out
        names = weight_names[g]
        if variant == "keras2":
            group.attrs["weight_names"] = np.array([n.encode() for n in names])  # fixed-length
        else:
            group.attrs["weight_names"] = names    # vlen str
        for j, (name, shape) in enumerate(zip(names, shapes[g])):
            values = pattern(seeds[g] + j, int(np.prod(shape))).reshape(shape).astype(dtype)
            group.create_dataset(name, data=values)
    t = w.create_group("top_level_model_weights")
    t.attrs["weight_names"] = []
print("written")
)";

void check_keras_style_file(const std::string& variant) {
    TempDir dir;
    const std::string path = dir.file("keras.h5");
    std::string output;
    ASSERT_EQ(
        run_python(dir, std::string(kPythonPattern) + kKerasWriter, path + " " + variant, &output),
        0)
        << output;

    SavedModel loaded;
    Status s = load_model_h5(path, &loaded);
    ASSERT_TRUE(s.is_ok()) << s.message();
    ASSERT_EQ(loaded.config.layers.size(), 4u);
    EXPECT_EQ(loaded.config.layers[1].name, "fc1");
    EXPECT_EQ(loaded.config.layers[3].activation, "softmax");
    ASSERT_EQ(loaded.weights.size(), 3u);
    EXPECT_EQ(loaded.weights[0].layer_name, "fc1");
    EXPECT_TRUE(loaded.weights[1].weights.empty());
    EXPECT_EQ(loaded.weights[2].layer_name, "fc2");

    const int seeds[] = {0, -1, 20};
    const Shape shapes[3][2] = {{{12, 8}, {8}}, {}, {{8, 3}, {3}}};
    for (int i : {0, 2}) {
        ASSERT_EQ(loaded.weights[i].weights.size(), 2u);
        for (int j = 0; j < 2; ++j) {
            const NamedArray& w = loaded.weights[i].weights[j];
            EXPECT_EQ(w.name, j == 0 ? "kernel" : "bias");
            EXPECT_EQ(w.shape, shapes[i][j]);
            int64_t n = 1;
            for (int64_t d : w.shape)
                n *= d;
            EXPECT_EQ(w.values, pattern(seeds[i] + j, n)) << "layer " << i << " weight " << j;
        }
    }
}

TEST(ModelH5, LoadsKeras2StyleFile) {
    SKIP_WITHOUT_H5PY();
    check_keras_style_file("keras2");
}

TEST(ModelH5, LoadsKeras3StyleFileWithSplitNames) {
    SKIP_WITHOUT_H5PY();
    check_keras_style_file("keras3");
}

// ---- mismatches ------------------------------------------------------------------------------

TEST(ModelH5, MismatchesNameTheLayer) {
    TempDir dir;
    const std::string path = dir.file("model.h5");
    SavedModel model = small_model();
    ASSERT_TRUE(save_model_h5(path, model).is_ok());

    struct Case {
        const char* what;
        void (*edit)(ModelConfig*);
        std::vector<std::string> expected;  // substrings of the message
    };
    const Case cases[] = {
        {"kernel shape",
         [](ModelConfig* c) { c->layers[3].units = 6; },
         {"layer 'dense_1'", "(8, 5)", "(8, 6)"}},
        {"weight count",
         [](ModelConfig* c) { c->layers[1].use_bias = false; },
         {"layer 'dense'", "2 weights", "needs 1"}},
        {"layer count",
         [](ModelConfig* c) {
             LayerConfig extra = c->layers[4];
             extra.name = "extra";
             c->layers.push_back(extra);
         },
         {"3 layers", "4 layers with weights", "extra"}},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.what);
        ModelConfig edited = model.config;
        c.edit(&edited);
        replace_model_config(path, model_config_to_json(edited));
        SavedModel loaded;
        Status s = load_model_h5(path, &loaded);
        ASSERT_FALSE(s.is_ok());
        for (const std::string& part : c.expected) {
            EXPECT_NE(s.message().find(part), std::string::npos) << s.message();
        }
        EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
    }
}

// ---- atomic saves ---------------------------------------------------------------------------

TEST(ModelH5, OverwriteReplacesTheFileAndLeavesNoTemporary) {
    TempDir dir;
    const std::string path = dir.file("best.h5");
    SavedModel first = small_model();
    ASSERT_TRUE(save_model_h5(path, first).is_ok());
    SavedModel second = small_model();
    for (float& v : second.weights[0].weights[0].values)
        v += 1.0f;
    ASSERT_TRUE(save_model_h5(path, second).is_ok());

    SavedModel loaded;
    ASSERT_TRUE(load_model_h5(path, &loaded).is_ok());
    expect_same_weights(second.weights, loaded.weights);
    EXPECT_EQ(dir.entries(), std::vector<std::string>({"best.h5"}));
}

TEST(ModelH5, InvalidModelLeavesExistingFileUntouched) {
    TempDir dir;
    const std::string path = dir.file("best.h5");
    ASSERT_TRUE(save_model_h5(path, small_model()).is_ok());
    const std::string before = read_bytes(path);

    // A config a reader would refuse, weights that do not fit, and malformed training_config.
    SavedModel bad_config = small_model();
    bad_config.config.layers[1].activation = "swish";
    SavedModel bad_shape = small_model();
    bad_shape.weights[2].weights[0].shape = {8, 4};
    SavedModel bad_count = small_model();
    bad_count.weights[3].weights[1].values.pop_back();
    SavedModel bad_training = small_model();
    bad_training.training_config_json = "{not json";
    SavedModel missing_layer = small_model();
    missing_layer.weights.pop_back();
    for (const SavedModel* model :
         {&bad_config, &bad_shape, &bad_count, &bad_training, &missing_layer}) {
        Status s = save_model_h5(path, *model);
        EXPECT_FALSE(s.is_ok());
        EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
    }
    EXPECT_TRUE(read_bytes(path) == before);
    EXPECT_EQ(dir.entries(), std::vector<std::string>({"best.h5"}));
}

TEST(ModelH5, FailedRenameLeavesNoTemporary) {
    // The target is a directory: everything is written, then the rename fails.
    TempDir dir;
    const std::string target = dir.file("best.h5");
    fs::create_directory(target);
    write_bytes(target + "/keep", "data");
    Status s = save_model_h5(target, small_model());
    EXPECT_FALSE(s.is_ok());
    EXPECT_NE(s.message().find("renaming"), std::string::npos) << s.message();
    EXPECT_EQ(dir.entries(), std::vector<std::string>({"best.h5"}));
    EXPECT_EQ(read_bytes(target + "/keep"), "data");
}

TEST(ModelH5, UnwritableDirectoryLeavesExistingFileUntouched) {
    if (geteuid() == 0)
        GTEST_SKIP() << "running as root: directory permissions are not enforced";
    TempDir dir;
    const std::string path = dir.file("best.h5");
    ASSERT_TRUE(save_model_h5(path, small_model()).is_ok());
    const std::string before = read_bytes(path);
    ASSERT_EQ(chmod(dir.path().c_str(), 0555), 0);
    SavedModel changed = small_model();
    changed.weights[0].weights[1].values[0] = 42.0f;
    Status s = save_model_h5(path, changed);
    chmod(dir.path().c_str(), 0755);
    EXPECT_FALSE(s.is_ok());
    EXPECT_EQ(s.code(), Status::Code::kIOError) << s.message();
    EXPECT_TRUE(read_bytes(path) == before);
    EXPECT_EQ(dir.entries(), std::vector<std::string>({"best.h5"}));
}

TEST(ModelH5, MissingDirectoryIsAnError) {
    TempDir dir;
    Status s = save_model_h5(dir.file("no/such/dir/best.h5"), small_model());
    EXPECT_FALSE(s.is_ok());
    EXPECT_EQ(s.code(), Status::Code::kIOError) << s.message();
    EXPECT_TRUE(dir.entries().empty());
}

// ---- malformed files ------------------------------------------------------------------------

TEST(ModelH5, GarbageAndTruncatedFilesAreErrors) {
    TempDir dir;
    const std::string good = dir.file("good.h5");
    ASSERT_TRUE(save_model_h5(good, small_model()).is_ok());
    const std::string bytes = read_bytes(good);

    // Random bytes, an empty file, and the good file cut at many lengths: errors, never a
    // crash, and each names the file.
    std::mt19937 rng(7);
    std::string garbage(4096, '\0');
    for (char& c : garbage)
        c = static_cast<char>(rng());
    std::vector<std::string> corpus = {garbage, ""};
    for (size_t cut : {size_t{8}, size_t{100}, size_t{600}, bytes.size() / 4, bytes.size() / 2,
                       bytes.size() * 3 / 4, bytes.size() - 1}) {
        corpus.push_back(bytes.substr(0, cut));
    }
    // The HDF5 signature followed by garbage.
    corpus.push_back(bytes.substr(0, 8) + garbage);
    for (size_t i = 0; i < corpus.size(); ++i) {
        SCOPED_TRACE("case " + std::to_string(i) + ", " + std::to_string(corpus[i].size()) +
                     " bytes");
        const std::string path = dir.file("bad.h5");
        write_bytes(path, corpus[i]);
        SavedModel loaded;
        Status s = load_model_h5(path, &loaded);
        ASSERT_FALSE(s.is_ok());
        EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
        data::Array array;
        EXPECT_FALSE(data::load_hdf5_array(path, "/x", &array).is_ok());
    }

    SavedModel loaded;
    EXPECT_EQ(load_model_h5(dir.file("missing.h5"), &loaded).code(), Status::Code::kNotFound);
}

TEST(ModelH5, HDF5FileWithoutModelIsAnError) {
    TempDir dir;
    const std::string path = dir.file("empty.h5");
    {
        h5::File file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
        ASSERT_TRUE(file.valid());
    }
    SavedModel loaded;
    Status s = load_model_h5(path, &loaded);
    ASSERT_FALSE(s.is_ok());
    EXPECT_NE(s.message().find("model_config"), std::string::npos) << s.message();
}

// ---- HDF5 datasets as arrays ----------------------------------------------------------------

// Creates `name` in `file` with `file_type`, written from `mem_type` data.
void make_dataset(hid_t file, const char* name, hid_t file_type, hid_t mem_type, const Shape& shape,
                  const void* data) {
    std::vector<hsize_t> dims(shape.begin(), shape.end());
    h5::Dataspace space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
    h5::PropList lcpl(H5Pcreate(H5P_LINK_CREATE));
    H5Pset_create_intermediate_group(lcpl.get(), 1);
    h5::Dataset dataset(
        H5Dcreate2(file, name, file_type, space.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT));
    ASSERT_TRUE(dataset.valid()) << name;
    if (data != nullptr) {
        ASSERT_GE(H5Dwrite(dataset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), 0);
    }
}

class HDF5Array : public testing::Test {
  protected:
    void SetUp() override {
        path_ = dir_.file("data.h5");
        h5::File file(H5Fcreate(path_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
        ASSERT_TRUE(file.valid());
        for (int i = 0; i < 6; ++i)
            pixels_[i] = static_cast<uint8_t>(i * 50 + 5);
        make_dataset(file.get(), "/x_u8", H5T_STD_U8LE, H5T_NATIVE_UINT8, {2, 3}, pixels_);
        const double reals[4] = {0.1, -2.5, 1e30, 3.0};
        make_dataset(file.get(), "/group/x_f64", H5T_IEEE_F64BE, H5T_NATIVE_DOUBLE, {4}, reals);
        const int64_t labels[3] = {-1, 0, 9};
        make_dataset(file.get(), "/y_i64", H5T_STD_I64LE, H5T_NATIVE_INT64, {3}, labels);
        ASSERT_GE(H5Lcreate_soft("/x_u8", file.get(), "/alias", H5P_DEFAULT, H5P_DEFAULT), 0);
        // A contiguous dataset that was never written stores nothing.
        make_dataset(file.get(), "/unwritten", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {1000}, nullptr);
        // A string dataset.
        h5::Datatype text(H5Tcopy(H5T_C_S1));
        H5Tset_size(text.get(), 4);
        make_dataset(file.get(), "/names", text.get(), text.get(), {2}, "abcdefgh");
        // A chunked dataset declaring 2^34 elements with (almost) nothing stored.
        const hsize_t dims[2] = {hsize_t{1} << 22, hsize_t{1} << 12};
        const hsize_t chunk[2] = {1024, 1024};
        h5::Dataspace space(H5Screate_simple(2, dims, nullptr));
        h5::PropList dcpl(H5Pcreate(H5P_DATASET_CREATE));
        H5Pset_chunk(dcpl.get(), 2, chunk);
        h5::Dataset huge(H5Dcreate2(file.get(), "/huge", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT,
                                    dcpl.get(), H5P_DEFAULT));
        ASSERT_TRUE(huge.valid());
        // Under the element limit (2^30), but 4 GiB declared over nothing stored.
        const hsize_t bomb_dims[2] = {hsize_t{1} << 15, hsize_t{1} << 15};
        h5::Dataspace bomb_space(H5Screate_simple(2, bomb_dims, nullptr));
        h5::Dataset bomb(H5Dcreate2(file.get(), "/bomb", H5T_IEEE_F32LE, bomb_space.get(),
                                    H5P_DEFAULT, dcpl.get(), H5P_DEFAULT));
        ASSERT_TRUE(bomb.valid());
    }

    TempDir dir_;
    std::string path_;
    uint8_t pixels_[6];
};

TEST_F(HDF5Array, LoadsUint8AsPixels) {
    data::Array array;
    Status s = data::load_hdf5_array(path_, "x_u8", &array);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(array.shape, Shape({2, 3}));
    EXPECT_TRUE(array.from_uint8);
    EXPECT_EQ(array.source, path_ + ":/x_u8");
    ASSERT_EQ(array.values.size(), 6u);
    for (int i = 0; i < 6; ++i)
        EXPECT_EQ(array.values[i], static_cast<float>(pixels_[i]));
}

TEST_F(HDF5Array, ConvertsFloat64AndInt64) {
    data::Array array;
    Status s = data::load_hdf5_array(path_, "/group/x_f64", &array);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(array.shape, Shape({4}));
    EXPECT_FALSE(array.from_uint8);
    EXPECT_EQ(array.source, path_ + ":/group/x_f64");
    EXPECT_EQ(array.values, std::vector<float>({0.1f, -2.5f, 1e30f, 3.0f}));

    s = data::load_hdf5_array(path_, "/y_i64", &array);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_FALSE(array.from_uint8);
    EXPECT_EQ(array.values, std::vector<float>({-1.0f, 0.0f, 9.0f}));
}

TEST_F(HDF5Array, ListsDatasetsOnly) {
    std::vector<std::string> names;
    Status s = data::list_hdf5_datasets(path_, "/", &names);
    ASSERT_TRUE(s.is_ok()) << s.message();
    // Not the group, not the soft link.
    EXPECT_EQ(names,
              std::vector<std::string>({"bomb", "huge", "names", "unwritten", "x_u8", "y_i64"}));
    s = data::list_hdf5_datasets(path_, "group", &names);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(names, std::vector<std::string>({"x_f64"}));
    EXPECT_EQ(data::list_hdf5_datasets(path_, "/nope", &names).code(), Status::Code::kNotFound);
}

TEST_F(HDF5Array, RefusesWhatItCannotRead) {
    struct Case {
        const char* dataset;
        Status::Code code;
        const char* expected;
    };
    const Case cases[] = {
        {"/missing", Status::Code::kNotFound, "x_u8"},  // the message lists what is there
        {"/alias", Status::Code::kUnsupported, "link"},
        {"/names", Status::Code::kUnsupported, "type class"},
        {"/unwritten", Status::Code::kCorruption, "never written"},
        {"/huge", Status::Code::kCorruption, "more than"},
        {"/bomb", Status::Code::kCorruption, "compression ratio"},
        {"/group", Status::Code::kCorruption, "dataset"},
    };
    for (const Case& c : cases) {
        data::Array array;
        Status s = data::load_hdf5_array(path_, c.dataset, &array);
        EXPECT_EQ(s.code(), c.code) << c.dataset << ": " << s.message();
        EXPECT_NE(s.message().find(c.expected), std::string::npos) << s.message();
        EXPECT_NE(s.message().find(path_), std::string::npos) << s.message();
    }
    data::Array array;
    EXPECT_EQ(data::load_hdf5_array(dir_.file("none.h5"), "/x", &array).code(),
              Status::Code::kNotFound);
}

}  // namespace
}  // namespace kiln
