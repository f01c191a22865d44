// Checkpoint files and the asynchronous writer: round trips of both file kinds, exact resume
// (bit for bit on the CPU, in this process and through the `kiln` command in new processes),
// the checksums, h5py and Keras reading kiln's files and kiln reading Keras's, and the writer's
// promises: training does not wait for a slow disk, a newer request replaces a waiting one, the
// last one is always written, a failed write warns and keeps the previous file, a crashed run's
// temporaries are cleaned up.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <hdf5.h>
#include <nlohmann/json.hpp>

#include "kiln/kiln.h"
#include "test_util.h"

#ifndef KILN_KERAS_PYTHON
#define KILN_KERAS_PYTHON ""
#endif

namespace kiln {
namespace {

namespace fs = std::filesystem;
using testing::make_array;
using testing::random_values;
using testing::TempDir;

constexpr const char* kDebianPython = "/usr/bin/python3";
constexpr const char* kFaultVariable = "KILN_CHECKPOINT_FAULT";
const std::string kBin = std::string(KILN_BINARY_DIR) + "/kiln";

// ---- helpers --------------------------------------------------------------------------------

CompileOptions cpu(uint64_t seed = 7) {
    CompileOptions o;
    o.device = DeviceChoice::kCpu;
    o.seed = seed;
    o.log = nullptr;
    return o;
}

// Dense, Dropout (so the dropout RNG matters), Dense, Dense; Adam (two state slots).
std::unique_ptr<Sequential> small_model(uint64_t seed = 7) {
    auto m = std::make_unique<Sequential>(
        std::vector<LayerPtr>{layers::Dense(16, "relu"), layers::Dropout(0.3f),
                              layers::Dense(8, "tanh"), layers::Dense(3, "softmax")},
        layers::Input({6}));
    m->compile(optimizers::Adam(0.01f), losses::SparseCategoricalCrossentropy(), {"accuracy"},
               cpu(seed));
    return m;
}

struct Toy {
    data::Array x, y;
};

// The class is the argmax of the first three features.
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

FitArgs fit_args(int epochs, int initial_epoch = 0) {
    FitArgs a;
    a.epochs = epochs;
    a.initial_epoch = initial_epoch;
    a.batch_size = 16;
    a.validation_split = 0.2;
    a.verbose = 0;
    return a;
}

// Requests a checkpoint at the end of the chosen epochs (all when none are chosen).
class Checkpointer : public Callback {
  public:
    Checkpointer(std::function<std::string(int)> path_for, std::set<int> epochs = {})
        : path_for_(std::move(path_for)), epochs_(std::move(epochs)) {}

