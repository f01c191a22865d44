#include "kiln/callbacks/learning_rate.h"

#include <cmath>

#include "callbacks/util.h"
#include "kiln/model.h"
#include "kiln/status.h"

namespace kiln {
namespace callbacks {

// ---- ReduceLROnPlateau ---------------------------------------------------------------------

ReduceLROnPlateau::ReduceLROnPlateau(ReduceLROnPlateauArgs args)
    : MonitorCallback("ReduceLROnPlateau", args.monitor, args.mode, args.min_delta, true),
      args_(std::move(args)) {
    args_.mode = mode();
    if (!(args_.factor < 1.0)) {
        throw Error("ReduceLROnPlateau does not support a factor >= 1.0. Received factor=" +
                    detail::python_repr(args_.factor));
    }
    if (!(args_.factor > 0.0)) {
        throw Error("ReduceLROnPlateau: factor must be > 0. Received factor=" +
                    detail::python_repr(args_.factor));
    }
    if (args_.patience < 0 || args_.cooldown < 0) {
        throw Error("ReduceLROnPlateau: patience and cooldown must be >= 0");
    }
    if (!(args_.min_lr >= 0.0))
        throw Error("ReduceLROnPlateau: min_lr must be >= 0");
}

void ReduceLROnPlateau::on_train_begin(const Logs&) {
    (void)direction();
    if (!resumed_) {
        // Keras >= 3.15 resets the counters and the best for each fit.
        wait_ = 0;
        cooldown_counter_ = 0;
        best_.reset();
    }
    resumed_ = false;
    reset_missing_warning();
}

void ReduceLROnPlateau::add_to_logs(int, Logs* logs) {
    if (model_)
        logs->set("learning_rate", model_->learning_rate());
}

void ReduceLROnPlateau::on_epoch_end(int epoch, const Logs& logs) {
    const std::optional<double> current = logs.get(monitor());
    if (!current) {
        std::vector<std::string> keys;
        for (const auto& item : logs.items())
            keys.push_back(item.first);
        warn_missing_once(
            "Learning rate reduction is conditioned on metric `" + monitor() +
            "` which is not available. Available metrics are: " + detail::join(keys, ",") + ".");
        return;
    }
    // Keras's order: the cooldown runs down first, then the improvement test, then the count.
    if (in_cooldown()) {
        --cooldown_counter_;
        wait_ = 0;
    }
    if (is_improvement(*current, best_)) {
        best_ = *current;
        wait_ = 0;
        return;
    }
    if (in_cooldown())
        return;
    if (++wait_ < args_.patience)
        return;
    const double old_lr = model_->learning_rate();
    // Keras compares with the bound as float32, the optimizer's precision.
    if (old_lr > static_cast<double>(static_cast<float>(args_.min_lr))) {
        const double new_lr = std::max(old_lr * args_.factor, args_.min_lr);
        model_->set_learning_rate(new_lr);
        if (args_.verbose > 0) {
            say("Epoch " + std::to_string(epoch + 1) +
                ": ReduceLROnPlateau reducing learning rate to " + detail::python_repr(new_lr) +
                ".");
        }
        cooldown_counter_ = args_.cooldown;
        wait_ = 0;
    }
}

std::string ReduceLROnPlateau::state_json() const {
    nlohmann::json j = {{"wait", wait_},
                        {"cooldown_counter", cooldown_counter_},
                        {"best", detail::json_optional(best_)}};
    return j.dump();
}

void ReduceLROnPlateau::restore_state(const std::string& json) {
    const auto j = detail::parse_state(json, state_key());
    try {
        wait_ = j.value("wait", 0);
        cooldown_counter_ = j.value("cooldown_counter", 0);
        best_ = j.contains("best") ? detail::optional_from_json(j["best"]) : std::nullopt;
    } catch (const nlohmann::json::exception& e) {
        throw Error(state_key() + ": bad saved state " + json + ": " + e.what());
    }
    resumed_ = true;
}

// ---- LearningRateScheduler -----------------------------------------------------------------

LearningRateScheduler::LearningRateScheduler(Schedule schedule, int verbose)
    : schedule_(std::move(schedule)), verbose_level_(verbose) {
    if (!schedule_)
        throw Error("LearningRateScheduler: the schedule is empty");
}

void LearningRateScheduler::on_epoch_begin(int epoch, const Logs&) {
    const double lr = schedule_(epoch, model_->learning_rate());
    if (!std::isfinite(lr) || lr < 0) {
        throw Error("LearningRateScheduler: the schedule gave learning rate " +
                    detail::python_repr(lr) + " for epoch " + std::to_string(epoch) +
                    "; it must be a finite number >= 0");
    }
    model_->set_learning_rate(lr);
    if (verbose_level_ > 0) {
        say("Epoch " + std::to_string(epoch + 1) +
            ": LearningRateScheduler setting learning rate to " + detail::python_repr(lr) + ".");
    }
}

void LearningRateScheduler::add_to_logs(int, Logs* logs) {
    if (model_)
        logs->set("learning_rate", model_->learning_rate());
}

// ---- schedules -----------------------------------------------------------------------------

namespace schedules {

Schedule step(double lr0, double rate, int every) {
    if (every < 1)
        throw Error("step schedule: the step must be >= 1 epochs");
    return [=](int epoch, double) { return lr0 * std::pow(rate, std::floor(epoch / every)); };
}

Schedule exponential(double lr0, double rate) {
    return [=](int epoch, double) { return lr0 * std::pow(rate, epoch); };
}

Schedule cosine(double lr0, int decay_epochs, double alpha) {
    if (decay_epochs < 1)
        throw Error("cosine schedule: decay_epochs must be >= 1");
    constexpr double kPi = 3.14159265358979323846;
    return [=](int epoch, double) {
        const double t = std::min(epoch, decay_epochs) / static_cast<double>(decay_epochs);
        return lr0 * ((1.0 - alpha) * 0.5 * (1.0 + std::cos(kPi * t)) + alpha);
    };
}

}  // namespace schedules

}  // namespace callbacks
}  // namespace kiln
