// The `kiln` command and the example program, run as a user runs them.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "kiln/kiln.h"
#include "test_util.h"

namespace kiln {
namespace {

struct Result {
    int status = -1;
    std::string output;  // stdout and stderr together
};

Result run(const std::string& command) {
    Result r;
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

const std::string kBin = std::string(KILN_BINARY_DIR) + "/kiln";

// A small NPY dataset directory: 600 training and 200 test samples of 784 features, where the
// class is decided by which block of features is brightest.
class CliTest : public ::testing::Test {
  protected:
    void SetUp() override {
        write_split("train", 600, 1);
        write_split("test", 200, 2);
    }

    // `noise` of the labels are redrawn at random, so that the validation loss turns around.
    void write_split(const std::string& name, int64_t n, uint64_t seed, double noise = 0.0) {
        std::vector<float> x = testing::random_values(size_t(n * 784), seed, 0.0f, 0.5f);
        std::vector<float> y(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) {
            int label = int(math::hash3(seed, 3, uint64_t(i)) % 10);
            for (int k = 0; k < 78; ++k)
                x[size_t(i * 784 + label * 78 + k)] += 0.5f;
            if (math::uniform01(math::hash3(seed, 5, uint64_t(i))) < noise) {
                label = int(math::hash3(seed, 9, uint64_t(i)) % 10);
            }
            y[size_t(i)] = float(label);
        }
        ASSERT_TRUE(data::save_npy(dir_.file("x_" + name + ".npy"), {n, 784}, x.data()).is_ok());
        ASSERT_TRUE(data::save_npy(dir_.file("y_" + name + ".npy"), {n}, y.data()).is_ok());
    }

    // `kiln fit` on the CPU, its default ModelCheckpoint writing into the test's directory
    // (by default it writes best_model.h5 in the current directory).
    std::string fit() const {
        return kBin + " fit --device cpu --checkpoint " + dir_.file("best_model.h5");
    }

    testing::TempDir dir_;
};

TEST_F(CliTest, HelpExplainsEveryFlag) {
    const Result top = run(kBin + " --help");
    EXPECT_EQ(top.status, 0);
    for (const char* cmd : {"fit", "evaluate", "predict"}) {
        EXPECT_NE(top.output.find(cmd), std::string::npos) << top.output;
    }
    const Result fit = run(kBin + " fit --help");
    EXPECT_EQ(fit.status, 0);
    for (const char* flag : {"--data",
                             "--model",
                             "--epochs",
                             "--batch-size",
                             "--validation-split",
                             "--optimizer",
                             "--learning-rate",
                             "--loss",
                             "--seed",
                             "--device",
                             "--verbose",
                             "--no-shuffle",
                             "--metrics-json",
                             "--checkpoint",
                             "--monitor",
                             "--mode",
                             "--save-best-only",
                             "--no-save-best-only",
                             "--save-weights-only",
                             "--save-freq",
                             "--initial-value-threshold",
                             "--patience",
                             "--min-delta",
                             "--baseline",
                             "--start-from-epoch",
                             "--restore-best-weights",
                             "--no-restore-best-weights",
                             "--early-stopping",
                             "--csv-log",
                             "--csv-append",
                             "--csv-separator",
                             "--reduce-lr-on-plateau",
                             "--reduce-lr-factor",
                             "--reduce-lr-patience",
                             "--reduce-lr-cooldown",
                             "--min-lr",
                             "--terminate-on-nan",
                             "--backup-dir",
                             "--lr-schedule",
                             "--lr-decay-rate"}) {
        EXPECT_NE(fit.output.find(flag), std::string::npos) << flag;
    }
}

TEST_F(CliTest, FitPrintsKerasOutputAndWritesMetricsJson) {
    const std::string json = dir_.file("metrics.json");
    const Result r =
        run(fit() + " --data " + dir_.path() + " --epochs 3 --verbose 2 --metrics-json " + json);
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("Epoch 1/3"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("Epoch 3/3"), std::string::npos);
    EXPECT_NE(r.output.find("17/17 - "), std::string::npos) << r.output;  // 540 / 32 steps
    EXPECT_NE(r.output.find(" - loss: "), std::string::npos);
    EXPECT_NE(r.output.find(" - val_accuracy: "), std::string::npos);
    EXPECT_NE(r.output.find("test_loss: "), std::string::npos);
    EXPECT_NE(r.output.find(" - test_accuracy: "), std::string::npos);
    std::ifstream in(json);
    ASSERT_TRUE(in.good()) << "no " << json;
    const auto j = nlohmann::json::parse(in);
    EXPECT_EQ(j["history"]["loss"].size(), 3u);
    EXPECT_EQ(j["history"]["val_accuracy"].size(), 3u);
    EXPECT_GT(j["test"]["accuracy"].get<double>(), 0.8);  // an easy problem
}

TEST_F(CliTest, VerboseZeroPrintsOnlyTheTestLine) {
    const Result r = run(fit() + " --data " + dir_.path() + " --epochs 1 --verbose 0");
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(r.output.find("Epoch"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("test_loss: "), std::string::npos);
}

TEST_F(CliTest, SavedModelEvaluatesAndPredicts) {
    const std::string model = dir_.file("model.h5"), preds = dir_.file("preds.npy");
    ASSERT_EQ(
        run(fit() + " --data " + dir_.path() + " --epochs 2 --verbose 0 --save " + model).status,
        0);
    const Result e = run(kBin + " evaluate " + model + " --device cpu --data " + dir_.path());
    ASSERT_EQ(e.status, 0) << e.output;
    EXPECT_NE(e.output.find("loss: "), std::string::npos) << e.output;
    EXPECT_NE(e.output.find("accuracy: "), std::string::npos) << e.output;
    const Result p = run(kBin + " predict " + model + " --device cpu --data " +
                         dir_.file("x_test.npy") + " --output " + preds);
    ASSERT_EQ(p.status, 0) << p.output;
    data::Array out;
    ASSERT_TRUE(data::load_npy(preds, &out).is_ok());
    EXPECT_EQ(out.shape, (Shape{200, 10}));
}

TEST_F(CliTest, AModelJsonDescribesTheNetwork) {
    ModelConfig c;
    LayerConfig in, hidden, out;
    in.class_name = "InputLayer";
    in.input_shape = {784};
    hidden.class_name = "Dense";
    hidden.units = 32;
    hidden.activation = "tanh";
    out.class_name = "Dense";
    out.units = 10;
    out.activation = "softmax";
    c.layers = {in, hidden, out};
    const std::string path = dir_.file("model.json");
    std::ofstream(path) << model_config_to_json(c);
    const Result r = run(fit() + " --data " + dir_.path() + " --model " + path +
                         " --epochs 1 --verbose 0 --optimizer sgd --learning-rate 0.1");
    EXPECT_EQ(r.status, 0) << r.output;
}

TEST_F(CliTest, BadInputGetsAClearErrorAndWritesNothing) {
    const std::string json = dir_.file("metrics.json");
    std::ofstream(json) << "keep me";
    const Result missing =
        run(fit() + " --data /nonexistent/dir --epochs 1 --metrics-json " + json);
    EXPECT_EQ(missing.status, 1);
    EXPECT_NE(missing.output.find("kiln: error:"), std::string::npos) << missing.output;
    EXPECT_NE(missing.output.find("/nonexistent/dir"), std::string::npos) << missing.output;
    std::ifstream in(json);
    std::string kept((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(kept, "keep me");  // a failed run leaves what was on disk

    // Labels outside the model's classes are named before training.
    std::vector<float> y(600, 0.0f);
    y[17] = 12;
    ASSERT_TRUE(data::save_npy(dir_.file("y_train.npy"), {600}, y.data()).is_ok());
    const Result bad_label = run(fit() + " --data " + dir_.path() + " --epochs 1");
    EXPECT_EQ(bad_label.status, 1);
    EXPECT_NE(bad_label.output.find("row 17"), std::string::npos) << bad_label.output;
    EXPECT_EQ(bad_label.output.find("Epoch 1"), std::string::npos) << bad_label.output;

    const Result bad_flag = run(fit() + " --optimizer adagrad");
    EXPECT_NE(bad_flag.status, 0);
    EXPECT_NE(bad_flag.output.find("adagrad"), std::string::npos) << bad_flag.output;
}

TEST_F(CliTest, DefaultCallbacksStopEarlyAndKeepTheBestModel) {
    // The recipe's callbacks on a noisy problem: the validation loss turns around, EarlyStopping
    // (patience 3) ends the run and puts the best epoch's weights back, which are the weights
    // ModelCheckpoint saved at that epoch.
    write_split("train", 600, 1, 0.3);
    const std::string best = dir_.file("best_model.h5"), final_model = dir_.file("final.h5");
    const Result r =
        run(fit() + " --data " + dir_.path() + " --epochs 40 --verbose 2 --save " + final_model);
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("Epoch 1: val_loss improved from inf to "), std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find(", saving model to " + best + "\n"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(": early stopping\n"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("did not improve in the last 3 records"), std::string::npos);
    EXPECT_EQ(r.output.find("Epoch 40/40"), std::string::npos) << r.output;
    const std::string restoring = "Restoring model weights from the end of the best epoch: ";
    const size_t at = r.output.find(restoring);
    ASSERT_NE(at, std::string::npos) << r.output;
    // The best epoch is the last one whose message says it improved.
    const size_t from = at + restoring.size();
    const std::string best_epoch = r.output.substr(from, r.output.find('.', from) - from);
    const size_t last_improved = r.output.rfind(" improved from ");
    const size_t line = r.output.rfind("\nEpoch ", last_improved);
    EXPECT_EQ(r.output.substr(line + 7, r.output.find(':', line) - line - 7), best_epoch)
        << r.output;
    auto saved = load_model(best);
    auto trained = load_model(final_model);
    const auto a = saved->get_weights(), b = trained->get_weights();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
        for (size_t j = 0; j < a[i].weights.size(); ++j) {
            EXPECT_EQ(a[i].weights[j].values, b[i].weights[j].values) << a[i].layer_name;
        }
    }
}

TEST_F(CliTest, TheDefaultCheckpointGoesToTheCurrentDirectory) {
    const Result r = run("cd " + dir_.path() + " && " + kBin + " fit --device cpu --data " +
                         dir_.path() + " --epochs 1 --verbose 0");
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(r.output.find("Epoch"), std::string::npos) << r.output;  // --verbose 0: silent
    std::ifstream in(dir_.file("best_model.h5"));
    EXPECT_TRUE(in.good());
    // --save-weights-only changes the default name to Keras's weights file name.
    const Result w =
        run("cd " + dir_.path() + " && " + kBin + " fit --device cpu --data " + dir_.path() +
            " --epochs 1 --verbose 0 --save-weights-only "
            "--early-stopping none");
    ASSERT_EQ(w.status, 0) << w.output;
    EXPECT_TRUE(std::ifstream(dir_.file("best_model.weights.h5")).good());
}

TEST_F(CliTest, BadCallbackFlagsFailBeforeAnyWork) {
    const std::string best = dir_.file("best_model.h5");
    std::ofstream(best) << "keep me";
    const std::string base = kBin + " fit --device cpu --data " + dir_.path() + " --epochs 2 ";
    struct Case {
        std::string flags, needle;
    };
    const Case cases[] = {
        {"--checkpoint /nonexistent/dir/m.h5", "/nonexistent/dir"},
        {"--checkpoint " + dir_.file("m.keras"), ".keras"},
        {"--checkpoint " + dir_.file("m-{val_f1}.h5"), "'val_f1'"},
        {"--validation-split 0", "validation data"},  // the monitored val_loss never comes
        {"--save-freq weekly", "weekly"},
        {"--save-freq 10", "batch logs"},  // best-only on val_loss with batch-level saves
        {"--monitor val_f2 --mode auto", "monitor=val_f2"},
        {"--reduce-lr-on-plateau --reduce-lr-factor 1.5", "factor"},
        {"--reduce-lr-on-plateau --lr-schedule step", "--lr-schedule"},
        {"--csv-log /nonexistent/dir/log.csv", "/nonexistent/dir"},
        {"--csv-log " + dir_.file("l.csv") + " --csv-separator ab", "1-character"},
        {"--backup-dir /nonexistent/dir/backup", "/nonexistent/dir"},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.flags);
        const bool own_checkpoint = c.flags.find("--checkpoint") != std::string::npos;
        const Result r = run(base + c.flags + (own_checkpoint ? "" : " --checkpoint " + best));
        EXPECT_EQ(r.status, 1) << r.output;
        EXPECT_NE(r.output.find("kiln: error:"), std::string::npos) << r.output;
        EXPECT_NE(r.output.find(c.needle), std::string::npos) << r.output;
        EXPECT_EQ(r.output.find("Epoch 1"), std::string::npos) << r.output;
    }
    std::ifstream in(best);
    std::string kept((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(kept, "keep me");
}

TEST_F(CliTest, TheRestOfKerassCallbacksFromTheCommandLine) {
    const std::string csv = dir_.file("log.csv"), backup = dir_.file("backup");
    const Result r = run(fit() + " --data " + dir_.path() +
                         " --epochs 3 --verbose 1 "
                         "--early-stopping none --csv-log " +
                         csv +
                         " --terminate-on-nan "
                         "--lr-schedule step --lr-decay-every 1 --lr-decay-rate 0.5 "
                         "--backup-dir " +
                         backup);
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("Epoch 2: LearningRateScheduler setting learning rate to 0.0005."),
              std::string::npos)
        << r.output;
    std::ifstream in(csv);
    std::string header, row;
    std::getline(in, header);
    EXPECT_EQ(header, "epoch,accuracy,learning_rate,loss,val_accuracy,val_loss\r");
    int rows = 0;
    while (std::getline(in, row))
        ++rows;
    EXPECT_EQ(rows, 3);
    EXPECT_FALSE(std::ifstream(backup + "/latest.h5").good());  // removed when the run completed

    const Result p = run(fit() + " --data " + dir_.path() +
                         " --epochs 3 --verbose 1 "
                         "--early-stopping none --reduce-lr-on-plateau --reduce-lr-patience 0 "
                         "--reduce-lr-min-delta 10");
    ASSERT_EQ(p.status, 0) << p.output;
    EXPECT_NE(p.output.find("Epoch 2: ReduceLROnPlateau reducing learning rate to "),
              std::string::npos)
        << p.output;
}

// The cnn preset's recipe adds ReduceLROnPlateau(factor 0.2, patience 2) to the default
// callbacks; its own flags override it, and --reduce-lr-on-plateau=false leaves it out.
TEST_F(CliTest, TheCnnPresetLowersTheRateOnAPlateau) {
    // min_delta 10: no epoch counts as an improvement, so the patience of 2 runs out at epoch 3
    const std::string cnn = fit() + " --data " + dir_.path() +
                            " --model cnn --epochs 3 --verbose 1 --early-stopping none "
                            "--reduce-lr-min-delta 10";
    const Result r = run(cnn);
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(r.output.find("Epoch 2: ReduceLROnPlateau"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("Epoch 3: ReduceLROnPlateau reducing learning rate to 0.0002"),
              std::string::npos)
        << r.output;
    const Result factor = run(cnn + " --reduce-lr-factor 0.5 --reduce-lr-patience 1");
    ASSERT_EQ(factor.status, 0) << factor.output;
    EXPECT_NE(factor.output.find("Epoch 2: ReduceLROnPlateau reducing learning rate to 0.0005"),
              std::string::npos)
        << factor.output;
    const Result none = run(cnn + " --reduce-lr-on-plateau=false");
    ASSERT_EQ(none.status, 0) << none.output;
    EXPECT_EQ(none.output.find("ReduceLROnPlateau"), std::string::npos) << none.output;
}

TEST_F(CliTest, ExampleProgramRuns) {
    const Result r = run(std::string(KILN_BINARY_DIR) + "/example_fashion_mnist 1 " + dir_.path());
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("test_accuracy: "), std::string::npos) << r.output;
}

}  // namespace
}  // namespace kiln
