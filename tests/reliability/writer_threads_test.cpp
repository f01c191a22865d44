// The checkpoint writer's thread against the training thread, with a slowed disk: a checkpoint
// every batch, each to its own file, with every write delayed so that training runs into the
// writer's two slots and waits (back-pressure). Every file must hold the weights the training
// thread had when it asked for that checkpoint: the checkpoint log (KILN_CHECKPOINT_LOG) records
// the CRC of the weights at the request and at the write, and each file is loaded again and
// compared with both. tests/reliability/tsan.sh builds and runs this test under
// ThreadSanitizer, which must report nothing.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "kiln/kiln.h"
#include "tests/test_util.h"

namespace kiln {
namespace {

struct LogEntry {
    std::string event, path;
    int64_t step = 0;
    uint32_t crc = 0;
};

std::vector<LogEntry> read_log(const std::string& path) {
    std::vector<LogEntry> out;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream words(line);
        LogEntry e;
        std::string epoch, batch, step, crc;
        words >> e.event >> e.path >> epoch >> batch >> step >> crc;
        if (step.rfind("step=", 0) != 0 || crc.rfind("weights_crc32=", 0) != 0)
            continue;
        e.step = std::stoll(step.substr(5));
        e.crc = static_cast<uint32_t>(std::stoul(crc.substr(14), nullptr, 16));
        out.push_back(e);
    }
    return out;
}

TEST(WriterThreads, EveryCheckpointHoldsTheWeightsOfItsRequest) {
    const bool full = std::getenv("KILN_RELIABILITY_LONG") != nullptr &&
                      std::string(std::getenv("KILN_RELIABILITY_LONG")) == "1";
    const int epochs = full ? 25 : 3;
    testing::TempDir dir;
    const std::string log = dir.file("checkpoints.log");
    // Read when the model's writer is made, at its first checkpoint.
    setenv("KILN_CHECKPOINT_LOG", log.c_str(), 1);
    setenv("KILN_CHECKPOINT_FAULT", "delay=3", 1);

    Sequential model(std::vector<LayerPtr>{layers::Dense(32, "relu"), layers::Dropout(0.2f),
                                           layers::Dense(4, "softmax")},
                     layers::Input({12}));
    CompileOptions options;
    options.device = DeviceChoice::kCpu;
    options.log = nullptr;
    model.compile(optimizers::Adam(0.01f), losses::SparseCategoricalCrossentropy(), {"accuracy"},
                  options);
    const data::Array x = testing::make_array({400, 12}, testing::random_values(400 * 12, 3));
    const data::Array y = testing::random_labels(400, 4, 5);

    callbacks::ModelCheckpointArgs every_batch;
    every_batch.save_freq = callbacks::SaveFreq(1);
    FitArgs args;
    args.epochs = epochs;
    args.batch_size = 16;
    args.validation_split = 0.2;
    args.verbose = 0;
    args.callbacks = {std::make_shared<callbacks::ModelCheckpoint>(
        dir.file("ck-{epoch:02d}-{batch:03d}.h5"), every_batch)};
    model.fit(x, y, args);
    ASSERT_TRUE(model.wait_for_checkpoints().is_ok());
    unsetenv("KILN_CHECKPOINT_LOG");
    unsetenv("KILN_CHECKPOINT_FAULT");

    const CheckpointStats stats = model.checkpoint_stats();
    std::map<std::string, LogEntry> submitted;
    int written = 0, matches = 0;
    for (const LogEntry& e : read_log(log)) {
        if (e.event == "submitted") {
            submitted[e.path] = e;
            continue;
        }
        ++written;
        ASSERT_TRUE(submitted.count(e.path)) << e.path << " written but never requested";
        const LogEntry& asked = submitted[e.path];
        CheckpointContents contents;
        ASSERT_TRUE(load_checkpoint(e.path, &contents).is_ok()) << e.path;
        const uint32_t in_file = weights_crc32(contents.model.weights);
        EXPECT_EQ(asked.step, e.step) << e.path;
        EXPECT_EQ(asked.crc, e.crc) << e.path << ": the writer wrote other weights than asked";
        EXPECT_EQ(in_file, e.crc) << e.path << ": the file holds other weights than logged";
        matches += asked.crc == e.crc && in_file == e.crc && asked.step == e.step;
    }
    EXPECT_EQ(written, stats.written);
    EXPECT_EQ(stats.written + stats.replaced, stats.requested);
    EXPECT_EQ(stats.failed, 0);
    EXPECT_GT(stats.waited, 0) << "the slowed writer never made training wait";
    std::printf(
        "reliability: writer threads: %d checkpoints, one per batch to its own file, with a "
        "3 ms delay per write (training waited %lld times for a free slot): %d hold the weights "
        "of their request (CRC at the request = CRC written = CRC of the file), %d differ\n",
        written, static_cast<long long>(stats.waited), matches, written - matches);
}

}  // namespace
}  // namespace kiln
