// The CUDA backend's image ops against the CPU reference: the same inputs (fixed seeds) on both
// backends, outputs compared element by element. Convolutions and batch normalisation (cuDNN)
// within float32 tolerances sized to their sums, and the same bits on every CUDA run (kiln takes
// only deterministic cuDNN algorithms); pooling (kiln's kernels, which walk the windows in the
// CPU's order) bit for bit. Then one epoch of a convnet on both backends.
//
// Where there is no usable GPU (CI), every test skips with make_cuda_backend's reason.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kiln/kiln.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::all_close;
using testing::random_values;

::testing::AssertionResult same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size())
        return ::testing::AssertionFailure() << "sizes differ";
    for (size_t i = 0; i < a.size(); ++i) {
        if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
            return ::testing::AssertionFailure()
                   << "element " << i << " of " << a.size() << ": " << a[i] << " vs " << b[i];
        }
    }
    return ::testing::AssertionSuccess();
}

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

Pool2DGeometry pool_geometry(PoolKind kind, int64_t n, int64_t h, int64_t w, int64_t c, int64_t ph,
                             int64_t pw, int64_t sh, int64_t sw, Padding padding) {
    const AxisWindow ah = keras_axis_window(h, ph, sh, 1, padding);
    const AxisWindow aw = keras_axis_window(w, pw, sw, 1, padding);
    Pool2DGeometry g;
    g.kind = kind;
    g.batch = n;
    g.in_h = h;
    g.in_w = w;
    g.channels = c;
    g.out_h = ah.out;
    g.out_w = aw.out;
    g.pool_h = ph;
    g.pool_w = pw;
    g.stride_h = sh;
    g.stride_w = sw;
    g.pad_top = ah.pad_before;
    g.pad_left = aw.pad_before;
    return g;
}

class CudaImageOpsTest : public ::testing::Test {
  protected:
    void SetUp() override {
        std::string why;
        cuda_ = make_cuda_backend(&why);
        if (!cuda_)
            GTEST_SKIP() << why;
        cpu_ = make_cpu_backend();
    }
    void TearDown() override {
        if (cuda_)
            cuda_->synchronize();
    }

    struct Both {
        Tensor cpu, cuda;
    };
    Both both(const std::vector<float>& host) {
        const Shape shape = {static_cast<int64_t>(host.size())};
        Both b{Tensor(*cpu_, shape), Tensor(*cuda_, shape)};
        b.cpu.copy_from_host(host.data());
        b.cuda.copy_from_host(host.data());
        return b;
    }
    Both zeros(int64_t n) { return both(std::vector<float>(static_cast<size_t>(n), 0.0f)); }
    static std::vector<float> values(const Tensor& t) {
        std::vector<float> out(static_cast<size_t>(t.elements()));
        t.copy_to_host(out.data());
        return out;
    }

    std::unique_ptr<Backend> cuda_, cpu_;
};

struct ConvCase {
    const char* label;
    Conv2DGeometry g;
};

std::vector<ConvCase> conv_cases() {
    return {
        {"the convnet's first layer",
         conv_geometry(128, 28, 28, 1, 32, 3, 3, 1, 1, 1, 1, Padding::kValid)},
        {"the convnet's second layer",
         conv_geometry(128, 13, 13, 32, 64, 3, 3, 1, 1, 1, 1, Padding::kValid)},
        {"a last partial batch",
         conv_geometry(112, 13, 13, 32, 64, 3, 3, 1, 1, 1, 1, Padding::kValid)},
        {"same, symmetric", conv_geometry(4, 9, 9, 3, 8, 3, 3, 1, 1, 1, 1, Padding::kSame)},
        {"same, stride 2, padding at the end only (explicit padding)",
         conv_geometry(4, 8, 10, 3, 8, 3, 3, 2, 2, 1, 1, Padding::kSame)},
        {"same, kernel 2 (explicit padding)",
         conv_geometry(3, 7, 6, 2, 5, 2, 2, 1, 1, 1, 1, Padding::kSame)},
        {"valid, strides (2, 3), kernel (3, 2)",
         conv_geometry(3, 11, 13, 4, 6, 3, 2, 2, 3, 1, 1, Padding::kValid)},
        {"same, dilation 2", conv_geometry(2, 12, 12, 4, 4, 3, 3, 1, 1, 2, 2, Padding::kSame)},
        {"1x1", conv_geometry(8, 5, 5, 16, 24, 1, 1, 1, 1, 1, 1, Padding::kValid)},
    };
}

