// Keras's ModelCheckpoint, with Lightning's top-k files, last file, epoch interval and time
// interval. Files are written through Sequential::request_checkpoint (atomically, without making
// training wait where the writer is asynchronous), and each stores every callback's state, so a
// resumed run never replaces a better best.
//
//     kiln::callbacks::ModelCheckpointArgs mc;
//     mc.monitor = "val_loss";
//     mc.save_best_only = true;
//     mc.verbose = 1;
//     args.callbacks.push_back(
//         std::make_shared<kiln::callbacks::ModelCheckpoint>("best_model.h5", mc));
//
// filepath is a Python str.format template over `epoch` (1-based), `batch` (1-based, for
// batch-level saves) and the logs' keys: "{epoch:02d}-{val_loss:.2f}.h5" gives "03-0.42.h5". A
// key the logs will not have, or a bad format spec, is an error before training starts (Keras
// raises KeyError at the first save). The extension is checked in the constructor: ".h5" for a
// full model, ".weights.h5" with save_weights_only (kiln does not write ".keras" archives).
//
// At each save point (every every_n_epochs-th epoch's end; every save_freq batches; or every
// train_time_interval seconds, at a batch's end), as Keras's _save_model:
//   - without save_best_only: "Epoch 3: saving model to ckpt/03.h5", then save;
//   - with it: "Epoch 5: val_loss improved from 0.34120 to 0.32530, saving model to
//     best_model.h5" and save, or "Epoch 7: val_loss did not improve from 0.32530". The first
//     save prints "from inf" ("-inf" when maximising), as Keras 2 did; Keras >= 3.11 prints
//     "from None". initial_value_threshold is the first best.
//   - a monitored key missing from the logs warns "Can save best model only with val_loss
//     available." once per fit and saves anyway (Keras >= 3.10).
//   - with save_top_k = k: the k best files are kept (the comparison is strict, against the
//     k-th best, without min_delta, as Lightning's); a displaced file is deleted only after the
//     new one is complete on disk. Messages "Epoch 5: val_loss reached 0.32530 (best 0.32530),
//     saving model to m-05.h5 as top 3" and "Epoch 6: val_loss was not in top 3".
//   - with save_last, "last.h5" ("last.weights.h5") in filepath's directory is written too.
// Batch-level saves see batch logs (non-blocking peeks, no "val_" keys): monitoring a key they
// do not have is an error before training; a save that falls due before the first peek has
// completed waits for the next batch whose logs have arrived, or for the epoch's end.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kiln/callbacks/monitor.h"
#include "kiln/callbacks/save_freq.h"
#include "kiln/checkpoint.h"

namespace kiln {
namespace callbacks {

struct ModelCheckpointArgs {
    std::string monitor = "val_loss";
    int verbose = 0;
    bool save_best_only = false;
    bool save_weights_only = false;
    std::string mode = "auto";
    SaveFreq save_freq;  // "epoch"
    std::optional<double> initial_value_threshold;
    // Lightning's: keep the k best files (needs save_best_only); -1 keeps every one.
    std::optional<int> save_top_k;
    // Lightning's: also write "last.h5" (or "last.weights.h5") beside filepath at each save point.
    bool save_last = false;
    // Lightning's: with save_freq "epoch", a save point every n epochs (the n-th, 2n-th, ...).
    int every_n_epochs = 1;
    // Lightning's: a save point every this many seconds of training, at a batch's end; not
    // with an integer save_freq.
    std::optional<double> train_time_interval;
    // kiln: a NaN or infinite value never counts as the best (monitor.h).
    bool check_finite = true;
};

class ModelCheckpoint : public MonitorCallback {
  public:
    // Throws kiln::Error for a filepath without the right extension or inconsistent args.
    explicit ModelCheckpoint(std::string filepath,
                             ModelCheckpointArgs args = ModelCheckpointArgs());

    void validate(const FitParams& params) const override;
    void on_train_begin(const Logs& logs) override;
    void on_epoch_begin(int epoch, const Logs& logs) override;
    void on_train_batch_end(int64_t batch, const Logs& logs) override;
    void on_epoch_end(int epoch, const Logs& logs) override;
    void after_train_batch_end(int64_t batch, const Logs& logs) override;
    void after_epoch_end(int epoch, const Logs& logs) override;
    void on_train_end(const Logs& logs) override;
    bool wants_batch_logs() const override { return batch_level(); }

    std::string state_key() const override { return "ModelCheckpoint:" + filepath_; }
    std::string state_json() const override;
    void restore_state(const std::string& json) override;

    const std::string& filepath() const { return filepath_; }
    const ModelCheckpointArgs& args() const { return args_; }
    std::optional<double> best() const { return best_; }
    // The files written so far, in order (a path may repeat).
    const std::vector<std::string>& saved_paths() const { return saved_; }
    // With save_top_k: the kept files and their scores, best first.
    std::vector<std::pair<std::string, double>> best_k_models() const;

    // filepath formatted as Keras formats it: epoch is 0-based here and printed 1-based;
    // batch (0-based, printed 1-based) is given for batch-level saves. Throws kiln::Error
    // naming a missing key.
    std::string format_filepath(int epoch, std::optional<int64_t> batch, const Logs& logs) const;

  private:
    bool batch_level() const {
        return !args_.save_freq.per_epoch() || args_.train_time_interval.has_value();
    }
    bool needs_logs_for_batch() const;
    // A save point: decides, prints and queues the requests (made in after_*).
    void save_point(int epoch, std::optional<int64_t> batch, const Logs& logs);
    bool decide_top_k(int epoch, const std::string& path, const Logs& logs);
    std::string last_path(int epoch, std::optional<int64_t> batch, const Logs& logs) const;
    // Makes the queued requests, then deletes the displaced files once the new ones are written.
    void flush();

    struct Pending {
        std::string path;
        int epochs_done = 0;
    };

    std::string filepath_;
    ModelCheckpointArgs args_;
    std::vector<std::string> placeholders_;  // the names filepath formats

    std::optional<double> best_;
    int current_epoch_ = 0;
    int64_t batches_since_save_ = 0;
    int64_t last_batch_seen_ = 0;
    bool batch_save_due_ = false;
    int64_t due_batch_ = 0;
    std::chrono::steady_clock::time_point last_time_save_;
    std::vector<std::pair<std::string, double>> top_k_;  // (path, score)
    std::vector<std::string> displaced_;
    std::vector<Pending> pending_;
    std::vector<std::string> saved_;
};

}  // namespace callbacks
}  // namespace kiln
