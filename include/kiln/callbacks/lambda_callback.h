// Keras's LambdaCallback: a callback made of plain functions; any left empty does nothing.
//
//     kiln::callbacks::LambdaHooks hooks;
//     hooks.on_epoch_end = [](int epoch, const kiln::Logs& logs) { ... };
//     args.callbacks.push_back(std::make_shared<kiln::callbacks::LambdaCallback>(hooks));
#pragma once

#include <functional>

#include "kiln/callbacks.h"

namespace kiln {
namespace callbacks {

struct LambdaHooks {
    std::function<void(int epoch, const Logs& logs)> on_epoch_begin;
    std::function<void(int epoch, const Logs& logs)> on_epoch_end;
    std::function<void(const Logs& logs)> on_train_begin;
    std::function<void(const Logs& logs)> on_train_end;
    std::function<void(int64_t batch, const Logs& logs)> on_train_batch_begin;
    // Given, it makes fit peek the running values for the batch logs (never a blocking read).
    std::function<void(int64_t batch, const Logs& logs)> on_train_batch_end;
};

class LambdaCallback : public Callback {
  public:
    explicit LambdaCallback(LambdaHooks hooks) : hooks_(std::move(hooks)) {}

    void on_epoch_begin(int epoch, const Logs& logs) override {
        if (hooks_.on_epoch_begin)
            hooks_.on_epoch_begin(epoch, logs);
    }
    void on_epoch_end(int epoch, const Logs& logs) override {
        if (hooks_.on_epoch_end)
            hooks_.on_epoch_end(epoch, logs);
    }
    void on_train_begin(const Logs& logs) override {
        if (hooks_.on_train_begin)
            hooks_.on_train_begin(logs);
    }
    void on_train_end(const Logs& logs) override {
        if (hooks_.on_train_end)
            hooks_.on_train_end(logs);
    }
    void on_train_batch_begin(int64_t batch, const Logs& logs) override {
        if (hooks_.on_train_batch_begin)
            hooks_.on_train_batch_begin(batch, logs);
    }
    void on_train_batch_end(int64_t batch, const Logs& logs) override {
        if (hooks_.on_train_batch_end)
            hooks_.on_train_batch_end(batch, logs);
    }
    bool wants_batch_logs() const override { return static_cast<bool>(hooks_.on_train_batch_end); }

  private:
    LambdaHooks hooks_;
};

}  // namespace callbacks
}  // namespace kiln