TEST_F(CudaImageOpsTest, Conv2DMatchesTheCpuInEveryDirectionAndRepeats) {
    for (const ConvCase& c : conv_cases()) {
        SCOPED_TRACE(c.label);
        const Conv2DGeometry& g = c.g;
        Both x = both(random_values(size_t(g.x_elements()), 1));
        Both k = both(random_values(size_t(g.kernel_elements()), 2));
        Both dy = both(random_values(size_t(g.y_elements()), 3));
        Both y = zeros(g.y_elements()), dx = zeros(g.x_elements()), dk = zeros(g.kernel_elements());
        // the forward pass with its bias and ReLU, as Conv2D(activation="relu") runs it
        Both bias = both(random_values(size_t(g.out_c), 6));
        ActivationSpec act;
        act.kind = Activation::kRelu;

        cpu_->conv2d_forward(g, x.cpu.view(), k.cpu.view(), bias.cpu.view(), act, y.cpu.view());
        cpu_->conv2d_backward_data(g, dy.cpu.view(), k.cpu.view(), dx.cpu.view());
        cpu_->conv2d_backward_filter(g, x.cpu.view(), dy.cpu.view(), dk.cpu.view());
        std::vector<float> first[3];
        for (int run = 0; run < 2; ++run) {
            cuda_->conv2d_forward(g, x.cuda.view(), k.cuda.view(), bias.cuda.view(), act,
                                  y.cuda.view());
            cuda_->conv2d_backward_data(g, dy.cuda.view(), k.cuda.view(), dx.cuda.view());
            cuda_->conv2d_backward_filter(g, x.cuda.view(), dy.cuda.view(), dk.cuda.view());
            const std::vector<float> now[3] = {values(y.cuda), values(dx.cuda), values(dk.cuda)};
            if (run == 0) {
                for (int i = 0; i < 3; ++i)
                    first[i] = now[i];
                continue;
            }
            // the second run (with the algorithms found by the first) gives the same bits
            EXPECT_TRUE(same_bits(first[0], now[0])) << "forward";
            EXPECT_TRUE(same_bits(first[1], now[1])) << "backward data";
            EXPECT_TRUE(same_bits(first[2], now[2])) << "backward filter";
        }
        // float32 sums: of KH·KW·C products (forward), F·KH·KW (data), N·OH·OW (filter)
        const double patch = double(g.patch_size());
        const double taps = double(g.out_c * g.kernel_h * g.kernel_w);
        const double pixels = double(g.batch * g.out_h * g.out_w);
        EXPECT_TRUE(all_close(first[0], values(y.cpu), 2e-6 * patch, 1e-4)) << "forward";
        EXPECT_TRUE(all_close(first[1], values(dx.cpu), 2e-6 * taps, 1e-4)) << "backward data";
        EXPECT_TRUE(all_close(first[2], values(dk.cpu), 2e-6 * pixels, 1e-4)) << "backward filter";
    }
}

