// Keras model.to_json() documents: both dialects in, the Keras-2 dialect out, lossless round trips,
// and errors that name the offending layer and key.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "kiln/model_config.h"

namespace kiln {
namespace {

using nlohmann::json;

// What Keras 3 (3.5-3.13 era) writes for the default MLP 784-256-128-10, abridged only in
// whitespace: module / registered_name / build_config on every object, DTypePolicy dicts,
// batch_shape on the InputLayer, keras_version and backend around the model.
const char* kKeras3Mlp = R"({
  "module": "keras", "class_name": "Sequential", "registered_name": null,
  "config": {
    "name": "sequential", "trainable": true,
    "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
              "registered_name": null},
    "layers": [
      {"module": "keras.layers", "class_name": "InputLayer", "registered_name": null,
       "config": {"batch_shape": [null, 784], "dtype": "float32", "sparse": false,
                  "name": "input_layer"}},
      {"module": "keras.layers", "class_name": "Dense", "registered_name": null,
       "config": {"name": "dense", "trainable": true,
                  "dtype": {"module": "keras", "class_name": "DTypePolicy",
                            "config": {"name": "float32"}, "registered_name": null},
                  "units": 256, "activation": "relu", "use_bias": true,
                  "kernel_initializer": {"module": "keras.initializers",
                                         "class_name": "GlorotUniform",
                                         "config": {"seed": null}, "registered_name": null},
                  "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros",
                                       "config": {}, "registered_name": null},
                  "kernel_regularizer": null, "bias_regularizer": null,
                  "kernel_constraint": null, "bias_constraint": null},
       "build_config": {"input_shape": [null, 784]}},
      {"module": "keras.layers", "class_name": "Dense", "registered_name": null,
       "config": {"name": "dense_1", "trainable": true,
                  "dtype": {"module": "keras", "class_name": "DTypePolicy",
                            "config": {"name": "float32"}, "registered_name": null},
                  "units": 128, "activation": "relu", "use_bias": true,
                  "kernel_initializer": {"module": "keras.initializers",
                                         "class_name": "GlorotUniform",
                                         "config": {"seed": null}, "registered_name": null},
                  "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros",
                                       "config": {}, "registered_name": null},
                  "kernel_regularizer": null, "bias_regularizer": null,
                  "kernel_constraint": null, "bias_constraint": null,
                  "quantization_config": null},
       "build_config": {"input_shape": [null, 256]}},
      {"module": "keras.layers", "class_name": "Dense", "registered_name": null,
       "config": {"name": "dense_2", "trainable": true,
                  "dtype": {"module": "keras", "class_name": "DTypePolicy",
                            "config": {"name": "float32"}, "registered_name": null},
                  "units": 10, "activation": "softmax", "use_bias": true,
                  "kernel_initializer": {"module": "keras.initializers",
                                         "class_name": "GlorotUniform",
                                         "config": {"seed": null}, "registered_name": null},
                  "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros",
                                       "config": {}, "registered_name": null},
                  "kernel_regularizer": null, "bias_regularizer": null,
                  "kernel_constraint": null, "bias_constraint": null},
       "build_config": {"input_shape": [null, 128]}}
    ],
    "build_input_shape": [null, 784]
  },
  "build_config": {"input_shape": [null, 784]},
  "keras_version": "3.5.0", "backend": "tensorflow"
})";

