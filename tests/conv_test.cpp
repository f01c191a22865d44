// The image layers on the CPU: their forward passes against plain loops written from Keras's
// definitions (and a few values worked out by hand), batch normalisation's training and
// inference behaviour and its moving statistics, reproducibility across thread counts, training
// a small convnet, and the Keras file formats (JSON and .h5) for every new layer.
//
// The finite-difference checks of the backward passes are in gradient_test.cpp; the CUDA backend
// against this one in cuda_conv_test.cpp.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "kiln/kiln.h"
#include "test_util.h"

#ifndef KILN_KERAS_PYTHON
#define KILN_KERAS_PYTHON ""
#endif

namespace kiln {
namespace {

using testing::all_close;
using testing::make_array;
using testing::random_labels;
using testing::random_values;

// ---- references written from the definitions ----------------------------------------------------

Conv2DGeometry conv_geometry(int64_t n, int64_t h, int64_t w, int64_t c, int64_t f, int64_t kh,
                             int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw,
                             Padding padding) {
    const AxisWindow ah = keras_axis_window(h, kh, sh, dh, padding);
    const AxisWindow aw = keras_axis_window(w, kw, sw, dw, padding);
    Conv2DGeometry g;
    g.batch = n;
    g.in_h = h;
    g.in_w = w;
    g.in_c = c;
    g.out_h = ah.out;
    g.out_w = aw.out;
    g.out_c = f;
    g.kernel_h = kh;
    g.kernel_w = kw;
    g.stride_h = sh;
    g.stride_w = sw;
    g.dilation_h = dh;
    g.dilation_w = dw;
    g.pad_top = ah.pad_before;
    g.pad_bottom = ah.pad_after;
    g.pad_left = aw.pad_before;
    g.pad_right = aw.pad_after;
    return g;
}

// y[n, i, j, f] = Σ_{r, s, c} x[n, i·sh - top + r·dh, j·sw - left + s·dw, c] · k[r, s, c, f],
// cells outside the image being zero; the kernel in Keras's (KH, KW, C, F) layout.
std::vector<double> reference_conv(const Conv2DGeometry& g, const std::vector<double>& x,
                                   const std::vector<double>& k) {
    std::vector<double> y(static_cast<size_t>(g.y_elements()), 0.0);
    for (int64_t n = 0; n < g.batch; ++n)
        for (int64_t i = 0; i < g.out_h; ++i)
            for (int64_t j = 0; j < g.out_w; ++j)
                for (int64_t f = 0; f < g.out_c; ++f) {
                    double sum = 0;
                    for (int64_t r = 0; r < g.kernel_h; ++r)
                        for (int64_t s = 0; s < g.kernel_w; ++s)
                            for (int64_t c = 0; c < g.in_c; ++c) {
                                const int64_t h = i * g.stride_h - g.pad_top + r * g.dilation_h;
                                const int64_t w = j * g.stride_w - g.pad_left + s * g.dilation_w;
                                if (h < 0 || h >= g.in_h || w < 0 || w >= g.in_w)
                                    continue;
                                sum += x[size_t(((n * g.in_h + h) * g.in_w + w) * g.in_c + c)] *
                                       k[size_t(((r * g.kernel_w + s) * g.in_c + c) * g.out_c + f)];
                            }
                    y[size_t(((n * g.out_h + i) * g.out_w + j) * g.out_c + f)] = sum;
                }
    return y;
}

// One op's inputs and output on the CPU backend, in double.
class CpuImageOps : public ::testing::Test {
  protected:
    void SetUp() override { backend_ = make_cpu_backend(); }

    Tensor upload(const std::vector<double>& values) {
        Tensor t(*backend_, {static_cast<int64_t>(values.size())}, DType::kFloat64);
        t.copy_from_host(values.data());
        return t;
    }
    std::vector<double> download(const Tensor& t) {
        std::vector<double> out(static_cast<size_t>(t.elements()));
        t.copy_to_host(out.data());
        return out;
    }
    static std::vector<double> doubles(size_t n, uint64_t seed) {
        std::vector<float> f = random_values(n, seed);
        return std::vector<double>(f.begin(), f.end());
    }

