// `kiln bench` run as a user runs it, at its smallest: every case has figures or a reason.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "kiln/kiln.h"
#include "tests/test_util.h"

namespace kiln {
namespace {

const std::string kBin = std::string(KILN_BINARY_DIR) + "/kiln";

// Exit status and output (stdout and stderr together).
std::pair<int, std::string> run(const std::string& command) {
    std::string output;
    FILE* pipe = popen((command + " 2>&1").c_str(), "r");
    if (!pipe)
        return {-1, output};
    std::array<char, 4096> buf;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0)
        output.append(buf.data(), n);
    const int raw = pclose(pipe);
    return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, output};
}

TEST(BenchSuite, QuickRunHasEveryCaseMeasuredOrSkippedWithAReason) {
    // 300 samples of 784 features and 10 classes, as NPY files.
    testing::TempDir dir;
    const int64_t n = 300;
    const std::vector<float> x = testing::random_values(size_t(n * 784), 1, 0.0f, 1.0f);
    const data::Array y = testing::random_labels(n, 10, 2);
    ASSERT_TRUE(data::save_npy(dir.file("x_train.npy"), {n, 784}, x.data()).is_ok());
    ASSERT_TRUE(data::save_npy(dir.file("y_train.npy"), {n}, y.values.data()).is_ok());

    const std::string json_path = dir.file("bench.json");
    const auto [status, output] =
        run(kBin + " bench --device cpu --quick --data " + dir.path() +
            " --max-samples 300 --peak-size 256 --peak-copy-mib 16 --json " + json_path +
            " --work-dir " + dir.path());
    ASSERT_EQ(status, 0) << output;
    EXPECT_NE(output.find("commit:"), std::string::npos) << output;
    EXPECT_NE(output.find("M1"), std::string::npos) << output;

    std::ifstream in(json_path);
    ASSERT_TRUE(in) << "no " << json_path << "\n" << output;
    const nlohmann::json j = nlohmann::json::parse(in);
    EXPECT_FALSE(j.at("commit").get<std::string>().empty());
    EXPECT_FALSE(j.at("machine").at("cpu").get<std::string>().empty());
    EXPECT_GT(j.at("peak").at("gemm_flop_per_s").get<double>(), 0.0);
    EXPECT_GT(j.at("peak").at("bandwidth_bytes_per_s").get<double>(), 0.0);
    EXPECT_EQ(j.at("settings").at("samples").get<int64_t>(), n);

    std::set<std::string> seen;
    for (const nlohmann::json& row : j.at("cases")) {
        const std::string id = row.at("id").get<std::string>();
        const std::string name = row.at("case").get<std::string>();
        seen.insert(name);
        if (row.contains("skipped")) {
            EXPECT_FALSE(row.at("skipped").get<std::string>().empty()) << id;
            // Only the GPU cases may be missing on the CPU, and they say so.
            EXPECT_TRUE(name == "M3" || name == "L1") << id << ": " << row.at("skipped");
            EXPECT_NE(row.at("skipped").get<std::string>().find("needs a GPU"), std::string::npos)
                << id;
            continue;
        }
        EXPECT_GT(row.at("median_s").get<double>(), 0.0) << id;
        EXPECT_GE(row.at("repetitions").get<int>(), 5) << id;
        for (double s : row.at("seconds"))
            EXPECT_GT(s, 0.0) << id;
        if (row.contains("host_reads_per_epoch"))
            EXPECT_EQ(row.at("host_reads_per_epoch").get<int>(), 1) << id;
    }
    for (const char* name : {"M1", "M2", "M3", "C1", "V1", "S1", "K1", "O1", "L1"})
        EXPECT_TRUE(seen.count(name)) << "no row for " << name;

    // The training cases carry FLOP/s and samples/s, the copies bytes/s.
    for (const nlohmann::json& row : j.at("cases")) {
        const std::string name = row.at("case").get<std::string>();
        if (row.contains("skipped"))
            continue;
        if (name == "M1" || name == "M2" || name == "C1" || name == "V1") {
            EXPECT_GT(row.at("flop_per_s").get<double>(), 0.0) << row.at("id");
            EXPECT_GT(row.at("samples_per_s").get<double>(), 0.0) << row.at("id");
        }
        if (name == "S1" || name == "O1")
            EXPECT_GT(row.at("bytes_per_s").get<double>(), 0.0) << row.at("id");
        if (name == "K1") {
            // A request per epoch (warm-up + 5 timed); one still waiting when the next came is
            // replaced by it, never lost.
            const nlohmann::json& d = row.at("details");
            EXPECT_EQ(d.at("checkpoints_requested").get<int>(), 6);
            EXPECT_EQ(
                d.at("checkpoints_written").get<int>() + d.at("checkpoints_replaced").get<int>(),
                6);
            EXPECT_EQ(d.at("checkpoints_failed").get<int>(), 0);
        }
    }
}

}  // namespace
}  // namespace kiln
