// Losses and the metrics that go with them, named as in Keras.
#pragma once

#include <string>

#include "kiln/ops.h"

namespace kiln {

struct Loss {
    LossKind kind = LossKind::kSparseCategoricalCrossentropy;
    bool from_logits = false;

    // Keras's name: "sparse_categorical_crossentropy", ...
    std::string name() const;
    // Keras's class name: "SparseCategoricalCrossentropy", ...
    std::string class_name() const;
};

// Parses a Keras loss name ("sparse_categorical_crossentropy", "mse", "mean_absolute_error",
// ...) or class name ("SparseCategoricalCrossentropy"). Throws kiln::Error listing the known names
// when unknown.
Loss loss_from_name(const std::string& name, bool from_logits = false);

namespace losses {
inline Loss SparseCategoricalCrossentropy(bool from_logits = false) {
    return {LossKind::kSparseCategoricalCrossentropy, from_logits};
}
inline Loss CategoricalCrossentropy(bool from_logits = false) {
    return {LossKind::kCategoricalCrossentropy, from_logits};
}
inline Loss BinaryCrossentropy(bool from_logits = false) {
    return {LossKind::kBinaryCrossentropy, from_logits};
}
inline Loss MeanSquaredError() {
    return {LossKind::kMeanSquaredError, false};
}
inline Loss MeanAbsoluteError() {
    return {LossKind::kMeanAbsoluteError, false};
}
}  // namespace losses

// The metric Keras picks for "accuracy" from the shapes, as Keras 3 does: a single output
// column is binary accuracy; integer targets (one column) against several outputs are sparse
// categorical accuracy; otherwise categorical accuracy. Explicit names pick their metric.
// Throws kiln::Error for a metric name kiln does not have.
MetricKind metric_from_name(const std::string& name, int64_t target_cols, int64_t output_cols);

}  // namespace kiln