    std::unique_ptr<Backend> backend_;
};

TEST_F(CpuImageOps, Conv2DForwardMatchesTheDefinition) {
    struct Case {
        const char* label;
        Conv2DGeometry g;
    };
    const Case cases[] = {
        {"valid 3x3", conv_geometry(2, 7, 6, 3, 4, 3, 3, 1, 1, 1, 1, Padding::kValid)},
        {"same 3x3", conv_geometry(2, 5, 5, 2, 3, 3, 3, 1, 1, 1, 1, Padding::kSame)},
        {"same stride 2, even size",
         conv_geometry(3, 6, 8, 2, 2, 3, 3, 2, 2, 1, 1, Padding::kSame)},
        {"same stride 2, kernel 2", conv_geometry(2, 5, 4, 1, 2, 2, 2, 2, 2, 1, 1, Padding::kSame)},
        {"valid strides (3, 2), kernel (2, 3)",
         conv_geometry(2, 9, 8, 2, 3, 2, 3, 3, 2, 1, 1, Padding::kValid)},
        {"same dilation (2, 3)", conv_geometry(2, 7, 9, 2, 3, 3, 2, 1, 1, 2, 3, Padding::kSame)},
        {"valid dilation 2", conv_geometry(1, 8, 8, 3, 2, 3, 3, 1, 1, 2, 2, Padding::kValid)},
        {"1x1", conv_geometry(3, 4, 5, 6, 7, 1, 1, 1, 1, 1, 1, Padding::kValid)},
        // more pixels than one chunk of the im2col: several chunks
        {"many chunks", conv_geometry(9, 24, 24, 2, 3, 3, 3, 1, 1, 1, 1, Padding::kSame)},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.label);
        const Conv2DGeometry& g = c.g;
        const std::vector<double> x = doubles(size_t(g.x_elements()), 1);
        const std::vector<double> k = doubles(size_t(g.kernel_elements()), 2);
        Tensor xd = upload(x), kd = upload(k);
        Tensor yd(*backend_, {g.y_elements()}, DType::kFloat64);
        backend_->conv2d_forward(g, xd.view(), kd.view(), View{}, ActivationSpec{}, yd.view());
        const std::vector<double> expected = reference_conv(g, x, k);
        EXPECT_TRUE(all_close(download(yd), expected, 1e-12, 1e-12));

        // with the bias and activation fused in: tanh(conv + bias), per filter
        const std::vector<double> bias = doubles(size_t(g.out_c), 7);
        Tensor bd = upload(bias);
        ActivationSpec tanh_act;
        tanh_act.kind = Activation::kTanh;
        backend_->conv2d_forward(g, xd.view(), kd.view(), bd.view(), tanh_act, yd.view());
        std::vector<double> activated = expected;
        for (size_t i = 0; i < activated.size(); ++i) {
            activated[i] = std::tanh(activated[i] + bias[i % size_t(g.out_c)]);
        }
        EXPECT_TRUE(all_close(download(yd), activated, 1e-12, 1e-12)) << "bias and tanh";
    }
}

TEST_F(CpuImageOps, SamePaddingPutsTheOddCellAtTheEndAsKerasDoes) {
    // x = 1..16 as a 4×4 image, an all-ones 3×3 kernel, stride 2: TensorFlow's SAME pads one
    // row and one column, both after the image, so the first window is rows and columns 0..2.
    const Conv2DGeometry g = conv_geometry(1, 4, 4, 1, 1, 3, 3, 2, 2, 1, 1, Padding::kSame);
    EXPECT_EQ(g.out_h, 2);
    EXPECT_EQ(g.pad_top, 0);
    EXPECT_EQ(g.pad_bottom, 1);
    std::vector<double> x(16);
    for (int i = 0; i < 16; ++i)
        x[size_t(i)] = i + 1;
    Tensor xd = upload(x), kd = upload(std::vector<double>(9, 1.0));
    Tensor yd(*backend_, {4}, DType::kFloat64);
    backend_->conv2d_forward(g, xd.view(), kd.view(), View{}, ActivationSpec{}, yd.view());
    EXPECT_EQ(download(yd), (std::vector<double>{54, 45, 72, 54}));
}

TEST_F(CpuImageOps, PoolingFollowsKerasSamePadding) {
    // x = 1..9 as a 3×3 image, pool 2, stride 2, 'same': the padding row and column come after,
    // and the average counts only the cells inside the image.
    const AxisWindow a = keras_axis_window(3, 2, 2, 1, Padding::kSame);
    Pool2DGeometry g;
    g.batch = 1;
    g.in_h = g.in_w = 3;
    g.channels = 1;
    g.out_h = g.out_w = a.out;
    g.pool_h = g.pool_w = 2;
    g.stride_h = g.stride_w = 2;
    g.pad_top = g.pad_left = a.pad_before;
    std::vector<double> x(9);
    for (int i = 0; i < 9; ++i)
        x[size_t(i)] = i + 1;
    Tensor xd = upload(x);
    Tensor yd(*backend_, {4}, DType::kFloat64);
    g.kind = PoolKind::kAverage;
    backend_->pool2d_forward(g, xd.view(), yd.view());
    EXPECT_EQ(download(yd), (std::vector<double>{3, 4.5, 7.5, 9}));
    g.kind = PoolKind::kMax;
    backend_->pool2d_forward(g, xd.view(), yd.view());
    EXPECT_EQ(download(yd), (std::vector<double>{5, 6, 8, 9}));

    // The max's gradient goes to the window's first largest cell only: the first window holds
    // 7 at (0, 1) and at (1, 0), and only (0, 1) gets its gradient.
    std::vector<double> tied = {1, 7, 7, 7, 0, 0, 7, 0, 0};
    Tensor td = upload(tied), dy = upload({1, 2, 3, 4});
    Tensor dx(*backend_, {9}, DType::kFloat64);
    backend_->pool2d_forward(g, td.view(), yd.view());
    backend_->pool2d_backward(g, td.view(), yd.view(), dy.view(), dx.view());
    EXPECT_EQ(download(dx), (std::vector<double>{0, 1, 2, 0, 0, 0, 3, 0, 4}));
}

// The helper of the next test, run as its child: the backend's pool is sized once per process
// (KILN_NUM_THREADS), so each thread count needs a process of its own.
TEST_F(CpuImageOps, ThreadCountChild) {
    const char* out = std::getenv("KILN_CONV_TEST_OUTPUT");
    if (out == nullptr)
        GTEST_SKIP() << "runs only as the child of OneThreadOrTwoGiveTheSameBits";
    const Conv2DGeometry g = conv_geometry(13, 20, 20, 3, 8, 3, 3, 1, 1, 1, 1, Padding::kSame);
    const Conv2DGeometry first = conv_geometry(13, 20, 20, 1, 8, 3, 3, 1, 1, 1, 1, Padding::kSame);
    std::vector<float> result;
    for (const Conv2DGeometry& c : {g, first}) {
        Tensor x(*backend_, {c.x_elements()}), k(*backend_, {c.kernel_elements()});
        Tensor dy(*backend_, {c.y_elements()}), dk(*backend_, {c.kernel_elements()});
        Tensor dx(*backend_, {c.x_elements()}), y(*backend_, {c.y_elements()});
        x.copy_from_host(random_values(size_t(c.x_elements()), 3).data());
        k.copy_from_host(random_values(size_t(c.kernel_elements()), 4).data());
        dy.copy_from_host(random_values(size_t(c.y_elements()), 5).data());
        backend_->conv2d_forward(c, x.view(), k.view(), View{}, ActivationSpec{}, y.view());
        backend_->conv2d_backward_filter(c, x.view(), dy.view(), dk.view());
        backend_->conv2d_backward_data(c, dy.view(), k.view(), dx.view());
        for (const Tensor* t : {&y, &dk, &dx}) {
            std::vector<float> v(static_cast<size_t>(t->elements()));
            t->copy_to_host(v.data());
            result.insert(result.end(), v.begin(), v.end());
        }
    }
    std::ofstream(out, std::ios::binary)
        .write(reinterpret_cast<const char*>(result.data()),
               static_cast<std::streamsize>(result.size() * sizeof(float)));
}

TEST(CpuImageOpsThreads, OneThreadOrTwoGiveTheSameBits) {
    testing::TempDir dir;
    const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
    std::string outputs[2];
    for (int threads : {1, 2}) {
        const std::string file = dir.file("out" + std::to_string(threads));
        const std::string command = "KILN_NUM_THREADS=" + std::to_string(threads) +
                                    " KILN_CONV_TEST_OUTPUT=" + file + " " + self +
                                    " --gtest_filter=CpuImageOps.ThreadCountChild";
        ASSERT_EQ(std::system((command + " >/dev/null 2>&1").c_str()), 0) << command;
        std::ifstream in(file, std::ios::binary);
        outputs[threads - 1].assign(std::istreambuf_iterator<char>(in),
                                    std::istreambuf_iterator<char>());
    }
    ASSERT_FALSE(outputs[0].empty());
    EXPECT_TRUE(outputs[0] == outputs[1]) << "convolutions differ between 1 and 2 threads";
}

// ---- layers in a model --------------------------------------------------------------------------

CompileOptions cpu_options(DType dtype = DType::kFloat32) {
    CompileOptions o;
    o.device = DeviceChoice::kCpu;
    o.dtype = dtype;
    o.log = nullptr;
    return o;
}

TEST(ImageLayers, ShapesParametersAndNamesAreKeras) {
    Sequential model(presets::mnist_convnet());
    model.compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {"accuracy"},
                  cpu_options());
    const std::vector<std::string> names = {
        "conv2d", "max_pooling2d", "conv2d_1", "max_pooling2d_1", "flatten", "dropout", "dense"};
    const std::vector<Shape> shapes = {{26, 26, 32}, {13, 13, 32}, {11, 11, 64}, {5, 5, 64},
                                       {1600},       {1600},       {10}};
    ASSERT_EQ(model.layers().size(), names.size());
    for (size_t i = 0; i < names.size(); ++i) {
        EXPECT_EQ(model.layers()[i]->name(), names[i]);
        EXPECT_EQ(model.layers()[i]->output_shape(), shapes[i]) << names[i];
    }
    EXPECT_EQ(model.count_params(), 34826);  // Keras's summary of the example

