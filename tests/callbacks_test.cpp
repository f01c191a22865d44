// Keras's callbacks in kiln: the snapshot service, the shared "did it improve?" rules, and each
// callback fed scripted metric sequences through its hooks (as fit calls them), with the stop
// epoch, the best epoch, the restored weights (bit for bit), the files written and the exact
// messages checked; then the callbacks inside real fits on the CPU backend, including the
// host-read budget with the default job's callbacks on.
//
// Every expectation below is worked out from Keras 3's rules (shared/reference/
// keras-callbacks.md, sections 1.1-1.5) and Lightning's where kiln adds them; the comment beside
// each case gives the reasoning, epoch by epoch (epochs 0-based, messages 1-based).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/checkpoint.h"
#include "kiln/kiln.h"
#include "test_util.h"

namespace kiln {
namespace {

using callbacks::BackupAndRestore;
using callbacks::CSVLogger;
using callbacks::EarlyStopping;
using callbacks::EarlyStoppingArgs;
using callbacks::LambdaCallback;
using callbacks::LambdaHooks;
using callbacks::LearningRateScheduler;
using callbacks::ModelCheckpoint;
using callbacks::ModelCheckpointArgs;
using callbacks::ReduceLROnPlateau;
using callbacks::ReduceLROnPlateauArgs;
using callbacks::StoppingReason;
using callbacks::TerminateOnNaN;
using testing::make_array;
using testing::random_values;
using testing::TempDir;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

CompileOptions cpu(uint64_t seed = 1) {
    CompileOptions o;
    o.device = DeviceChoice::kCpu;
    o.log = nullptr;
    o.seed = seed;
    return o;
}

std::unique_ptr<Sequential> small_model(uint64_t seed = 1, bool dropout = false) {
    std::vector<LayerPtr> layers = {layers::Dense(8, "relu")};
    if (dropout)
        layers.push_back(layers::Dropout(0.2f));
    layers.push_back(layers::Dense(3, "softmax"));
    auto m = std::make_unique<Sequential>(std::move(layers), layers::Input({6}));
    m->compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {"accuracy"},
               cpu(seed));
    return m;
}

struct Toy {
    data::Array x, y;
};

// The class is the argmax of the first three features; `noise` of the labels are redrawn, so
// that the validation loss turns around after a few epochs.
Toy toy(int64_t n, uint64_t seed = 1, double noise = 0.0) {
    Toy t;
    t.x = make_array({n, 6}, random_values(size_t(n * 6), seed));
    std::vector<float> y(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        const float* r = &t.x.values[size_t(i * 6)];
        int c = r[0] > r[1] ? (r[0] > r[2] ? 0 : 2) : (r[1] > r[2] ? 1 : 2);
        if (math::uniform01(math::hash3(seed, 21, uint64_t(i))) < noise) {
            c = int(math::hash3(seed, 22, uint64_t(i)) % 3);
        }
        y[size_t(i)] = float(c);
    }
    t.y = make_array({n, 1}, y);
    return t;
}

// A temporary file to give a callback as its message or warning stream.
class Sink {
  public:
    Sink() : file_(std::tmpfile()) {}
    ~Sink() { std::fclose(file_); }
    Sink(const Sink&) = delete;
    Sink& operator=(const Sink&) = delete;
    std::FILE* file() const { return file_; }
    std::string text() const {
        std::fflush(file_);
        std::rewind(file_);
        std::string out;
        char buf[4096];
        size_t n;
        while ((n = std::fread(buf, 1, sizeof(buf), file_)) > 0)
            out.append(buf, n);
        return out;
    }