// What tf.keras 2.x writes for the same model: batch_input_shape, string dtypes, initializers as
// {class_name, config}, InputLayer named input_1.
const char* kKeras2Mlp = R"({
  "class_name": "Sequential",
  "config": {"name": "sequential", "layers": [
    {"class_name": "InputLayer",
     "config": {"batch_input_shape": [null, 784], "dtype": "float32", "sparse": false,
                "ragged": false, "name": "input_1"}},
    {"class_name": "Dense",
     "config": {"name": "dense", "trainable": true, "dtype": "float32", "units": 256,
                "activation": "relu", "use_bias": true,
                "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": null}},
                "bias_initializer": {"class_name": "Zeros", "config": {}},
                "kernel_regularizer": null, "bias_regularizer": null,
                "activity_regularizer": null, "kernel_constraint": null,
                "bias_constraint": null}},
    {"class_name": "Dense",
     "config": {"name": "dense_1", "trainable": true, "dtype": "float32", "units": 128,
                "activation": "relu", "use_bias": true,
                "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": null}},
                "bias_initializer": {"class_name": "Zeros", "config": {}},
                "kernel_regularizer": null, "bias_regularizer": null,
                "activity_regularizer": null, "kernel_constraint": null,
                "bias_constraint": null}},
    {"class_name": "Dense",
     "config": {"name": "dense_2", "trainable": true, "dtype": "float32", "units": 10,
                "activation": "softmax", "use_bias": true,
                "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": null}},
                "bias_initializer": {"class_name": "Zeros", "config": {}},
                "kernel_regularizer": null, "bias_regularizer": null,
                "activity_regularizer": null, "kernel_constraint": null,
                "bias_constraint": null}}]},
  "keras_version": "2.15.0", "backend": "tensorflow"
})";

// Checks the default MLP field by field; only the InputLayer's name differs between dialects.
void expect_default_mlp(const ModelConfig& config, const std::string& input_name) {
    EXPECT_EQ(config.name, "sequential");
    ASSERT_EQ(config.layers.size(), 4u);

    const LayerConfig& input = config.layers[0];
    EXPECT_EQ(input.class_name, "InputLayer");
    EXPECT_EQ(input.name, input_name);
    EXPECT_EQ(input.input_shape, Shape({784}));

    const int64_t units[] = {256, 128, 10};
    const char* names[] = {"dense", "dense_1", "dense_2"};
    const char* activations[] = {"relu", "relu", "softmax"};
    for (int i = 0; i < 3; ++i) {
        SCOPED_TRACE(names[i]);
        const LayerConfig& dense = config.layers[i + 1];
        EXPECT_EQ(dense.class_name, "Dense");
        EXPECT_EQ(dense.name, names[i]);
        EXPECT_EQ(dense.units, units[i]);
        EXPECT_EQ(dense.activation, activations[i]);
        EXPECT_TRUE(dense.use_bias);
        EXPECT_EQ(dense.kernel_initializer, "glorot_uniform");
        EXPECT_EQ(dense.bias_initializer, "zeros");
    }
}

// Every field of every layer, with the layer's index and name in the failure.
void expect_same_config(const ModelConfig& a, const ModelConfig& b) {
    EXPECT_EQ(a.name, b.name);
    ASSERT_EQ(a.layers.size(), b.layers.size());
    for (size_t i = 0; i < a.layers.size(); ++i) {
        const LayerConfig& x = a.layers[i];
        const LayerConfig& y = b.layers[i];
        SCOPED_TRACE("layer " + std::to_string(i) + " " + x.name);
        EXPECT_EQ(x.class_name, y.class_name);
        EXPECT_EQ(x.name, y.name);
        EXPECT_EQ(x.input_shape, y.input_shape);
        EXPECT_EQ(x.units, y.units);
        EXPECT_EQ(x.use_bias, y.use_bias);
        EXPECT_EQ(x.kernel_initializer, y.kernel_initializer);
        EXPECT_EQ(x.bias_initializer, y.bias_initializer);
        EXPECT_EQ(x.activation, y.activation);
        EXPECT_EQ(x.rate, y.rate);  // exactly: the writer must not lose float bits
        EXPECT_EQ(x.seed, y.seed);
    }
}

// A one-layer Keras 2 document around `layer` (a JSON object text), after an InputLayer.
std::string with_layer(const std::string& layer) {
    return R"({"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [null, 8],
         "dtype": "float32", "name": "input_1"}}, )" +
           layer + "]}}";
}