    Sequential others(
        {layers::Conv2D(4, {3, 3}, "relu", {2, 2}, "same"), layers::BatchNormalization(),
         layers::AveragePooling2D({3, 3}, {2, 2}, "same"), layers::GlobalAveragePooling2D(true),
         layers::Reshape({-1})},
        layers::Input({9, 8, 3}));
    EXPECT_EQ(others.layers()[0]->output_shape(), (Shape{5, 4, 4}));
    EXPECT_EQ(others.layers()[2]->output_shape(), (Shape{3, 2, 4}));
    EXPECT_EQ(others.layers()[3]->output_shape(), (Shape{1, 1, 4}));
    EXPECT_EQ(others.layers()[4]->output_shape(), (Shape{4}));
    EXPECT_EQ(others.layers()[1]->name(), "batch_normalization");
    EXPECT_EQ(others.layers()[3]->name(), "global_average_pooling2d");
    // BatchNormalization: 4 trainable (gamma, beta) and 4 + 4 non-trainable values.
    EXPECT_EQ(others.count_params(), 3 * 3 * 3 * 4 + 4 + 16);
    EXPECT_EQ(others.count_params(true), 3 * 3 * 3 * 4 + 4 + 8);
}

TEST(ImageLayers, BadArgumentsAreClearErrors) {
    auto build_error = [](std::vector<LayerPtr> layers, Shape input) -> std::string {
        try {
            Sequential model(std::move(layers), layers::Input(std::move(input)));
        } catch (const Error& e) {
            return e.what();
        }
        return "";
    };
    EXPECT_NE(build_error({layers::Conv2D(4, {3, 3})}, {784}).find("Reshape"), std::string::npos);
    EXPECT_NE(build_error({layers::Conv2D(4, {5, 5})}, {4, 4, 1}).find("does not fit"),
              std::string::npos);
    EXPECT_NE(build_error({layers::Conv2D(4, {3, 3}, "relu", {2, 2}, "valid", {2, 2})}, {9, 9, 1})
                  .find("dilation_rate"),
              std::string::npos);
    EXPECT_NE(
        build_error({layers::MaxPooling2D({2, 2}, {2, 2}, "full")}, {4, 4, 1}).find("padding"),
        std::string::npos);
    EXPECT_NE(build_error({layers::Reshape({5, -1})}, {12}).find("cannot reshape"),
              std::string::npos);
    LayerConfig bn;
    bn.class_name = "BatchNormalization";
    bn.axis = 1;
    EXPECT_NE(build_error({layer_from_config(bn)}, {4, 4, 3}).find("axis 1"), std::string::npos);
}