TEST_F(CudaImageOpsTest, PoolingIsBitIdenticalToTheCpu) {
    const Pool2DGeometry cases[] = {
        pool_geometry(PoolKind::kMax, 128, 26, 26, 32, 2, 2, 2, 2, Padding::kValid),
        pool_geometry(PoolKind::kMax, 5, 11, 11, 64, 2, 2, 2, 2, Padding::kValid),
        pool_geometry(PoolKind::kMax, 3, 7, 8, 5, 3, 3, 2, 2, Padding::kSame),
        pool_geometry(PoolKind::kMax, 3, 6, 6, 4, 2, 2, 1, 1, Padding::kSame),
        pool_geometry(PoolKind::kAverage, 4, 9, 9, 6, 2, 2, 2, 2, Padding::kValid),
        pool_geometry(PoolKind::kAverage, 3, 7, 8, 5, 3, 3, 2, 2, Padding::kSame),
        pool_geometry(PoolKind::kAverage, 3, 6, 5, 4, 3, 2, 1, 1, Padding::kSame),
        // GlobalAveragePooling2D
        pool_geometry(PoolKind::kAverage, 16, 7, 7, 64, 7, 7, 7, 7, Padding::kValid),
    };
    int i = 0;
    for (const Pool2DGeometry& g : cases) {
        SCOPED_TRACE(::testing::Message() << "case " << i++);
        Both x = both(random_values(size_t(g.x_elements()), 10));
        Both dy = both(random_values(size_t(g.y_elements()), 11));
        Both y = zeros(g.y_elements()), dx = zeros(g.x_elements());
        cpu_->pool2d_forward(g, x.cpu.view(), y.cpu.view());
        cuda_->pool2d_forward(g, x.cuda.view(), y.cuda.view());
        cpu_->pool2d_backward(g, x.cpu.view(), y.cpu.view(), dy.cpu.view(), dx.cpu.view());
        cuda_->pool2d_backward(g, x.cuda.view(), y.cuda.view(), dy.cuda.view(), dx.cuda.view());
        EXPECT_TRUE(same_bits(values(y.cpu), values(y.cuda))) << "forward";
        EXPECT_TRUE(same_bits(values(dx.cpu), values(dx.cuda))) << "backward";
    }
}

TEST_F(CudaImageOpsTest, BatchNormalizationMatchesTheCpu) {
    struct Case {
        int64_t rows, channels;
    };
    const Case cases[] = {{128 * 13 * 13, 32}, {100, 7}, {2, 3}};
    for (const Case& c : cases) {
        SCOPED_TRACE(::testing::Message() << c.rows << " rows, " << c.channels << " channels");
        BatchNormGeometry g;
        g.rows = c.rows;
        g.channels = c.channels;
        g.momentum = 0.9f;
        g.epsilon = 1e-3f;
        const size_t n = size_t(c.rows * c.channels), ch = size_t(c.channels);
        std::vector<float> xv = random_values(n, 20, -2.0f, 3.0f);
        Both x = both(xv), dy = both(random_values(n, 21));
        Both gamma = both(random_values(ch, 22, 0.5f, 1.5f)), beta = both(random_values(ch, 23));
        Both mean = both(random_values(ch, 24)), var = both(random_values(ch, 25, 0.5f, 2.0f));
        Both saved_mean = zeros(c.channels), saved_inv_std = zeros(c.channels);
        Both y = zeros(c.rows * c.channels), dx = zeros(c.rows * c.channels);
        Both dgamma = zeros(c.channels), dbeta = zeros(c.channels);
        Both y_inference = zeros(c.rows * c.channels);

        for (Backend* b : {cpu_.get(), cuda_.get()}) {
            const bool on_cpu = b == cpu_.get();
            auto v = [on_cpu](const Both& t) { return on_cpu ? t.cpu.view() : t.cuda.view(); };
            b->batch_norm_forward_training(g, v(x), v(gamma), v(beta), v(y), v(mean), v(var),
                                           v(saved_mean), v(saved_inv_std));
            b->batch_norm_backward(g, v(x), v(dy), v(gamma), v(saved_mean), v(saved_inv_std), v(dx),
                                   v(dgamma), v(dbeta));
            b->batch_norm_forward_inference(g, v(x), v(gamma), v(beta), v(mean), v(var),
                                            v(y_inference));
        }
        const double rows = double(c.rows);
        EXPECT_TRUE(all_close(values(y.cuda), values(y.cpu), 1e-5, 1e-4)) << "y";
        EXPECT_TRUE(all_close(values(saved_mean.cuda), values(saved_mean.cpu), 1e-6, 1e-4))
            << "saved mean";
        EXPECT_TRUE(all_close(values(saved_inv_std.cuda), values(saved_inv_std.cpu), 1e-6, 1e-4))
            << "saved inverse standard deviation";
        EXPECT_TRUE(all_close(values(mean.cuda), values(mean.cpu), 1e-6, 1e-5)) << "moving mean";
        EXPECT_TRUE(all_close(values(var.cuda), values(var.cpu), 1e-6, 1e-5))
            << "moving variance (Keras's biased batch variance)";
        EXPECT_TRUE(all_close(values(dx.cuda), values(dx.cpu), 1e-5, 1e-3)) << "dx";
        EXPECT_TRUE(all_close(values(dgamma.cuda), values(dgamma.cpu), 1e-6 * rows, 1e-4))
            << "dgamma";
        EXPECT_TRUE(all_close(values(dbeta.cuda), values(dbeta.cpu), 1e-6 * rows, 1e-4)) << "dbeta";
        EXPECT_TRUE(all_close(values(y_inference.cuda), values(y_inference.cpu), 1e-5, 1e-4))
            << "inference";
    }
}