// Parses `text`, expects failure, and returns the message for the caller to inspect.
std::string parse_error(const std::string& text) {
    ModelConfig config;
    Status s = model_config_from_json(text, &config);
    EXPECT_FALSE(s.is_ok()) << "parsed although it should not have:\n" << text;
    return s.message();
}

TEST(ModelJson, ParsesKeras3Mlp) {
    ModelConfig config;
    Status s = model_config_from_json(kKeras3Mlp, &config);
    ASSERT_TRUE(s.is_ok()) << s.message();
    expect_default_mlp(config, "input_layer");
}

TEST(ModelJson, ParsesKeras2Mlp) {
    ModelConfig config;
    Status s = model_config_from_json(kKeras2Mlp, &config);
    ASSERT_TRUE(s.is_ok()) << s.message();
    expect_default_mlp(config, "input_1");
}

TEST(ModelJson, ParsesUnwrappedSequentialConfig) {
    // The Sequential's config on its own, as some tools store it.
    json doc = json::parse(kKeras2Mlp)["config"];
    ModelConfig config;
    Status s = model_config_from_json(doc.dump(), &config);
    ASSERT_TRUE(s.is_ok()) << s.message();
    expect_default_mlp(config, "input_1");
}

TEST(ModelJson, InputShapeFromFirstLayerWithoutInputLayer) {
    // Keras 2's `Dense(256, input_shape=(784,))`: no InputLayer, batch_input_shape on the Dense.
    json doc = json::parse(kKeras2Mlp);
    json& layers = doc["config"]["layers"];
    layers.erase(layers.begin());
    layers[0]["config"]["batch_input_shape"] = json::parse("[null, 784]");
    ModelConfig config;
    Status s = model_config_from_json(doc.dump(), &config);
    ASSERT_TRUE(s.is_ok()) << s.message();
    expect_default_mlp(config, "input_layer");  // synthesized, with Keras 3's default name
}

TEST(ModelJson, InputShapeFromInputDim) {
    json doc = json::parse(kKeras2Mlp);
    json& layers = doc["config"]["layers"];
    layers.erase(layers.begin());
    layers[0]["config"]["input_dim"] = 784;
    ModelConfig config;
    Status s = model_config_from_json(doc.dump(), &config);
    ASSERT_TRUE(s.is_ok()) << s.message();
    expect_default_mlp(config, "input_layer");
}

TEST(ModelJson, InputShapeFromBuildConfig) {
    // A Keras 3 model built by calling it has no InputLayer; the shape is in build_config.
    json doc = json::parse(kKeras3Mlp);
    json& layers = doc["config"]["layers"];
    layers.erase(layers.begin());
    doc["config"].erase("build_input_shape");
    ModelConfig config;
    Status s = model_config_from_json(doc.dump(), &config);
    ASSERT_TRUE(s.is_ok()) << s.message();
    expect_default_mlp(config, "input_layer");

    // And from build_input_shape alone.
    doc = json::parse(kKeras3Mlp);
    doc["config"]["layers"].erase(doc["config"]["layers"].begin());
    doc.erase("build_config");
    s = model_config_from_json(doc.dump(), &config);
    ASSERT_TRUE(s.is_ok()) << s.message();
    expect_default_mlp(config, "input_layer");
}

TEST(ModelJson, MissingInputShapeIsAnError) {
    json doc = json::parse(kKeras2Mlp);
    doc["config"]["layers"].erase(doc["config"]["layers"].begin());
    std::string message = parse_error(doc.dump());
    EXPECT_NE(message.find("no input shape"), std::string::npos) << message;
}