// Training uses the batch's statistics and updates the moving ones as Keras 3 does (biased
// variance); inference uses the moving ones; they live in the non-trainable buffer.
TEST(ImageLayers, BatchNormalizationTrainingInferenceAndMovingStatistics) {
    const float momentum = 0.9f, epsilon = 1e-3f;
    Sequential model({layers::BatchNormalization(momentum, epsilon)}, layers::Input({2}));
    model.compile(optimizers::SGD(0.0f), losses::MeanSquaredError(), {},
                  cpu_options(DType::kFloat64));
    const int64_t n = 4;
    const std::vector<float> batches[] = {{1, 10, 2, 20, 3, 30, 6, 60}, {0, -1, 4, 1, 0, 3, -4, 5}};

    // moving statistics by hand over two steps (SGD with learning rate 0 keeps gamma and beta)
    double mean[2] = {0, 0}, var[2] = {1, 1};
    for (const auto& b : batches) {
        for (int c = 0; c < 2; ++c) {
            double m = 0, v = 0;
            for (int r = 0; r < n; ++r)
                m += b[size_t(r * 2 + c)];
            m /= n;
            for (int r = 0; r < n; ++r) {
                v += (b[size_t(r * 2 + c)] - m) * (b[size_t(r * 2 + c)] - m);
            }
            v /= n;  // biased, as Keras 3's ops.moments
            mean[c] = mean[c] * momentum + m * (1 - momentum);
            var[c] = var[c] * momentum + v * (1 - momentum);
        }
        FitArgs args;
        args.epochs = 1;
        args.batch_size = n;
        args.shuffle = false;
        args.verbose = 0;
        model.fit(make_array({n, 2}, b), make_array({n, 2}, std::vector<float>(8, 0.0f)), args);
    }
    const std::vector<LayerWeights> w = model.get_weights();
    ASSERT_EQ(w[0].weights.size(), 4u);
    EXPECT_EQ(w[0].weights[2].name, "moving_mean");
    EXPECT_EQ(w[0].weights[3].name, "moving_variance");
    for (int c = 0; c < 2; ++c) {
        EXPECT_NEAR(w[0].weights[2].values[size_t(c)], mean[c], 1e-5 * (1 + std::fabs(mean[c])));
        EXPECT_NEAR(w[0].weights[3].values[size_t(c)], var[c], 1e-5 * (1 + var[c]));
    }

    // the moving statistics are the non-trainable buffer, which snapshots and checkpoints copy
    std::vector<double> fixed(static_cast<size_t>(model.nontrainable_parameters().elements()));
    model.backend().read(fixed.data(), model.nontrainable_parameters().data,
                         fixed.size() * sizeof(double));
    EXPECT_NEAR(fixed[0], mean[0], 1e-5 * (1 + std::fabs(mean[0])));
    EXPECT_EQ(model.count_params(true), 4);
    EXPECT_EQ(model.count_params(), 8);

    // inference normalises with the moving statistics
    const data::Array x = make_array({1, 2}, {2.0f, -3.0f});
    const data::Array y = model.predict(x, 1);
    for (int c = 0; c < 2; ++c) {
        const double expected = (x.values[size_t(c)] - mean[c]) / std::sqrt(var[c] + epsilon);
        EXPECT_NEAR(y.values[size_t(c)], expected, 1e-5);
    }
    // training normalises with the batch's own statistics: each channel of the output has mean
    // 0 and variance v / (v + epsilon), v the batch's biased variance, so the mean squared output
    // (the loss against zero targets) is the channels' mean of that
    double expected_loss = 0;
    for (int c = 0; c < 2; ++c) {
        double m = 0, v = 0;
        for (int r = 0; r < n; ++r)
            m += batches[0][size_t(r * 2 + c)];
        m /= n;
        for (int r = 0; r < n; ++r) {
            v += (batches[0][size_t(r * 2 + c)] - m) * (batches[0][size_t(r * 2 + c)] - m);
        }
        v /= n;
        expected_loss += v / (v + epsilon) / 2;
    }
    const double loss = model.compute_gradients(make_array({n, 2}, batches[0]),
                                                make_array({n, 2}, std::vector<float>(8, 0.0f)));
    EXPECT_NEAR(loss, expected_loss, 1e-9);
}

