// The "did it improve?" rules that ModelCheckpoint, EarlyStopping and ReduceLROnPlateau share
// (Keras 3's MonitorCallback, keras/src/callbacks/monitor_callback.py).
//
// - mode "min" minimises the monitored value, "max" maximises it, "auto" strips one "val_"
//   prefix and minimises a loss, maximises the accuracy family, AUC, precision, recall and the
//   other metrics Keras marks as going up, and minimises the error metrics Keras marks as going
//   down. A monitor auto mode cannot place is an error before training starts (Keras raises it
//   at the first epoch's end, after an epoch of work). An unknown mode string warns and falls
//   back to auto, as Keras does.
// - Improvement is strict with a margin d = |min_delta|: min mode improves when
//   current + d < best, max mode when current - d > best (Keras's monitor_op(current - delta,
//   best) with delta's sign set by the mode). An equal value never improves.
// - The first observed value always improves (there is no best yet).
// - kiln's addition: with check_finite (the default) a NaN or infinite value never improves, so
//   it can never become the best (Keras stores a NaN first value as the best, after which
//   nothing improves on it).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "kiln/callbacks.h"

namespace kiln {
namespace callbacks {

enum class Direction { kMinimize, kMaximize };

// The direction Keras gives a metric in auto mode (after one "val_" prefix is stripped), or
// nullopt for a name it cannot place.
std::optional<Direction> metric_direction(const std::string& monitor);

class MonitorCallback : public Callback {
  public:
    const std::string& monitor() const { return monitor_; }
    // "auto", "min" or "max" as given (after the unknown-mode fallback).
    const std::string& mode() const { return mode_; }
    // Resolves the direction for `monitor` under `mode`; throws kiln::Error when auto mode
    // cannot tell. Callers: validate() and the constructor of a callback with an explicit mode.
    Direction direction() const;
    double min_delta() const { return min_delta_; }
    bool check_finite() const { return check_finite_; }

    // Whether `current` improves on `reference` under this callback's rules (above).
    bool is_improvement(double current, std::optional<double> reference) const;
    // Whether `a` is better than `b` without the margin (for ranking top-k files).
    bool better(double a, double b) const;

    void validate(const FitParams& params) const override;

  protected:
    MonitorCallback(std::string class_name, std::string monitor, std::string mode, double min_delta,
                    bool check_finite);

    const std::string& class_name() const { return class_name_; }
    // Warns once per fit that the monitor is missing from the logs, listing the keys there.
    void warn_missing_once(const std::string& text);
    void reset_missing_warning() { warned_missing_ = false; }

    std::string class_name_;
    std::string monitor_;
    std::string mode_;
    double min_delta_ = 0;  // |min_delta|
    bool check_finite_ = true;
    bool warned_missing_ = false;
};

}  // namespace callbacks
}  // namespace kiln