    void on_epoch_end(int epoch, const Logs&) override {
        if (!epochs_.empty() && !epochs_.count(epoch))
            return;
        CheckpointRequest r;
        r.path = path_for_(epoch);
        r.weights_only = is_weights_file_name(r.path);
        r.epoch = epoch + 1;
        r.step = model_->iterations();
        r.callbacks_state_json = "{\"test\": {\"epoch\": " + std::to_string(epoch) + "}}";
        const auto start = std::chrono::steady_clock::now();
        statuses.push_back(model_->request_checkpoint(r));
        request_seconds.push_back(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        epoch_end_times.push_back(std::chrono::steady_clock::now());
        // Wait (without taking the failures wait_for_checkpoints reports) until the writer has
        // finished this request, so that every request is one write.
        while (settle) {
            const CheckpointStats st = model_->checkpoint_stats();
            if (st.written + st.failed + st.replaced >= st.requested)
                break;
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    }

    bool settle = false;
    std::vector<Status> statuses;
    std::vector<double> request_seconds;
    std::vector<std::chrono::steady_clock::time_point> epoch_end_times;

  private:
    std::function<std::string(int)> path_for_;
    std::set<int> epochs_;
};

// Sets an environment variable for the scope.
class ScopedEnv {
  public:
    ScopedEnv(const char* name, const std::string& value) : name_(name) {
        if (const char* old = std::getenv(name))
            old_ = old;
        setenv(name, value.c_str(), 1);
    }
    ~ScopedEnv() {
        if (old_.empty()) {
            unsetenv(name_);
        } else {
            setenv(name_, old_.c_str(), 1);
        }
    }

  private:
    const char* name_;
    std::string old_;
};

::testing::AssertionResult same_doubles(const std::vector<double>& a,
                                        const std::vector<double>& b) {
    if (a.size() != b.size()) {
        return ::testing::AssertionFailure() << "sizes " << a.size() << " vs " << b.size();
    }
    for (size_t i = 0; i < a.size(); ++i) {
        // Bit for bit: EXPECT_EQ semantics, NaN never equal.
        if (!(a[i] == b[i])) {
            return ::testing::AssertionFailure()
                   << "element " << i << ": " << a[i] << " vs " << b[i];
        }
    }
    return ::testing::AssertionSuccess();
}

::testing::AssertionResult same_history(const History& a, const History& b) {
    if (a.epoch != b.epoch)
        return ::testing::AssertionFailure() << "epochs differ";
    if (a.keys != b.keys)
        return ::testing::AssertionFailure() << "keys differ";
    for (const std::string& key : a.keys) {
        auto r = same_doubles(a.history.at(key), b.history.at(key));
        if (!r)
            return ::testing::AssertionFailure() << key << ": " << r.message();
    }
    return ::testing::AssertionSuccess();
}

std::vector<float> flatten(const std::vector<LayerWeights>& weights) {
    std::vector<float> out;
    for (const auto& lw : weights) {
        for (const auto& a : lw.weights)
            out.insert(out.end(), a.values.begin(), a.values.end());
    }
    return out;
}

std::vector<std::string> entries(const std::string& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir))
        names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
}

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

void write_text(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
}

std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The byte offset in the file of a contiguous dataset's data.
int64_t dataset_offset(const std::string& file, const std::string& dataset) {
    hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
    const haddr_t offset = H5Dget_offset(d);
    H5Dclose(d);
    H5Fclose(f);
    return offset == HADDR_UNDEF ? -1 : static_cast<int64_t>(offset);
}

void flip_byte(const std::string& file, int64_t offset) {
    std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
    io.seekg(offset);
    char c = 0;
    io.read(&c, 1);
    c = static_cast<char>(c ^ 0x5a);
    io.seekp(offset);
    io.write(&c, 1);
}

// ---- round trips ----------------------------------------------------------------------------

TEST(CheckpointFiles, KerasWeightKeys) {
    EXPECT_EQ(keras_weight_keys({"Dense", "Dropout", "Dense", "Conv2D", "MaxPooling2D",
                                 "BatchNormalization", "Dense", "Conv2D"}),
              (std::vector<std::string>{"dense", "dropout", "dense_1", "conv2d", "max_pooling2d",
                                        "batch_normalization", "dense_2", "conv2d_1"}));
    EXPECT_TRUE(is_weights_file_name("a/best.weights.h5"));
    EXPECT_FALSE(is_weights_file_name("a/best.h5"));
}

// Save, load into a fresh model: the same predictions bit for bit, for both file kinds.
TEST(CheckpointFiles, RoundTripsGiveIdenticalPredictions) {
    TempDir dir;
    const Toy data = toy(120);
    auto trained = small_model();
    trained->fit(data.x, data.y, fit_args(2));
    const data::Array expected = trained->predict(data.x);
    ASSERT_TRUE(trained->save(dir.file("m.h5")).is_ok());
    ASSERT_TRUE(trained->save_weights(dir.file("m.weights.h5")).is_ok());

    auto from_full = load_model(dir.file("m.h5"), cpu());
    EXPECT_TRUE(
        same_doubles(std::vector<double>(expected.values.begin(), expected.values.end()), [&] {
            const auto p = from_full->predict(data.x).values;
            return std::vector<double>(p.begin(), p.end());
        }()));
    auto fresh = small_model(/*seed=*/99);  // other initial weights
    ASSERT_TRUE(fresh->load_weights(dir.file("m.weights.h5")).is_ok());
    EXPECT_EQ(fresh->predict(data.x).values, expected.values);
    // A weights file kiln wrote carries the config too, so load_model reads it.
    auto from_weights = load_model(dir.file("m.weights.h5"), cpu());
    EXPECT_EQ(from_weights->predict(data.x).values, expected.values);
    // And a full file's weights load into a model as Keras's load_weights does.
    auto fresh2 = small_model(/*seed=*/98);
    ASSERT_TRUE(fresh2->load_weights(dir.file("m.h5")).is_ok());
    EXPECT_EQ(fresh2->predict(data.x).values, expected.values);
    EXPECT_EQ(entries(dir.path()), (std::vector<std::string>{"m.h5", "m.weights.h5"}));
}

TEST(CheckpointFiles, WrongNamesAndMismatchesAreErrors) {
    TempDir dir;
    auto m = small_model();
    EXPECT_EQ(m->save(dir.file("m.weights.h5")).code(), Status::Code::kInvalidArgument);
    EXPECT_EQ(m->save_weights(dir.file("m.h5")).code(), Status::Code::kInvalidArgument);
    CheckpointRequest wrong;
    wrong.path = dir.file("x.h5");
    wrong.weights_only = true;
    EXPECT_EQ(m->request_checkpoint(wrong).code(), Status::Code::kInvalidArgument);
    ASSERT_TRUE(m->save_weights(dir.file("m.weights.h5")).is_ok());

    // Another architecture: the error names the layer and both shapes.
    Sequential other(
        {layers::Dense(16, "relu"), layers::Dense(5, "tanh"), layers::Dense(3, "softmax")},
        layers::Input({6}));
    other.compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {}, cpu());
    const Status s = other.load_weights(dir.file("m.weights.h5"));
    ASSERT_FALSE(s.is_ok());
    EXPECT_NE(s.message().find("dense_1"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("(16, 5)"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("(16, 8)"), std::string::npos) << s.message();

    // A model with fewer Dense layers: the file's extra group is named.
    Sequential fewer({layers::Dense(16, "relu"), layers::Dense(3, "softmax")}, layers::Input({6}));
    fewer.compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {}, cpu());
    const Status s2 = fewer.load_weights(dir.file("m.weights.h5"));
    ASSERT_FALSE(s2.is_ok());
    EXPECT_NE(s2.message().find("layers/dense_"), std::string::npos) << s2.message();
}

// Save, load, then train on: the loaded model continues exactly as the original does.
TEST(CheckpointFiles, ContinuedTrainingMatchesTheOriginal) {
    TempDir dir;
    const Toy data = toy(160);
    auto a = small_model();
    a->fit(data.x, data.y, fit_args(1));
    ASSERT_TRUE(a->save(dir.file("m.h5")).is_ok());
    auto b = load_model(dir.file("m.h5"), cpu(/*seed=*/3));
    TrainingState st;
    ASSERT_TRUE(b->restore_training_state(dir.file("m.h5"), &st).is_ok());
    EXPECT_EQ(st.epoch, 1);
    EXPECT_EQ(st.step, a->iterations());
    a->fit(data.x, data.y, fit_args(3, 1));
    b->fit(data.x, data.y, fit_args(3, 1));
    EXPECT_TRUE(same_doubles(a->flat_parameters(), b->flat_parameters()));
    EXPECT_EQ(a->iterations(), b->iterations());
}

// ---- exact resume ---------------------------------------------------------------------------

// Train 4 epochs with a checkpoint after epoch 2; separately, a new model restores that
// checkpoint and trains epochs 3 and 4: the same weights and history, bit for bit.
TEST(CheckpointResume, IsBitExactOnTheCpu) {
    for (const std::string name : {"ckpt.h5", "ckpt.weights.h5"}) {
        SCOPED_TRACE(name);
        TempDir dir;
        const Toy data = toy(200);
        auto whole = small_model(/*seed=*/7);
        auto saver =
            std::make_shared<Checkpointer>([&](int) { return dir.file(name); }, std::set<int>{1});
        FitArgs args = fit_args(4);
        args.callbacks = {saver};
        const History full = whole->fit(data.x, data.y, args);
        ASSERT_EQ(saver->statuses.size(), 1u);
        ASSERT_TRUE(saver->statuses[0].is_ok());
        ASSERT_TRUE(whole->last_checkpoint_status().is_ok());

        // A new model, with another seed: the checkpoint brings the run's seed back.
        auto resumed = small_model(/*seed=*/12345);
        TrainingState st;
        ASSERT_TRUE(resumed->restore_training_state(dir.file(name), &st).is_ok());
        EXPECT_EQ(st.epoch, 2);
        EXPECT_EQ(st.seed, 7u);
        EXPECT_EQ(st.callbacks_state_json, "{\"test\": {\"epoch\": 1}}");
        ASSERT_EQ(st.history_epochs, (std::vector<int>{0, 1}));
        const History rest = resumed->fit(data.x, data.y, fit_args(4, st.epoch));

        EXPECT_TRUE(same_doubles(whole->flat_parameters(), resumed->flat_parameters()));
        EXPECT_EQ(whole->iterations(), resumed->iterations());
        // The run's history, and the epochs the resumed fit ran.
        EXPECT_TRUE(same_history(whole->run_history(), resumed->run_history()));
        EXPECT_EQ(rest.epoch, (std::vector<int>{2, 3}));
        for (const std::string& key : full.keys) {
            const auto& f = full.history.at(key);
            EXPECT_TRUE(same_doubles({f[2], f[3]}, rest.history.at(key))) << key;
        }
    }
}

// Stopped by a signal within an epoch: fit finishes the batch, writes the interrupt checkpoint
// with the epoch's running sums and throws; a new model resumed from that file ends exactly as
// the run that never stopped, history included (the stopped epoch's logs come from the sums).
TEST(CheckpointResume, WithinAnEpochIsBitExact) {
    TempDir dir;
    const Toy data = toy(200);  // 160 training samples: 10 batches of 16 per epoch
    auto whole = small_model(/*seed=*/7);
    whole->fit(data.x, data.y, fit_args(4));

    auto stopped = small_model(/*seed=*/7);
    FitArgs args = fit_args(4);
    args.interrupt_checkpoint = dir.file("interrupted.h5");
    args.callbacks = {std::make_shared<testing::InterruptAt>(/*epoch=*/1, /*batch=*/3)};
    int code = 0;
    try {
        stopped->fit(data.x, data.y, args);
    } catch (const Interrupted& e) {
        code = e.exit_code();
        EXPECT_NE(std::string(e.what()).find("after batch 4 of epoch 2 (step 14); wrote"),
                  std::string::npos)
            << e.what();
    }
    clear_interrupt();
    ASSERT_EQ(code, 130);
    EXPECT_EQ(stopped->iterations(), 14);

    auto resumed = small_model(/*seed=*/99);
    TrainingState st;
    ASSERT_TRUE(resumed->restore_training_state(dir.file("interrupted.h5"), &st).is_ok());
    EXPECT_EQ(st.epoch, 1);
    EXPECT_EQ(st.batch, 4);
    EXPECT_EQ(st.step, 14);
    ASSERT_EQ(st.epoch_sums.size(), 3u);
    EXPECT_EQ(st.epoch_sums[2], 64.0);  // samples seen in the epoch so far
    resumed->fit(data.x, data.y, fit_args(4, st.epoch));
    EXPECT_TRUE(same_doubles(whole->flat_parameters(), resumed->flat_parameters()));
    EXPECT_EQ(whole->iterations(), resumed->iterations());
    EXPECT_TRUE(same_history(whole->run_history(), resumed->run_history()));

    // Another batch size gives other batches: the epoch is redone from its start, with a
    // warning, and training still ends at epoch 4.
    auto other = small_model(/*seed=*/99);
    ASSERT_TRUE(other->restore_training_state(dir.file("interrupted.h5"), &st).is_ok());
    FitArgs bigger = fit_args(4, st.epoch);
    bigger.batch_size = 32;
    ::testing::internal::CaptureStderr();
    other->fit(data.x, data.y, bigger);
    const std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_NE(err.find("redoes that epoch from its start"), std::string::npos) << err;
    EXPECT_EQ(other->epochs_completed(), 4);
}

// BackupAndRestore backs up when a signal stops fit, and the same fit run again continues
// from that backup exactly.
TEST(CheckpointResume, BackupAndRestoreContinuesAfterASignal) {
    TempDir dir;
    const Toy data = toy(200);
    auto whole = small_model(/*seed=*/7);
    whole->fit(data.x, data.y, fit_args(3));

    const std::string backups = dir.file("backup");
    auto first = small_model(/*seed=*/7);
    FitArgs args = fit_args(3);
    args.callbacks = {std::make_shared<callbacks::BackupAndRestore>(backups),
                      std::make_shared<testing::InterruptAt>(/*epoch=*/2, /*batch=*/6)};
    EXPECT_THROW(first->fit(data.x, data.y, args), Interrupted);
    clear_interrupt();
    CheckpointInfo info;
    ASSERT_TRUE(inspect_checkpoint(backups + "/latest.h5", &info).is_ok());

    auto second = small_model(/*seed=*/7);
    args.callbacks = {std::make_shared<callbacks::BackupAndRestore>(backups)};
    second->fit(data.x, data.y, args);
    EXPECT_TRUE(same_doubles(whole->flat_parameters(), second->flat_parameters()));
    EXPECT_TRUE(same_history(whole->run_history(), second->run_history()));
    EXPECT_FALSE(fs::exists(backups + "/latest.h5"));  // the completed run removed its backup
}

// A signal before any step: nothing trained, nothing written.
TEST(CheckpointResume, ASignalBeforeAnyStepWritesNothing) {
    TempDir dir;
    const Toy data = toy(64);
    auto model = small_model();
    FitArgs args = fit_args(2);
    args.interrupt_checkpoint = dir.file("interrupted.h5");
    request_interrupt(SIGTERM);
    int code = 0;
    try {
        model->fit(data.x, data.y, args);
    } catch (const Interrupted& e) {
        code = e.exit_code();
    }
    clear_interrupt();
    EXPECT_EQ(code, 143);
    EXPECT_EQ(model->iterations(), 0);
    EXPECT_FALSE(fs::exists(dir.file("interrupted.h5")));
}

// A checkpoint of a snapshot slot (EarlyStopping's best weights) holds the slot's weights, the
// epoch and step the request names, and no optimizer state: it is not a file to resume from.
TEST(CheckpointFiles, SnapshotSlotCheckpoints) {
    TempDir dir;
    const Toy data = toy(96);
    auto m = small_model();
    m->fit(data.x, data.y, fit_args(1));
    const int slot = m->snapshots().acquire("best");
    m->snapshots().take(slot);
    const std::vector<double> then = m->flat_parameters();
    const std::vector<LayerWeights> then_weights = m->get_weights();
    m->fit(data.x, data.y, fit_args(3, 1));
    ASSERT_FALSE(same_doubles(then, m->flat_parameters()));

    CheckpointRequest r;
    r.path = dir.file("best.weights.h5");
    r.weights_only = true;
    r.snapshot_slot = slot;
    r.epoch = 1;
    r.step = m->snapshots().taken_at(slot);
    ASSERT_TRUE(m->request_checkpoint(r).is_ok());
    ASSERT_TRUE(m->wait_for_checkpoints().is_ok());
    CheckpointContents c;
    ASSERT_TRUE(load_checkpoint(r.path, &c).is_ok());
    EXPECT_EQ(flatten(c.model.weights), flatten(then_weights));
    ASSERT_TRUE(c.training.has_value());
    EXPECT_FALSE(c.training->resumable);
    EXPECT_EQ(c.training->epoch, 1);
    EXPECT_EQ(c.training->optimizer_slots, 0);
    auto fresh = small_model();
    EXPECT_FALSE(fresh->restore_training_state(r.path).is_ok());
    ASSERT_TRUE(fresh->load_weights(r.path).is_ok());
    EXPECT_EQ(fresh->get_weights()[0].weights[0].values, then_weights[0].weights[0].values);

    r.snapshot_slot = 7;  // no such slot
    EXPECT_EQ(m->request_checkpoint(r).code(), Status::Code::kInvalidArgument);
}

TEST(CheckpointResume, RefusesWhatCannotResume) {
    TempDir dir;
    auto m = small_model();
    ASSERT_TRUE(m->save(dir.file("m.h5")).is_ok());
    // Another optimizer.
    auto sgd = std::make_unique<Sequential>(
        std::vector<LayerPtr>{layers::Dense(16, "relu"), layers::Dropout(0.3f),
                              layers::Dense(8, "tanh"), layers::Dense(3, "softmax")},
        layers::Input({6}));
    sgd->compile(optimizers::SGD(0.1f, 0.9f), losses::SparseCategoricalCrossentropy(), {}, cpu());
    const Status s = sgd->restore_training_state(dir.file("m.h5"));
    ASSERT_FALSE(s.is_ok());
    EXPECT_NE(s.message().find("Adam"), std::string::npos) << s.message();
}

// ---- checksums ------------------------------------------------------------------------------

TEST(CheckpointChecksums, ACorruptWeightIsNamed) {
    for (const auto& [name, dataset] : std::vector<std::pair<std::string, std::string>>{
             {"m.h5", "/model_weights/dense_1/dense_1/kernel:0"},
             {"m.weights.h5", "/layers/dense_1/vars/0"},
             {"o.h5", "/kiln/optimizer_state"}}) {
        SCOPED_TRACE(name);
        TempDir dir;
        auto m = small_model();
        const Toy data = toy(64);
        m->fit(data.x, data.y, fit_args(1));
        const std::string path = dir.file(name);
        ASSERT_TRUE((is_weights_file_name(name) ? m->save_weights(path) : m->save(path)).is_ok());
        CheckpointInfo info;
        ASSERT_TRUE(inspect_checkpoint(path, &info).is_ok());
        EXPECT_TRUE(info.checksums_ok());
        EXPECT_GE(info.checksums.size(), 8u);

        const int64_t offset = dataset_offset(path, dataset);
        ASSERT_GT(offset, 0);
        flip_byte(path, offset + 5);
        auto fresh = small_model();
        const Status s = fresh->load_weights(path);
        ASSERT_EQ(s.code(), Status::Code::kCorruption) << s.message();
        EXPECT_NE(s.message().find(dataset), std::string::npos) << s.message();
        EXPECT_THROW(load_model(path, cpu()), Error);
        ASSERT_TRUE(inspect_checkpoint(path, &info).is_ok());
        EXPECT_FALSE(info.checksums_ok());
    }
}

// ---- the asynchronous writer ----------------------------------------------------------------

// A writer slowed to 400 ms a write: the epochs run without waiting for it (a request returns
// at once, newer requests for the same file replace the waiting one), and fit returns only
// once the last one is on disk.
TEST(CheckpointWriter, SlowWritesDoNotSlowTraining) {
    TempDir dir;
    ScopedEnv slow(kFaultVariable, "delay=400");
    const Toy data = toy(64);
    auto m = small_model();  // the writer reads the variable when it is made, after compile
    auto saver = std::make_shared<Checkpointer>([&](int) { return dir.file("ckpt.h5"); });
    FitArgs args = fit_args(6);
    args.callbacks = {saver};
    const auto start = std::chrono::steady_clock::now();
    m->fit(data.x, data.y, args);
    const double fit_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    ASSERT_EQ(saver->epoch_end_times.size(), 6u);
    const double training_seconds = std::chrono::duration<double>(saver->epoch_end_times.back() -
                                                                  saver->epoch_end_times.front())
                                        .count();
    // Five epochs of a tiny model take milliseconds; waiting for even one write would be 0.4 s.
    EXPECT_LT(training_seconds, 0.3);
    for (double s : saver->request_seconds)
        EXPECT_LT(s, 0.1);
    // fit returned only once the last request was on disk: one delayed write at least.
    EXPECT_GE(fit_seconds, 0.4);
    const CheckpointStats stats = m->checkpoint_stats();
    EXPECT_EQ(stats.requested, 6);
    EXPECT_GE(stats.replaced, 3);
    EXPECT_EQ(stats.written + stats.replaced, 6);
    EXPECT_EQ(stats.failed, 0);
    EXPECT_EQ(stats.waited, 0);
    // The file on disk is the last request's.
    CheckpointInfo info;
    ASSERT_TRUE(inspect_checkpoint(dir.file("ckpt.h5"), &info).is_ok());
    ASSERT_TRUE(info.training.has_value());
    EXPECT_EQ(info.training->epoch, 6);
    EXPECT_EQ(info.training->step, m->iterations());
    EXPECT_EQ(entries(dir.path()), (std::vector<std::string>{"ckpt.h5"}));
}

// Requests for different files never replace each other: with both slots busy, the request
// waits for the write in flight, and every file ends up written.
TEST(CheckpointWriter, OtherFilesAreNeverDropped) {
    TempDir dir;
    ScopedEnv slow(kFaultVariable, "delay=100");
    const Toy data = toy(64);
    auto m = small_model();
    auto saver = std::make_shared<Checkpointer>(
        [&](int epoch) { return dir.file("e" + std::to_string(epoch) + ".h5"); });
    FitArgs args = fit_args(4);
    args.callbacks = {saver};
    m->fit(data.x, data.y, args);
    const CheckpointStats stats = m->checkpoint_stats();
    EXPECT_EQ(stats.written, 4);
    EXPECT_EQ(stats.replaced, 0);
    EXPECT_GE(stats.waited, 1);
    EXPECT_EQ(entries(dir.path()), (std::vector<std::string>{"e0.h5", "e1.h5", "e2.h5", "e3.h5"}));
    for (int e = 0; e < 4; ++e) {
        CheckpointInfo info;
        ASSERT_TRUE(inspect_checkpoint(dir.file("e" + std::to_string(e) + ".h5"), &info).is_ok());
        EXPECT_EQ(info.training->epoch, e + 1);
    }
}

// Requests read nothing back through Backend::read: the budget of one read per epoch holds.
TEST(CheckpointWriter, RequestsAreNotBlockingReads) {
    TempDir dir;
    const Toy data = toy(64);
    auto plain = small_model();
    plain->fit(data.x, data.y, fit_args(3));
    auto m = small_model();
    auto saver = std::make_shared<Checkpointer>([&](int) { return dir.file("c.h5"); });
    FitArgs args = fit_args(3);
    args.callbacks = {saver};
    m->fit(data.x, data.y, args);
    EXPECT_EQ(m->backend().reads(), plain->backend().reads());
}

// The second write fails (injected after its temporary file is complete): a warning names the
// file, training goes on, the first write's file is still there and intact, no temporary is
// left, and the failure can be queried.
TEST(CheckpointWriter, AFailedWriteWarnsAndKeepsThePreviousFile) {
    TempDir dir;
    ScopedEnv fail(kFaultVariable, "fail=2");
    const Toy data = toy(64);
    auto m = small_model();
    const std::string path = dir.file("ckpt.h5");
    auto saver = std::make_shared<Checkpointer>([&](int) { return path; });
    saver->settle = true;
    FitArgs args = fit_args(2);
    args.callbacks = {saver};
    ::testing::internal::CaptureStderr();
    m->fit(data.x, data.y, args);
    const std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_NE(err.find("kiln: warning: checkpoint not written"), std::string::npos) << err;
    EXPECT_NE(err.find(path), std::string::npos) << err;
    EXPECT_NE(err.find("injected failure"), std::string::npos) << err;
    EXPECT_EQ(m->epochs_completed(), 2);  // training went on
    EXPECT_FALSE(m->last_checkpoint_status().is_ok());
    EXPECT_FALSE(m->last_checkpoint_status(path).is_ok());
    const CheckpointStats stats = m->checkpoint_stats();
    EXPECT_EQ(stats.written, 1);
    EXPECT_EQ(stats.failed, 1);
    const Status first = m->wait_for_checkpoints();
    EXPECT_EQ(first.code(), Status::Code::kIOError);
    EXPECT_TRUE(m->wait_for_checkpoints().is_ok());  // reported once
    CheckpointInfo info;
    ASSERT_TRUE(inspect_checkpoint(path, &info).is_ok());
    EXPECT_TRUE(info.checksums_ok());
    EXPECT_EQ(info.training->epoch, 1);
    EXPECT_EQ(entries(dir.path()), (std::vector<std::string>{"ckpt.h5"}));
}

// A real failure: the target's directory disappears during the run.
TEST(CheckpointWriter, AMissingDirectoryMidRunIsAWarning) {
    TempDir dir;
    const std::string sub = dir.file("sub");
    fs::create_directory(sub);
    const Toy data = toy(64);
    auto m = small_model();
    auto saver = std::make_shared<Checkpointer>([&](int epoch) {
        if (epoch == 1) {
            m->wait_for_checkpoints().is_ok();  // the first file is complete
            fs::remove_all(sub);
        }
        return sub + "/ckpt.h5";
    });
    FitArgs args = fit_args(3);
    args.callbacks = {saver};
    ::testing::internal::CaptureStderr();
    m->fit(data.x, data.y, args);
    const std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_NE(err.find("kiln: warning: checkpoint not written"), std::string::npos) << err;
    EXPECT_NE(err.find(sub + "/ckpt.h5"), std::string::npos) << err;
    EXPECT_EQ(m->epochs_completed(), 3);
    EXPECT_FALSE(m->last_checkpoint_status().is_ok());
}

// A crashed run's temporary beside the target goes at the next first write of that target;
// a live process's temporary and files of other shapes stay.
TEST(CheckpointWriter, StaleTemporariesAreRemoved) {
    TempDir dir;
    const std::string stale = dir.file(".ckpt.h5.tmp-999999999-0123456789abcdef");
    const std::string live =
        dir.file(".ckpt.h5.tmp-" + std::to_string(getppid()) + "-0123456789abcdef");
    const std::string other = dir.file(".ckpt.h5.tmp-999999999-short");
    const std::string another_target = dir.file(".best.h5.tmp-999999999-0123456789abcdef");
    for (const auto& p : {stale, live, other, another_target})
        write_text(p, "partial");
    auto m = small_model();
    CheckpointRequest r;
    r.path = dir.file("ckpt.h5");
    ::testing::internal::CaptureStderr();
    ASSERT_TRUE(m->request_checkpoint(r).is_ok());
    ASSERT_TRUE(m->wait_for_checkpoints().is_ok());
    const std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_NE(err.find(stale), std::string::npos) << err;
    EXPECT_FALSE(fs::exists(stale));
    EXPECT_TRUE(fs::exists(live));
    EXPECT_TRUE(fs::exists(other));
    EXPECT_TRUE(fs::exists(another_target));
    EXPECT_TRUE(fs::exists(r.path));
}

// ---- h5py reads every kind of file kiln writes ----------------------------------------------

bool debian_python_has_h5py() {
    static const bool ok =
        std::system("/usr/bin/python3 -c 'import h5py, numpy' >/dev/null 2>&1") == 0;
    return ok;
}

// Checks a file as an h5py user would: the weight datasets in Keras's order equal kiln's
// weights (written beside as raw float32), every recorded checksum matches zlib.crc32 of the
// dataset's bytes, and the kiln group's state is readable.
constexpr const char* kH5pyCheck = R"PY(
import json, sys, zlib
import h5py, numpy as np
path, expected_path, kind = sys.argv[1], sys.argv[2], sys.argv[3]
expected = np.fromfile(expected_path, dtype="<f4")
f = h5py.File(path, "r")
values = []
if kind == "model":
    for layer in f["model_weights"].attrs["layer_names"]:
        g = f["model_weights"][layer]
        for name in g.attrs["weight_names"]:
            values.append(np.asarray(g[name], dtype="<f4").ravel())
else:
    assert f["vars"].attrs["name"] == "sequential", dict(f["vars"].attrs)
    # the groups in the model's order: dense, dropout, dense_1, dense_2
    for key in ["dense", "dropout", "dense_1", "dense_2"]:
        v = f["layers"][key]["vars"]
        for i in range(len(v)):
            values.append(np.asarray(v[str(i)], dtype="<f4").ravel())
got = np.concatenate(values)
assert got.shape == expected.shape, (got.shape, expected.shape)
assert np.array_equal(got, expected), "weights differ"
k = f["kiln"]
sums = json.loads(k.attrs["checksums"])
assert sums["algorithm"] == "crc32"
for name, crc in sums["datasets"].items():
    assert zlib.crc32(f[name][()].tobytes()) == crc, name
assert int(k.attrs["epoch"]) == 2 and int(k.attrs["seed"]) == 7
assert k["optimizer_state"].shape[0] == 2
assert list(k["history"].attrs["keys"]) == ["loss", "accuracy", "val_loss", "val_accuracy"]
assert len(k["history"]["loss"]) == 2
print("ok", len(sums["datasets"]))
)PY";

TEST(CheckpointInterop, H5pyReadsEveryFileKind) {
    if (!debian_python_has_h5py()) {
        GTEST_SKIP() << kDebianPython << " cannot import h5py and numpy (Debian: python3-h5py)";
    }
    TempDir dir;
    const Toy data = toy(80);
    auto m = small_model();
    m->fit(data.x, data.y, fit_args(2));
    const std::vector<float> expected = flatten(m->get_weights());
    {
        std::ofstream out(dir.file("expected.f32"), std::ios::binary);
        out.write(reinterpret_cast<const char*>(expected.data()),
                  std::streamsize(expected.size() * sizeof(float)));
    }
    write_text(dir.file("check.py"), kH5pyCheck);
    ASSERT_TRUE(m->save(dir.file("m.h5")).is_ok());
    ASSERT_TRUE(m->save_weights(dir.file("m.weights.h5")).is_ok());
    for (const auto& [file, kind] : std::vector<std::pair<std::string, std::string>>{
             {"m.h5", "model"}, {"m.weights.h5", "weights"}}) {
        const Output r = run(std::string(kDebianPython) + " " + dir.file("check.py") + " " +
                             dir.file(file) + " " + dir.file("expected.f32") + " " + kind);
        EXPECT_EQ(r.status, 0) << file << ":\n" << r.output;
    }
}

// ---- Keras ----------------------------------------------------------------------------------

// The interpreter with Keras: KILN_KERAS_PYTHON, else the virtual environment scripts/setup.sh
// makes under the build directory. Empty, with the reason, when there is none.
std::string keras_python(std::string* why) {
    std::string python =
        std::getenv("KILN_KERAS_PYTHON") ? std::getenv("KILN_KERAS_PYTHON") : KILN_KERAS_PYTHON;
    if (python.empty() || !fs::exists(python)) {
        *why = "no Python with Keras at '" + python +
               "' (scripts/setup.sh installs one; or set KILN_KERAS_PYTHON)";
        return "";
    }
    const Output r = run("KERAS_BACKEND=jax " + python + " -c 'import keras, h5py, numpy'");
    if (r.status != 0) {
        *why = python + " cannot import keras: " + r.output;
        return "";
    }
    return python;
}

// kiln's files into Keras: load_model on the .h5 and load_weights of the .weights.h5 into a
// zeroed model predict what kiln predicts.
constexpr const char* kKerasReadsKiln = R"PY(
import os, sys
os.environ.setdefault("KERAS_BACKEND", "jax")
import numpy as np, keras
d = sys.argv[1]
x = np.load(d + "/x.npy")
expected = np.load(d + "/pred.npy")
m = keras.models.load_model(d + "/m.h5", compile=False)
np.testing.assert_allclose(m.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
for v in m.weights:
    v.assign(np.zeros(v.shape, dtype="float32"))
m.load_weights(d + "/m.weights.h5")
np.testing.assert_allclose(m.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
print("ok", keras.__version__)
)PY";

// Keras's files for kiln: a trained Keras model saved both ways, its JSON, inputs and outputs.
constexpr const char* kKerasWrites = R"PY(
import os, sys
os.environ.setdefault("KERAS_BACKEND", "jax")
import numpy as np, keras
d = sys.argv[1]
keras.utils.set_random_seed(3)
m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                      keras.layers.Dropout(0.3), keras.layers.Dense(8, activation="tanh"),
                      keras.layers.Dense(3, activation="softmax")])