TEST(ModelJson, OtherLayersAndInitializers) {
    const std::string text = R"({"class_name": "Sequential", "config": {"layers": [
      {"class_name": "InputLayer", "config": {"batch_shape": [null, 28, 28]}},
      {"class_name": "Flatten", "config": {"data_format": "channels_last"}},
      {"class_name": "Dense", "config": {"units": 64, "use_bias": false,
       "kernel_initializer": "he_normal", "bias_initializer": {"class_name": "Ones",
       "config": {}}}},
      {"class_name": "Activation", "config": {"activation": "gelu"}},
      {"class_name": "Dropout", "config": {"rate": 0.3, "seed": 42, "noise_shape": null}},
      {"class_name": "Dense", "config": {"units": 10, "activation": "softmax",
       "kernel_initializer": {"class_name": "RandomNormal",
                              "config": {"mean": 0.0, "stddev": 0.05, "seed": 7}}}},
      {"class_name": "Dropout", "config": {"rate": 0.5}},
      {"class_name": "Dense", "config": {"units": 3,
       "kernel_initializer": {"class_name": "VarianceScaling",
         "config": {"scale": 2.0, "mode": "fan_in", "distribution": "truncated_normal"}}}}
    ]}})";
    ModelConfig config;
    Status s = model_config_from_json(text, &config);
    ASSERT_TRUE(s.is_ok()) << s.message();
    ASSERT_EQ(config.layers.size(), 8u);

    // Keras's automatic names: the snake-cased class, then _1, _2, ...
    const char* names[] = {"input_layer", "flatten", "dense",     "activation",
                           "dropout",     "dense_1", "dropout_1", "dense_2"};
    for (size_t i = 0; i < config.layers.size(); ++i)
        EXPECT_EQ(config.layers[i].name, names[i]);

    EXPECT_EQ(config.layers[0].input_shape, Shape({28, 28}));
    EXPECT_EQ(config.layers[1].class_name, "Flatten");
    EXPECT_EQ(config.layers[2].units, 64);
    EXPECT_FALSE(config.layers[2].use_bias);
    EXPECT_EQ(config.layers[2].activation, "linear");
    EXPECT_EQ(config.layers[2].kernel_initializer, "he_normal");
    EXPECT_EQ(config.layers[2].bias_initializer, "ones");
    EXPECT_EQ(config.layers[3].activation, "gelu");
    EXPECT_FLOAT_EQ(config.layers[4].rate, 0.3f);
    EXPECT_EQ(config.layers[4].seed, 42);
    EXPECT_EQ(config.layers[5].kernel_initializer, "random_normal");
    EXPECT_EQ(config.layers[6].seed, -1);
    EXPECT_EQ(config.layers[7].kernel_initializer, "he_normal");  // VarianceScaling(2, fan_in)
}

TEST(ModelJson, AutomaticNamesSkipNamesInUse) {
    const std::string text = R"({"class_name": "Sequential", "config": {"layers": [
      {"class_name": "InputLayer", "config": {"batch_input_shape": [null, 4]}},
      {"class_name": "Dense", "config": {"units": 4}},
      {"class_name": "Dense", "config": {"units": 4, "name": "dense_1"}},
      {"class_name": "Dense", "config": {"units": 4}}
    ]}})";
    ModelConfig config;
    Status s = model_config_from_json(text, &config);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(config.layers[1].name, "dense");
    EXPECT_EQ(config.layers[2].name, "dense_1");
    EXPECT_EQ(config.layers[3].name, "dense_2");
}

