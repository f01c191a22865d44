// Step graphs (Backend::capture, CompileOptions::step_graphs) on the CPU backend, where a capture
// keeps each op as a closure over its arguments as they were when it was recorded: what a CUDA
// graph keeps of a kernel launch. A fit that replays its steps must then give the bits of the
// eager fit, which holds the bookkeeping to account: every value that changes from step to step
// has to come from the StepScalars on the device, every buffer has to stay where it was, and a
// graph has to be made again when its buffers move. The CUDA graphs themselves are checked
// against the eager CUDA path in cuda_test.cpp (label gpu).
#include <gtest/gtest.h>

#include <cmath>
#include <csignal>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/math.h"
#include "kiln/kiln.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::make_array;
using testing::random_labels;
using testing::random_values;

CompileOptions cpu(StepGraphs graphs, uint64_t seed = 1) {
    CompileOptions o;
    o.device = DeviceChoice::kCpu;
    o.log = nullptr;
    o.seed = seed;
    o.step_graphs = graphs;
    return o;
}

struct Data {
    data::Array x, y;
};

Data vectors(int64_t n, int64_t features, int64_t classes, uint64_t seed = 3) {
    return {make_array({n, features}, random_values(size_t(n * features), seed)),
            random_labels(n, classes, seed + 1)};
}

Data images(int64_t n, uint64_t seed = 5) {
    return {make_array({n, 8, 8, 2}, random_values(size_t(n * 8 * 8 * 2), seed, 0.0f, 1.0f)),
            random_labels(n, 4, seed + 1)};
}

FitArgs quiet(int epochs, int64_t batch, double split = 0.25) {
    FitArgs a;
    a.epochs = epochs;
    a.batch_size = batch;
    a.validation_split = split;
    a.verbose = 0;
    return a;
}

std::unique_ptr<Sequential> mlp(const Optimizer& optimizer, StepGraphs graphs) {
    auto m = std::make_unique<Sequential>(
        std::vector<LayerPtr>{layers::Dense(16, "relu"), layers::Dropout(0.3f),
                              layers::Dense(12, "tanh"), layers::Dropout(0.1f),
                              layers::Dense(5, "softmax")},
        layers::Input({7}));
    m->compile(optimizer, losses::SparseCategoricalCrossentropy(), {"accuracy"}, cpu(graphs));
    return m;
}

std::unique_ptr<Sequential> convnet(StepGraphs graphs) {
    auto m = std::make_unique<Sequential>(
        std::vector<LayerPtr>{layers::Conv2D(6, {3, 3}, "relu", {1, 1}, "same"),
                              layers::BatchNormalization(), layers::MaxPooling2D({2, 2}),
                              layers::Conv2D(8, {3, 3}, "relu"), layers::Flatten(),
                              layers::Dropout(0.5f), layers::Dense(4, "softmax")},
        layers::Input({8, 8, 2}));
    m->compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {"accuracy"},
               cpu(graphs));
    return m;
}

// The trained weights (every layer, BatchNormalization's moving statistics included) as bits.
std::vector<float> all_weights(const Sequential& m) {
    std::vector<float> out;
    for (const LayerWeights& layer : m.get_weights()) {
        for (const auto& w : layer.weights)
            out.insert(out.end(), w.values.begin(), w.values.end());
    }
    return out;
}

::testing::AssertionResult same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size())
        return ::testing::AssertionFailure() << "sizes " << a.size() << " and " << b.size();
    for (size_t i = 0; i < a.size(); ++i) {
        if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
            return ::testing::AssertionFailure()
                   << "element " << i << " of " << a.size() << ": " << a[i] << " vs " << b[i];
        }
    }
    return ::testing::AssertionSuccess();
}

void expect_same_history(const History& a, const History& b) {
    ASSERT_EQ(a.keys, b.keys);
    for (const std::string& key : a.keys) {
        const auto& x = a.history.at(key);
        const auto& y = b.history.at(key);
        ASSERT_EQ(x.size(), y.size()) << key;
        for (size_t i = 0; i < x.size(); ++i)
            EXPECT_EQ(x[i], y[i]) << key << " at epoch " << i;
    }
}

// ---- the capture itself -------------------------------------------------------------------------