m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
rng = np.random.RandomState(0)
x = rng.rand(64, 6).astype("float32")
y = rng.randint(0, 3, size=(64,))
m.fit(x, y, epochs=2, verbose=0)
m.save(d + "/k.h5")
m.save_weights(d + "/k.weights.h5")
open(d + "/k.json", "w").write(m.to_json())
np.save(d + "/kx.npy", x)
np.save(d + "/kpred.npy", m.predict(x, verbose=0))
print("ok", keras.__version__)
)PY";

TEST(CheckpointInterop, KerasReadsKilnFiles) {
    std::string why;
    const std::string python = keras_python(&why);
    if (python.empty())
        GTEST_SKIP() << why;
    TempDir dir;
    const Toy data = toy(80);
    auto m = small_model();
    m->fit(data.x, data.y, fit_args(2));
    const data::Array pred = m->predict(data.x);
    ASSERT_TRUE(m->save(dir.file("m.h5")).is_ok());
    ASSERT_TRUE(m->save_weights(dir.file("m.weights.h5")).is_ok());
    ASSERT_TRUE(data::save_npy(dir.file("x.npy"), data.x.shape, data.x.values.data()).is_ok());
    ASSERT_TRUE(data::save_npy(dir.file("pred.npy"), pred.shape, pred.values.data()).is_ok());
    write_text(dir.file("read.py"), kKerasReadsKiln);
    const Output r = run(python + " " + dir.file("read.py") + " " + dir.path());
    EXPECT_EQ(r.status, 0) << r.output;
}