TEST(ImageLayers, ASmallConvnetLearnsToTellBarsApart) {
    // 8×8 images holding one horizontal (class 0) or vertical (class 1) bar of ones in noise.
    const int64_t n = 256;
    std::vector<float> x(static_cast<size_t>(n * 64)), y(static_cast<size_t>(n));
    const std::vector<float> noise = random_values(x.size(), 21, 0.0f, 0.3f);
    for (int64_t i = 0; i < n; ++i) {
        const int64_t label = int64_t(math::hash3(5, 1, uint64_t(i)) % 2);
        const int64_t at = int64_t(math::hash3(5, 2, uint64_t(i)) % 8);
        for (int64_t p = 0; p < 64; ++p) {
            const int64_t r = p / 8, c = p % 8;
            const bool on = label == 0 ? r == at : c == at;
            x[size_t(i * 64 + p)] = (on ? 1.0f : 0.0f) + noise[size_t(i * 64 + p)];
        }
        y[size_t(i)] = float(label);
    }
    Sequential model(
        {layers::Conv2D(4, {3, 3}, "relu", {1, 1}, "same"), layers::BatchNormalization(),
         layers::MaxPooling2D(), layers::Conv2D(8, {3, 3}, "relu"),
         layers::GlobalAveragePooling2D(), layers::Dense(2, "softmax")},
        layers::Input({8, 8, 1}));
    model.compile(optimizers::Adam(0.01), losses::SparseCategoricalCrossentropy(), {"accuracy"},
                  cpu_options());
    FitArgs args;
    args.epochs = 15;
    args.batch_size = 32;
    args.verbose = 0;
    const data::Array xs = make_array({n, 8, 8, 1}, x), ys = make_array({n, 1}, y);
    model.fit(xs, ys, args);
    EXPECT_GT(*model.evaluate(xs, ys, 64).get("accuracy"), 0.95);
}

// ---- Keras files --------------------------------------------------------------------------------

// Every new layer and argument, in one model.
std::vector<LayerPtr> every_image_layer() {
    return {layers::Conv2D(3, {3, 2}, "relu", {2, 1}, "same", {1, 1}, true, "he_uniform"),
            layers::BatchNormalization(0.9f, 1e-2f),
            layers::MaxPooling2D({2, 2}, {1, 1}, "same"),
            layers::Conv2D(4, {2, 2}, "tanh", {1, 1}, "valid", {2, 2}, false),
            layers::AveragePooling2D({2, 2}, {0, 0}, "valid"),
            layers::BatchNormalization(0.99f, 1e-3f, false, false),
            layers::GlobalAveragePooling2D(true),
            layers::Reshape({-1}),
            layers::Dense(5, "softmax")};
}

TEST(ImageLayers, JsonRoundTripOfEveryLayer) {
    Sequential model(every_image_layer(), layers::Input({9, 8, 2}));
    const ModelConfig original = model.config();
    const std::string json = model_config_to_json(original);
    ModelConfig parsed;
    ASSERT_TRUE(model_config_from_json(json, &parsed).is_ok()) << json;
    EXPECT_EQ(model_config_to_json(parsed), json);
    ASSERT_EQ(parsed.layers.size(), original.layers.size());
    const LayerConfig& conv = parsed.layers[1];
    EXPECT_EQ(conv.class_name, "Conv2D");
    EXPECT_EQ(conv.kernel_size, (std::array<int64_t, 2>{3, 2}));
    EXPECT_EQ(conv.strides, (std::array<int64_t, 2>{2, 1}));
    EXPECT_EQ(conv.padding, "same");
    EXPECT_EQ(conv.kernel_initializer, "he_uniform");
    const LayerConfig& bn = parsed.layers[6];
    EXPECT_FALSE(bn.center);
    EXPECT_FALSE(bn.scale);
    EXPECT_EQ(parsed.layers[2].momentum, 0.9f);
    EXPECT_EQ(parsed.layers[2].epsilon, 1e-2f);
    EXPECT_EQ(parsed.layers[5].strides, (std::array<int64_t, 2>{2, 2}));  // None: the pool size
    EXPECT_TRUE(parsed.layers[7].keepdims);
    EXPECT_EQ(parsed.layers[8].target_shape, (Shape{-1}));
    // The same model again.
    Sequential rebuilt(parsed);
    EXPECT_EQ(rebuilt.to_json(), json);
}

