// fit, evaluate and predict on the CPU backend: Keras's validation split, shuffles, the last
// partial batch, determinism, the host-read budget, callbacks, bad input and a short real run.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kiln/kiln.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::make_array;
using testing::random_labels;
using testing::random_values;

CompileOptions cpu() {
    CompileOptions o;
    o.device = DeviceChoice::kCpu;
    o.log = nullptr;
    return o;
}

std::unique_ptr<Sequential> small_model(uint64_t seed = 1, int64_t inputs = 6) {
    auto m = std::make_unique<Sequential>(
        std::vector<LayerPtr>{layers::Dense(8, "relu"), layers::Dropout(0.2f),
                              layers::Dense(3, "softmax")},
        layers::Input({inputs}));
    CompileOptions o = cpu();
    o.seed = seed;
    m->compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {"accuracy"}, o);
    return m;
}

struct Toy {
    data::Array x, y;
};

// A learnable problem: the class is the argmax of the first three features.
Toy toy(int64_t n, uint64_t seed = 1) {
    Toy t;
    t.x = make_array({n, 6}, random_values(size_t(n * 6), seed));
    std::vector<float> y(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        const float* r = &t.x.values[size_t(i * 6)];
        y[size_t(i)] = float(r[0] > r[1] ? (r[0] > r[2] ? 0 : 2) : (r[1] > r[2] ? 1 : 2));
    }
    t.y = make_array({n, 1}, y);
    return t;
}

FitArgs quiet(int epochs, int64_t batch = 16) {
    FitArgs a;
    a.epochs = epochs;
    a.batch_size = batch;
    a.verbose = 0;
    return a;
}

// Records what fit tells the callbacks.
class Recorder : public Callback {
  public:
    void on_train_begin(const Logs&) override { events.push_back("train_begin"); }
    void on_epoch_begin(int e, const Logs&) override {
        events.push_back("epoch_begin " + std::to_string(e));
    }
    void on_train_batch_end(int64_t, const Logs&) override { ++batches; }
    void on_test_begin(const Logs&) override { ++tests; }
    void on_epoch_end(int e, const Logs& logs) override {
        events.push_back("epoch_end " + std::to_string(e));
        keys.clear();
        for (const auto& [k, v] : logs.items())
            keys.push_back(k);
        if (stop_after >= 0 && e >= stop_after)
            model_->stop_training = true;
    }
    void on_train_end(const Logs&) override { events.push_back("train_end"); }

    std::vector<std::string> events, keys;
    int64_t batches = 0;
    int tests = 0;
    int stop_after = -1;
};

TEST(FitTest, ValidationSplitTakesTheLastSamplesAsKerasDoes) {
    // 10 samples, split 0.25: Keras trains on the first floor(7.5) = 7 and validates on the
    // last 3. Fitting with those 3 as explicit validation_data must give the same history.
    const Toy t = toy(10);
    auto a = small_model();
    FitArgs split = quiet(3, 4);
    split.validation_split = 0.25;
    const History ha = a->fit(t.x, t.y, split);

    auto b = small_model();
    FitArgs explicit_val = quiet(3, 4);
    data::Split val;
    val.x = make_array({3, 6}, std::vector<float>(t.x.values.begin() + 42, t.x.values.end()));
    val.y = make_array({3, 1}, std::vector<float>(t.y.values.begin() + 7, t.y.values.end()));
    explicit_val.validation_data = val;
    const data::Array x7 =
        make_array({7, 6}, std::vector<float>(t.x.values.begin(), t.x.values.begin() + 42));
    const data::Array y7 =
        make_array({7, 1}, std::vector<float>(t.y.values.begin(), t.y.values.begin() + 7));
    const History hb = b->fit(x7, y7, explicit_val);
    EXPECT_EQ(ha.history.at("val_loss"), hb.history.at("val_loss"));
    EXPECT_EQ(ha.history.at("loss"), hb.history.at("loss"));
    // Three validation samples: accuracy is a multiple of 1/3.
    for (double v : ha.history.at("val_accuracy"))
        EXPECT_NEAR(v * 3, std::round(v * 3), 1e-9);
}

TEST(FitTest, KeepsTheLastPartialBatchAndCallsEveryHook) {
    const Toy t = toy(10);
    auto m = small_model();
    auto rec = std::make_shared<Recorder>();
    FitArgs a = quiet(2, 4);
    a.validation_split = 0.2;  // floor(10 · 0.8) = 8 train samples: batches of 4, 4
    a.callbacks = {rec};
    m->fit(t.x, t.y, a);
    EXPECT_EQ(rec->batches, 4);
    EXPECT_EQ(rec->tests, 2);
    EXPECT_EQ(rec->events, (std::vector<std::string>{"train_begin", "epoch_begin 0", "epoch_end 0",
                                                     "epoch_begin 1", "epoch_end 1", "train_end"}));
    EXPECT_EQ(rec->keys,
              (std::vector<std::string>{"loss", "accuracy", "val_loss", "val_accuracy"}));

    auto m2 = small_model();
    auto rec2 = std::make_shared<Recorder>();
    FitArgs b = quiet(1, 4);
    b.callbacks = {rec2};
    m2->fit(t.x, t.y, b);  // 10 samples: 4, 4, 2
    EXPECT_EQ(rec2->batches, 3);
    EXPECT_EQ(m2->iterations(), 3);
}