TEST(CheckpointInterop, KilnReadsKerasFiles) {
    std::string why;
    const std::string python = keras_python(&why);
    if (python.empty())
        GTEST_SKIP() << why;
    TempDir dir;
    write_text(dir.file("write.py"), kKerasWrites);
    const Output r = run(python + " " + dir.file("write.py") + " " + dir.path());
    ASSERT_EQ(r.status, 0) << r.output;
    data::Array x, expected;
    ASSERT_TRUE(data::load_npy(dir.file("kx.npy"), &x).is_ok());
    ASSERT_TRUE(data::load_npy(dir.file("kpred.npy"), &expected).is_ok());
    x.shape = {x.shape[0], 6};

    // The full model file.
    auto full = load_model(dir.file("k.h5"), cpu());
    EXPECT_TRUE(testing::all_close(full->predict(x).values, expected.values, 1e-6, 1e-5));

    // The weights file, into the model the JSON describes.
    ModelConfig config;
    ASSERT_TRUE(load_model_config(dir.file("k.json"), &config).is_ok());
    Sequential m(config);
    m.compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {"accuracy"}, cpu());
    const Status s = m.load_weights(dir.file("k.weights.h5"));
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_TRUE(testing::all_close(m.predict(x).values, expected.values, 1e-6, 1e-5));

    // inspect describes them; with no kiln group there is nothing to verify.
    CheckpointInfo info;
    ASSERT_TRUE(inspect_checkpoint(dir.file("k.weights.h5"), &info).is_ok());
    EXPECT_FALSE(info.written_by_kiln);
    EXPECT_EQ(info.parameter_count, m.count_params());
}

