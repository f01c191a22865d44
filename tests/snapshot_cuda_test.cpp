// The snapshot service on the CUDA backend: take and restore are device-to-device copies on the
// compute stream, bit for bit, with no device read; EarlyStopping's restore inside a real fit
// gives the weights the CPU's does not depend on (the best epoch's, exactly).
//
// Where there is no usable GPU (CI), every test skips with make_cuda_backend's reason.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "kiln/kiln.h"
#include "test_util.h"

namespace kiln {
namespace {

class SnapshotCudaTest : public ::testing::Test {
  protected:
    void SetUp() override {
        std::string why;
        if (!make_cuda_backend(&why))
            GTEST_SKIP() << why;
    }

    static std::unique_ptr<Sequential> model() {
        auto m = std::make_unique<Sequential>(
            std::vector<LayerPtr>{layers::Dense(32, "relu"), layers::Dense(3, "softmax")},
            layers::Input({6}));
        CompileOptions o;
        o.device = DeviceChoice::kCuda;
        o.log = nullptr;
        m->compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {"accuracy"}, o);
        return m;
    }
};

TEST_F(SnapshotCudaTest, RestoresBitForBitWithoutReadingTheDevice) {
    auto m = model();
    ASSERT_EQ(m->backend().kind(), DeviceKind::kCuda);
    const std::vector<double> before = m->flat_parameters();
    SnapshotService& s = m->snapshots();
    const int slot = s.acquire("best");
    const uint64_t reads = m->backend().reads();
    s.take(slot);
    std::vector<double> other(before.size(), 0.25);
    m->set_flat_parameters(other);
    s.restore(slot);
    EXPECT_EQ(m->backend().reads(), reads);
    EXPECT_EQ(m->flat_parameters(), before);
    s.release(slot);
}

TEST_F(SnapshotCudaTest, EarlyStoppingRestoresTheBestEpochInsideFit) {
    auto m = model();
    const data::Array x = testing::make_array({256, 6}, testing::random_values(256 * 6, 3));
    const data::Array y = testing::random_labels(256, 3, 4);  // noise: val_loss turns around
    std::vector<std::vector<double>> at_end;
    callbacks::LambdaHooks hooks;
    hooks.on_epoch_end = [&](int, const Logs&) { at_end.push_back(m->flat_parameters()); };
    callbacks::EarlyStoppingArgs es;
    es.patience = 2;
    es.restore_best_weights = true;
    FitArgs a;
    a.epochs = 30;
    a.verbose = 0;
    a.validation_split = 0.5;
    a.callbacks = {std::make_shared<callbacks::LambdaCallback>(hooks),
                   std::make_shared<callbacks::EarlyStopping>(es)};
    const History h = m->fit(x, y, a);
    const auto& val = h.history.at("val_loss");
    const size_t best = size_t(std::min_element(val.begin(), val.end()) - val.begin());
    EXPECT_EQ(m->flat_parameters(), at_end[best]);
}

}  // namespace
}  // namespace kiln