TEST(FitTest, SameSeedSameWeightsAndHistoryDifferentSeedDifferent) {
    const Toy t = toy(200);
    FitArgs a = quiet(3);
    a.validation_split = 0.1;
    auto m1 = small_model(7), m2 = small_model(7), m3 = small_model(8);
    const History h1 = m1->fit(t.x, t.y, a), h2 = m2->fit(t.x, t.y, a), h3 = m3->fit(t.x, t.y, a);
    EXPECT_EQ(h1.history.at("loss"), h2.history.at("loss"));
    EXPECT_EQ(h1.history.at("val_loss"), h2.history.at("val_loss"));
    EXPECT_EQ(m1->flat_parameters(), m2->flat_parameters());
    EXPECT_NE(m1->flat_parameters(), m3->flat_parameters());
    EXPECT_NE(h1.history.at("loss"), h3.history.at("loss"));
}

TEST(FitTest, ShuffleChangesTheOrderEachEpoch) {
    // Without shuffling, the same data in the same order gives a different trajectory from
    // shuffled training with the same initial weights.
    const Toy t = toy(64);
    auto shuffled = small_model(3), ordered = small_model(3);
    FitArgs a = quiet(2), b = quiet(2);
    b.shuffle = false;
    EXPECT_NE(shuffled->fit(t.x, t.y, a).history.at("loss"),
              ordered->fit(t.x, t.y, b).history.at("loss"));
}

TEST(FitTest, ReadsTheDeviceOncePerEpoch) {
    const Toy t = toy(300);
    auto m = small_model();
    FitArgs a = quiet(4, 8);
    a.validation_split = 0.2;
    a.callbacks = {std::make_shared<Recorder>()};
    const uint64_t before = m->backend().reads();
    m->fit(t.x, t.y, a);
    EXPECT_LE(m->backend().reads() - before, uint64_t(a.epochs) + 1);
    // The progress bar's running metrics come from non-blocking peeks, not reads.
    a.verbose = 1;
    const uint64_t again = m->backend().reads();
    m->fit(t.x, t.y, a);
    EXPECT_LE(m->backend().reads() - again, uint64_t(a.epochs) + 1);
}

TEST(FitTest, LearnsAToyProblem) {
    const Toy t = toy(2000);
    auto m = small_model();
    FitArgs a = quiet(15, 32);
    a.validation_split = 0.2;
    const History h = m->fit(t.x, t.y, a);
    EXPECT_GT(h.history.at("val_accuracy").back(), 0.9);
    EXPECT_LT(h.history.at("loss").back(), h.history.at("loss").front());
}

TEST(FitTest, ACallbackCanStopTraining) {
    const Toy t = toy(40);
    auto m = small_model();
    auto rec = std::make_shared<Recorder>();
    rec->stop_after = 1;
    FitArgs a = quiet(10);
    a.callbacks = {rec};
    const History h = m->fit(t.x, t.y, a);
    EXPECT_EQ(h.epoch, (std::vector<int>{0, 1}));
}

TEST(FitTest, InitialEpochResumesTheCount) {
    const Toy t = toy(40);
    auto m = small_model();
    FitArgs a = quiet(5);
    a.initial_epoch = 3;
    EXPECT_EQ(m->fit(t.x, t.y, a).epoch, (std::vector<int>{3, 4}));
}

TEST(FitTest, EvaluateMatchesTheValidationFigures) {
    const Toy t = toy(100);
    auto m = small_model();
    FitArgs a = quiet(1);
    data::Split val{toy(50, 2).x, toy(50, 2).y};
    a.validation_data = val;
    const History h = m->fit(t.x, t.y, a);
    const Logs e = m->evaluate(val.x, val.y, 16);
    EXPECT_NEAR(*e.get("loss"), h.history.at("val_loss")[0], 1e-6);
    EXPECT_NEAR(*e.get("accuracy"), h.history.at("val_accuracy")[0], 1e-9);
}

TEST(FitTest, PredictGivesProbabilities) {
    const Toy t = toy(20);
    auto m = small_model();
    const data::Array p = m->predict(t.x, 7);
    ASSERT_EQ(p.shape, (Shape{20, 3}));
    for (int64_t r = 0; r < 20; ++r) {
        double s = 0;
        for (int c = 0; c < 3; ++c)
            s += p.values[size_t(r * 3 + c)];
        EXPECT_NEAR(s, 1.0, 1e-5);
    }
}