TEST(ModelJson, WritesTheKeras2Dialect) {
    ModelConfig config;
    ASSERT_TRUE(model_config_from_json(kKeras3Mlp, &config).is_ok());
    json doc = json::parse(model_config_to_json(config));

    EXPECT_EQ(doc["class_name"], "Sequential");
    EXPECT_EQ(doc["config"]["name"], "sequential");
    const json& layers = doc["config"]["layers"];
    ASSERT_EQ(layers.size(), 4u);

    // An explicit InputLayer with batch_input_shape (tf.keras cannot read batch_shape).
    EXPECT_EQ(layers[0]["class_name"], "InputLayer");
    EXPECT_EQ(layers[0]["config"]["batch_input_shape"], json::parse("[null, 784]"));
    EXPECT_FALSE(layers[0]["config"].contains("batch_shape"));
    EXPECT_EQ(layers[0]["config"]["dtype"], "float32");

    // Dense: string dtype, nested {class_name, config} without module, the conservative keys.
    const json& dense = layers[1];
    EXPECT_FALSE(dense.contains("module"));
    EXPECT_FALSE(dense.contains("build_config"));
    EXPECT_EQ(dense["config"]["dtype"], "float32");
    EXPECT_EQ(dense["config"]["units"], 256);
    EXPECT_EQ(dense["config"]["activation"], "relu");
    EXPECT_EQ(dense["config"]["kernel_initializer"],
              json::parse(R"({"class_name": "GlorotUniform", "config": {"seed": null}})"));
    EXPECT_EQ(dense["config"]["bias_initializer"],
              json::parse(R"({"class_name": "Zeros", "config": {}})"));
    for (const auto& item : dense["config"].items()) {
        static const std::set<std::string> allowed = {"name",
                                                      "trainable",
                                                      "dtype",
                                                      "units",
                                                      "activation",
                                                      "use_bias",
                                                      "kernel_initializer",
                                                      "bias_initializer",
                                                      "kernel_regularizer",
                                                      "bias_regularizer",
                                                      "activity_regularizer",
                                                      "kernel_constraint",
                                                      "bias_constraint"};
        EXPECT_EQ(allowed.count(item.key()), 1u) << "unexpected key " << item.key();
    }
    for (const json& layer : layers)
        EXPECT_EQ(layer.size(), 2u) << layer.dump();
}

TEST(ModelJson, RoundTripIsLossless) {
    // Parsed documents of both dialects.
    for (const char* text : {kKeras3Mlp, kKeras2Mlp}) {
        ModelConfig first, second;
        ASSERT_TRUE(model_config_from_json(text, &first).is_ok());
        Status s = model_config_from_json(model_config_to_json(first), &second);
        ASSERT_TRUE(s.is_ok()) << s.message();
        expect_same_config(first, second);
    }

    // A config built in code, with every field away from its default and awkward floats.
    ModelConfig built;
    built.name = "my_model";
    LayerConfig input;
    input.class_name = "InputLayer";
    input.name = "pixels";
    input.input_shape = {28, 28};
    LayerConfig flatten;
    flatten.class_name = "Flatten";
    flatten.name = "flat";
    LayerConfig dense;
    dense.class_name = "Dense";
    dense.name = "hidden";
    dense.units = 300;
    dense.use_bias = false;
    dense.activation = "leaky_relu";
    dense.kernel_initializer = "lecun_uniform";
    dense.bias_initializer = "ones";
    LayerConfig dropout;
    dropout.class_name = "Dropout";
    dropout.name = "drop";
    dropout.rate = 0.1f + 0.2f;  // not the float nearest 0.3
    dropout.seed = 1234567890123;
    LayerConfig activation;
    activation.class_name = "Activation";
    activation.name = "act";
    activation.activation = "tanh";
    built.layers = {input, flatten, dense, dropout, activation};
    const char* initializers[] = {
        "glorot_uniform", "glorot_normal", "he_normal",      "he_uniform", "lecun_normal",
        "lecun_uniform",  "random_normal", "random_uniform", "zeros",      "ones"};
    for (const char* name : initializers) {
        LayerConfig extra = dense;
        extra.name = std::string("init_") + name;
        extra.kernel_initializer = name;
        extra.use_bias = true;
        built.layers.push_back(extra);
    }
    ModelConfig parsed;
    const std::string text = model_config_to_json(built);
    Status s = model_config_from_json(text, &parsed);
    ASSERT_TRUE(s.is_ok()) << s.message() << "\n" << text;
    expect_same_config(built, parsed);
    EXPECT_EQ(model_config_to_json(parsed), text);  // and the text is stable
}

