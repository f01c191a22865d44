// Finite-difference checks of every layer, activation and loss, in double precision on the CPU.
//
// Each case builds a small model that runs the real layers in float64, takes the analytic
// gradient of the mean loss with respect to every parameter, and compares it with central
// differences. A layer in the middle of a model is also checked through its input gradient,
// since the parameters before it only receive their gradient through it.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kiln/kiln.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::make_array;
using testing::random_labels;
using testing::random_values;

struct GradCase {
    std::string label;
    std::vector<LayerPtr> layers;
    Shape input;
    Loss loss;
    // Targets: class indices (sparse), one-hot rows (categorical), {0,1} (binary) or reals.
    enum class Targets { kSparse, kOneHot, kBinary, kReal } targets;
};

data::Array make_targets(GradCase::Targets kind, int64_t n, int64_t cols) {
    switch (kind) {
        case GradCase::Targets::kSparse:
            return random_labels(n, cols, 5);
        case GradCase::Targets::kOneHot: {
            data::Array labels = random_labels(n, cols, 6);
            std::vector<float> v(size_t(n * cols), 0.0f);
            for (int64_t r = 0; r < n; ++r)
                v[size_t(r * cols + int64_t(labels.values[r]))] = 1;
            return make_array({n, cols}, v);
        }
        case GradCase::Targets::kBinary: {
            std::vector<float> v = random_values(size_t(n * cols), 8, 0.0f, 1.0f);
            for (float& x : v)
                x = x < 0.5f ? 0.0f : 1.0f;
            return make_array({n, cols}, v);
        }
        case GradCase::Targets::kReal:
        default:
            return make_array({n, cols}, random_values(size_t(n * cols), 9));
    }
}

void check_gradients(GradCase c) {
    SCOPED_TRACE(c.label);
    Sequential model(c.layers, layers::Input(c.input));
    CompileOptions options;
    options.device = DeviceChoice::kCpu;
    options.dtype = DType::kFloat64;
    options.log = nullptr;
    model.compile(optimizers::SGD(), c.loss, {}, options);

    const int64_t n = 6;
    const int64_t in = shape_elements(c.input);
    const int64_t out = shape_elements(model.output_shape());
    Shape x_shape = c.input;
    x_shape.insert(x_shape.begin(), n);
    const data::Array x = make_array(x_shape, random_values(size_t(n * in), 3, -2.0f, 2.0f));
    const data::Array y = make_targets(c.targets, n, out);

    model.compute_gradients(x, y);
    const std::vector<double> analytic = model.flat_gradients();
    std::vector<double> params = model.flat_parameters();

    // Central differences; h balances truncation (h²) against rounding (1e-16 / h).
    const double h = 1e-6;
    std::vector<double> numeric(params.size(), 0.0);
    for (size_t i = 0; i < params.size(); ++i) {
        const double saved = params[i];
        params[i] = saved + h;
        model.set_flat_parameters(params);
        const double plus = model.compute_gradients(x, y);
        params[i] = saved - h;
        model.set_flat_parameters(params);
        const double minus = model.compute_gradients(x, y);
        params[i] = saved;
        numeric[i] = (plus - minus) / (2 * h);
    }
    model.set_flat_parameters(params);
    EXPECT_TRUE(testing::all_close(analytic, numeric, 1e-7, 1e-5));
    // A gradient check that compares zeros with zeros proves nothing.
    double norm = 0;
    for (double g : analytic)
        norm += g * g;
    EXPECT_GT(norm, 1e-8);
}

Loss sparse() {
    return losses::SparseCategoricalCrossentropy();
}

const char* kActivations[] = {"linear",  "relu", "sigmoid", "tanh",
                              "softmax", "gelu", "elu",     "leaky_relu"};

TEST(GradientTest, DenseWithEveryActivation) {
    for (const char* act : kActivations) {
        check_gradients({std::string("Dense ") + act,
                         {layers::Dense(5, act), layers::Dense(3, "softmax")},
                         {4},
                         sparse(),
                         GradCase::Targets::kSparse});
    }
}

TEST(GradientTest, DenseWithoutBias) {
    check_gradients({"Dense use_bias=false",
                     {layers::Dense(5, "tanh", /*use_bias=*/false), layers::Dense(3, "softmax")},
                     {4},
                     sparse(),
                     GradCase::Targets::kSparse});
}

TEST(GradientTest, ActivationLayerWithEveryActivation) {
    for (const char* act : kActivations) {
        check_gradients({std::string("Activation ") + act,
                         {layers::Dense(5), layers::Activation(act), layers::Dense(3, "softmax")},
                         {4},
                         sparse(),
                         GradCase::Targets::kSparse});
    }
}

TEST(GradientTest, FinalActivationLayerFusedWithTheLoss) {
    check_gradients({"Dense then Activation softmax",
                     {layers::Dense(4), layers::Activation("softmax")},
                     {3},
                     sparse(),
                     GradCase::Targets::kSparse});
}