  private:
    std::FILE* file_;
};

bool file_exists(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// Distinct weights for each scripted epoch, exact in float32: epoch e holds e + 1 + (i % 64)/64.
std::vector<double> pattern(const Sequential& m, int epoch) {
    std::vector<double> w(m.flat_parameters().size());
    for (size_t i = 0; i < w.size(); ++i)
        w[i] = epoch + 1 + double(i % 64) / 64.0;
    return w;
}

// Calls the hooks as fit does, for one scripted run: epoch e's logs hold "loss" and, when
// values[e] is set, `key` = values[e]; the model's weights are pattern(e) at e's end. Stops when
// a callback sets stop_training; returns the epochs run.
int feed(Sequential& m, const std::vector<CallbackPtr>& cbs, const std::string& key,
         const std::vector<std::optional<double>>& values) {
    FitParams p;
    p.epochs = static_cast<int>(values.size());
    p.steps = 1;
    p.batch_log_keys = batch_log_keys("accuracy");
    p.epoch_log_keys = epoch_log_keys("accuracy", true, cbs);
    for (const auto& cb : cbs) {
        cb->set_model(&m);
        cb->set_params(p);
    }
    for (const auto& cb : cbs)
        cb->validate(p);
    m.stop_training = false;
    for (const auto& cb : cbs)
        cb->on_train_begin(Logs());
    int e = 0;
    Logs logs;
    for (; e < p.epochs && !m.stop_training; ++e) {
        for (const auto& cb : cbs)
            cb->on_epoch_begin(e, Logs());
        m.set_flat_parameters(pattern(m, e));
        logs = Logs();
        logs.set("loss", 1.0);
        if (values[size_t(e)])
            logs.set(key, *values[size_t(e)]);
        for (const auto& cb : cbs)
            cb->add_to_logs(e, &logs);
        for (const auto& cb : cbs)
            cb->on_epoch_end(e, logs);
        for (const auto& cb : cbs)
            cb->after_epoch_end(e, logs);
    }
    for (const auto& cb : cbs)
        cb->on_train_end(logs);
    return e;
}

// ---- the snapshot service ----------------------------------------------------------------

TEST(SnapshotTest, RestoresBitForBitWithoutReadingTheDevice) {
    auto m = small_model();
    const std::vector<double> before = m->flat_parameters();
    const std::vector<LayerWeights> weights_before = m->get_weights();
    SnapshotService& s = m->snapshots();
    const int slot = s.acquire("best");
    EXPECT_FALSE(s.taken(slot));
    EXPECT_EQ(s.bytes(), m->parameters().bytes() + m->nontrainable_parameters().bytes());

    const std::vector<double> other = pattern(*m, 3);
    const uint64_t reads = m->backend().reads();
    s.take(slot);
    m->set_flat_parameters(other);
    s.restore(slot);
    EXPECT_EQ(m->backend().reads(), reads);  // device-to-device copies only
    EXPECT_EQ(m->flat_parameters(), before);
    EXPECT_EQ(m->get_weights()[0].weights[0].values, weights_before[0].weights[0].values);
    s.release(slot);
    EXPECT_EQ(s.slots_in_use(), 0);
}

TEST(SnapshotTest, OneNameOneSlotAndCompileFreesThem) {
    auto m = small_model();
    SnapshotService& s = m->snapshots();
    const int a = s.acquire("best:val_loss");
    const int b = s.acquire("best:val_loss");
    const int c = s.acquire("other");
    EXPECT_EQ(a, b);
    EXPECT_NE(a, c);
    EXPECT_EQ(s.slots_in_use(), 2);
    s.release(a);
    EXPECT_EQ(s.slots_in_use(), 2);  // b still holds it
    s.release(b);
    EXPECT_EQ(s.slots_in_use(), 1);
    EXPECT_THROW(s.restore(c), Error);  // nothing taken yet
    // Compiling again frees every slot before the old backend goes.
    m->compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {"accuracy"}, cpu());
    EXPECT_EQ(s.slots_in_use(), 0);
    EXPECT_THROW(s.take(c), Error);
}

TEST(SnapshotTest, EachTakeCopiesTheWeightsAsTheyAreThen) {
    auto m = small_model();
    SnapshotService& s = m->snapshots();
    const int slot = s.acquire("best");
    s.take(slot);
    // No optimizer step since, but the weights changed: the second take copies them.
    const std::vector<double> second = pattern(*m, 0);
    m->set_flat_parameters(second);
    s.take(slot);
    m->set_flat_parameters(pattern(*m, 1));
    s.restore(slot);
    EXPECT_EQ(m->flat_parameters(), second);
    EXPECT_EQ(s.taken_at(slot), m->iterations());
}

// ---- the monitor rules -----------------------------------------------------------------------

TEST(MonitorTest, AutoModeDirections) {
    using callbacks::Direction;
    using callbacks::metric_direction;
    EXPECT_EQ(metric_direction("loss"), Direction::kMinimize);
    EXPECT_EQ(metric_direction("val_loss"), Direction::kMinimize);
    EXPECT_EQ(metric_direction("val_accuracy"), Direction::kMaximize);
    EXPECT_EQ(metric_direction("sparse_categorical_accuracy"), Direction::kMaximize);
    EXPECT_EQ(metric_direction("val_auc"), Direction::kMaximize);  // Keras 2's rule said min
    EXPECT_EQ(metric_direction("val_mean_squared_error"), Direction::kMinimize);
    // One "val_" prefix only, as Keras's removeprefix.
    EXPECT_EQ(metric_direction("val_val_loss"), std::nullopt);
    EXPECT_EQ(metric_direction("val_f2"), std::nullopt);
}

TEST(MonitorTest, ImprovementIsStrictWithTheMarginAndNeverNonFinite) {
    EarlyStoppingArgs a;
    a.min_delta = -0.25;  // Keras takes |min_delta|
    EarlyStopping min_es(a);
    EXPECT_TRUE(min_es.is_improvement(5.0, std::nullopt));  // the first value always improves
    EXPECT_FALSE(min_es.is_improvement(0.75, 1.0));         // 0.75 + 0.25 < 1.0 is false
    EXPECT_TRUE(min_es.is_improvement(0.5, 1.0));
    EXPECT_FALSE(min_es.is_improvement(kNaN, std::nullopt));  // kiln: check_finite
    EXPECT_FALSE(min_es.is_improvement(-kInf, 1.0));
    a.monitor = "val_accuracy";
    a.min_delta = 0.0;
    EarlyStopping max_es(a);
    EXPECT_FALSE(max_es.is_improvement(0.5, 0.5));  // ties never improve
    EXPECT_TRUE(max_es.is_improvement(0.6, 0.5));
    a.check_finite = false;
    EarlyStopping keras(a);
    EXPECT_TRUE(keras.is_improvement(kNaN, std::nullopt));  // Keras: a NaN first value is best
    EXPECT_FALSE(keras.is_improvement(0.9, kNaN));          // and nothing improves on it
}

TEST(MonitorTest, UnknownModeFallsBackToAutoWithKerasWarning) {
    EarlyStoppingArgs a;
    a.mode = "lowest";
    EarlyStopping es(a);  // the warning goes to stderr (before any sink can be set)
    EXPECT_EQ(es.mode(), "auto");
}

// ---- EarlyStopping on scripted sequences ---------------------------------------------------

struct EsCase {
    const char* name;
    EarlyStoppingArgs args;  // verbose 1 and restore_best_weights unless the case says
    std::string key;         // the logs' key carrying the values
    std::vector<std::optional<double>> values;
    int epochs_run;
    StoppingReason reason;
    int stopped_epoch;     // 0-based; meaningful when stopped
    int restored_from;     // the epoch whose weights the model ends with
    std::string out;       // the exact messages
    std::string err = "";  // the exact warnings
};

EarlyStoppingArgs es_args(int patience) {
    EarlyStoppingArgs a;
    a.patience = patience;
    a.verbose = 1;
    a.restore_best_weights = true;
    return a;
}

std::vector<EsCase> es_cases() {
    std::vector<EsCase> cases;
    const auto P = StoppingReason::kPatienceExhausted;
    const auto N = StoppingReason::kNotStopped;
    {
        // patience 0: e0 improves (first value), e1 improves (0.9 < 1.0), e2 does not
        // (wait 1 >= 0, epoch 2 > 0): stop at e2. The best epoch is e1.
        EsCase c{"patience 0 stops at the first epoch that does not improve",
                 es_args(0),
                 "val_loss",
                 {1.0, 0.9, 0.95, 0.8},
                 3,
                 P,
                 2,
                 1,
                 "Epoch 3: early stopping\n"
                 "Monitored metric val_loss did not improve in the last 1 records. Best score: "
                 "0.900.\n"
                 "Restoring model weights from the end of the best epoch: 2.\n"};
        cases.push_back(c);
    }
    {
        // Equal values never improve: e0 best 1.0; e1 wait 1; e2 wait 2 >= 2: stop at e2.
        EsCase c{"ties never improve",
                 es_args(2),
                 "val_loss",
                 {1.0, 1.0, 1.0, 1.0},
                 3,
                 P,
                 2,
                 0,
                 "Epoch 3: early stopping\n"
                 "Monitored metric val_loss did not improve in the last 2 records. Best score: "
                 "1.000.\n"
                 "Restoring model weights from the end of the best epoch: 1.\n"};
        cases.push_back(c);
    }
    {
        // min_delta 0.25 (values exact in binary): e1 0.75 + 0.25 < 1.0 is false (a change of
        // exactly min_delta does not count), wait 1; e2 0.5 + 0.25 < 1.0: best 0.5, wait 0; e3
        // 0.65 < 0.5 false, wait 1; e4 0.55 < 0.5 false, wait 2: stop at e4; best e2.
        EsCase c{"min_delta: a change of exactly min_delta does not count",
                 es_args(2),
                 "val_loss",
                 {1.0, 0.75, 0.5, 0.4, 0.3},
                 5,
                 P,
                 4,
                 2,
                 "Epoch 5: early stopping\n"
                 "Monitored metric val_loss did not improve in the last 2 records. Best score: "
                 "0.500.\n"
                 "Restoring model weights from the end of the best epoch: 3.\n"};
        c.args.min_delta = 0.25;
        cases.push_back(c);
        // Keras stores abs(min_delta): -0.25 behaves as 0.25.
        c.name = "a negative min_delta counts as its absolute value";
        c.args.min_delta = -0.25;
        cases.push_back(c);
    }
    {
        // baseline 0.5, never beaten: e0 wait 1, improves (first), 0.9 does not beat the
        // baseline so wait stays 1, return; e1 wait 2, improves to 0.8, wait stays, return (an
        // improving epoch never stops); e2 wait 3, no improvement, 3 >= 2: stop at e2; best e1.
        EsCase c{"a baseline never beaten stops after patience monitored epochs",
                 es_args(2),
                 "val_loss",
                 {0.9, 0.8, 0.85, 0.7},
                 3,
                 P,
                 2,
                 1,
                 "Epoch 3: early stopping\n"
                 "Monitored metric val_loss did not improve in the last 3 records. Best score: "
                 "0.800.\n"
                 "Restoring model weights from the end of the best epoch: 2.\n"};
        c.args.baseline = 0.5;
        cases.push_back(c);
    }
    {
        // baseline 0.85: e0 improves but 0.9 does not beat it, wait 1; e1 0.8 improves and
        // beats it, wait 0; e2 wait 1; e3 wait 2: stop at e3; best e1.
        EsCase c{"beating the baseline resets the wait",
                 es_args(2),
                 "val_loss",
                 {0.9, 0.8, 0.82, 0.83, 0.84},
                 4,
                 P,
                 3,
                 1,
                 "Epoch 4: early stopping\n"
                 "Monitored metric val_loss did not improve in the last 2 records. Best score: "
                 "0.800.\n"
                 "Restoring model weights from the end of the best epoch: 2.\n"};
        c.args.baseline = 0.85;
        cases.push_back(c);
    }
    {
        // start_from_epoch 2: e0 and e1 are ignored (their 0.1 never becomes the best); e2 is
        // the first value, best 0.5; e3 wait 1 >= 1: stop at e3; best e2.
        EsCase c{"start_from_epoch ignores the warm-up epochs",
                 es_args(1),
                 "val_loss",
                 {0.1, 0.2, 0.5, 0.6, 0.7},
                 4,
                 P,
                 3,
                 2,
                 "Epoch 4: early stopping\n"
                 "Monitored metric val_loss did not improve in the last 1 records. Best score: "
                 "0.500.\n"
                 "Restoring model weights from the end of the best epoch: 3.\n"};
        c.args.start_from_epoch = 2;
        cases.push_back(c);
    }
    {
        // auto mode maximises val_accuracy: e1 0.6 > 0.5 improves; e2 ties, wait 1; e3 wait 2:
        // stop at e3; best e1.
        EsCase c{"auto mode maximises an accuracy",
                 es_args(2),
                 "val_accuracy",
                 {0.5, 0.6, 0.6, 0.55},
                 4,
                 P,
                 3,
                 1,
                 "Epoch 4: early stopping\n"
                 "Monitored metric val_accuracy did not improve in the last 2 records. Best "
                 "score: 0.600.\n"
                 "Restoring model weights from the end of the best epoch: 2.\n"};
        c.args.monitor = "val_accuracy";
        cases.push_back(c);
    }
    {
        // mode max with min_delta 0.1: e1 0.55 - 0.1 > 0.5 is false, wait 1 >= 1: stop at e1.
        EsCase c{"max mode with min_delta",
                 es_args(1),
                 "val_loss",
                 {0.5, 0.55, 0.7},
                 2,
                 P,
                 1,
                 0,
                 "Epoch 2: early stopping\n"
                 "Monitored metric val_loss did not improve in the last 1 records. Best score: "
                 "0.500.\n"
                 "Restoring model weights from the end of the best epoch: 1.\n"};
        c.args.mode = "max";
        c.args.min_delta = 0.1;
        cases.push_back(c);
    }
    {
        // kiln (check_finite): a NaN ends the run at once, even at e0, and never becomes the
        // best; nothing was snapshotted, so nothing is restored (the weights stay e0's).
        EsCase c{"a NaN first value stops at once",
                 es_args(3),
                 "val_loss",
                 {kNaN, 0.5, 0.4},
                 1,
                 StoppingReason::kNonFiniteMetric,
                 0,
                 0,
                 "Epoch 1: early stopping\n"
                 "Monitored metric val_loss = nan is not finite. Previous best value was inf.\n"};
        cases.push_back(c);
    }
    {
        // check_finite off, Keras's behaviour: e0's NaN is the first value, so it becomes the
        // best (and e0 the best epoch); 0.5 < NaN is false for ever: e1 wait 1, e2 wait 2 >= 2:
        // stop at e2, restoring e0's weights.
        EsCase c{"without check_finite a NaN first value is the best for ever (Keras)",
                 es_args(2),
                 "val_loss",
                 {kNaN, 0.5, 0.4, 0.3},
                 3,
                 P,
                 2,
                 0,
                 "Epoch 3: early stopping\n"
                 "Monitored metric val_loss did not improve in the last 2 records. Best score: "
                 "nan.\n"
                 "Restoring model weights from the end of the best epoch: 1.\n"};
        c.args.check_finite = false;
        cases.push_back(c);
    }
    {
        // e0 best 0.5, e1 best 0.4, e2 NaN: stop at once; the best (e1) comes back.
        EsCase c{"a later NaN stops and restores the best",
                 es_args(5),
                 "val_loss",
                 {0.5, 0.4, kNaN, 0.3},
                 3,
                 StoppingReason::kNonFiniteMetric,
                 2,
                 1,
                 "Epoch 3: early stopping\n"
                 "Monitored metric val_loss = nan is not finite. Previous best value was 0.400.\n"
                 "Restoring model weights from the end of the best epoch: 2.\n"};
        cases.push_back(c);
        c.name = "an infinite value is not finite either";
        c.values = {0.5, kInf};
        c.epochs_run = 2;
        c.stopped_epoch = 1;
        c.restored_from = 0;
        c.out =
            "Epoch 2: early stopping\n"
            "Monitored metric val_loss = inf is not finite. Previous best value was 0.500.\n"
            "Restoring model weights from the end of the best epoch: 1.\n";
        cases.push_back(c);
    }
    {
        // The monitored key never comes: every epoch is skipped (no counting, no snapshot);
        // Keras warns each epoch, Python shows the repeated warning once, kiln warns once.
        EsCase c{"a missing metric is never counted and warns once",
                 es_args(0),
                 "val_loss",
                 {std::nullopt, std::nullopt, std::nullopt},
                 3,
                 N,
                 0,
                 2,
                 "",
                 "kiln: Early stopping conditioned on metric `val_loss` which is not available. "
                 "Available metrics are: loss\n"};
        cases.push_back(c);
        // Present only at e1 and e3: e1 is the first value (best); e3 wait 1 >= 0: stop at e3.
        c.name = "epochs without the metric are skipped, the others counted";
        c.values = {std::nullopt, 1.0, std::nullopt, 1.1};
        c.epochs_run = 4;
        c.reason = P;
        c.stopped_epoch = 3;
        c.restored_from = 1;
        c.out =
            "Epoch 4: early stopping\n"
            "Monitored metric val_loss did not improve in the last 1 records. Best score: "
            "1.000.\n"
            "Restoring model weights from the end of the best epoch: 2.\n";
        cases.push_back(c);
    }
    {
        // Lightning's stopping_threshold: e1 0.29 improves and is below 0.3: stop at e1 with
        // e1 as the best.
        EsCase c{"the stopping threshold ends the run at its best",
                 es_args(5),
                 "val_loss",
                 {0.5, 0.29, 0.2},
                 2,
                 StoppingReason::kStoppingThreshold,
                 1,
                 1,
                 "Epoch 2: early stopping\n"
                 "Stopping threshold reached: val_loss = 0.29 < 0.3.\n"
                 "Restoring model weights from the end of the best epoch: 2.\n"};
        c.args.stopping_threshold = 0.3;
        cases.push_back(c);
    }
    {
        // Lightning's divergence_threshold: e1 2.5 is worse than 2.0: stop at e1; best e0.
        EsCase c{"the divergence threshold ends a hopeless run",
                 es_args(5),
                 "val_loss",
                 {0.5, 2.5, 0.1},
                 2,
                 StoppingReason::kDivergenceThreshold,
                 1,
                 0,
                 "Epoch 2: early stopping\n"
                 "Divergence threshold reached: val_loss = 2.5 > 2.0.\n"
                 "Restoring model weights from the end of the best epoch: 1.\n"};
        c.args.divergence_threshold = 2.0;
        cases.push_back(c);
    }
    {
        // Never stopped (patience 10, 3 epochs): the best weights (e1) still come back at the
        // train end, as Keras 3 does, without the "early stopping" line.
        EsCase c{"reaching the last epoch restores the best weights too",
                 es_args(10),
                 "val_loss",
                 {0.5, 0.4, 0.45},
                 3,
                 N,
                 0,
                 1,
                 "Restoring model weights from the end of the best epoch: 2.\n"};
        cases.push_back(c);
    }
    {
        // Without restore_best_weights the model keeps the last epoch's weights (e1).
        EsCase c{"without restore_best_weights the last weights stay",
                 es_args(1),
                 "val_loss",
                 {0.5, 0.6},
                 2,
                 P,
                 1,
                 1,
                 "Epoch 2: early stopping\n"
                 "Monitored metric val_loss did not improve in the last 1 records. Best score: "
                 "0.500.\n"};
        c.args.restore_best_weights = false;
        cases.push_back(c);
    }
    return cases;
}

TEST(EarlyStoppingTest, ScriptedSequences) {
    for (const EsCase& c : es_cases()) {
        SCOPED_TRACE(c.name);
        auto m = small_model();
        auto es = std::make_shared<EarlyStopping>(c.args);
        Sink out, err;
        es->set_output(out.file(), err.file());
        const int run = feed(*m, {es}, c.key, c.values);
        EXPECT_EQ(run, c.epochs_run);
        EXPECT_EQ(es->stopping_reason(), c.reason)
            << callbacks::stopping_reason_name(es->stopping_reason());
        EXPECT_EQ(es->stopped(), c.reason != StoppingReason::kNotStopped);
        if (es->stopped())
            EXPECT_EQ(es->stopped_epoch(), c.stopped_epoch);
        EXPECT_EQ(m->stop_training, es->stopped());
        EXPECT_EQ(m->flat_parameters(), pattern(*m, c.restored_from))
            << "the weights are not those of epoch " << c.restored_from;
        EXPECT_EQ(out.text(), c.out);
        EXPECT_EQ(err.text(), c.err);
        EXPECT_EQ(m->snapshots().slots_in_use(), 0);  // released at the train end
    }
}

TEST(EarlyStoppingTest, AutoModeRejectsAnUnknownMetricBeforeTraining) {
    EarlyStoppingArgs a;
    a.monitor = "val_f2";
    auto es = std::make_shared<EarlyStopping>(a);
    auto m = small_model();
    EXPECT_THROW(es->on_train_begin(Logs()), Error);

    // Through fit: rejected before any step, and before the data reach the device.
    const Toy t = toy(40);
    const std::vector<double> before = m->flat_parameters();
    const uint64_t reads = m->backend().reads();
    FitArgs args;
    args.epochs = 2;
    args.verbose = 0;
    args.validation_split = 0.2;
    args.callbacks = {es};
    try {
        m->fit(t.x, t.y, args);
        FAIL() << "monitor=val_f2 in auto mode was accepted";
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("monitor=val_f2"), std::string::npos) << msg;
        EXPECT_NE(msg.find("mode='max'"), std::string::npos) << msg;
    }
    EXPECT_EQ(m->iterations(), 0);
    EXPECT_EQ(m->backend().reads(), reads);
    EXPECT_EQ(m->flat_parameters(), before);
    // An explicit mode is accepted.
    a.mode = "max";
    args.callbacks = {std::make_shared<EarlyStopping>(a)};
    EXPECT_NO_THROW(m->fit(t.x, t.y, args));
}