TEST(ModelJson, WriterNamesUnnamedLayers) {
    ModelConfig built;
    LayerConfig input;
    input.class_name = "InputLayer";
    input.input_shape = {4};
    LayerConfig dense;
    dense.class_name = "Dense";
    dense.units = 2;
    built.layers = {input, dense, dense};
    ModelConfig parsed;
    ASSERT_TRUE(model_config_from_json(model_config_to_json(built), &parsed).is_ok());
    EXPECT_EQ(parsed.layers[0].name, "input_layer");
    EXPECT_EQ(parsed.layers[1].name, "dense");
    EXPECT_EQ(parsed.layers[2].name, "dense_1");
}

TEST(ModelJson, UnknownLayerClassNamesTheLayer) {
    std::string message = parse_error(
        with_layer(R"({"class_name": "Conv3D", "config": {"name": "conv3d", "filters": 8}})"));
    EXPECT_NE(message.find("Conv3D"), std::string::npos) << message;
    EXPECT_NE(message.find("layer 1"), std::string::npos) << message;
    EXPECT_NE(message.find("'conv3d'"), std::string::npos) << message;
}

TEST(ModelJson, UnknownActivationNamesLayerAndActivation) {
    std::string message = parse_error(with_layer(
        R"({"class_name": "Dense", "config": {"name": "out", "units": 3,
            "activation": "swish"}})"));
    EXPECT_NE(message.find("swish"), std::string::npos) << message;
    EXPECT_NE(message.find("'out'"), std::string::npos) << message;

    message = parse_error(with_layer(
        R"({"class_name": "Activation", "config": {"name": "act", "activation": "selu"}})"));
    EXPECT_NE(message.find("selu"), std::string::npos) << message;
    EXPECT_NE(message.find("'act'"), std::string::npos) << message;
}

TEST(ModelJson, RegularizerIsUnsupported) {
    std::string message = parse_error(with_layer(
        R"({"class_name": "Dense", "config": {"name": "dense", "units": 3,
            "kernel_regularizer": {"class_name": "L2", "config": {"l2": 0.01}}}})"));
    EXPECT_NE(message.find("kernel_regularizer"), std::string::npos) << message;
    EXPECT_NE(message.find("'dense'"), std::string::npos) << message;
    EXPECT_NE(message.find("not supported"), std::string::npos) << message;

    for (const char* key :
         {"bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint"}) {
        message = parse_error(with_layer(std::string(R"({"class_name": "Dense", "config": {
            "name": "d", "units": 3, ")") +
                                         key + R"(": {"class_name": "X", "config": {}}}})"));
        EXPECT_NE(message.find(key), std::string::npos) << message;
        EXPECT_NE(message.find("'d'"), std::string::npos) << message;
    }
}

TEST(ModelJson, UnknownArgumentNamesLayerAndKey) {
    std::string message = parse_error(with_layer(
        R"({"class_name": "Dense", "config": {"name": "dense", "units": 3, "foo": 1}})"));
    EXPECT_NE(message.find("'foo'"), std::string::npos) << message;
    EXPECT_NE(message.find("layer 1 ('dense', Dense)"), std::string::npos) << message;
}

TEST(ModelJson, UnsupportedArgumentValues) {
    struct Case {
        const char* layer;
        const char* expected;
    };
    const Case cases[] = {
        {R"({"class_name": "Dropout", "config": {"name": "dp", "rate": 0.5,
             "noise_shape": [null, 1]}})",
         "noise_shape"},
        {R"({"class_name": "Dropout", "config": {"name": "dp", "rate": 1.0}})", "rate"},
        {R"({"class_name": "Flatten", "config": {"name": "fl",
             "data_format": "channels_first"}})",
         "channels_first"},
        {R"({"class_name": "Dense", "config": {"name": "d", "units": 0}})", "units"},
        {R"({"class_name": "Dense", "config": {"name": "d", "units": 3,
             "kernel_initializer": "orthogonal"}})",
         "orthogonal"},
        {R"({"class_name": "Dense", "config": {"name": "d", "units": 3,
             "kernel_initializer": {"class_name": "RandomNormal",
             "config": {"mean": 0.0, "stddev": 0.01, "seed": null}}}})",
         "stddev"},
        {R"({"class_name": "Dense", "config": {"name": "d", "units": 3,
             "dtype": "float64"}})",
         "float64"},
        {R"({"class_name": "Dense", "config": {"name": "d", "units": 3,
             "trainable": false}})",
         "trainable"},
        {R"({"module": "my_project.layers", "class_name": "Dense",
             "config": {"name": "d", "units": 3}})",
         "my_project"},
    };
    for (const Case& c : cases) {
        std::string message = parse_error(with_layer(c.layer));
        EXPECT_NE(message.find(c.expected), std::string::npos) << message;
        EXPECT_NE(message.find("layer 1"), std::string::npos) << message;
    }
}

