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
    if (!pipe) return r;
    std::array<char, 4096> buf;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
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

    void write_split(const std::string& name, int64_t n, uint64_t seed) {
        std::vector<float> x = testing::random_values(size_t(n * 784), seed, 0.0f, 0.5f);
        std::vector<float> y(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) {
            const int label = int(math::hash3(seed, 3, uint64_t(i)) % 10);
            y[size_t(i)] = float(label);
            for (int k = 0; k < 78; ++k) x[size_t(i * 784 + label * 78 + k)] += 0.5f;
        }
        ASSERT_TRUE(data::save_npy(dir_.file("x_" + name + ".npy"), {n, 784}, x.data()).is_ok());
        ASSERT_TRUE(data::save_npy(dir_.file("y_" + name + ".npy"), {n}, y.data()).is_ok());
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
    for (const char* flag : {"--data", "--model", "--epochs", "--batch-size", "--validation-split",
                             "--optimizer", "--learning-rate", "--loss", "--seed", "--device",
                             "--verbose", "--no-shuffle", "--metrics-json"}) {
        EXPECT_NE(fit.output.find(flag), std::string::npos) << flag;
    }
}

TEST_F(CliTest, FitPrintsKerasOutputAndWritesMetricsJson) {
    const std::string json = dir_.file("metrics.json");
    const Result r = run(kBin + " fit --device cpu --data " +
                      dir_.path() + " --epochs 3 --verbose 2 --metrics-json " + json);
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
    const Result r = run(kBin + " fit --device cpu --data " + dir_.path() + " --epochs 1 --verbose 0");
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(r.output.find("Epoch"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("test_loss: "), std::string::npos);
}

TEST_F(CliTest, SavedModelEvaluatesAndPredicts) {
    const std::string model = dir_.file("model.h5"), preds = dir_.file("preds.npy");
    ASSERT_EQ(run(kBin + " fit --device cpu --data " + dir_.path() + " --epochs 2 --verbose 0 --save " + model)
                  .status,
              0);
    const Result e = run(kBin + " evaluate " + model +
                      " --device cpu --data " + dir_.path());
    ASSERT_EQ(e.status, 0) << e.output;
    EXPECT_NE(e.output.find("loss: "), std::string::npos) << e.output;
    EXPECT_NE(e.output.find("accuracy: "), std::string::npos) << e.output;
    const Result p = run(kBin + " predict " + model +
                      " --device cpu --data " + dir_.file("x_test.npy") + " --output " + preds);
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
    const Result r = run(kBin + " fit --device cpu --data " + dir_.path() + " --model " + path +
                      " --epochs 1 --verbose 0 --optimizer sgd --learning-rate 0.1");
    EXPECT_EQ(r.status, 0) << r.output;
}

TEST_F(CliTest, BadInputGetsAClearErrorAndWritesNothing) {
    const std::string json = dir_.file("metrics.json");
    std::ofstream(json) << "keep me";
    const Result missing = run(kBin + " fit --device cpu --data /nonexistent/dir --epochs 1 --metrics-json " + json);
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
    const Result bad_label = run(kBin + " fit --device cpu --data " + dir_.path() + " --epochs 1");
    EXPECT_EQ(bad_label.status, 1);
    EXPECT_NE(bad_label.output.find("row 17"), std::string::npos) << bad_label.output;
    EXPECT_EQ(bad_label.output.find("Epoch 1"), std::string::npos) << bad_label.output;

    const Result bad_flag = run(kBin + " fit --device cpu --optimizer adagrad");
    EXPECT_NE(bad_flag.status, 0);
    EXPECT_NE(bad_flag.output.find("adagrad"), std::string::npos) << bad_flag.output;
}

TEST_F(CliTest, ExampleProgramRuns) {
    const Result r = run(std::string(KILN_BINARY_DIR) + "/example_fashion_mnist 1 " + dir_.path());
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("test_accuracy: "), std::string::npos) << r.output;
}

}  // namespace
}  // namespace kiln