TEST(EarlyStoppingTest, RestoredStateIsKeptAndEpochZeroNeverStops) {
    // Resumed with best 0.1 and wait 0, patience 0: e0 (1.0) does not improve, wait 1 >= 0, but
    // epoch 0 never stops (Keras's epoch > 0); e1 does not improve, wait 2: stop at e1.
    EarlyStoppingArgs a = es_args(0);
    a.restore_best_weights = false;
    auto es = std::make_shared<EarlyStopping>(a);
    es->restore_state(R"({"wait": 0, "best": 0.1, "best_epoch": 4, "stopped_epoch": 0})");
    auto m = small_model();
    Sink out, err;
    es->set_output(out.file(), err.file());
    EXPECT_EQ(feed(*m, {es}, "val_loss", {1.0, 1.0, 1.0}), 2);
    EXPECT_EQ(es->stopped_epoch(), 1);
    EXPECT_EQ(es->best(), 0.1);
    EXPECT_EQ(out.text(),
              "Epoch 2: early stopping\n"
              "Monitored metric val_loss did not improve in the last 2 records. "
              "Best score: 0.100.\n");
    // The state round-trips through JSON.
    auto again = std::make_shared<EarlyStopping>(a);
    again->restore_state(es->state_json());
    EXPECT_EQ(nlohmann::json::parse(again->state_json()), nlohmann::json::parse(es->state_json()));
    // Reused without a restore, the next fit starts afresh (Keras >= 3.15).
    EXPECT_EQ(feed(*m, {es}, "val_loss", {1.0, 0.9, 0.8}), 3);
    EXPECT_EQ(es->best(), 0.8);
}

