// Timing `fit` epoch by epoch: what bench_fit and `kiln bench` share.
//
// An epoch is timed from on_epoch_begin to after_epoch_end of the timer, which goes last in the
// callback list: all training steps, the validation pass, the one read that brings the epoch's
// figures to the host, and every other callback's work at the epoch's end (EarlyStopping's
// snapshot, ModelCheckpoint's request for a file), so it is the time a user waits per epoch.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "kiln/kiln.h"

namespace kiln {
namespace bench {

double median(std::vector<double> values);

// Records each epoch's wall time, its validation pass and the backend's blocking reads.
class EpochTimer : public Callback {
  public:
    // With `sync_at_validation`, the backend is synchronised when validation starts, so that
    // the split between training and validation is the device's and not where the host stood
    // queueing work. That costs one synchronisation (not a read) per epoch on CUDA; on the CPU,
    // whose ops finish before they return, it costs nothing and the split is exact without it.
    explicit EpochTimer(bool sync_at_validation = false)
        : sync_at_validation_(sync_at_validation) {}

    void on_epoch_begin(int epoch, const Logs& logs) override;
    void on_test_begin(const Logs& logs) override;
    void on_test_end(const Logs& logs) override;
    void after_epoch_end(int epoch, const Logs& logs) override;

    std::vector<double> seconds;             // each epoch's
    std::vector<double> validation_seconds;  // each epoch's validation pass, its read included
    std::vector<uint64_t> reads;             // blocking device reads in each epoch
    Logs last;                               // the last epoch's logs

  private:
    using Clock = std::chrono::steady_clock;
    bool sync_at_validation_;
    uint64_t reads_at_begin_ = 0;
    Clock::time_point start_, validation_start_;
};

// The models the benchmarks train: "mlp" (the default recipe, 784-256-128-10), "cnn"
// (kiln::presets::mnist_convnet) and "mlp-wide" (784-2048-2048-2048-10, the GEMM-bound check).
// Throws kiln::Error for another name.
std::unique_ptr<Sequential> make_model(const std::string& name);
// make_model, compiled as the default recipe is: Adam with Keras's defaults, sparse categorical
// cross-entropy, accuracy. `log` gets the device line ("kiln: using cpu ..."); null for silence.
std::unique_ptr<Sequential> compile_model(const std::string& name, DeviceChoice device,
                                          std::FILE* log = stderr,
                                          Precision precision = Precision::kFp32,
                                          StepGraphs graphs = StepGraphs::kAuto);

// FLOPs of one sample through the model, 2 per multiply-add, counting the Dense and Conv2D
// layers (the rest is element-wise and far below them): `forward`, and `train` = forward +
// weight gradients + input gradients, the first layer's input gradient skipped (nothing needs
// it), as shared/reference/performance.md counts them.
struct SampleFlops {
    double forward = 0;
    double train = 0;
};
SampleFlops sample_flops(const Sequential& model);

struct FitTimingArgs {
    int64_t batch_size = 32;
    int warmup_epochs = 1;  // run first, not timed
    int epochs = 3;         // timed
    double validation_split = 0.1;
    // EarlyStopping with restore_best_weights and a patience that never runs out: every epoch
    // pays the monitor and, when val_loss improves, the device-side snapshot.
    bool early_stopping = false;
    // Non-empty: ModelCheckpoint writes the full model (weights and optimizer state) to this
    // `.h5` path at every epoch's end.
    std::string checkpoint_path;
    bool sync_at_validation = false;
};

struct FitTiming {
    std::vector<double> epoch_seconds;       // the timed epochs'
    std::vector<double> validation_seconds;  // the same epochs' validation passes
    uint64_t max_reads_per_epoch = 0;        // over every epoch, warm-up included
    int64_t train_samples = 0;
    int64_t validation_samples = 0;
    Logs last;  // the last epoch's logs
    // How fit ran its steps: from graphs or op by op, and the Dense GEMMs with their epilogues
    // in one call or apart (the backend's counts over the whole fit).
    StepGraphStats step_graphs;
    uint64_t fused_gemms = 0;
    uint64_t unfused_gemms = 0;

    double median_epoch() const { return median(epoch_seconds); }
};

// Trains the compiled model on x, y for warmup_epochs + epochs and times every epoch.
FitTiming time_fit(Sequential& model, const data::Array& x, const data::Array& y,
                   const FitTimingArgs& args);

}  // namespace bench
}  // namespace kiln