TEST_F(CudaImageOpsTest, FitOneEpochOfAConvnetMatchesTheCpu) {
    const int64_t rows = 512, classes = 4;
    const data::Array x =
        testing::make_array({rows, 12, 12, 1}, random_values(size_t(rows * 144), 40));
    const data::Array y = testing::random_labels(rows, classes, 41);
    auto build = [&](DeviceChoice device) {
        auto model = std::make_unique<Sequential>(
            std::vector<LayerPtr>{layers::Conv2D(8, {3, 3}, "relu", {1, 1}, "same"),
                                  layers::BatchNormalization(), layers::MaxPooling2D(),
                                  layers::Conv2D(8, {3, 3}, "relu", {2, 2}, "same"),
                                  layers::AveragePooling2D(), layers::Flatten(),
                                  layers::Dropout(0.25f), layers::Dense(classes, "softmax")},
            layers::Input({12, 12, 1}));
        CompileOptions options;
        options.device = device;
        options.seed = 9;
        options.log = nullptr;
        model->compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {"accuracy"},
                       options);
        return model;
    };
    std::unique_ptr<Sequential> on_cpu = build(DeviceChoice::kCpu);
    std::unique_ptr<Sequential> on_cuda = build(DeviceChoice::kCuda);
    ASSERT_EQ(on_cuda->backend().kind(), DeviceKind::kCuda);
    FitArgs args;
    args.epochs = 1;
    args.batch_size = 32;
    args.validation_split = 0.25;
    args.verbose = 0;
    const History cpu_history = on_cpu->fit(x, y, args);
    const History cuda_history = on_cuda->fit(x, y, args);
    const double n_val = double(rows) * args.validation_split;
    for (const char* key : {"loss", "accuracy", "val_loss", "val_accuracy"}) {
        SCOPED_TRACE(key);
        const bool accuracy = std::string(key).find("accuracy") != std::string::npos;
        // a few validation samples may sit at an argmax near tie after float32 training
        EXPECT_TRUE(all_close(cuda_history.history.at(key), cpu_history.history.at(key),
                              accuracy ? 3.01 / n_val : 1e-3, accuracy ? 0.0 : 1e-3));
    }
    // the moving statistics, in the non-trainable buffer, follow the same batches
    const std::vector<LayerWeights> wc = on_cpu->get_weights(), wg = on_cuda->get_weights();
    EXPECT_TRUE(all_close(wg[1].weights[2].values, wc[1].weights[2].values, 1e-4, 1e-3))
        << "moving mean";
    EXPECT_TRUE(all_close(wg[1].weights[3].values, wc[1].weights[3].values, 1e-4, 1e-3))
        << "moving variance";
}

}  // namespace
}  // namespace kiln