TEST(EarlyStoppingTest, CallbacksWithTheSameRulesShareOneSnapshot) {
    auto m = small_model();
    auto a = std::make_shared<EarlyStopping>(es_args(5));
    auto b = std::make_shared<EarlyStopping>(es_args(2));  // patience does not change the best
    EarlyStoppingArgs other = es_args(5);
    other.min_delta = 0.1;  // a different rule: its own slot
    auto c = std::make_shared<EarlyStopping>(other);
    int slots = -1;
    LambdaHooks hooks;
    hooks.on_epoch_end = [&](int, const Logs&) { slots = m->snapshots().slots_in_use(); };
    auto probe = std::make_shared<LambdaCallback>(hooks);
    for (auto& es : {a, b, c})
        es->set_output(nullptr, nullptr);
    feed(*m, {c, a, b, probe}, "val_loss", {0.5, 0.4, 0.45});  // c restores first
    EXPECT_EQ(slots, 2);
    EXPECT_EQ(a->snapshot_name(), b->snapshot_name());
    EXPECT_NE(a->snapshot_name(), c->snapshot_name());
    EXPECT_EQ(m->flat_parameters(), pattern(*m, 1));
}

// ---- ModelCheckpoint on scripted sequences -------------------------------------------------

ModelCheckpointArgs best_only(int verbose = 1) {
    ModelCheckpointArgs a;
    a.save_best_only = true;
    a.verbose = verbose;
    return a;
}

// The weights a file holds, as the model's get_weights gives them.
std::vector<LayerWeights> weights_in(const std::string& path) {
    auto loaded = load_model(path, cpu());
    return loaded->get_weights();
}

std::vector<LayerWeights> weights_of_epoch(Sequential& m, int epoch) {
    const std::vector<double> keep = m.flat_parameters();
    m.set_flat_parameters(pattern(m, epoch));
    std::vector<LayerWeights> w = m.get_weights();
    m.set_flat_parameters(keep);
    return w;
}

void expect_same_weights(const std::vector<LayerWeights>& a, const std::vector<LayerWeights>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
        ASSERT_EQ(a[i].weights.size(), b[i].weights.size()) << a[i].layer_name;
        for (size_t j = 0; j < a[i].weights.size(); ++j) {
            EXPECT_EQ(a[i].weights[j].values, b[i].weights[j].values)
                << a[i].layer_name << "/" << a[i].weights[j].name;
        }
    }
}

TEST(ModelCheckpointTest, SaveBestOnlyMessagesAndFile) {
    // e0 0.5 improves on nothing ("from inf"), e1 0.6 does not, e2 0.4 improves: two writes of
    // best.h5, the last holding e2's weights.
    TempDir dir;
    const std::string path = dir.file("best.h5");
    auto m = small_model();
    auto mc = std::make_shared<ModelCheckpoint>(path, best_only());
    Sink out, err;
    mc->set_output(out.file(), err.file());
    feed(*m, {mc}, "val_loss", {0.5, 0.6, 0.4});
    ASSERT_TRUE(m->wait_for_checkpoints().is_ok());
    EXPECT_EQ(out.text(),
              "Epoch 1: val_loss improved from inf to 0.50000, saving model to " + path +
                  "\n"
                  "Epoch 2: val_loss did not improve from 0.50000\n"
                  "Epoch 3: val_loss improved from 0.50000 to 0.40000, saving model to " +
                  path + "\n");
    EXPECT_EQ(err.text(), "");
    EXPECT_EQ(mc->saved_paths(), (std::vector<std::string>{path, path}));
    EXPECT_EQ(mc->best(), 0.4);
    expect_same_weights(weights_in(path), weights_of_epoch(*m, 2));
}

TEST(ModelCheckpointTest, MaximisingPrintsMinusInfAndInitialValueThresholdIsTheFirstBest) {
    TempDir dir;
    const std::string path = dir.file("acc.h5");
    ModelCheckpointArgs a = best_only();
    a.monitor = "val_accuracy";  // auto: maximise
    auto m = small_model();
    auto mc = std::make_shared<ModelCheckpoint>(path, a);
    Sink out, err;
    mc->set_output(out.file(), err.file());
    feed(*m, {mc}, "val_accuracy", {0.5});
    EXPECT_EQ(out.text(), "Epoch 1: val_accuracy improved from -inf to 0.50000, saving model to " +
                              path + "\n");

    // initial_value_threshold 0.45 (min): e0 0.5 does not beat it; e1 0.4 does.
    ModelCheckpointArgs b = best_only();
    b.initial_value_threshold = 0.45;
    auto mc2 = std::make_shared<ModelCheckpoint>(dir.file("t.h5"), b);
    Sink out2, err2;
    mc2->set_output(out2.file(), err2.file());
    feed(*m, {mc2}, "val_loss", {0.5, 0.4});
    EXPECT_EQ(out2.text(),
              "Epoch 1: val_loss did not improve from 0.45000\n"
              "Epoch 2: val_loss improved from 0.45000 to 0.40000, saving model to " +
                  dir.file("t.h5") + "\n");
    EXPECT_EQ(mc2->saved_paths().size(), 1u);
}

TEST(ModelCheckpointTest, TemplatedFilepathSavesEveryEpoch) {
    // Without save_best_only every epoch saves, under Python's format of epoch (1-based) and
    // the logs: {epoch:02d} and {val_loss:.2f}.
    TempDir dir;
    ModelCheckpointArgs a;
    a.verbose = 1;
    auto mc = std::make_shared<ModelCheckpoint>(dir.file("m-{epoch:02d}-{val_loss:.2f}.h5"), a);
    auto m = small_model();
    Sink out, err;
    mc->set_output(out.file(), err.file());
    feed(*m, {mc}, "val_loss", {0.5, 0.25, 0.125});
    ASSERT_TRUE(m->wait_for_checkpoints().is_ok());
    const std::vector<std::string> files = {dir.file("m-01-0.50.h5"), dir.file("m-02-0.25.h5"),
                                            dir.file("m-03-0.12.h5")};
    EXPECT_EQ(mc->saved_paths(), files);
    EXPECT_EQ(out.text(), "Epoch 1: saving model to " + files[0] + "\n" +
                              "Epoch 2: saving model to " + files[1] + "\n" +
                              "Epoch 3: saving model to " + files[2] + "\n");
    for (size_t e = 0; e < files.size(); ++e) {
        expect_same_weights(weights_in(files[e]), weights_of_epoch(*m, int(e)));
    }
    // A field with an empty spec prints as Python's str(float).
    EXPECT_EQ(mc->format_filepath(4, std::nullopt,
                                  [] {
                                      Logs l;
                                      l.set("val_loss", 1.0);
                                      return l;
                                  }()),
              dir.file("m-05-1.00.h5"));
    ModelCheckpoint plain(dir.file("{val_loss}-{epoch}.h5"));
    Logs l;
    l.set("val_loss", 1.0);
    EXPECT_EQ(plain.format_filepath(0, std::nullopt, l), dir.file("1.0-1.h5"));
    l.set("val_loss", 0.1);
    EXPECT_EQ(plain.format_filepath(0, std::nullopt, l), dir.file("0.1-1.h5"));
}

TEST(ModelCheckpointTest, ExtensionsAreCheckedInTheConstructor) {
    ModelCheckpointArgs w;
    w.save_weights_only = true;
    EXPECT_THROW(ModelCheckpoint("m.h5", w), Error);  // weights need .weights.h5
    EXPECT_NO_THROW(ModelCheckpoint("m.weights.h5", w));
    EXPECT_THROW(ModelCheckpoint("m.keras"), Error);       // no .keras archives
    EXPECT_THROW(ModelCheckpoint("m.weights.h5"), Error);  // a full model under a weights name
    EXPECT_THROW(ModelCheckpoint("m.ckpt"), Error);
    EXPECT_THROW(ModelCheckpoint("m-{epoch.h5"), Error);  // a malformed template
    EXPECT_THROW(ModelCheckpoint("m-{}.h5"), Error);      // positional fields
    ModelCheckpointArgs k;
    k.save_top_k = 2;  // top-k ranks by the monitor: needs save_best_only
    EXPECT_THROW(ModelCheckpoint("m.h5", k), Error);
    EXPECT_THROW(ModelCheckpointArgs().save_freq = "weekly", Error);
    EXPECT_THROW(ModelCheckpointArgs().save_freq = 0, Error);
}

