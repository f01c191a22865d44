#include "kiln/callbacks/monitor.h"

#include <cmath>

#include "callbacks/util.h"
#include "kiln/status.h"

namespace kiln {
namespace callbacks {

namespace detail {

nlohmann::json parse_state(const std::string& json, const std::string& who) {
    auto j = nlohmann::json::parse(json, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
        throw Error(who + ": the saved callback state is not a JSON object: " + json);
    }
    return j;
}

}  // namespace detail

std::optional<Direction> metric_direction(const std::string& monitor) {
    std::string name = monitor;
    if (name.rfind("val_", 0) == 0)
        name = name.substr(4);
    // The metrics Keras 3 marks with _direction "up" and "down" (keras/src/metrics/*.py), under
    // their default names, plus the losses' names; "loss" first, as Keras checks it first.
    static const char* const kDown[] = {"loss",
                                        "mean_squared_error",
                                        "mse",
                                        "mean_absolute_error",
                                        "mae",
                                        "mean_absolute_percentage_error",
                                        "mape",
                                        "mean_squared_logarithmic_error",
                                        "msle",
                                        "root_mean_squared_error",
                                        "log_cosh_error",
                                        "logcosh",
                                        "hinge",
                                        "squared_hinge",
                                        "categorical_hinge",
                                        "binary_crossentropy",
                                        "categorical_crossentropy",
                                        "sparse_categorical_crossentropy",
                                        "kl_divergence",
                                        "kullback_leibler_divergence",
                                        "poisson",
                                        "cosine_proximity",
                                        "huber"};
    static const char* const kUp[] = {"accuracy",
                                      "acc",
                                      "binary_accuracy",
                                      "categorical_accuracy",
                                      "sparse_categorical_accuracy",
                                      "top_k_categorical_accuracy",
                                      "sparse_top_k_categorical_accuracy",
                                      "auc",
                                      "precision",
                                      "recall",
                                      "f1_score",
                                      "fbeta_score",
                                      "iou",
                                      "mean_iou",
                                      "binary_iou",
                                      "one_hot_iou",
                                      "one_hot_mean_iou",
                                      "r2_score",
                                      "pearson_correlation",
                                      "concordance_correlation",
                                      "cosine_similarity",
                                      "true_positives",
                                      "true_negatives",
                                      "precision_at_recall",
                                      "recall_at_precision",
                                      "sensitivity_at_specificity",
                                      "specificity_at_sensitivity"};
    for (const char* d : kDown) {
        if (name == d)
            return Direction::kMinimize;
    }
    for (const char* u : kUp) {
        if (name == u)
            return Direction::kMaximize;
    }
    return std::nullopt;
}

MonitorCallback::MonitorCallback(std::string class_name, std::string monitor, std::string mode,
                                 double min_delta, bool check_finite)
    : class_name_(std::move(class_name)),
      monitor_(std::move(monitor)),
      mode_(std::move(mode)),
      min_delta_(std::fabs(min_delta)),
      check_finite_(check_finite) {
    if (monitor_.empty())
        throw Error(class_name_ + ": monitor is empty");
    if (mode_ != "auto" && mode_ != "min" && mode_ != "max") {
        warn(class_name_ + " mode '" + mode_ + "' is unknown, fallback to auto mode.");
        mode_ = "auto";
    }
    if (!std::isfinite(min_delta)) {
        throw Error(class_name_ + ": min_delta must be finite, got " +
                    detail::python_repr(min_delta));
    }
}

Direction MonitorCallback::direction() const {
    if (mode_ == "min")
        return Direction::kMinimize;
    if (mode_ == "max")
        return Direction::kMaximize;
    if (const auto d = metric_direction(monitor_))
        return *d;
    throw Error(class_name_ + " callback received monitor=" + monitor_ +
                ", but kiln isn't able to automatically determine whether that metric should be "
                "maximized or minimized. Pass mode='max' in order to monitor based on the "
                "highest metric value, or pass mode='min' in order to use the lowest value.");
}

bool MonitorCallback::is_improvement(double current, std::optional<double> reference) const {
    if (check_finite_ && !std::isfinite(current))
        return false;
    if (!reference)
        return true;
    // Keras: monitor_op(current - delta, reference), delta = -d when minimising, +d otherwise.
    if (direction() == Direction::kMinimize)
        return current + min_delta_ < *reference;
    return current - min_delta_ > *reference;
}

bool MonitorCallback::better(double a, double b) const {
    return direction() == Direction::kMinimize ? a < b : a > b;
}

void MonitorCallback::validate(const FitParams&) const {
    (void)direction();
}

void MonitorCallback::warn_missing_once(const std::string& text) {
    // Keras warns through Python's `warnings`, whose default filter shows a repeated message
    // once; kiln warns once per fit.
    if (warned_missing_)
        return;
    warned_missing_ = true;
    warn(text);
}

}  // namespace callbacks
}  // namespace kiln
