// The learning-rate callbacks: Keras's ReduceLROnPlateau and LearningRateScheduler, and the
// schedules the command line offers. Both change the rate through
// Sequential::set_learning_rate, which the next optimizer step reads, and both add
// "learning_rate" (the rate the epoch trained with) to the epoch logs, as Keras does.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "kiln/callbacks/monitor.h"

namespace kiln {
namespace callbacks {

struct ReduceLROnPlateauArgs {
    std::string monitor = "val_loss";
    double factor = 0.1;  // new_lr = lr * factor; must be < 1
    int patience = 10;
    int verbose = 0;
    std::string mode = "auto";
    double min_delta = 1e-4;
    int cooldown = 0;
    double min_lr = 0.0;
};

// After `patience` epochs without improvement (monitor.h's rules), multiplies the rate by
// `factor`, not below min_lr, then waits `cooldown` epochs before counting again; at verbose 1
// prints "Epoch 8: ReduceLROnPlateau reducing learning rate to 0.00010000000474974513." (the
// rate as Python prints a float). A missing monitored value warns, listing the keys there.
class ReduceLROnPlateau : public MonitorCallback {
  public:
    // Throws kiln::Error for factor >= 1, as Keras raises.
    explicit ReduceLROnPlateau(ReduceLROnPlateauArgs args = ReduceLROnPlateauArgs());

    void on_train_begin(const Logs& logs) override;
    std::vector<std::string> added_log_keys() const override { return {"learning_rate"}; }
    void add_to_logs(int epoch, Logs* logs) override;
    void on_epoch_end(int epoch, const Logs& logs) override;

    std::string state_key() const override { return "ReduceLROnPlateau:" + monitor(); }
    std::string state_json() const override;
    void restore_state(const std::string& json) override;

    const ReduceLROnPlateauArgs& args() const { return args_; }
    int wait() const { return wait_; }
    int cooldown_counter() const { return cooldown_counter_; }
    std::optional<double> best() const { return best_; }

  private:
    bool in_cooldown() const { return cooldown_counter_ > 0; }

    ReduceLROnPlateauArgs args_;
    int wait_ = 0;
    int cooldown_counter_ = 0;
    std::optional<double> best_;
    bool resumed_ = false;
};

// schedule(epoch, lr) -> the rate for `epoch` (0-based), given the current rate.
using Schedule = std::function<double(int epoch, double lr)>;

// At each epoch's start sets the rate to schedule(epoch, current rate); at verbose 1 prints
// "Epoch 3: LearningRateScheduler setting learning rate to 0.0005.". A rate that is not a
// finite number >= 0 is an error.
class LearningRateScheduler : public Callback {
  public:
    explicit LearningRateScheduler(Schedule schedule, int verbose = 0);

    void on_epoch_begin(int epoch, const Logs& logs) override;
    std::vector<std::string> added_log_keys() const override { return {"learning_rate"}; }
    void add_to_logs(int epoch, Logs* logs) override;

  private:
    Schedule schedule_;
    int verbose_level_ = 0;
};

// The command line's schedules, functions of the epoch and the initial rate lr0 (the current
// rate passed in is ignored):
namespace schedules {
// lr0 * rate^floor(epoch / every)  (step decay).
Schedule step(double lr0, double rate, int every);
// lr0 * rate^epoch  (exponential decay, per epoch).
Schedule exponential(double lr0, double rate);
// Keras's CosineDecay per epoch: lr0 * ((1 - alpha) * (1 + cos(pi * min(epoch, decay_epochs) /
// decay_epochs)) / 2 + alpha).
Schedule cosine(double lr0, int decay_epochs, double alpha = 0.0);
}  // namespace schedules

}  // namespace callbacks
}  // namespace kiln