TEST(CpuCaptureTest, RecordsWithoutRunningAndReplaysAsRecorded) {
    std::unique_ptr<Backend> b = make_cpu_backend();
    Tensor x(*b, {4}, DType::kFloat32), y(*b, {4}, DType::kFloat32);
    const float ones[4] = {1, 2, 3, 4};
    x.copy_from_host(ones);
    b->fill_zero(y.view());
    std::unique_ptr<StepGraph> g =
        b->capture([&] { b->multiply(x.view(), x.view(), y.view(), 4); });
    EXPECT_EQ(g->nodes(), 1);
    std::vector<float> out(4);
    y.copy_to_host(out.data());
    EXPECT_EQ(out, std::vector<float>(4, 0.0f)) << "a capture must not run what it records";
    g->replay();
    y.copy_to_host(out.data());
    EXPECT_EQ(out, (std::vector<float>{1, 4, 9, 16}));
    // The memory is read when the graph runs, not when it was recorded.
    const float twos[4] = {2, 2, 2, 2};
    x.copy_from_host(twos);
    g->replay();
    y.copy_to_host(out.data());
    EXPECT_EQ(out, std::vector<float>(4, 4.0f));
    EXPECT_EQ(g->replays(), 2);
}

// The reason fit's steps read StepScalars: a host value given to an op is frozen at capture.
TEST(CpuCaptureTest, AHostValueIsFrozenButAStepScalarIsReadWhenTheGraphRuns) {
    std::unique_ptr<Backend> b = make_cpu_backend();
    const int64_t rows = 6, cols = 2, batch = 2;
    Tensor src(*b, {rows, cols}, DType::kFloat32), dst(*b, {batch, cols}, DType::kFloat32);
    Tensor index(*b, {rows}, DType::kInt32);
    Tensor scalars(*b, {int64_t(sizeof(StepScalars))}, DType::kUInt8);
    std::vector<float> values(rows * cols);
    for (size_t i = 0; i < values.size(); ++i)
        values[i] = float(i);
    src.copy_from_host(values.data());
    const int32_t identity[rows] = {0, 1, 2, 3, 4, 5};
    index.copy_from_host(identity);
    StepScalars s;
    s.batch = 0;
    b->upload(scalars.data(), &s, sizeof(s));

    int64_t host_offset = 0;
    auto frozen = b->capture(
        [&] { b->gather_rows(src.view(), index.view(), host_offset, batch, cols, dst.view()); });
    auto live = b->capture([&] {
        b->gather_batch(src.view(), index.view(), scalars.view(), batch, batch, cols, dst.view());
        b->advance_step(OptimizerStep(), scalars.view());
    });
    std::vector<float> out(batch * cols);
    for (int64_t step = 0; step < 3; ++step) {
        host_offset = step * batch;  // too late: the graph kept 0
        frozen->replay();
        dst.copy_to_host(out.data());
        EXPECT_EQ(out[0], 0.0f) << "step " << step;
        live->replay();
        dst.copy_to_host(out.data());
        EXPECT_EQ(out[0], float(step * batch * cols)) << "step " << step;
    }
    b->read(&s, scalars.data(), sizeof(s));
    EXPECT_EQ(s.batch, 3);
    EXPECT_EQ(s.iteration, 3);
}

TEST(CpuCaptureTest, RefusesHostTransfersWaitsAndAllocationsAndAbandonsTheCapture) {
    std::unique_ptr<Backend> b = make_cpu_backend();
    Tensor x(*b, {4}, DType::kFloat32);
    float host[4] = {};
    const auto expect_refused = [&](const char* op, const std::function<void()>& body) {
        try {
            b->capture(body);
            ADD_FAILURE() << op << " was accepted inside a capture";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(op), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find("captured"), std::string::npos) << e.what();
        }
        EXPECT_FALSE(b->capturing()) << op;
    };
    expect_refused("read", [&] { b->read(host, x.data(), sizeof(host)); });
    expect_refused("upload", [&] { b->upload(x.data(), host, sizeof(host)); });
    expect_refused("allocate", [&] { Tensor t(*b, {8}, DType::kFloat32); });
    expect_refused("peek", [&] { b->peek(host, x.data(), sizeof(host)); });
    expect_refused("synchronize", [&] { b->synchronize(); });
    expect_refused("make_staging_buffer", [&] { b->make_staging_buffer(64); });
    // Memory freed while recording: the graph could use it, so the capture fails.
    Tensor doomed(*b, {8}, DType::kFloat32);
    try {
        b->capture([&] {
            b->fill_zero(doomed.view());
            doomed = Tensor();
        });
        ADD_FAILURE() << "a capture that freed memory was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("freed"), std::string::npos) << e.what();
    }
    // And the backend works as before afterwards.
    b->upload(x.data(), host, sizeof(host));
    b->read(host, x.data(), sizeof(host));
}

