#include "kiln/losses.h"

#include <cctype>

#include "kiln/status.h"

namespace kiln {

std::string Loss::name() const {
    switch (kind) {
        case LossKind::kSparseCategoricalCrossentropy:
            return "sparse_categorical_crossentropy";
        case LossKind::kCategoricalCrossentropy:
            return "categorical_crossentropy";
        case LossKind::kBinaryCrossentropy:
            return "binary_crossentropy";
        case LossKind::kMeanSquaredError:
            return "mean_squared_error";
        case LossKind::kMeanAbsoluteError:
            return "mean_absolute_error";
    }
    return "";
}

std::string Loss::class_name() const {
    switch (kind) {
        case LossKind::kSparseCategoricalCrossentropy:
            return "SparseCategoricalCrossentropy";
        case LossKind::kCategoricalCrossentropy:
            return "CategoricalCrossentropy";
        case LossKind::kBinaryCrossentropy:
            return "BinaryCrossentropy";
        case LossKind::kMeanSquaredError:
            return "MeanSquaredError";
        case LossKind::kMeanAbsoluteError:
            return "MeanAbsoluteError";
    }
    return "";
}

Loss loss_from_name(const std::string& given, bool from_logits) {
    // Class names ("SparseCategoricalCrossentropy") map to the function names.
    std::string name;
    for (size_t i = 0; i < given.size(); ++i) {
        const char ch = given[i];
        if (std::isupper(static_cast<unsigned char>(ch))) {
            if (i > 0)
                name += '_';
            name += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        } else {
            name += ch;
        }
    }
    Loss loss;
    loss.from_logits = from_logits;
    if (name == "sparse_categorical_crossentropy") {
        loss.kind = LossKind::kSparseCategoricalCrossentropy;
    } else if (name == "categorical_crossentropy") {
        loss.kind = LossKind::kCategoricalCrossentropy;
    } else if (name == "binary_crossentropy") {
        loss.kind = LossKind::kBinaryCrossentropy;
    } else if (name == "mean_squared_error" || name == "mse") {
        loss.kind = LossKind::kMeanSquaredError;
    } else if (name == "mean_absolute_error" || name == "mae") {
        loss.kind = LossKind::kMeanAbsoluteError;
    } else {
        throw Error("unknown loss '" + given +
                    "' (kiln has sparse_categorical_crossentropy, categorical_crossentropy, "
                    "binary_crossentropy, mean_squared_error (mse), mean_absolute_error (mae))");
    }
    if (from_logits &&
        (loss.kind == LossKind::kMeanSquaredError || loss.kind == LossKind::kMeanAbsoluteError)) {
        throw Error("loss '" + name + "' takes no from_logits");
    }
    return loss;
}

MetricKind metric_from_name(const std::string& name, int64_t target_cols, int64_t output_cols) {
    if (name == "accuracy" || name == "acc") {
        if (output_cols == 1)
            return MetricKind::kBinaryAccuracy;
        if (target_cols == 1)
            return MetricKind::kSparseCategoricalAccuracy;
        return MetricKind::kCategoricalAccuracy;
    }
    if (name == "sparse_categorical_accuracy")
        return MetricKind::kSparseCategoricalAccuracy;
    if (name == "categorical_accuracy")
        return MetricKind::kCategoricalAccuracy;
    if (name == "binary_accuracy")
        return MetricKind::kBinaryAccuracy;
    throw Error("unknown metric '" + name +
                "' (kiln has accuracy, sparse_categorical_accuracy, categorical_accuracy, "
                "binary_accuracy)");
}

}  // namespace kiln
