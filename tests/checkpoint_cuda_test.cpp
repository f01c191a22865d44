// Checkpoint staging on the CUDA backend: what a request copies is the state at the request,
// even though the copy to the host finishes after later ops have overwritten the device memory;
// and a fit on the GPU writes checkpoints whose weights are the weights at each request.
//
// Where there is no usable GPU (CI), every test skips with make_cuda_backend's reason.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kiln/kiln.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::random_values;

std::unique_ptr<Backend> cuda_or_skip(std::string* why) {
    return make_cuda_backend(why);
}

// Stage a buffer, overwrite it at once with queued ops, then wait: the staged bytes are the
// old ones, and the staging counted no blocking read. Repeated into the same staging buffer,
// as the writer reuses its two.
TEST(CheckpointCuda, StagingSeesTheStateAtTheRequest) {
    std::string why;
    std::unique_ptr<Backend> b = cuda_or_skip(&why);
    if (!b)
        GTEST_SKIP() << why;
    const size_t n = size_t{1} << 22;  // 16 MiB: the transfer takes long enough to race
    Tensor a(*b, {int64_t(n)}), c(*b, {int64_t(n)});
    auto staging = b->make_staging_buffer(2 * n * sizeof(float));
    const uint64_t reads_before = b->reads();
    for (int round = 0; round < 3; ++round) {
        const std::vector<float> first = random_values(n, 10 + round);
        const std::vector<float> second = random_values(n, 20 + round);
        a.copy_from_host(first.data());
        c.copy_from_host(second.data());
        staging->stage({{0, a.data(), a.bytes()}, {a.bytes(), c.data(), c.bytes()}});
        // Queued after the request: these must not reach the staged copy.
        b->fill_zero(a.view());
        b->copy(c.data(), a.data(), c.bytes());
        staging->wait();
        const float* host = static_cast<const float*>(staging->host());
        EXPECT_EQ(std::memcmp(host, first.data(), n * sizeof(float)), 0) << "round " << round;
        EXPECT_EQ(std::memcmp(host + n, second.data(), n * sizeof(float)), 0) << "round " << round;
    }
    EXPECT_EQ(b->reads(), reads_before);
}

// Records the weights at each epoch's end with a blocking read, and requests a checkpoint of the
// same moment; the files must hold exactly those weights.
class Recorder : public Callback {
  public:
    explicit Recorder(std::string dir) : dir_(std::move(dir)) {}
    void on_epoch_end(int epoch, const Logs&) override {
        CheckpointRequest r;
        r.path = dir_ + "/e" + std::to_string(epoch) + (epoch % 2 ? ".weights.h5" : ".h5");
        r.weights_only = epoch % 2 == 1;
        r.epoch = epoch + 1;
        ASSERT_TRUE(model_->request_checkpoint(r).is_ok());
        weights.push_back(model_->get_weights());
        paths.push_back(r.path);
    }
    std::vector<std::vector<LayerWeights>> weights;
    std::vector<std::string> paths;

  private:
    std::string dir_;
};

TEST(CheckpointCuda, FitCheckpointsHoldTheWeightsOfTheirEpoch) {
    std::string why;
    if (!cuda_or_skip(&why))
        GTEST_SKIP() << why;
    testing::TempDir dir;
    Sequential m({layers::Dense(64, "relu"), layers::Dropout(0.2f), layers::Dense(3, "softmax")},
                 layers::Input({6}));
    CompileOptions o;
    o.device = DeviceChoice::kCuda;
    o.log = nullptr;
    m.compile(optimizers::Adam(0.01f), losses::SparseCategoricalCrossentropy(), {"accuracy"}, o);
    const int64_t rows = 512;
    data::Array x = testing::make_array({rows, 6}, random_values(size_t(rows * 6), 3));
    data::Array y = testing::random_labels(rows, 3, 4);
    auto recorder = std::make_shared<Recorder>(dir.path());
    FitArgs args;
    args.epochs = 4;
    args.batch_size = 32;
    args.verbose = 0;
    args.callbacks = {recorder};
    m.fit(x, y, args);
    ASSERT_TRUE(m.last_checkpoint_status().is_ok());
    ASSERT_EQ(recorder->paths.size(), 4u);
    for (size_t e = 0; e < recorder->paths.size(); ++e) {
        SCOPED_TRACE(recorder->paths[e]);
        CheckpointContents c;
        ASSERT_TRUE(load_checkpoint(recorder->paths[e], &c).is_ok());
        const auto& expected = recorder->weights[e];
        ASSERT_EQ(c.model.weights.size(), expected.size());
        for (size_t i = 0; i < expected.size(); ++i) {
            ASSERT_EQ(c.model.weights[i].weights.size(), expected[i].weights.size());
            for (size_t j = 0; j < expected[i].weights.size(); ++j) {
                EXPECT_EQ(c.model.weights[i].weights[j].values, expected[i].weights[j].values)
                    << "layer " << i << " weight " << j;
            }
        }
        ASSERT_TRUE(c.training.has_value());
        EXPECT_EQ(c.training->epoch, int(e) + 1);
    }

    // And a resume on the GPU continues from the file: the same step count and weights.
    Sequential resumed(
        {layers::Dense(64, "relu"), layers::Dropout(0.2f), layers::Dense(3, "softmax")},
        layers::Input({6}));
    resumed.compile(optimizers::Adam(0.01f), losses::SparseCategoricalCrossentropy(), {"accuracy"},
                    o);
    TrainingState st;
    ASSERT_TRUE(resumed.restore_training_state(recorder->paths[3], &st).is_ok());
    EXPECT_EQ(resumed.iterations(), m.iterations());
    EXPECT_EQ(resumed.flat_parameters(), m.flat_parameters());
}

}  // namespace
}  // namespace kiln