TEST(ModelCheckpointTest, AKeyTheLogsWillNotHaveIsAnErrorBeforeTraining) {
    TempDir dir;
    const Toy t = toy(40);
    auto m = small_model();
    const std::vector<double> before = m->flat_parameters();
    FitArgs args;
    args.epochs = 2;
    args.verbose = 0;  // and no validation data: no val_ keys
    // {val_loss} without validation data: Keras raises KeyError at the first save, after an
    // epoch of work; kiln refuses before any.
    args.callbacks = {std::make_shared<ModelCheckpoint>(dir.file("m-{val_loss:.2f}.h5"))};
    try {
        m->fit(t.x, t.y, args);
        FAIL() << "a filepath with {val_loss} and no validation was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("'val_loss'"), std::string::npos) << e.what();
    }
    // {batch} with saves at the epoch's end; a bad spec ({epoch:.2f}: an int has no precision).
    args.validation_split = 0.25;
    args.callbacks = {std::make_shared<ModelCheckpoint>(dir.file("m-{batch}.h5"))};
    EXPECT_THROW(m->fit(t.x, t.y, args), Error);
    args.callbacks = {std::make_shared<ModelCheckpoint>(dir.file("m-{epoch:.2f}.h5"))};
    EXPECT_THROW(m->fit(t.x, t.y, args), Error);
    // Best-only on batch logs, which never hold val_ keys.
    ModelCheckpointArgs a = best_only(0);
    a.save_freq = 5;
    args.callbacks = {std::make_shared<ModelCheckpoint>(dir.file("m.h5"), a)};
    EXPECT_THROW(m->fit(t.x, t.y, args), Error);
    EXPECT_EQ(m->iterations(), 0);
    EXPECT_EQ(m->flat_parameters(), before);
    EXPECT_FALSE(file_exists(dir.file("m.h5")));  // nothing written
}

TEST(ModelCheckpointTest, AMissingMonitorWarnsOnceAndSavesAnyway) {
    // Keras >= 3.10: best-only without the monitored key warns and saves, with no message.
    TempDir dir;
    auto m = small_model();
    auto mc = std::make_shared<ModelCheckpoint>(dir.file("m.h5"), best_only());
    Sink out, err;
    mc->set_output(out.file(), err.file());
    feed(*m, {mc}, "val_loss", {std::nullopt, std::nullopt});
    EXPECT_EQ(mc->saved_paths().size(), 2u);
    EXPECT_EQ(out.text(), "");
    EXPECT_EQ(err.text(), "kiln: Can save best model only with val_loss available.\n");
}

TEST(ModelCheckpointTest, NonFiniteValuesNeverBecomeTheBest) {
    // e0 NaN: not an improvement (kiln); e1 0.5 improves on nothing; e2 inf does not.
    TempDir dir;
    auto m = small_model();
    auto mc = std::make_shared<ModelCheckpoint>(dir.file("m.h5"), best_only());
    Sink out, err;
    mc->set_output(out.file(), err.file());
    feed(*m, {mc}, "val_loss", {kNaN, 0.5, kInf});
    EXPECT_EQ(out.text(),
              "Epoch 1: val_loss did not improve from inf\n"
              "Epoch 2: val_loss improved from inf to 0.50000, saving model to " +
                  dir.file("m.h5") +
                  "\n"
                  "Epoch 3: val_loss did not improve from 0.50000\n");
    EXPECT_EQ(mc->saved_paths().size(), 1u);
}

// Calls the batch hooks of one epoch with the given running losses (nullopt: no peek yet).
void feed_batches(Sequential& m, ModelCheckpoint& mc, int epoch,
                  const std::vector<std::optional<double>>& losses) {
    mc.on_epoch_begin(epoch, Logs());
    for (size_t b = 0; b < losses.size(); ++b) {
        Logs logs;
        if (losses[b])
            logs.set("loss", *losses[b]);
        m.set_flat_parameters(pattern(m, int(10 * epoch + b)));
        mc.on_train_batch_end(int64_t(b), logs);
        mc.after_train_batch_end(int64_t(b), logs);
    }
}

TEST(ModelCheckpointTest, IntegerSaveFreqWithSaveBestOnlyWorks) {
    // save_freq 2 counts batches across epochs (Keras's _should_save_on_batch): with 3 batches
    // per epoch the save points are e0 b1, e1 b0 (2 since: b2 of e0 and b0 of e1), e1 b2.
    // Keras crashes here (its comparison is set up only at the first epoch's end); kiln
    // resolves it before training. Running losses 0.8 (from inf), 0.85 (no), 0.6 (yes).
    TempDir dir;
    ModelCheckpointArgs a = best_only();
    a.monitor = "loss";
    a.save_freq = 2;
    auto mc = std::make_shared<ModelCheckpoint>(dir.file("e{epoch}-b{batch}.h5"), a);
    auto m = small_model();
    Sink out, err;
    mc->set_output(out.file(), err.file());
    FitParams p;
    p.epochs = 2;
    p.steps = 3;
    p.batch_log_keys = batch_log_keys("accuracy");
    p.epoch_log_keys = epoch_log_keys("accuracy", true, {});
    mc->set_model(m.get());
    mc->set_params(p);
    mc->validate(p);
    mc->on_train_begin(Logs());
    feed_batches(*m, *mc, 0, {0.9, 0.8, 0.7});
    feed_batches(*m, *mc, 1, {0.85, 0.65, 0.6});
    mc->on_train_end(Logs());
    ASSERT_TRUE(m->wait_for_checkpoints().is_ok());
    EXPECT_EQ(out.text(), "Epoch 1: loss improved from inf to 0.80000, saving model to " +
                              dir.file("e1-b2.h5") +
                              "\n"
                              "Epoch 2: loss did not improve from 0.80000\n"
                              "Epoch 2: loss improved from 0.80000 to 0.60000, saving model to " +
                              dir.file("e2-b3.h5") + "\n");
    EXPECT_TRUE(mc->wants_batch_logs());
    expect_same_weights(weights_in(dir.file("e2-b3.h5")), weights_of_epoch(*m, 12));
}

TEST(ModelCheckpointTest, ABatchSaveWaitsForTheFirstPeek) {
    // save_freq 1 with no batch logs yet (a GPU's first peeks may not have landed): the save
    // due at b0 waits for b1's logs.
    TempDir dir;
    ModelCheckpointArgs a = best_only(0);
    a.monitor = "loss";
    a.save_freq = 1;
    auto mc = std::make_shared<ModelCheckpoint>(dir.file("b{batch}.h5"), a);
    auto m = small_model();
    FitParams p;
    p.epochs = 1;
    p.steps = 2;
    p.batch_log_keys = batch_log_keys("accuracy");
    p.epoch_log_keys = epoch_log_keys("accuracy", false, {});
    mc->set_model(m.get());
    mc->set_params(p);
    mc->on_train_begin(Logs());
    feed_batches(*m, *mc, 0, {std::nullopt, 0.7});
    EXPECT_EQ(mc->saved_paths(), (std::vector<std::string>{dir.file("b2.h5")}));
}

TEST(ModelCheckpointTest, SaveTopKKeepsTheBestFilesAndDeletesTheDisplaced) {
    // k = 2 over 0.5, 0.4, 0.6, 0.3: e0 and e1 enter (room); e2 0.6 is not better than the
    // worst kept (0.5); e3 0.3 displaces e0's file, deleted once e3's is written.
    TempDir dir;
    ModelCheckpointArgs a = best_only();
    a.save_top_k = 2;
    auto mc = std::make_shared<ModelCheckpoint>(dir.file("m-{epoch}.h5"), a);
    auto m = small_model();
    Sink out, err;
    mc->set_output(out.file(), err.file());
    feed(*m, {mc}, "val_loss", {0.5, 0.4, 0.6, 0.3});
    ASSERT_TRUE(m->wait_for_checkpoints().is_ok());
    EXPECT_FALSE(file_exists(dir.file("m-1.h5")));
    EXPECT_TRUE(file_exists(dir.file("m-2.h5")));
    EXPECT_FALSE(file_exists(dir.file("m-3.h5")));
    EXPECT_TRUE(file_exists(dir.file("m-4.h5")));
    const auto kept = mc->best_k_models();
    ASSERT_EQ(kept.size(), 2u);
    EXPECT_EQ(kept[0], std::make_pair(dir.file("m-4.h5"), 0.3));
    EXPECT_EQ(kept[1], std::make_pair(dir.file("m-2.h5"), 0.4));
    EXPECT_EQ(out.text(), "Epoch 1: val_loss reached 0.50000 (best 0.50000), saving model to " +
                              dir.file("m-1.h5") +
                              " as top 2\n"
                              "Epoch 2: val_loss reached 0.40000 (best 0.40000), saving model to " +
                              dir.file("m-2.h5") +
                              " as top 2\n"
                              "Epoch 3: val_loss was not in top 2\n"
                              "Epoch 4: val_loss reached 0.30000 (best 0.30000), saving model to " +
                              dir.file("m-4.h5") + " as top 2\n");
    expect_same_weights(weights_in(dir.file("m-4.h5")), weights_of_epoch(*m, 3));
}

TEST(ModelCheckpointTest, SaveLastAndEveryNEpochs) {
    // every_n_epochs 2: save points at epochs 2 and 4 only (1-based); save_last writes last.h5
    // at each save point, whether or not the best file is written.
    TempDir dir;
    ModelCheckpointArgs a = best_only(0);
    a.every_n_epochs = 2;
    a.save_last = true;
    auto mc = std::make_shared<ModelCheckpoint>(dir.file("best-{epoch}.h5"), a);
    auto m = small_model();
    feed(*m, {mc}, "val_loss", {0.1, 0.5, 0.2, 0.6});
    ASSERT_TRUE(m->wait_for_checkpoints().is_ok());
    // e1 (0.5) is the first value seen: best; e3 (0.6) does not improve.
    EXPECT_EQ(mc->saved_paths(),
              (std::vector<std::string>{dir.file("best-2.h5"), dir.file("last.h5"),
                                        dir.file("last.h5")}));
    expect_same_weights(weights_in(dir.file("last.h5")), weights_of_epoch(*m, 3));
}