TEST(StepScalarsTest, AdvanceGivesTheHostsStepSizeForEveryOptimizer) {
    for (const Optimizer& o : {optimizers::Adam(0.003f), optimizers::AdamW(0.002f),
                               optimizers::SGD(0.1f, 0.9f), optimizers::RMSprop()}) {
        StepScalars s;
        s.learning_rate = o.hyper.learning_rate;
        for (int64_t t = 1; t < 2000; ++t) {
            math::advance_step(o.hyper, &s);
            ASSERT_EQ(s.iteration, t);
            ASSERT_EQ(s.batch, t);
            // What the host folds for update t + 1, as train steps always did.
            double expected = 0.0;
            if (o.hyper.kind == OptimizerKind::kAdam || o.hyper.kind == OptimizerKind::kAdamW) {
                const double n = double(t + 1);
                expected = o.hyper.learning_rate *
                           std::sqrt(1.0 - std::pow(double(o.hyper.beta_2), n)) /
                           (1.0 - std::pow(double(o.hyper.beta_1), n));
            }
            ASSERT_EQ(s.alpha, static_cast<float>(expected)) << "t " << t;
        }
    }
}

// ---- fit with and without graphs --------------------------------------------------------------

struct FitRun {
    History history;
    std::vector<float> weights;
    StepGraphStats stats;
    uint64_t reads = 0;
};

template <typename Make>
FitRun fit_with(Make make, StepGraphs graphs, const Data& d, const FitArgs& args) {
    std::unique_ptr<Sequential> m = make(graphs);
    const uint64_t reads_before = m->backend().reads();
    FitRun r;
    r.history = m->fit(d.x, d.y, args);
    r.reads = m->backend().reads() - reads_before;
    r.stats = m->step_graph_stats();
    r.weights = all_weights(*m);
    return r;
}

TEST(StepGraphFitTest, ReplayedStepsGiveTheEagerBitsForEveryOptimizer) {
    // 150 training samples at batch 16: 9 full batches and a short one of 6 each epoch; the
    // validation pass has 3 full batches of 16 and one of 2.
    const Data d = vectors(200, 7, 5);
    const FitArgs args = quiet(4, 16);
    for (const Optimizer& o :
         {optimizers::Adam(), optimizers::AdamW(0.003f, 0.01f), optimizers::SGD(0.05f, 0.9f, true),
          optimizers::RMSprop(0.002f, 0.9f, 0.5f, 1e-7f, true)}) {
        SCOPED_TRACE(o.class_name());
        auto make = [&](StepGraphs g) { return mlp(o, g); };
        const FitRun eager = fit_with(make, StepGraphs::kOff, d, args);
        const FitRun graphs = fit_with(make, StepGraphs::kOn, d, args);
        EXPECT_FALSE(eager.stats.enabled);
        EXPECT_EQ(eager.stats.replays, 0);
        ASSERT_TRUE(graphs.stats.enabled) << graphs.stats.off_reason;
        EXPECT_EQ(graphs.stats.off_reason, "");
        // One graph for the training step, one for the validation pass.
        EXPECT_EQ(graphs.stats.captures, 2);
        // Eager: the first full step (the warm-up) and the short batch of every epoch; the
        // validation pass replays from the second epoch on.
        EXPECT_EQ(graphs.stats.eager_steps, 1 + 4);
        EXPECT_EQ(graphs.stats.replays, (4 * 9 - 1) + (4 - 1));
        EXPECT_GT(graphs.stats.train_nodes, 10);
        EXPECT_GT(graphs.stats.val_nodes, 3 * 3);
        EXPECT_EQ(graphs.reads, eager.reads) << "graphs must not add host reads";
        expect_same_history(graphs.history, eager.history);
        EXPECT_TRUE(same_bits(graphs.weights, eager.weights));
    }
}

TEST(StepGraphFitTest, ConvolutionsBatchNormalizationAndDropoutReplayBitExact) {
    const Data d = images(90);
    const FitArgs args = quiet(3, 8, 0.2);  // 72 training samples: 9 full batches, 18 to validate
    const FitRun eager = fit_with(convnet, StepGraphs::kOff, d, args);
    const FitRun graphs = fit_with(convnet, StepGraphs::kOn, d, args);
    ASSERT_TRUE(graphs.stats.enabled) << graphs.stats.off_reason;
    EXPECT_EQ(graphs.stats.captures, 2);
    EXPECT_EQ(graphs.stats.eager_steps, 1);  // no short batch: only the warm-up
    expect_same_history(graphs.history, eager.history);
    EXPECT_TRUE(same_bits(graphs.weights, eager.weights));  // moving statistics included
}