TEST(ModelJson, StructuralErrors) {
    std::string message = parse_error(R"({"class_name": "Functional", "config": {}})");
    EXPECT_NE(message.find("Functional"), std::string::npos) << message;

    message = parse_error(R"({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [null, 4]}},
        {"class_name": "Dense", "config": {"name": "a", "units": 2}},
        {"class_name": "Dense", "config": {"name": "a", "units": 2}}]}})");
    EXPECT_NE(message.find("'a'"), std::string::npos) << message;
    EXPECT_NE(message.find("layer 2"), std::string::npos) << message;

    message = parse_error(R"({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Dense", "config": {"units": 2, "batch_input_shape": [null, 4]}},
        {"class_name": "InputLayer", "config": {"batch_input_shape": [null, 4]}}]}})");
    EXPECT_NE(message.find("InputLayer must be the first"), std::string::npos) << message;

    message = parse_error(R"({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [null, null]}}]}})");
    EXPECT_NE(message.find("null"), std::string::npos) << message;

    message = parse_error(R"({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [null, 4]}},
        {"class_name": "Dense", "config": {"name": "a/b", "units": 2}}]}})");
    EXPECT_NE(message.find("'/'"), std::string::npos) << message;

    message = parse_error(R"({"class_name": "Sequential", "config": {"layers": []}})");
    EXPECT_NE(message.find("no layers"), std::string::npos) << message;

    message = parse_error(R"([1, 2, 3])");
    EXPECT_NE(message.find("object"), std::string::npos) << message;

    // Wrong JSON types where numbers, strings and lists belong are errors, never exceptions.
    message = parse_error(with_layer(R"({"class_name": "Dense", "config": {"units": "ten"}})"));
    EXPECT_NE(message.find("units"), std::string::npos) << message;
    message = parse_error(R"({"class_name": "Sequential", "config": {"layers": {}}})");
    EXPECT_NE(message.find("layers"), std::string::npos) << message;
}

TEST(ModelJson, MalformedJsonIsAnError) {
    for (const char* text : {"", "{", R"({"class_name": "Sequential", "config": {"layers": [)",
                             "not json at all", R"({"a": 1,})"}) {
        std::string message = parse_error(text);
        EXPECT_NE(message.find("malformed JSON"), std::string::npos) << message;
    }
}

TEST(ModelJson, LoadsFromFile) {
    char path[] = "/tmp/kiln_model_json_XXXXXX";
    int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    close(fd);
    {
        std::ofstream out(path);
        out << kKeras2Mlp;
    }
    ModelConfig config;
    Status s = load_model_config(path, &config);
    EXPECT_TRUE(s.is_ok()) << s.message();
    expect_default_mlp(config, "input_1");

    // Errors carry the path.
    {
        std::ofstream out(path);
        out << with_layer(R"({"class_name": "Conv3D", "config": {}})");
    }
    s = load_model_config(path, &config);
    EXPECT_FALSE(s.is_ok());
    EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
    std::remove(path);

    s = load_model_config("/nonexistent/kiln/model.json", &config);
    EXPECT_EQ(s.code(), Status::Code::kNotFound) << s.message();
}

}  // namespace
}  // namespace kiln