TEST(ModelCheckpointTest, WeightsOnlyFiles) {
    TempDir dir;
    auto m = small_model();
    CheckpointRequest probe;
    probe.path = dir.file("probe.weights.h5");
    probe.weights_only = true;
    const Status s = m->request_checkpoint(probe);
    if (s.code() == Status::Code::kUnsupported) {
        GTEST_SKIP() << "weights-only checkpoints are not written yet: " << s.message();
    }
    ASSERT_TRUE(s.is_ok()) << s.message();
    ModelCheckpointArgs a = best_only(0);
    a.save_weights_only = true;
    auto mc = std::make_shared<ModelCheckpoint>(dir.file("best.weights.h5"), a);
    feed(*m, {mc}, "val_loss", {0.5, 0.4, 0.6});
    ASSERT_TRUE(m->wait_for_checkpoints().is_ok());
    auto other = small_model(7);
    ASSERT_TRUE(other->load_weights(dir.file("best.weights.h5")).is_ok());
    expect_same_weights(other->get_weights(), weights_of_epoch(*m, 1));
}

TEST(ModelCheckpointTest, TheBestSurvivesAResume) {
    // Keras forgets the best on resume (keras#17012), so the first resumed epoch always
    // "improves" and overwrites the real best. kiln's state goes into the checkpoint: a resumed
    // ModelCheckpoint compares with the saved best.
    TempDir dir;
    const std::string path = dir.file("best.h5");
    auto m = small_model();
    auto mc = std::make_shared<ModelCheckpoint>(path, best_only(0));
    auto es = std::make_shared<EarlyStopping>(es_args(5));
    es->set_output(nullptr, nullptr);
    FitArgs args;
    args.epochs = 3;
    args.verbose = 0;
    args.validation_split = 0.25;
    args.callbacks = {mc, es};
    const Toy t = toy(80, 3);
    const History h = m->fit(t.x, t.y, args);
    const double best =
        *std::min_element(h.history.at("val_loss").begin(), h.history.at("val_loss").end());
    EXPECT_EQ(mc->best(), best);
    CheckpointContents contents;
    ASSERT_TRUE(load_checkpoint(path, &contents).is_ok());
    ASSERT_TRUE(contents.training.has_value());
    const auto state = nlohmann::json::parse(contents.training->callbacks_state_json);
    ASSERT_TRUE(state.contains("ModelCheckpoint:" + path)) << state.dump();
    ASSERT_TRUE(state.contains("EarlyStopping:val_loss")) << state.dump();
    // The state is the one after the best epoch's callbacks all ran (EarlyStopping after the
    // checkpoint in the list, yet its wait is already 0 for that epoch).
    EXPECT_EQ(state["EarlyStopping:val_loss"]["wait"], 0);

    // A fresh callback resumed from that state: a worse value does not overwrite the file.
    auto resumed = std::make_shared<ModelCheckpoint>(path, best_only(0));
    auto m2 = small_model();
    Sink out, err;
    resumed->set_output(out.file(), err.file());
    resumed->restore_state(state["ModelCheckpoint:" + path].dump());
    feed(*m2, {resumed}, "val_loss", {best + 0.01});
    EXPECT_TRUE(resumed->saved_paths().empty());
    EXPECT_EQ(resumed->best(), best);
}

// ---- ReduceLROnPlateau, LearningRateScheduler ----------------------------------------------

TEST(ReduceLROnPlateauTest, KerasSchedule) {
    EXPECT_THROW(ReduceLROnPlateau([] {
                     ReduceLROnPlateauArgs a;
                     a.factor = 1.0;
                     return a;
                 }()),
                 Error);
    // Adam's 1e-3 is 0.0010000000474974513 in float32, as Keras holds it. factor 0.5,
    // patience 1, cooldown 1, min_lr 2e-4, constant values (no improvement after e0):
    //   e0: the first value is the best.
    //   e1: tie, wait 1 >= 1: lr 0.0010000000474974513 * 0.5; cooldown 1.
    //   e2: the cooldown runs down to 0 first, so it no longer holds: wait 1: lr halves again.
    //   e3: the same: max(0.000125..., 2e-4) = 2e-4.
    //   e4, e5: float32(2e-4) > float32(2e-4) is false: no change, no message.
    ReduceLROnPlateauArgs a;
    a.factor = 0.5;
    a.patience = 1;
    a.cooldown = 1;
    a.min_lr = 2e-4;
    a.min_delta = 0;
    a.verbose = 1;
    auto rl = std::make_shared<ReduceLROnPlateau>(a);
    auto m = small_model();
    Sink out, err;
    rl->set_output(out.file(), err.file());
    std::vector<double> seen;  // the logs' learning_rate: the rate each epoch trained with
    LambdaHooks hooks;
    hooks.on_epoch_end = [&](int, const Logs& logs) { seen.push_back(*logs.get("learning_rate")); };
    feed(*m, {std::make_shared<LambdaCallback>(hooks), rl}, "val_loss",
         {1.0, 1.0, 1.0, 1.0, 1.0, 1.0});
    EXPECT_EQ(out.text(),
              "Epoch 2: ReduceLROnPlateau reducing learning rate to 0.0005000000237487257.\n"
              "Epoch 3: ReduceLROnPlateau reducing learning rate to 0.0002500000118743628.\n"
              "Epoch 4: ReduceLROnPlateau reducing learning rate to 0.0002.\n");
    EXPECT_EQ(seen, (std::vector<double>{double(1e-3f), double(1e-3f), double(5e-4f),
                                         double(2.5e-4f), double(2e-4f), double(2e-4f)}));
    EXPECT_EQ(m->learning_rate(), double(2e-4f));
}

TEST(ReduceLROnPlateauTest, AddsTheLearningRateToFitsLogs) {
    const Toy t = toy(60);
    auto m = small_model();
    FitArgs args;
    args.epochs = 2;
    args.verbose = 0;
    args.validation_split = 0.2;
    args.callbacks = {std::make_shared<ReduceLROnPlateau>()};
    const History h = m->fit(t.x, t.y, args);
    EXPECT_EQ(h.keys, (std::vector<std::string>{"loss", "accuracy", "val_loss", "val_accuracy",
                                                "learning_rate"}));
    EXPECT_EQ(h.history.at("learning_rate")[0], double(1e-3f));
}

TEST(LearningRateSchedulerTest, SetsTheRateEachEpoch) {
    const Toy t = toy(60);
    auto m = small_model();
    FitArgs args;
    args.epochs = 3;
    args.verbose = 0;
    auto sched = std::make_shared<LearningRateScheduler>(
        [](int epoch, double lr) { return epoch == 0 ? 0.01 : lr * 0.5; }, 1);
    Sink out, err;
    sched->set_output(out.file(), err.file());
    args.callbacks = {sched};
    const History h = m->fit(t.x, t.y, args);
    // The rate is held in float32 (as Keras's optimizer variable); halving is exact.
    EXPECT_EQ(h.history.at("learning_rate"),
              (std::vector<double>{double(0.01f), double(0.01f) * 0.5, double(0.01f) * 0.25}));
    // The message prints the value the schedule returned, as Python prints a float.
    const std::string text = out.text();
    EXPECT_EQ(text.substr(0, text.find('\n') + 1),
              "Epoch 1: LearningRateScheduler setting learning rate to 0.01.\n");
    // A schedule that returns NaN is an error.
    args.callbacks = {std::make_shared<LearningRateScheduler>([](int, double) { return kNaN; })};
    EXPECT_THROW(m->fit(t.x, t.y, args), Error);
}

TEST(LearningRateSchedulerTest, TheCommandLinesSchedules) {
    namespace s = callbacks::schedules;
    const auto step = s::step(0.1, 0.5, 2);
    EXPECT_EQ(step(0, 0), 0.1);
    EXPECT_EQ(step(1, 0), 0.1);
    EXPECT_EQ(step(2, 0), 0.05);
    EXPECT_EQ(step(5, 0), 0.025);
    const auto exp = s::exponential(0.1, 0.5);
    EXPECT_EQ(exp(3, 0), 0.0125);
    const auto cos = s::cosine(0.1, 4, 0.0);
    EXPECT_EQ(cos(0, 0), 0.1);
    EXPECT_NEAR(cos(2, 0), 0.05, 1e-15);
    EXPECT_EQ(cos(4, 0), 0.0);
    EXPECT_EQ(cos(9, 0), 0.0);  // held after decay_epochs, as Keras's CosineDecay
    EXPECT_NEAR(s::cosine(0.1, 4, 0.1)(4, 0), 0.01, 1e-15);
}

// ---- CSVLogger -------------------------------------------------------------------------------