// ---- the `kiln` command ---------------------------------------------------------------------

// A small NPY dataset directory (x_train.npy, ...) and a model JSON for the command.
class CheckpointCli : public ::testing::Test {
  protected:
    void SetUp() override {
        for (const auto& [split, n, seed] : std::vector<std::tuple<std::string, int64_t, uint64_t>>{
                 {"train", 240, 1}, {"test", 60, 2}}) {
            const Toy t = toy(n, seed);
            std::vector<float> y = t.y.values;
            ASSERT_TRUE(
                data::save_npy(dir_.file("x_" + split + ".npy"), t.x.shape, t.x.values.data())
                    .is_ok());
            ASSERT_TRUE(data::save_npy(dir_.file("y_" + split + ".npy"), {n}, y.data()).is_ok());
        }
        write_text(dir_.file("model.json"), small_model()->to_json());
        common_ = " --data " + dir_.path() + " --batch-size 16 --validation-split 0.2 --verbose 0";
    }

    // `kiln fit` without the recipe's callbacks (ModelCheckpoint to best_model.h5 in the
    // current directory, EarlyStopping).
    std::string fit(const std::string& flags) {
        return kBin + " fit" + common_ + " --checkpoint none --early-stopping none " + flags;
    }
    // `kiln fit` in `dir`, with the recipe's callbacks.
    std::string fit_in(const std::string& dir, const std::string& flags) {
        return "cd " + dir + " && " + kBin + " fit" + common_ + " " + flags;
    }

