// Keras's TerminateOnNaN: stops training when the loss is NaN or infinite. It looks at the batch
// logs (non-blocking peeks of the epoch's running loss, which stays NaN once a batch's loss was)
// and prints "Batch 17: Invalid loss, terminating training"; fit then leaves the epoch's steps at
// once, as Keras does. Where the peeks lag (a GPU), the epoch's final loss is checked too
// ("Epoch 3: Invalid loss, terminating training"), so the run stops within the epoch it went
// bad in at the latest. raise_error (Keras 3.13) throws kiln::Error instead, which skips the
// other callbacks' on_train_end.
#pragma once

#include "kiln/callbacks.h"

namespace kiln {
namespace callbacks {

class TerminateOnNaN : public Callback {
  public:
    explicit TerminateOnNaN(bool raise_error = false) : raise_error_(raise_error) {}

    void on_train_begin(const Logs&) override { terminated_ = false; }
    void on_train_batch_end(int64_t batch, const Logs& logs) override;
    void on_epoch_end(int epoch, const Logs& logs) override;
    bool wants_batch_logs() const override { return true; }

    bool terminated() const { return terminated_; }

  private:
    void check(const char* what, int64_t index, const Logs& logs);

    bool raise_error_ = false;
    bool terminated_ = false;
};

}  // namespace callbacks
}  // namespace kiln
