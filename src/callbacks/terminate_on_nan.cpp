#include "kiln/callbacks/terminate_on_nan.h"

#include <cmath>

#include "callbacks/util.h"
#include "kiln/model.h"
#include "kiln/status.h"

namespace kiln {
namespace callbacks {

void TerminateOnNaN::check(const char* what, int64_t index, const Logs& logs) {
    const std::optional<double> loss = logs.get("loss");
    if (!loss || std::isfinite(*loss) || terminated_)
        return;
    if (raise_error_) {
        throw Error(std::string("NaN or Inf loss encountered at ") + what + " " +
                    std::to_string(index) + ". Loss value: " + detail::python_repr(*loss) +
                    ". Terminating training immediately.");
    }
    say(std::string(what[0] == 'b' ? "Batch " : "Epoch ") + std::to_string(index) +
        ": Invalid loss, terminating training");
    terminated_ = true;
    if (model_)
        model_->stop_training = true;
}

void TerminateOnNaN::on_train_batch_end(int64_t batch, const Logs& logs) {
    check("batch", batch, logs);
}

void TerminateOnNaN::on_epoch_end(int epoch, const Logs& logs) {
    check("epoch", epoch + 1, logs);
}

}  // namespace callbacks
}  // namespace kiln
