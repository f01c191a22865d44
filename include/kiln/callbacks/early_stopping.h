// Keras's EarlyStopping, with Lightning's non-finite check, stopping and divergence thresholds
// and stopping reason; the best weights live in a device snapshot (no host copy).
//
//     kiln::callbacks::EarlyStoppingArgs es;
//     es.monitor = "val_loss";
//     es.patience = 3;
//     es.restore_best_weights = true;
//     es.verbose = 1;
//     args.callbacks.push_back(std::make_shared<kiln::callbacks::EarlyStopping>(es));
//
// At each epoch's end, in Keras's order (keras/src/callbacks/early_stopping.py):
//   1. the monitored value missing from the logs: warn, listing the keys there, and skip the epoch;
//   2. epoch < start_from_epoch: skip the epoch (warm-up: no best, no counting);
//   3. (kiln) check_finite and the value NaN or infinite: stop now (kNonFiniteMetric);
//   4. restore_best_weights and no snapshot yet: snapshot the weights, best epoch = this one;
//   5. wait += 1;
//   6. an improvement (monitor.h): best = value, best epoch = this one, snapshot when restoring;
//      wait = 0 only when there is no baseline or the value also improves on it;
//   7. (Lightning) the value beyond stopping_threshold (target reached) or divergence_threshold
//      (hopeless): stop now;
//   8. after an improvement, nothing more; otherwise wait >= patience and epoch > 0: stop
//      (kPatienceExhausted).
// At the train end (whether or not it stopped early, and when another callback stopped the run)
// the best weights are restored when restore_best_weights is set. Messages, at verbose 1, on the
// message stream: "Epoch 12: early stopping", the stopping reason, then "Restoring model weights
// from the end of the best epoch: 9.".
#pragma once

#include <optional>
#include <string>

#include "kiln/callbacks/monitor.h"

namespace kiln {
namespace callbacks {

struct EarlyStoppingArgs {
    std::string monitor = "val_loss";
    double min_delta = 0;
    int patience = 0;
    int verbose = 0;
    std::string mode = "auto";
    std::optional<double> baseline;
    bool restore_best_weights = false;
    int start_from_epoch = 0;
    // Lightning's: stop at once on a NaN or infinite value, which never becomes the best.
    bool check_finite = true;
    // Lightning's: stop at once when the value is better than this (the target is reached)...
    std::optional<double> stopping_threshold;
    // ... or worse than this (the run has diverged).
    std::optional<double> divergence_threshold;
};

// Lightning's EarlyStoppingReason.
enum class StoppingReason {
    kNotStopped,
    kStoppingThreshold,
    kDivergenceThreshold,
    kPatienceExhausted,
    kNonFiniteMetric,
};
const char* stopping_reason_name(StoppingReason reason);  // "PATIENCE_EXHAUSTED", ...

class EarlyStopping : public MonitorCallback {
  public:
    explicit EarlyStopping(EarlyStoppingArgs args = EarlyStoppingArgs());

    void on_train_begin(const Logs& logs) override;
    void on_epoch_end(int epoch, const Logs& logs) override;
    void on_train_end(const Logs& logs) override;

    std::string state_key() const override { return "EarlyStopping:" + monitor(); }
    std::string state_json() const override;
    void restore_state(const std::string& json) override;

    const EarlyStoppingArgs& args() const { return args_; }
    // Keras's stopped_epoch (0-based; meaningful when stopped()), best and best_epoch.
    bool stopped() const { return reason_ != StoppingReason::kNotStopped; }
    int stopped_epoch() const { return stopped_epoch_; }
    std::optional<double> best() const { return best_; }
    int best_epoch() const { return best_epoch_; }
    int wait() const { return wait_; }
    StoppingReason stopping_reason() const { return reason_; }
    // Why it stopped, in Lightning's words; empty when it did not.
    const std::string& stopping_reason_message() const { return reason_message_; }
    // Whether on_train_end put the best weights back.
    bool restored() const { return restored_; }

    // The snapshot name EarlyStopping callbacks with the same rules share.
    std::string snapshot_name() const;

  private:
    void stop(int epoch, StoppingReason reason, std::string message);
    std::string best_text() const;

    EarlyStoppingArgs args_;
    int wait_ = 0;
    int stopped_epoch_ = 0;
    std::optional<double> best_;
    int best_epoch_ = 0;
    StoppingReason reason_ = StoppingReason::kNotStopped;
    std::string reason_message_;
    int slot_ = -1;                 // the snapshot slot while training with restore_best_weights
    bool slot_holds_best_ = false;  // the slot holds the weights of best_epoch_
    bool resumed_ = false;          // restore_state ran: on_train_begin keeps the state
    bool resumed_slot_holds_best_ = false;  // the saved state's slot_holds_best_
    bool restored_ = false;
};

}  // namespace callbacks
}  // namespace kiln