TEST(ImageLayers, ReadsKeras3AndKeras2Documents) {
    // Keras 3's to_json() of the convnet (abridged to the keys that matter), kernel_size as a
    // list and pool strides null; then tf.keras 2's spelling: ints, axis as a list.
    const std::string keras3 = R"({"module": "keras", "class_name": "Sequential", "config": {
      "name": "sequential", "trainable": true, "dtype": {"module": "keras", "class_name":
      "DTypePolicy", "config": {"name": "float32"}, "registered_name": null}, "layers": [
      {"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape":
        [null, 28, 28, 1], "dtype": "float32", "sparse": false, "name": "input_layer"},
        "registered_name": null},
      {"module": "keras.layers", "class_name": "Conv2D", "config": {"name": "conv2d",
        "trainable": true, "filters": 32, "kernel_size": [3, 3], "strides": [1, 1],
        "padding": "valid", "data_format": "channels_last", "dilation_rate": [1, 1],
        "groups": 1, "activation": "relu", "use_bias": true, "kernel_initializer":
        {"module": "keras.initializers", "class_name": "GlorotUniform", "config": {"seed": null},
        "registered_name": null}, "bias_initializer": {"module": "keras.initializers",
        "class_name": "Zeros", "config": {}, "registered_name": null}, "kernel_regularizer":
        null, "bias_regularizer": null, "activity_regularizer": null, "kernel_constraint": null,
        "bias_constraint": null}, "registered_name": null},
      {"module": "keras.layers", "class_name": "MaxPooling2D", "config": {"name":
        "max_pooling2d", "trainable": true, "pool_size": [2, 2], "padding": "valid",
        "strides": null, "data_format": "channels_last"}, "registered_name": null},
      {"module": "keras.layers", "class_name": "BatchNormalization", "config": {"name":
        "batch_normalization", "trainable": true, "axis": -1, "momentum": 0.99, "epsilon": 0.001,
        "center": true, "scale": true, "beta_initializer": {"module": "keras.initializers",
        "class_name": "Zeros", "config": {}, "registered_name": null}, "gamma_initializer":
        {"module": "keras.initializers", "class_name": "Ones", "config": {}, "registered_name":
        null}, "moving_mean_initializer": {"module": "keras.initializers", "class_name":
        "Zeros", "config": {}, "registered_name": null}, "moving_variance_initializer":
        {"module": "keras.initializers", "class_name": "Ones", "config": {}, "registered_name":
        null}, "beta_regularizer": null, "gamma_regularizer": null, "beta_constraint": null,
        "gamma_constraint": null, "synchronized": false}, "registered_name": null},
      {"module": "keras.layers", "class_name": "GlobalAveragePooling2D", "config": {"name":
        "global_average_pooling2d", "trainable": true, "data_format": "channels_last",
        "keepdims": false}, "registered_name": null},
      {"module": "keras.layers", "class_name": "Dense", "config": {"name": "dense",
        "trainable": true, "units": 10, "activation": "softmax"}, "registered_name": null}]}})";
    ModelConfig c3;
    ASSERT_TRUE(model_config_from_json(keras3, &c3).is_ok());
    EXPECT_EQ(c3.layers[1].filters, 32);
    EXPECT_EQ(c3.layers[2].strides, (std::array<int64_t, 2>{2, 2}));
    EXPECT_EQ(c3.layers[3].axis, -1);
    Sequential m3(c3);
    EXPECT_EQ(m3.output_shape(), (Shape{10}));

    const std::string keras2 = R"({"class_name": "Sequential", "config": {"name": "s", "layers": [
      {"class_name": "InputLayer", "config": {"batch_input_shape": [null, 12], "dtype":
        "float32", "name": "in"}},
      {"class_name": "Reshape", "config": {"name": "reshape", "target_shape": [3, 4, 1]}},
      {"class_name": "Conv2D", "config": {"name": "c", "filters": 2, "kernel_size": 2,
        "strides": 1, "padding": "SAME", "dilation_rate": 1, "activation": "linear"}},
      {"class_name": "AveragePooling2D", "config": {"name": "p", "pool_size": 2, "strides": 1,
        "padding": "valid"}},
      {"class_name": "BatchNormalization", "config": {"name": "b", "axis": [3],
        "momentum": 0.9, "epsilon": 1e-05, "fused": true, "renorm": false,
        "renorm_clipping": null, "renorm_momentum": 0.99, "virtual_batch_size": null,
        "adjustment": null}},
      {"class_name": "Flatten", "config": {"name": "f"}},
      {"class_name": "Dense", "config": {"name": "d", "units": 2, "activation": "softmax"}}]}})";
    ModelConfig c2;
    Status s = model_config_from_json(keras2, &c2);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(c2.layers[2].kernel_size, (std::array<int64_t, 2>{2, 2}));
    EXPECT_EQ(c2.layers[2].padding, "same");
    EXPECT_EQ(c2.layers[4].axis, 3);
    Sequential m2(c2);
    EXPECT_EQ(m2.layers()[2]->output_shape(), (Shape{2, 3, 2}));
}

TEST(ImageLayers, UnsupportedArgumentsAreNamed) {
    auto error_of = [](const std::string& layer_json) {
        const std::string doc = R"({"class_name": "Sequential", "config": {"layers": [
            {"class_name": "InputLayer", "config": {"batch_input_shape": [null, 8, 8, 3]}},)" +
                                layer_json + "]}}";
        ModelConfig c;
        Status s = model_config_from_json(doc, &c);
        return s.is_ok() ? std::string() : s.message();
    };
    EXPECT_NE(error_of(R"({"class_name": "Conv2D", "config": {"filters": 2, "kernel_size": 3,
                          "data_format": "channels_first"}})")
                  .find("data_format"),
              std::string::npos);
    EXPECT_NE(error_of(R"({"class_name": "Conv2D", "config": {"filters": 4, "kernel_size": 3,
                          "groups": 2}})")
                  .find("groups"),
              std::string::npos);
    EXPECT_NE(error_of(R"({"class_name": "Conv2D", "config": {"filters": 4, "kernel_size": [3]}})")
                  .find("kernel_size"),
              std::string::npos);
    EXPECT_NE(error_of(R"({"class_name": "MaxPooling2D", "config": {"padding": "causal"}})")
                  .find("causal"),
              std::string::npos);
    EXPECT_NE(error_of(R"({"class_name": "BatchNormalization", "config": {"renorm": true}})")
                  .find("renorm"),
              std::string::npos);
    EXPECT_NE(error_of(R"({"class_name": "BatchNormalization", "config": {"trainable": false}})")
                  .find("trainable"),
              std::string::npos);
    EXPECT_NE(error_of(R"({"class_name": "Conv2D", "config": {"filters": 4, "kernel_size": 3,
                          "kernel_regularizer": {"class_name": "L2", "config": {}}}})")
                  .find("kernel_regularizer"),
              std::string::npos);
}