// Changes the rate at the start of some batches, as a user's callback may.
class RateEveryFewBatches : public Callback {
  public:
    void on_train_batch_begin(int64_t batch, const Logs&) override {
        if (batch % 4 == 3)
            model_->set_learning_rate(model_->learning_rate() * 0.7);
    }
};

// Evaluates in the middle of training with a larger batch: the model's buffers are reallocated,
// and a graph made on the old ones must not be replayed.
class EvaluateMidEpoch : public Callback {
  public:
    explicit EvaluateMidEpoch(Data d, int64_t batch_size = 64)
        : d_(std::move(d)), batch_size_(batch_size) {}
    void on_train_batch_end(int64_t batch, const Logs&) override {
        if (batch == 5 && !done_) {
            done_ = true;
            model_->evaluate(d_.x, d_.y, batch_size_, /*verbose=*/0);
        }
    }

  private:
    Data d_;
    int64_t batch_size_;
    bool done_ = false;
};

TEST(StepGraphFitTest, RateChangesFromCallbacksReachTheReplayedSteps) {
    const Data d = vectors(200, 7, 5);
    FitArgs args = quiet(3, 16);
    args.callbacks = {std::make_shared<RateEveryFewBatches>(),
                      std::make_shared<callbacks::LearningRateScheduler>(
                          [](int epoch, double lr) { return epoch == 2 ? lr * 0.5 : lr; })};
    for (const Optimizer& o : {optimizers::Adam(), optimizers::SGD(0.05f, 0.5f)}) {
        SCOPED_TRACE(o.class_name());
        auto make = [&](StepGraphs g) { return mlp(o, g); };
        const FitRun eager = fit_with(make, StepGraphs::kOff, d, args);
        const FitRun graphs = fit_with(make, StepGraphs::kOn, d, args);
        ASSERT_TRUE(graphs.stats.enabled) << graphs.stats.off_reason;
        EXPECT_EQ(graphs.stats.captures, 2) << "a new rate must not need a new graph";
        expect_same_history(graphs.history, eager.history);
        EXPECT_TRUE(same_bits(graphs.weights, eager.weights));
    }
}

TEST(StepGraphFitTest, ReallocatedBuffersMakeTheGraphAgain) {
    const Data d = vectors(200, 7, 5);
    // A callback of its own for each fit (it evaluates once).
    const auto args = [] {
        FitArgs a = quiet(2, 16);
        a.callbacks = {std::make_shared<EvaluateMidEpoch>(vectors(100, 7, 5, 9))};
        return a;
    };
    auto make = [&](StepGraphs g) { return mlp(optimizers::Adam(), g); };
    const FitRun eager = fit_with(make, StepGraphs::kOff, d, args());
    const FitRun graphs = fit_with(make, StepGraphs::kOn, d, args());
    ASSERT_TRUE(graphs.stats.enabled) << graphs.stats.off_reason;
    EXPECT_EQ(graphs.stats.captures, 3) << "the training step's graph once more after evaluate";
    expect_same_history(graphs.history, eager.history);
    EXPECT_TRUE(same_bits(graphs.weights, eager.weights));
}

// fit keeps its sums apart from evaluate's: an evaluate in mid-epoch, with a batch that fits the
// buffers (which used to clear the epoch's training sums) or one that reallocates them (which
// used to leave fit adding into freed memory), changes nothing of the run.
TEST(StepGraphFitTest, AnEvaluateInMidEpochLeavesTheEpochsSumsAlone) {
    const Data d = vectors(200, 7, 5);
    auto make = [&](StepGraphs g) { return mlp(optimizers::Adam(), g); };
    const FitRun plain = fit_with(make, StepGraphs::kOff, d, quiet(2, 16));
    for (int64_t batch : {8, 64}) {
        for (StepGraphs g : {StepGraphs::kOff, StepGraphs::kOn}) {
            SCOPED_TRACE("evaluate batch " + std::to_string(batch) + ", graphs " +
                         step_graphs_name(g));
            FitArgs args = quiet(2, 16);
            args.callbacks = {std::make_shared<EvaluateMidEpoch>(vectors(100, 7, 5, 9), batch)};
            const FitRun r = fit_with(make, g, d, args);
            expect_same_history(r.history, plain.history);
            EXPECT_TRUE(same_bits(r.weights, plain.weights));
        }
    }
}