TEST(CSVLoggerTest, KerasRowsAndTheOldFileKeptUntilTheFirstRow) {
    TempDir dir;
    const std::string path = dir.file("log.csv");
    std::ofstream(path) << "keep me";
    auto csv = std::make_shared<CSVLogger>(path);
    auto m = small_model();
    FitParams p;
    p.epochs = 2;
    p.epoch_log_keys = epoch_log_keys("accuracy", true, {});
    csv->set_model(m.get());
    csv->set_params(p);
    csv->validate(p);
    csv->on_train_begin(Logs());
    EXPECT_EQ(read_file(path), "keep me");  // a run that fails now loses nothing
    Logs e0;
    e0.set("loss", 0.5);
    e0.set("accuracy", 0.75);
    e0.set("val_loss", 0.625);
    e0.set("val_accuracy", 1.0);
    csv->on_epoch_end(0, e0);
    // Keras: "epoch" (0-based) then the keys sorted; Python's str(float); "\r\n".
    EXPECT_EQ(read_file(path),
              "epoch,accuracy,loss,val_accuracy,val_loss\r\n"
              "0,0.75,0.5,1.0,0.625\r\n");
    Logs e1;
    e1.set("loss", 0.1);
    e1.set("accuracy", 0.9);
    csv->on_epoch_end(1, e1);  // an epoch without validation: NA
    csv->on_train_end(Logs());
    EXPECT_EQ(read_file(path),
              "epoch,accuracy,loss,val_accuracy,val_loss\r\n"
              "0,0.75,0.5,1.0,0.625\r\n"
              "1,0.9,0.1,NA,NA\r\n");
}

TEST(CSVLoggerTest, AppendWritesTheHeaderOnceAndTheSeparator) {
    TempDir dir;
    const std::string path = dir.file("log.csv");
    const Toy t = toy(40);
    auto m = small_model();
    FitArgs args;
    args.epochs = 2;
    args.verbose = 0;
    args.callbacks = {std::make_shared<CSVLogger>(path, ";", true)};
    m->fit(t.x, t.y, args);
    args.initial_epoch = 2;
    args.epochs = 3;
    m->fit(t.x, t.y, args);
    const std::string text = read_file(path);
    EXPECT_EQ(text.find("epoch;accuracy;loss\r\n"), 0u) << text;
    EXPECT_EQ(text.find("epoch;", 1), std::string::npos) << text;  // the header once
    EXPECT_NE(text.find("\r\n2;"), std::string::npos) << text;
    size_t rows = 0;
    for (char ch : text)
        rows += ch == '\n';
    EXPECT_EQ(rows, 4u);
    EXPECT_THROW(CSVLogger(path, "::"), Error);
    // A directory that does not exist fails before training.
    args.callbacks = {std::make_shared<CSVLogger>("/nonexistent/dir/log.csv")};
    EXPECT_THROW(m->fit(t.x, t.y, args), Error);
}

// ---- TerminateOnNaN, LambdaCallback ------------------------------------------------------

TEST(TerminateOnNaNTest, StopsWithinTheEpoch) {
    // Inputs near float32's largest value (finite: fit refuses NaN inputs): the products
    // overflow, the logits are infinite, and the first batch's loss is NaN, the peeked running
    // loss too; the run stops after that one step, with Keras's message (batch index 0-based,
    // as Keras prints).
    const Toy t = toy(64);
    data::Array bad = t.x;
    for (size_t i = 0; i < bad.values.size(); ++i)
        bad.values[i] = i % 2 ? 3e38f : -3e38f;
    // No relu, which would turn the NaNs into zeros.
    auto m = std::make_unique<Sequential>(std::vector<LayerPtr>{layers::Dense(3, "softmax")},
                                          layers::Input({6}));
    m->compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {"accuracy"}, cpu());
    auto stop = std::make_shared<TerminateOnNaN>();
    Sink out, err;
    stop->set_output(out.file(), err.file());
    FitArgs args;
    args.epochs = 3;
    args.batch_size = 8;
    args.verbose = 0;
    args.callbacks = {stop};
    const History h = m->fit(bad, t.y, args);
    EXPECT_EQ(m->iterations(), 1);
    EXPECT_EQ(h.epoch, (std::vector<int>{0}));
    EXPECT_EQ(out.text(), "Batch 0: Invalid loss, terminating training\n");
    // The epoch's loss catches it where no peek did.
    auto late = std::make_shared<TerminateOnNaN>();
    Sink out2, err2;
    late->set_output(out2.file(), err2.file());
    late->set_model(m.get());
    m->stop_training = false;
    late->on_train_begin(Logs());
    Logs logs;
    logs.set("loss", kNaN);
    late->on_epoch_end(2, logs);
    EXPECT_TRUE(m->stop_training);
    EXPECT_EQ(out2.text(), "Epoch 3: Invalid loss, terminating training\n");
    // raise_error throws instead.
    args.callbacks = {std::make_shared<TerminateOnNaN>(true)};
    EXPECT_THROW(m->fit(bad, t.y, args), Error);
}

TEST(LambdaCallbackTest, CallsTheGivenHooks) {
    const Toy t = toy(40);
    auto m = small_model();
    int begins = 0, ends = 0, batches = 0, train_begin = 0, train_end = 0;
    double last_batch_loss = -1;
    LambdaHooks hooks;
    hooks.on_epoch_begin = [&](int, const Logs&) { ++begins; };
    hooks.on_epoch_end = [&](int, const Logs&) { ++ends; };
    hooks.on_train_begin = [&](const Logs&) { ++train_begin; };
    hooks.on_train_end = [&](const Logs&) { ++train_end; };
    hooks.on_train_batch_end = [&](int64_t, const Logs& logs) {
        ++batches;
        if (logs.contains("loss"))
            last_batch_loss = *logs.get("loss");
    };
    FitArgs args;
    args.epochs = 2;
    args.batch_size = 16;
    args.verbose = 0;
    args.callbacks = {std::make_shared<LambdaCallback>(hooks)};
    const History h = m->fit(t.x, t.y, args);
    EXPECT_EQ(begins, 2);
    EXPECT_EQ(ends, 2);
    EXPECT_EQ(batches, 6);  // 40 samples in batches of 16: 3 per epoch
    EXPECT_EQ(train_begin, 1);
    EXPECT_EQ(train_end, 1);
    EXPECT_EQ(last_batch_loss, h.history.at("loss").back());  // the CPU's peek is current
}

// ---- inside fit ----------------------------------------------------------------------------

// The default job's two callbacks (the Keras recipe), quiet, writing into `dir`.
std::vector<CallbackPtr> default_job_callbacks(const TempDir& dir, int patience = 3) {
    ModelCheckpointArgs mc;
    mc.monitor = "val_loss";
    mc.mode = "min";
    mc.save_best_only = true;
    mc.save_weights_only = false;
    EarlyStoppingArgs es;
    es.monitor = "val_loss";
    es.mode = "min";
    es.patience = patience;
    es.restore_best_weights = true;
    return {std::make_shared<ModelCheckpoint>(dir.file("best_model.h5"), mc),
            std::make_shared<EarlyStopping>(es)};
}

TEST(CallbacksFitTest, DefaultJobCallbacksReadTheDeviceOncePerEpoch) {
    // The figure: with ModelCheckpoint (best only) and EarlyStopping (restoring the best
    // weights) on, fit still reads the device once per epoch plus once: the snapshots are
    // device-to-device copies, the checkpoints are staged without a counted read, and neither
    // callback asks for batch logs. TerminateOnNaN's batch logs are non-blocking peeks.
    TempDir dir;
    const Toy t = toy(300, 1, 0.3);
    for (int verbose : {0, 1}) {
        SCOPED_TRACE(verbose);
        auto m = small_model();
        FitArgs a;
        a.epochs = 6;
        a.batch_size = 8;
        a.verbose = verbose;
        a.validation_split = 0.2;
        a.callbacks = default_job_callbacks(dir, 10);
        a.callbacks.push_back(std::make_shared<TerminateOnNaN>());
        for (auto& cb : a.callbacks)
            cb->set_output(nullptr, nullptr);
        const uint64_t before = m->backend().reads();
        m->fit(t.x, t.y, a);
        EXPECT_LE(m->backend().reads() - before, uint64_t(a.epochs) + 1);
        EXPECT_TRUE(file_exists(dir.file("best_model.h5")));
    }
}

TEST(CallbacksFitTest, EarlyStopRestoresTheBestWeightsAndTheFileHoldsThem) {
    // A noisy toy problem overfits: EarlyStopping (patience 2) ends the run; the model ends
    // with the best epoch's weights, bit for bit those in best_model.h5.
    TempDir dir;
    const Toy t = toy(400, 5, 0.4);
    auto m = std::make_unique<Sequential>(
        std::vector<LayerPtr>{layers::Dense(64, "relu"), layers::Dense(3, "softmax")},
        layers::Input({6}));
    m->compile(optimizers::Adam(0.01f), losses::SparseCategoricalCrossentropy(), {"accuracy"},
               cpu());
    std::vector<std::vector<double>> at_end;  // each epoch's weights
    LambdaHooks hooks;
    hooks.on_epoch_end = [&](int, const Logs&) { at_end.push_back(m->flat_parameters()); };
    FitArgs a;
    a.epochs = 60;
    a.batch_size = 16;
    a.verbose = 0;
    a.validation_split = 0.5;
    a.callbacks = default_job_callbacks(dir, 2);
    a.callbacks.push_back(std::make_shared<LambdaCallback>(hooks));
    for (auto& cb : a.callbacks)
        cb->set_output(nullptr, nullptr);
    const History h = m->fit(t.x, t.y, a);
    auto& es = static_cast<EarlyStopping&>(*a.callbacks[1]);
    ASSERT_TRUE(es.stopped()) << "no early stop in 60 epochs";
    EXPECT_LT(h.epoch.size(), 60u);
    const auto& val = h.history.at("val_loss");
    const int best = int(std::min_element(val.begin(), val.end()) - val.begin());
    EXPECT_EQ(es.best_epoch(), best);
    EXPECT_EQ(es.stopped_epoch(), best + 2);
    EXPECT_TRUE(es.restored());
    EXPECT_EQ(m->flat_parameters(), at_end[size_t(best)]);
    expect_same_weights(weights_in(dir.file("best_model.h5")), m->get_weights());
}