TEST(ImageLayers, H5RoundTripGivesIdenticalPredictions) {
    testing::TempDir dir;
    const Shape input = {9, 8, 2};
    const int64_t n = 64;
    const data::Array x = make_array({n, 9, 8, 2}, random_values(size_t(n * 144), 31));
    const data::Array y = random_labels(n, 5, 32);
    Sequential model(every_image_layer(), layers::Input(input));
    model.compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {"accuracy"},
                  cpu_options());
    FitArgs args;
    args.epochs = 2;
    args.batch_size = 16;
    args.verbose = 0;
    model.fit(x, y, args);  // moves the moving statistics away from their initial values
    const std::string path = dir.file("image.h5");
    ASSERT_TRUE(model.save(path).is_ok());

    // Keras's layouts in the file: the kernel (kh, kw, in, out), the statistics after gamma
    // and beta.
    SavedModel saved;
    ASSERT_TRUE(load_model_h5(path, &saved).is_ok());
    EXPECT_EQ(saved.weights[0].weights[0].name, "kernel");
    EXPECT_EQ(saved.weights[0].weights[0].shape, (Shape{3, 2, 2, 3}));
    const std::vector<std::string> bn_names = {"gamma", "beta", "moving_mean", "moving_variance"};
    ASSERT_EQ(saved.weights[1].weights.size(), 4u);
    for (size_t i = 0; i < 4; ++i)
        EXPECT_EQ(saved.weights[1].weights[i].name, bn_names[i]);
    EXPECT_NE(saved.weights[1].weights[2].values[0], 0.0f);  // trained moving mean
    ASSERT_EQ(saved.weights[5].weights.size(), 2u);          // no gamma, no beta
    EXPECT_EQ(saved.weights[5].weights[0].name, "moving_mean");

    CompileOptions options = cpu_options();
    std::unique_ptr<Sequential> loaded = load_model(path, options);
    const data::Array before = model.predict(x, 16);
    const data::Array after = loaded->predict(x, 16);
    EXPECT_EQ(before.values, after.values);
}

// ---- Keras itself -------------------------------------------------------------------------------
// With the Keras that scripts/setup.sh installs (KILN_KERAS_PYTHON overrides it), Keras loads
// kiln's files (.h5 and .weights.h5) of every image layer and predicts what kiln predicts; kiln
// loads a convnet Keras trained and predicts what Keras predicts; and one training step of a
// BatchNormalization leaves the same moving statistics in both.

struct Output {
    int status = -1;
    std::string output;  // stdout and stderr together
};

Output run(const std::string& command) {
    Output r;
    FILE* pipe = popen((command + " 2>&1").c_str(), "r");
    if (!pipe)
        return r;
    std::array<char, 4096> buf;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0)
        r.output.append(buf.data(), n);
    const int raw = pclose(pipe);
    r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    return r;
}

std::string keras_python(std::string* why) {
    const char* env = std::getenv("KILN_KERAS_PYTHON");
    const std::string python = env ? env : KILN_KERAS_PYTHON;
    if (python.empty() || !std::filesystem::exists(python)) {
        *why = "no Python with Keras at '" + python +
               "' (scripts/setup.sh installs one; or set KILN_KERAS_PYTHON)";
        return "";
    }
    const Output r = run("KERAS_BACKEND=jax " + python + " -c 'import keras, numpy'");
    if (r.status != 0) {
        *why = python + " cannot import keras: " + r.output;
        return "";
    }
    return python;
}

void write_text(const std::string& path, const std::string& text) {
    std::ofstream(path, std::ios::binary) << text;
}