TEST(FitTest, BadInputIsRejectedBeforeTraining) {
    const Toy t = toy(10);
    auto m = small_model();
    const std::vector<double> before = m->flat_parameters();
    data::Array bad_label = t.y;
    bad_label.values[4] = 3;  // the model has classes 0..2
    bad_label.source = "labels.npy";
    try {
        m->fit(t.x, bad_label, quiet(1));
        FAIL() << "an out-of-range label was accepted";
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("labels.npy"), std::string::npos) << msg;
        EXPECT_NE(msg.find("row 4"), std::string::npos) << msg;
    }
    data::Array wrong_width = make_array({10, 5}, random_values(50, 1), "x.npy");
    EXPECT_THROW(m->fit(wrong_width, t.y, quiet(1)), Error);
    data::Array short_y = make_array({9, 1}, std::vector<float>(9, 0.0f));
    EXPECT_THROW(m->fit(t.x, short_y, quiet(1)), Error);
    FitArgs split = quiet(1);
    split.validation_split = 1.5;
    EXPECT_THROW(m->fit(t.x, t.y, split), Error);
    // A NaN or an infinity in the inputs, named by sample and value, in fit and in predict.
    data::Array missing = t.x;
    missing.values[3 * 6 + 2] = std::nanf("");
    missing.source = "x.npy";
    for (int call = 0; call < 2; ++call) {
        try {
            if (call == 0)
                m->fit(missing, t.y, quiet(1));
            else
                m->predict(missing);
            FAIL() << "a NaN input was accepted";
        } catch (const Error& e) {
            const std::string msg = e.what();
            EXPECT_NE(msg.find("x.npy): sample 3, value 2 is nan"), std::string::npos) << msg;
        }
    }
    missing.values[3 * 6 + 2] = 0.5f;
    missing.values[9 * 6 + 5] = -INFINITY;
    try {
        m->fit(missing, t.y, quiet(1));
        FAIL() << "an infinite input was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("sample 9, value 5 is -inf"), std::string::npos)
            << e.what();
    }
    EXPECT_EQ(m->flat_parameters(), before);  // nothing trained
}

TEST(FitTest, NonFiniteRegressionTargetsAreRejected) {
    auto m =
        std::make_unique<Sequential>(std::vector<LayerPtr>{layers::Dense(2)}, layers::Input({3}));
    m->compile(optimizers::SGD(), losses::MeanSquaredError(), {}, cpu());
    const data::Array x = make_array({4, 3}, random_values(12, 5));
    std::vector<float> targets(8, 0.25f);
    targets[5] = std::nanf("");
    try {
        m->fit(x, make_array({4, 2}, targets, "y.npy"), quiet(1));
        FAIL() << "a NaN target was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("y.npy): sample 2, value 1 is nan"), std::string::npos)
            << e.what();
    }
}

TEST(FitTest, EveryOptimizerTrains) {
    const Toy t = toy(500);
    for (const Optimizer& opt : {optimizers::SGD(0.1f), optimizers::SGD(0.05f, 0.9f, true),
                                 optimizers::Adam(), optimizers::AdamW(), optimizers::RMSprop()}) {
        Sequential m({layers::Dense(16, "relu"), layers::Dense(3, "softmax")}, layers::Input({6}));
        m.compile(opt, losses::SparseCategoricalCrossentropy(), {"accuracy"}, cpu());
        const History h = m.fit(t.x, t.y, quiet(5));
        EXPECT_LT(h.history.at("loss").back(), h.history.at("loss").front() * 0.9)
            << opt.class_name();
    }
}

TEST(FitTest, ShortFashionMnistRunReachesEightyPercent) {
    data::Dataset d;
    const Status s = data::load_dataset(testing::fashion_mnist_dir(), {}, &d);
    if (!s.is_ok())
        GTEST_SKIP() << "Fashion-MNIST is not installed: " << s.message();
    // The first 12,000 training images, 2 epochs; the first 2,000 test images.
    auto head = [](const data::Array& a, int64_t n) {
        data::Array h = a;
        h.shape[0] = n;
        h.values.resize(size_t(n * a.cols()));
        return h;
    };
    Sequential m({layers::Flatten(), layers::Dense(256, "relu"), layers::Dense(128, "relu"),
                  layers::Dense(10, "softmax")},
                 layers::Input({28, 28}));
    m.compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {"accuracy"}, cpu());
    FitArgs a = quiet(2, 32);
    a.validation_split = 0.1;
    m.fit(head(d.train.x, 12000), head(d.train.y, 12000), a);
    const Logs e = m.evaluate(head(d.test.x, 2000), head(d.test.y, 2000));
    EXPECT_GT(*e.get("accuracy"), 0.80);
}

}  // namespace
}  // namespace kiln