    TempDir dir_;
    std::string common_;
};

// Two processes (2 epochs, then --resume to 4) give the files and history one process gives.
TEST_F(CheckpointCli, ResumeInANewProcessIsBitExact) {
    const std::string model = " --model " + dir_.file("model.json") + " --seed 5";
    Output r = run(fit(model + " --epochs 4 --save " + dir_.file("full.h5") + " --metrics-json " +
                       dir_.file("full.json")));
    ASSERT_EQ(r.status, 0) << r.output;
    r = run(fit(model + " --epochs 2 --save " + dir_.file("half.h5")));
    ASSERT_EQ(r.status, 0) << r.output;
    r = run(fit("--resume " + dir_.file("half.h5") + " --epochs 4 --save " +
                dir_.file("resumed.h5") + " --metrics-json " + dir_.file("resumed.json")));
    ASSERT_EQ(r.status, 0) << r.output;

    CheckpointContents full, resumed;
    ASSERT_TRUE(load_checkpoint(dir_.file("full.h5"), &full).is_ok());
    ASSERT_TRUE(load_checkpoint(dir_.file("resumed.h5"), &resumed).is_ok());
    EXPECT_EQ(flatten(full.model.weights), flatten(resumed.model.weights));
    ASSERT_TRUE(full.training && resumed.training);
    EXPECT_EQ(full.training->optimizer_state, resumed.training->optimizer_state);
    EXPECT_EQ(full.training->step, resumed.training->step);
    EXPECT_EQ(resumed.training->epoch, 4);
    const auto a = nlohmann::json::parse(read_text(dir_.file("full.json")));
    const auto b = nlohmann::json::parse(read_text(dir_.file("resumed.json")));
    EXPECT_EQ(a["history"], b["history"]);
    EXPECT_EQ(a["epochs"], b["epochs"]);
    EXPECT_EQ(a["test"], b["test"]);
}