constexpr const char* kKerasPredicts = R"PY(
import os, sys
os.environ.setdefault("KERAS_BACKEND", "jax")
import numpy as np, keras
d = sys.argv[1]
x, expected = np.load(d + "/x.npy"), np.load(d + "/pred.npy")
m = keras.models.load_model(d + "/kiln.h5", compile=False)
np.testing.assert_allclose(m.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
# the Keras 3 weights-only layout, into the same model zeroed
for v in m.weights:
    v.assign(np.zeros(v.shape, dtype="float32"))
m.load_weights(d + "/kiln.weights.h5")
np.testing.assert_allclose(m.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
print("ok", keras.__version__)
)PY";

constexpr const char* kKerasTrains = R"PY(
import os, sys
os.environ.setdefault("KERAS_BACKEND", "jax")
import numpy as np, keras
L = keras.layers
d = sys.argv[1]
keras.utils.set_random_seed(5)
m = keras.Sequential([
    keras.Input((9, 8, 2)),
    L.Conv2D(3, (3, 2), strides=(2, 1), padding="same", activation="relu"),
    L.BatchNormalization(momentum=0.9),
    L.MaxPooling2D(pool_size=2, strides=1, padding="same"),
    L.Conv2D(4, 2, dilation_rate=2, activation="tanh", use_bias=False),
    L.AveragePooling2D(pool_size=3, strides=2, padding="same"),
    L.BatchNormalization(center=False, scale=False),
    L.GlobalAveragePooling2D(keepdims=True),
    L.Reshape((-1,)),
    L.Dense(5, activation="softmax")])
m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
rng = np.random.RandomState(0)
x = rng.rand(48, 9, 8, 2).astype("float32")
m.fit(x, rng.randint(0, 5, size=(48,)), epochs=2, batch_size=16, verbose=0)
m.save(d + "/keras.h5")
np.save(d + "/kx.npy", x)
np.save(d + "/kpred.npy", m.predict(x, verbose=0))
# one step of a BatchNormalization alone, learning rate 0: only the moving statistics move
b = keras.Sequential([keras.Input((3, 3, 2)), L.BatchNormalization(momentum=0.5)])
b.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
bx = (rng.rand(8, 3, 3, 2) * 4).astype("float32")
b.fit(bx, np.zeros_like(bx), batch_size=8, epochs=1, shuffle=False, verbose=0)
np.save(d + "/bx.npy", bx)
bn = b.layers[0]
np.save(d + "/bstats.npy", np.stack([bn.moving_mean.numpy(), bn.moving_variance.numpy()]))
print("ok", keras.__version__)
)PY";

TEST(ImageLayersKeras, KerasPredictsWhatKilnPredicts) {
    std::string why;
    const std::string python = keras_python(&why);
    if (python.empty())
        GTEST_SKIP() << why;
    testing::TempDir dir;
    const int64_t n = 40;
    const data::Array x = make_array({n, 9, 8, 2}, random_values(size_t(n * 144), 51));
    Sequential model(every_image_layer(), layers::Input({9, 8, 2}));
    model.compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {"accuracy"},
                  cpu_options());
    FitArgs args;
    args.epochs = 2;
    args.batch_size = 8;
    args.verbose = 0;
    model.fit(x, random_labels(n, 5, 52), args);
    const data::Array pred = model.predict(x, 8);
    ASSERT_TRUE(model.save(dir.file("kiln.h5")).is_ok());
    ASSERT_TRUE(model.save_weights(dir.file("kiln.weights.h5")).is_ok());
    ASSERT_TRUE(data::save_npy(dir.file("x.npy"), x.shape, x.values.data()).is_ok());
    ASSERT_TRUE(data::save_npy(dir.file("pred.npy"), pred.shape, pred.values.data()).is_ok());
    write_text(dir.file("predict.py"), kKerasPredicts);
    const Output r = run(python + " " + dir.file("predict.py") + " " + dir.path());
    EXPECT_EQ(r.status, 0) << r.output;
}

TEST(ImageLayersKeras, KilnPredictsWhatKerasPredictsAndKeepsItsMovingStatistics) {
    std::string why;
    const std::string python = keras_python(&why);
    if (python.empty())
        GTEST_SKIP() << why;
    testing::TempDir dir;
    write_text(dir.file("train.py"), kKerasTrains);
    const Output r = run(python + " " + dir.file("train.py") + " " + dir.path());
    ASSERT_EQ(r.status, 0) << r.output;

    // the Keras convnet, loaded from its .h5
    data::Array x, expected;
    ASSERT_TRUE(data::load_npy(dir.file("kx.npy"), &x).is_ok());
    ASSERT_TRUE(data::load_npy(dir.file("kpred.npy"), &expected).is_ok());
    std::unique_ptr<Sequential> loaded = load_model(dir.file("keras.h5"), cpu_options());
    EXPECT_TRUE(all_close(loaded->predict(x, 16).values, expected.values, 1e-6, 1e-5));

    // the same BatchNormalization step in kiln
    data::Array bx, stats;
    ASSERT_TRUE(data::load_npy(dir.file("bx.npy"), &bx).is_ok());
    ASSERT_TRUE(data::load_npy(dir.file("bstats.npy"), &stats).is_ok());
    Sequential bn({layers::BatchNormalization(0.5f)}, layers::Input({3, 3, 2}));
    bn.compile(optimizers::SGD(0.0f), losses::MeanSquaredError(), {}, cpu_options());
    FitArgs args;
    args.epochs = 1;
    args.batch_size = 8;
    args.shuffle = false;
    args.verbose = 0;
    bn.fit(bx, make_array(bx.shape, std::vector<float>(bx.values.size(), 0.0f)), args);
    const std::vector<LayerWeights> w = bn.get_weights();
    std::vector<float> kiln_stats = w[0].weights[2].values;  // moving_mean, then moving_variance
    kiln_stats.insert(kiln_stats.end(), w[0].weights[3].values.begin(),
                      w[0].weights[3].values.end());
    EXPECT_TRUE(all_close(kiln_stats, stats.values, 1e-6, 1e-5))
        << "moving_mean (2 values) then moving_variance (2 values)";
}

}  // namespace
}  // namespace kiln