TEST(GradientTest, DropoutInTraining) {
    // The mask depends on (seed, step) only, so it is the same in every perturbed evaluation.
    check_gradients({"Dropout",
                     {layers::Dense(8, "relu"), layers::Dropout(0.4f), layers::Dense(3, "softmax")},
                     {4},
                     sparse(),
                     GradCase::Targets::kSparse});
}

TEST(GradientTest, FlattenOfAnImage) {
    check_gradients({"Flatten",
                     {layers::Flatten(), layers::Dense(4, "tanh"), layers::Dense(3, "softmax")},
                     {2, 3},
                     sparse(),
                     GradCase::Targets::kSparse});
}

TEST(GradientTest, SparseCategoricalCrossentropyEveryForm) {
    // Fused with a final softmax, from logits, and on probabilities that do not come from a
    // softmax (normalised by Keras's rule).
    check_gradients({"sparse fused softmax",
                     {layers::Dense(4, "softmax")},
                     {3},
                     sparse(),
                     GradCase::Targets::kSparse});
    check_gradients({"sparse from logits",
                     {layers::Dense(4)},
                     {3},
                     losses::SparseCategoricalCrossentropy(true),
                     GradCase::Targets::kSparse});
    check_gradients({"sparse on sigmoid probabilities",
                     {layers::Dense(4, "sigmoid")},
                     {3},
                     sparse(),
                     GradCase::Targets::kSparse});
}

TEST(GradientTest, CategoricalCrossentropyEveryForm) {
    check_gradients({"categorical fused softmax",
                     {layers::Dense(4, "softmax")},
                     {3},
                     losses::CategoricalCrossentropy(),
                     GradCase::Targets::kOneHot});
    check_gradients({"categorical from logits",
                     {layers::Dense(4)},
                     {3},
                     losses::CategoricalCrossentropy(true),
                     GradCase::Targets::kOneHot});
    check_gradients({"categorical on sigmoid probabilities",
                     {layers::Dense(4, "sigmoid")},
                     {3},
                     losses::CategoricalCrossentropy(),
                     GradCase::Targets::kOneHot});
}

TEST(GradientTest, BinaryCrossentropyEveryForm) {
    check_gradients({"binary fused sigmoid",
                     {layers::Dense(2, "sigmoid")},
                     {3},
                     losses::BinaryCrossentropy(),
                     GradCase::Targets::kBinary});
    check_gradients({"binary from logits",
                     {layers::Dense(2)},
                     {3},
                     losses::BinaryCrossentropy(true),
                     GradCase::Targets::kBinary});
    check_gradients({"binary on softmax probabilities",
                     {layers::Dense(2, "softmax")},
                     {3},
                     losses::BinaryCrossentropy(),
                     GradCase::Targets::kBinary});
}

TEST(GradientTest, RegressionLosses) {
    check_gradients({"mean squared error",
                     {layers::Dense(5, "tanh"), layers::Dense(2)},
                     {3},
                     losses::MeanSquaredError(),
                     GradCase::Targets::kReal});
    check_gradients({"mean absolute error",
                     {layers::Dense(5, "tanh"), layers::Dense(2)},
                     {3},
                     losses::MeanAbsoluteError(),
                     GradCase::Targets::kReal});
}

// ---- image layers ---------------------------------------------------------------------------
// Each image layer is checked behind a 2×2 convolution, so that the convolution's parameters
// check the layer's input gradient too, and in front of Flatten and a softmax Dense.

GradCase image_case(std::string label, std::vector<LayerPtr> middle, Shape input = {7, 7, 2}) {
    std::vector<LayerPtr> all = {layers::Conv2D(2, {2, 2}, "tanh")};
    for (auto& layer : middle)
        all.push_back(layer);
    all.push_back(layers::Flatten());
    all.push_back(layers::Dense(3, "softmax"));
    return {std::move(label), std::move(all), std::move(input), sparse(),
            GradCase::Targets::kSparse};
}

TEST(GradientTest, Conv2DValidAndSamePadding) {
    // (7, 7, 2) → (6, 6, 2) before the layer under test.
    check_gradients(image_case("Conv2D valid", {layers::Conv2D(3, {3, 3}, "tanh")}));
    check_gradients(image_case("Conv2D same, symmetric padding",
                               {layers::Conv2D(3, {3, 3}, "relu", {1, 1}, "same")}));
    // 6 cells, stride 2, kernel 3: 3 outputs, one padding cell, after (Keras puts it at the end).
    check_gradients(image_case("Conv2D same, stride 2, padding at the end only",
                               {layers::Conv2D(3, {3, 3}, "tanh", {2, 2}, "same")}));
    check_gradients(image_case("Conv2D same, stride 2, kernel 4",
                               {layers::Conv2D(2, {4, 4}, "linear", {2, 2}, "same")}));
}