// The same through ModelCheckpoint's files, with EarlyStopping on: resuming from the file the
// callback wrote after epoch 2 brings the callbacks' state back too, and the resumed run writes
// the same files as the run that never stopped.
TEST_F(CheckpointCli, ResumeFromAModelCheckpointFileIsBitExact) {
    const std::string a = dir_.file("a"), b = dir_.file("b");
    fs::create_directory(a);
    fs::create_directory(b);
    const std::string flags =
        " --checkpoint ck-{epoch:02d}.h5 --no-save-best-only --patience 2 --epochs 5 ";
    Output r = run(fit_in(a, "--model " + dir_.file("model.json") + " --seed 5" + flags +
                                 "--save full.h5 --metrics-json full.json"));
    ASSERT_EQ(r.status, 0) << r.output;
    fs::copy_file(a + "/ck-02.h5", b + "/ck-02.h5");
    // Only the data and the callbacks: epochs, batch size and validation split are the file's.
    r = run("cd " + b + " && " + kBin + " fit --data " + dir_.path() + " --verbose 0 " +
            "--resume ck-02.h5 --checkpoint ck-{epoch:02d}.h5 --no-save-best-only --patience 2 " +
            "--save full.h5 --metrics-json full.json");
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(r.output.find("warning"), std::string::npos) << r.output;

    for (const std::string file : {"ck-05.h5", "full.h5"}) {
        SCOPED_TRACE(file);
        CheckpointContents x, y;
        ASSERT_TRUE(load_checkpoint(a + "/" + file, &x).is_ok());
        ASSERT_TRUE(load_checkpoint(b + "/" + file, &y).is_ok());
        EXPECT_EQ(flatten(x.model.weights), flatten(y.model.weights));
        EXPECT_EQ(x.training->optimizer_state, y.training->optimizer_state);
        EXPECT_EQ(x.training->step, y.training->step);
    }
    CheckpointContents x, y;
    ASSERT_TRUE(load_checkpoint(a + "/ck-05.h5", &x).is_ok());
    ASSERT_TRUE(load_checkpoint(b + "/ck-05.h5", &y).is_ok());
    EXPECT_EQ(x.training->callbacks_state_json, y.training->callbacks_state_json);
    EXPECT_EQ(nlohmann::json::parse(read_text(a + "/full.json"))["history"],
              nlohmann::json::parse(read_text(b + "/full.json"))["history"]);
}