// The callbacks that copy weights between replays (EarlyStopping's best-weights snapshot, its
// restore at the end, ModelCheckpoint's staging every epoch) and a fit stopped by a signal in
// mid-epoch and resumed from its checkpoint: with graphs, the eager run's bits throughout.
TEST(StepGraphFitTest, SnapshotsCheckpointsAndAMidEpochResumeMatchTheEagerFit) {
    testing::TempDir dir;
    const Data d = vectors(200, 7, 5);
    auto make = [&](StepGraphs g) { return mlp(optimizers::Adam(), g); };
    auto with_callbacks = [&](const std::string& file) {
        FitArgs a = quiet(5, 16);
        callbacks::EarlyStoppingArgs es;
        es.patience = 2;
        es.restore_best_weights = true;
        a.callbacks = {std::make_shared<callbacks::EarlyStopping>(es),
                       std::make_shared<callbacks::ModelCheckpoint>(dir.file(file))};
        return a;
    };
    const FitRun eager = fit_with(make, StepGraphs::kOff, d, with_callbacks("eager.h5"));
    const FitRun graphs = fit_with(make, StepGraphs::kOn, d, with_callbacks("graphs.h5"));
    ASSERT_TRUE(graphs.stats.enabled) << graphs.stats.off_reason;
    expect_same_history(graphs.history, eager.history);
    EXPECT_TRUE(same_bits(graphs.weights, eager.weights));
    std::unique_ptr<Sequential> a = load_model(dir.file("eager.h5"), cpu(StepGraphs::kOff));
    std::unique_ptr<Sequential> b = load_model(dir.file("graphs.h5"), cpu(StepGraphs::kOff));
    EXPECT_TRUE(same_bits(all_weights(*a), all_weights(*b)));

    // Interrupted after batch 4 of epoch 2, then resumed from the interrupt checkpoint, all
    // with graphs: the bits of the eager run that was never stopped.
    const FitRun whole = fit_with(make, StepGraphs::kOff, d, quiet(4, 16));
    std::unique_ptr<Sequential> stopped = make(StepGraphs::kOn);
    FitArgs args = quiet(4, 16);
    args.interrupt_checkpoint = dir.file("interrupted.h5");
    args.callbacks = {std::make_shared<testing::InterruptAt>(/*epoch=*/1, /*batch=*/3)};
    EXPECT_THROW(stopped->fit(d.x, d.y, args), Interrupted);
    clear_interrupt();
    EXPECT_GT(stopped->step_graph_stats().replays, 0);
    std::unique_ptr<Sequential> resumed = make(StepGraphs::kOn);
    TrainingState st;
    ASSERT_TRUE(resumed->restore_training_state(dir.file("interrupted.h5"), &st).is_ok());
    ASSERT_EQ(st.batch, 4);
    FitArgs rest = quiet(4, 16);
    rest.initial_epoch = st.epoch;
    resumed->fit(d.x, d.y, rest);
    EXPECT_GT(resumed->step_graph_stats().replays, 0);
    EXPECT_TRUE(same_bits(all_weights(*resumed), whole.weights));
    expect_same_history(resumed->run_history(), whole.history);
}

TEST(StepGraphFitTest, AutoIsOffOnTheCpuAndAResumedFitMatches) {
    const Data d = vectors(200, 7, 5);
    auto make = [&](StepGraphs g) { return mlp(optimizers::Adam(), g); };
    const FitRun automatic = fit_with(make, StepGraphs::kAuto, d, quiet(2, 16));
    EXPECT_FALSE(automatic.stats.enabled);
    EXPECT_EQ(automatic.stats.captures, 0);

    // Two epochs, then two more from initial_epoch 2 in the same model: the scalars are written
    // again from the host's count when the second fit starts.
    const FitRun whole = fit_with(make, StepGraphs::kOff, d, quiet(4, 16));
    std::unique_ptr<Sequential> m = make(StepGraphs::kOn);
    m->fit(d.x, d.y, quiet(2, 16));
    FitArgs rest = quiet(4, 16);
    rest.initial_epoch = 2;
    m->fit(d.x, d.y, rest);
    EXPECT_EQ(m->iterations(), 4 * 10);
    EXPECT_TRUE(same_bits(all_weights(*m), whole.weights));
}

}  // namespace
}  // namespace kiln
