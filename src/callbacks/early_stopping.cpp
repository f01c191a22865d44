#include "kiln/callbacks/early_stopping.h"

#include <cmath>

#include "callbacks/util.h"
#include "kiln/model.h"
#include "kiln/snapshot.h"
#include "kiln/status.h"

namespace kiln {
namespace callbacks {

const char* stopping_reason_name(StoppingReason reason) {
    switch (reason) {
        case StoppingReason::kNotStopped:
            return "NOT_STOPPED";
        case StoppingReason::kStoppingThreshold:
            return "STOPPING_THRESHOLD";
        case StoppingReason::kDivergenceThreshold:
            return "DIVERGENCE_THRESHOLD";
        case StoppingReason::kPatienceExhausted:
            return "PATIENCE_EXHAUSTED";
        case StoppingReason::kNonFiniteMetric:
            return "NON_FINITE_METRIC";
    }
    return "NOT_STOPPED";
}

namespace {

StoppingReason reason_from_name(const std::string& name) {
    for (StoppingReason r :
         {StoppingReason::kStoppingThreshold, StoppingReason::kDivergenceThreshold,
          StoppingReason::kPatienceExhausted, StoppingReason::kNonFiniteMetric}) {
        if (name == stopping_reason_name(r))
            return r;
    }
    return StoppingReason::kNotStopped;
}

}  // namespace

EarlyStopping::EarlyStopping(EarlyStoppingArgs args)
    : MonitorCallback("EarlyStopping", args.monitor, args.mode, args.min_delta, args.check_finite),
      args_(std::move(args)) {
    args_.mode = mode();
    args_.min_delta = min_delta();
    if (args_.patience < 0) {
        throw Error("EarlyStopping: patience must be >= 0, got " + std::to_string(args_.patience));
    }
    if (args_.start_from_epoch < 0) {
        throw Error("EarlyStopping: start_from_epoch must be >= 0, got " +
                    std::to_string(args_.start_from_epoch));
    }
}

std::string EarlyStopping::snapshot_name() const {
    // Everything that decides which epoch is the best; the baseline only gates the wait count.
    return fmt::format("best:{}:{}:{}:{}:{}", monitor(),
                       direction() == Direction::kMinimize ? "min" : "max",
                       detail::python_repr(min_delta()), args_.start_from_epoch,
                       args_.check_finite ? "finite" : "any");
}

void EarlyStopping::on_train_begin(const Logs&) {
    (void)direction();  // an unknown direction fails here at the latest, before any step
    const bool resumed = resumed_;
    if (!resumed_) {
        // Keras resets these so that an instance can be reused across fit() calls.
        wait_ = 0;
        stopped_epoch_ = 0;
        best_.reset();
        best_epoch_ = 0;
    }
    resumed_ = false;
    reason_ = StoppingReason::kNotStopped;
    reason_message_.clear();
    restored_ = false;
    slot_holds_best_ = false;
    reset_missing_warning();
    if (args_.restore_best_weights) {
        if (!model_)
            throw Error("EarlyStopping: restore_best_weights needs the model (set_model)");
        if (slot_ >= 0)
            model_->snapshots().release(slot_);
        slot_ = model_->snapshots().acquire(snapshot_name());
        // A resumed run's checkpoint brought the best weights back into the slot.
        slot_holds_best_ = resumed && resumed_slot_holds_best_ && model_->snapshots().taken(slot_);
    }
}

void EarlyStopping::on_epoch_end(int epoch, const Logs& logs) {
    // 1. The monitored value, or a warning listing what the logs have.
    const std::optional<double> value = logs.get(monitor());
    if (!value) {
        std::vector<std::string> keys;
        for (const auto& item : logs.items())
            keys.push_back(item.first);
        warn_missing_once(
            "Early stopping conditioned on metric `" + monitor() +
            "` which is not available. Available metrics are: " + detail::join(keys, ","));
        return;
    }
    const double current = *value;

    // 2. Warm-up epochs are ignored completely.
    if (epoch < args_.start_from_epoch)
        return;

    // 3. kiln (Lightning's check_finite): a NaN or infinite value ends the run at once.
    if (args_.check_finite && !std::isfinite(current)) {
        stop(epoch, StoppingReason::kNonFiniteMetric,
             "Monitored metric " + monitor() + " = " + detail::python_repr(current) +
                 " is not finite. Previous best value was " + best_text() + ".");
        return;
    }

    // 4. Keras: make sure there is always something to restore.
    const bool restoring = args_.restore_best_weights && slot_ >= 0;
    if (restoring && !slot_holds_best_ && !best_) {
        model_->snapshots().take(slot_);
        slot_holds_best_ = true;
        best_epoch_ = epoch;
    }

    // 5. The wait counts this epoch before the improvement test.
    ++wait_;

    // 6. An improvement records the new best; it resets the wait only when it also beats the
    // baseline.
    const bool improved = is_improvement(current, best_);
    if (improved) {
        best_ = current;
        best_epoch_ = epoch;
        if (restoring) {
            model_->snapshots().take(slot_);
            slot_holds_best_ = true;
        }
        if (!args_.baseline || is_improvement(current, args_.baseline))
            wait_ = 0;
    }

    // 7. Lightning's thresholds, strict and without the margin.
    const bool minimize = direction() == Direction::kMinimize;
    if (args_.stopping_threshold && better(current, *args_.stopping_threshold)) {
        stop(epoch, StoppingReason::kStoppingThreshold,
             "Stopping threshold reached: " + monitor() + " = " + detail::python_repr(current) +
                 (minimize ? " < " : " > ") + detail::python_repr(*args_.stopping_threshold) + ".");
        return;
    }
    if (args_.divergence_threshold && better(*args_.divergence_threshold, current)) {
        stop(epoch, StoppingReason::kDivergenceThreshold,
             "Divergence threshold reached: " + monitor() + " = " + detail::python_repr(current) +
                 (minimize ? " > " : " < ") + detail::python_repr(*args_.divergence_threshold) +
                 ".");
        return;
    }

    // 8. Keras: an improving epoch never stops the run; patience needs epoch > 0.
    if (improved)
        return;
    if (wait_ >= args_.patience && epoch > 0) {
        stop(epoch, StoppingReason::kPatienceExhausted,
             "Monitored metric " + monitor() + " did not improve in the last " +
                 std::to_string(wait_) + " records. Best score: " + best_text() + ".");
    }
}

void EarlyStopping::stop(int epoch, StoppingReason reason, std::string message) {
    stopped_epoch_ = epoch;
    reason_ = reason;
    reason_message_ = std::move(message);
    if (model_)
        model_->stop_training = true;
}

std::string EarlyStopping::best_text() const {
    if (!best_)
        return direction() == Direction::kMinimize ? "inf" : "-inf";
    if (std::isnan(*best_))
        return "nan";
    return fmt::format("{:.3f}", *best_);
}

void EarlyStopping::on_train_end(const Logs&) {
    if (stopped() && args_.verbose > 0) {
        say("Epoch " + std::to_string(stopped_epoch_ + 1) + ": early stopping");
        say(reason_message_);
    }
    if (slot_ >= 0) {
        if (slot_holds_best_) {
            if (args_.verbose > 0) {
                say("Restoring model weights from the end of the best epoch: " +
                    std::to_string(best_epoch_ + 1) + ".");
            }
            model_->snapshots().restore(slot_);
            restored_ = true;
        } else if (best_) {
            // Resumed with a best from before the interruption and nothing better since: its
            // weights are not in the checkpoint.
            warn("EarlyStopping: the best epoch (" + std::to_string(best_epoch_ + 1) +
                 ") came before the run was resumed and its weights were not kept; the weights "
                 "stay those of the last epoch");
        }
        model_->snapshots().release(slot_);
        slot_ = -1;
    }
}

std::string EarlyStopping::state_json() const {
    nlohmann::json j = {{"wait", wait_},
                        {"stopped_epoch", stopped_epoch_},
                        {"best", detail::json_optional(best_)},
                        {"best_epoch", best_epoch_},
                        {"patience", args_.patience},
                        {"slot_holds_best", slot_holds_best_},
                        {"stopping_reason", stopping_reason_name(reason_)}};
    return j.dump();
}

void EarlyStopping::restore_state(const std::string& json) {
    const auto j = detail::parse_state(json, state_key());
    try {
        wait_ = j.value("wait", 0);
        stopped_epoch_ = j.value("stopped_epoch", 0);
        best_ = j.contains("best") ? detail::optional_from_json(j["best"]) : std::nullopt;
        best_epoch_ = j.value("best_epoch", 0);
        resumed_slot_holds_best_ = j.value("slot_holds_best", false);
        reason_ = reason_from_name(j.value("stopping_reason", std::string("NOT_STOPPED")));
    } catch (const nlohmann::json::exception& e) {
        throw Error(state_key() + ": bad saved state " + json + ": " + e.what());
    }
    resumed_ = true;
}

}  // namespace callbacks
}  // namespace kiln
