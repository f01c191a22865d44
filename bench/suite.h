// `kiln bench`: the throughput suite of shared/reference/performance.md, section 9.
//
//     kiln bench --device cpu --quick --json bench.json
//
// Cases (each the median over --epochs timed epochs or --repetitions repetitions, after a
// warm-up that is not timed):
//   M1  the default recipe (MLP 784-256-128-10, Adam, validation_split 0.1), batch 32: epoch
//   M2  the same at batch 256 and 1024
//   M3  MLP 784-2048-2048-2048-10, batch 4096 (GPU only): epoch and achieved FLOP/s
//   C1  the `cnn` preset (kiln::presets::mnist_convnet), batch 128: epoch
//   V1  the validation pass of M1 and C1, and its share of the epoch
//   S1  one best-weights snapshot (SnapshotService::take) of the M1 model
//   K1  M1 with ModelCheckpoint writing the full model at every epoch, against M1 without
//   O1  one Adam step over a whole flat parameter buffer (M1's, and an 11.2M one)
//   L1  kernel launch cost: a chain of tiny kernels launched one by one, and as a graph
//       (GPU only)
// With each: samples per second, FLOP/s and bytes/s with their share of the peaks measured in
// the same run (a large float32 GEMM through the backend; a large device copy, and on the CPU
// a copy over every thread of kiln's pool too), and the blocking reads per epoch. A case that
// cannot run here is listed with the reason and no figure. bench/suite.py runs this and the
// PyTorch peers case by case.
#pragma once

#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace kiln {
namespace bench {

struct SuiteOptions {
    std::string device = "auto";  // auto, cuda, cpu
    std::string data = "fashion-mnist";
    // Fewer samples (--max-samples 6000 unless given) and a smaller GEMM for the peak: the
    // whole CPU suite with its peers in a few minutes.
    bool quick = false;
    int64_t max_samples = 0;  // the first N training samples; 0: all (quick: 6000)
    int epochs = 5;           // timed epochs per fit case
    int warmup_epochs = 1;
    int repetitions = 5;        // timed repetitions of the other cases
    std::string cases;          // comma-separated case names (M1,S1); empty: all
    int threads = 0;            // CPU threads (KILN_NUM_THREADS); 0: one per core
    int64_t peak_size = 0;      // n of the n×n×n peak GEMM; 0: 4096 (quick 2048; 8192 on a GPU)
    int64_t peak_copy_mib = 0;  // the bandwidth peak's copy; 0: 2 × the last-level cache
    std::string json;           // also write everything here
    std::string work_dir;       // K1's checkpoint files; empty: a fresh folder under $TMPDIR
};

// Adds the `bench` subcommand and its flags to the CLI.
CLI::App* add_bench_command(CLI::App& app, SuiteOptions* options);
// Runs the suite, prints the table (and writes the JSON); 0, or 1 when a case failed.
int run_suite(const SuiteOptions& options);

}  // namespace bench
}  // namespace kiln