TEST(CallbacksFitTest, TheBestWeightsComeBackWhenAnotherCallbackStops) {
    TempDir dir;
    const Toy t = toy(200, 2, 0.3);
    auto m = small_model();
    std::vector<std::vector<double>> at_end;
    LambdaHooks hooks;
    hooks.on_epoch_end = [&](int e, const Logs&) {
        at_end.push_back(m->flat_parameters());
        if (e == 3)
            m->stop_training = true;
    };
    FitArgs a;
    a.epochs = 20;
    a.verbose = 0;
    a.validation_split = 0.3;
    a.callbacks = default_job_callbacks(dir, 50);
    a.callbacks.push_back(std::make_shared<LambdaCallback>(hooks));
    for (auto& cb : a.callbacks)
        cb->set_output(nullptr, nullptr);
    const History h = m->fit(t.x, t.y, a);
    ASSERT_EQ(h.epoch.size(), 4u);
    const auto& val = h.history.at("val_loss");
    const size_t best = size_t(std::min_element(val.begin(), val.end()) - val.begin());
    EXPECT_EQ(m->flat_parameters(), at_end[best]);
}

TEST(CallbacksFitTest, ResumedStateGoesBackByKey) {
    // FitArgs::resume_callbacks_state_json hands each callback its state by key: an
    // EarlyStopping resumed with an unbeatable best stops at the first epoch it may (epoch 1 of
    // this fit is the first > 0). A key no callback has is ignored with a warning.
    const Toy t = toy(60);
    auto m = small_model();
    EarlyStoppingArgs a;
    a.patience = 1;
    auto es = std::make_shared<EarlyStopping>(a);
    FitArgs args;
    args.epochs = 10;
    args.verbose = 0;
    args.validation_split = 0.25;
    args.callbacks = {es};
    args.resume_callbacks_state_json =
        R"({"EarlyStopping:val_loss": {"wait": 0, "best": 1e-9, "best_epoch": 0},
            "Gone:val_loss": {}})";
    const History h = m->fit(t.x, t.y, args);
    EXPECT_EQ(h.epoch, (std::vector<int>{0, 1}));
    EXPECT_EQ(es->stopped_epoch(), 1);
    args.resume_callbacks_state_json = "not json";
    EXPECT_THROW(m->fit(t.x, t.y, args), Error);
}

TEST(CallbacksFitTest, RepeatedStateKeysAreMadeUnique) {
    TempDir dir;
    const Toy t = toy(60);
    auto m = small_model();
    std::string state;
    LambdaHooks hooks;
    hooks.on_train_end = [&](const Logs&) { state = m->callbacks_state_json(); };
    FitArgs args;
    args.epochs = 1;
    args.verbose = 0;
    args.validation_split = 0.25;
    args.callbacks = {std::make_shared<EarlyStopping>(), std::make_shared<EarlyStopping>(),
                      std::make_shared<LambdaCallback>(hooks)};
    m->fit(t.x, t.y, args);
    const auto j = nlohmann::json::parse(state);
    EXPECT_TRUE(j.contains("EarlyStopping:val_loss")) << state;
    EXPECT_TRUE(j.contains("EarlyStopping:val_loss#2")) << state;
    EXPECT_EQ(m->callbacks_state_json(), "{}");  // outside fit
}

// ---- BackupAndRestore ----------------------------------------------------------------------

TEST(BackupAndRestoreTest, AnInterruptedRunContinuesExactly) {
    // Run A is interrupted at the start of epoch 2 (an exception, as a crash would end it);
    // run B, a fresh process's model with the same BackupAndRestore, continues at epoch 2 from
    // the backup and ends with the weights and history of run C, which was never interrupted.
    TempDir dir;
    const std::string backup = dir.file("backup");
    const Toy t = toy(120, 4, 0.2);
    FitArgs args;
    args.epochs = 4;
    args.batch_size = 16;
    args.verbose = 0;
    args.validation_split = 0.25;

    auto c = small_model(9, /*dropout=*/true);
    auto es_c = std::make_shared<EarlyStopping>(es_args(10));
    es_c->set_output(nullptr, nullptr);
    args.callbacks = {es_c};
    const History hc = c->fit(t.x, t.y, args);

    auto a = small_model(9, true);
    LambdaHooks crash;
    crash.on_epoch_begin = [](int e, const Logs&) {
        if (e == 2)
            throw std::runtime_error("interrupted");
    };
    auto es_a = std::make_shared<EarlyStopping>(es_args(10));
    es_a->set_output(nullptr, nullptr);
    args.callbacks = {std::make_shared<BackupAndRestore>(backup), es_a,
                      std::make_shared<LambdaCallback>(crash)};
    EXPECT_THROW(a->fit(t.x, t.y, args), std::runtime_error);
    ASSERT_TRUE(a->wait_for_checkpoints().is_ok());
    ASSERT_TRUE(file_exists(backup + "/latest.h5"));

    auto b = small_model(9, true);
    auto es_b = std::make_shared<EarlyStopping>(es_args(10));
    es_b->set_output(nullptr, nullptr);
    auto bar = std::make_shared<BackupAndRestore>(backup);
    args.callbacks = {bar, es_b};
    const History hb = b->fit(t.x, t.y, args);
    EXPECT_EQ(hb.epoch, (std::vector<int>{2, 3}));
    EXPECT_EQ(hb.history.at("val_loss"), std::vector<double>(hc.history.at("val_loss").begin() + 2,
                                                             hc.history.at("val_loss").end()));
    EXPECT_EQ(b->flat_parameters(), c->flat_parameters());  // EarlyStopping restored both alike
    EXPECT_EQ(es_b->best_epoch(), es_c->best_epoch());
    // The run completed: the backup is gone, and the directory with it (it was kiln's only).
    EXPECT_FALSE(file_exists(backup));
}

TEST(BackupAndRestoreTest, DoubleCheckpointFallsBackToThePreviousBackup) {
    TempDir dir;
    const std::string backup = dir.file("backup");
    const Toy t = toy(60);
    FitArgs args;
    args.epochs = 3;
    args.verbose = 0;
    auto a = small_model();
    args.callbacks = {
        std::make_shared<BackupAndRestore>(backup, callbacks::SaveFreq(), false, true)};
    a->fit(t.x, t.y, args);
    ASSERT_TRUE(file_exists(backup + "/latest.h5"));
    ASSERT_TRUE(file_exists(backup + "/_latest.h5"));
    std::ofstream(backup + "/latest.h5", std::ios::trunc) << "not an HDF5 file";
    auto b = small_model();
    args.epochs = 4;
    const History h = b->fit(t.x, t.y, args);
    // _latest.h5 was the backup after epoch 2 of 3 (0-based 1): the run continues at epoch 2.
    EXPECT_EQ(h.epoch, (std::vector<int>{2, 3}));
    // Without the fallback the unreadable backup is an error.
    std::ofstream(backup + "/latest.h5", std::ios::trunc) << "not an HDF5 file";
    auto c = small_model();
    args.callbacks = {std::make_shared<BackupAndRestore>(backup)};
    EXPECT_THROW(c->fit(t.x, t.y, args), Error);
}

TEST(BackupAndRestoreTest, BatchLevelBackups) {
    // save_freq 2 with 3 batches per epoch over 2 epochs: batches counted across epochs give
    // backups after e0 b1, e1 b0 and e1 b2. A backup within an epoch resumes at its start.
    TempDir dir;
    const std::string backup = dir.file("b");
    const Toy t = toy(48);
    FitArgs args;
    args.epochs = 2;
    args.batch_size = 16;
    args.verbose = 0;
    auto bar = std::make_shared<BackupAndRestore>(backup, callbacks::SaveFreq(2), false);
    args.callbacks = {bar};
    auto m = small_model();
    m->fit(t.x, t.y, args);
    EXPECT_EQ(bar->backups_written(), 3);
    TrainingState state;
    auto other = small_model();
    ASSERT_TRUE(other->restore_training_state(backup + "/latest.h5", &state).is_ok());
    EXPECT_EQ(state.epoch, 1);  // taken within epoch 1 (0-based): resume at its start
    EXPECT_EQ(state.step, 6);
}

}  // namespace
}  // namespace kiln