TEST_F(CheckpointCli, InspectEvaluatePredict) {
    ASSERT_EQ(
        run(fit("--model " + dir_.file("model.json") + " --epochs 2 --save " + dir_.file("m.h5")))
            .status,
        0);
    ASSERT_EQ(run(fit("--model " + dir_.file("model.json") + " --epochs 2 --save " +
                      dir_.file("m.weights.h5")))
                  .status,
              0);
    for (const std::string file : {"m.h5", "m.weights.h5"}) {
        SCOPED_TRACE(file);
        Output r = run(kBin + " inspect " + dir_.file(file));
        EXPECT_EQ(r.status, 0) << r.output;
        EXPECT_NE(r.output.find("dense_2"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find("(16, 8)"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find("epoch 2"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find("val_loss"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find("verified"), std::string::npos) << r.output;
        r = run(kBin + " evaluate " + dir_.file(file) + " --data " + dir_.path() + " --verbose 0");
        EXPECT_EQ(r.status, 0) << r.output;
        EXPECT_NE(r.output.find("accuracy"), std::string::npos) << r.output;
        r = run(kBin + " predict " + dir_.file(file) + " --data " + dir_.path() +
                " --verbose 0 --output " + dir_.file("p.npy"));
        EXPECT_EQ(r.status, 0) << r.output;
        data::Array p;
        ASSERT_TRUE(data::load_npy(dir_.file("p.npy"), &p).is_ok());
        EXPECT_EQ(p.shape, (Shape{60, 3}));
    }
    // A damaged file: inspect names the dataset and fails.
    const std::string bad = dir_.file("bad.h5");
    fs::copy_file(dir_.file("m.h5"), bad);
    flip_byte(bad, dataset_offset(bad, "/model_weights/dense/dense/kernel:0") + 2);
    const Output r = run(kBin + " inspect " + bad);
    EXPECT_NE(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("/model_weights/dense/dense/kernel:0"), std::string::npos) << r.output;
}

TEST_F(CheckpointCli, AFailedLastWriteFailsTheRun) {
    const Output r =
        run(std::string(kFaultVariable) + "=fail=all " +
            fit("--model " + dir_.file("model.json") + " --epochs 1 --save " + dir_.file("m.h5")));
    EXPECT_NE(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("m.h5"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(dir_.file("m.h5")));
}

}  // namespace
}  // namespace kiln