TEST(GradientTest, Conv2DStridesDilationAndShapes) {
    check_gradients(image_case("Conv2D valid, strides (2, 1), kernel (3, 2)",
                               {layers::Conv2D(3, {3, 2}, "tanh", {2, 1})}));
    check_gradients(image_case("Conv2D valid, dilation 2",
                               {layers::Conv2D(2, {2, 2}, "tanh", {1, 1}, "valid", {2, 2})}));
    check_gradients(image_case("Conv2D same, dilation (2, 3)",
                               {layers::Conv2D(2, {3, 2}, "sigmoid", {1, 1}, "same", {2, 3})}));
    check_gradients(image_case("Conv2D 1x1 without bias",
                               {layers::Conv2D(3, {1, 1}, "elu", {1, 1}, "valid", {1, 1}, false)}));
    check_gradients(
        image_case("Conv2D gelu (keeps its pre-activation)", {layers::Conv2D(2, {3, 3}, "gelu")}));
}

TEST(GradientTest, Conv2DAsTheFirstLayer) {
    check_gradients({"Conv2D first",
                     {layers::Conv2D(3, {3, 3}, "tanh", {2, 2}, "same"), layers::Flatten(),
                      layers::Dense(3, "softmax")},
                     {5, 6, 1},
                     sparse(),
                     GradCase::Targets::kSparse});
}

TEST(GradientTest, MaxPooling2D) {
    check_gradients(image_case("MaxPooling2D 2, valid", {layers::MaxPooling2D()}));
    check_gradients(image_case("MaxPooling2D 3, stride 2, same (padding at the end)",
                               {layers::MaxPooling2D({3, 3}, {2, 2}, "same")}));
    check_gradients(image_case("MaxPooling2D 2, stride 1 (overlapping windows)",
                               {layers::MaxPooling2D({2, 2}, {1, 1})}));
    check_gradients(image_case("MaxPooling2D (3, 2), valid, on an odd size",
                               {layers::MaxPooling2D({3, 2})}, {8, 7, 2}));
}

TEST(GradientTest, AveragePooling2D) {
    check_gradients(image_case("AveragePooling2D 2, valid", {layers::AveragePooling2D()}));
    check_gradients(image_case("AveragePooling2D 3, stride 2, same (padding not counted)",
                               {layers::AveragePooling2D({3, 3}, {2, 2}, "same")}));
    check_gradients(image_case("AveragePooling2D 2, stride 1, same",
                               {layers::AveragePooling2D({2, 2}, {1, 1}, "same")}));
}

TEST(GradientTest, GlobalAveragePooling2D) {
    check_gradients(image_case("GlobalAveragePooling2D", {layers::GlobalAveragePooling2D()}));
    check_gradients(
        image_case("GlobalAveragePooling2D keepdims", {layers::GlobalAveragePooling2D(true)}));
}

TEST(GradientTest, BatchNormalizationInTraining) {
    // Through the batch mean and variance, which depend on every sample.
    check_gradients(image_case("BatchNormalization of an image", {layers::BatchNormalization()}));
    check_gradients(image_case("BatchNormalization without scale",
                               {layers::BatchNormalization(0.99f, 1e-3f, true, false)}));
    check_gradients(image_case("BatchNormalization without center or scale",
                               {layers::BatchNormalization(0.9f, 1e-2f, false, false)}));
    check_gradients(
        {"BatchNormalization of features",
         {layers::Dense(5, "tanh"), layers::BatchNormalization(), layers::Dense(3, "softmax")},
         {4},
         sparse(),
         GradCase::Targets::kSparse});
    check_gradients({"BatchNormalization first",
                     {layers::BatchNormalization(), layers::Conv2D(2, {2, 2}, "tanh"),
                      layers::Flatten(), layers::Dense(3, "softmax")},
                     {3, 3, 2},
                     sparse(),
                     GradCase::Targets::kSparse});
}

TEST(GradientTest, ReshapeBetweenDenseAndConv2D) {
    check_gradients(
        {"Reshape",
         {layers::Dense(12, "tanh"), layers::Reshape({2, -1, 2}), layers::Conv2D(2, {2, 2}, "tanh"),
          layers::Flatten(), layers::Dense(3, "softmax")},
         {4},
         sparse(),
         GradCase::Targets::kSparse});
}

TEST(GradientTest, TheMnistConvnetShape) {
    // The preset's layers, smaller.
    check_gradients({"Conv2D, MaxPooling2D, Conv2D, MaxPooling2D, Dropout",
                     {layers::Conv2D(3, {3, 3}, "relu"), layers::MaxPooling2D(),
                      layers::Conv2D(4, {3, 3}, "relu"), layers::MaxPooling2D(), layers::Flatten(),
                      layers::Dropout(0.5f), layers::Dense(3, "softmax")},
                     {12, 12, 1},
                     sparse(),
                     GradCase::Targets::kSparse});
}

}  // namespace
}  // namespace kiln
