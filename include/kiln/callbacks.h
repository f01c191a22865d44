// Callbacks with Keras's hooks and logs. History and the progress bar are callbacks too.
//
// Logs are keyed as Keras keys them: "loss", "accuracy", "val_loss", "val_accuracy". The epoch
// passed to the hooks is 0-based, as in Keras; messages print it 1-based.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kiln {

class Sequential;

// An ordered map of metric name to value (Keras's `logs` dict).
class Logs {
public:
    void set(const std::string& key, double value);
    std::optional<double> get(const std::string& key) const;
    bool contains(const std::string& key) const { return get(key).has_value(); }
    bool empty() const { return items_.empty(); }
    const std::vector<std::pair<std::string, double>>& items() const { return items_; }

private:
    std::vector<std::pair<std::string, double>> items_;
};

class Callback {
public:
    virtual ~Callback() = default;

    // The model being trained; set by fit before on_train_begin.
    virtual void set_model(Sequential* model) { model_ = model; }
    // Total epochs and steps per epoch, set by fit before on_train_begin.
    virtual void set_params(int epochs, int64_t steps, int verbose) {
        epochs_ = epochs;
        steps_ = steps;
        verbose_ = verbose;
    }

    virtual void on_train_begin(const Logs& logs) { (void)logs; }
    virtual void on_train_end(const Logs& logs) { (void)logs; }
    virtual void on_epoch_begin(int epoch, const Logs& logs) { (void)epoch, (void)logs; }
    virtual void on_epoch_end(int epoch, const Logs& logs) { (void)epoch, (void)logs; }
    virtual void on_train_batch_begin(int64_t batch, const Logs& logs) { (void)batch, (void)logs; }
    // Batch logs hold the epoch's running values as of the newest completed non-blocking peek
    // (they may lag the batch by a few steps on a GPU), and only when some callback asks for
    // them through wants_batch_logs(): reading them never makes training wait.
    virtual void on_train_batch_end(int64_t batch, const Logs& logs) { (void)batch, (void)logs; }
    virtual void on_test_begin(const Logs& logs) { (void)logs; }
    virtual void on_test_end(const Logs& logs) { (void)logs; }
    virtual bool wants_batch_logs() const { return false; }

    // ---- state that survives a resume ----------------------------------------------------
    // A callback with state (a best value, a wait counter) names itself with a key unique in
    // the run and returns its state as a JSON object; checkpoints store it, and resuming hands
    // it back through restore_state before on_train_begin.
    virtual std::string state_key() const { return ""; }
    virtual std::string state_json() const { return "{}"; }
    virtual void restore_state(const std::string& json) { (void)json; }

protected:
    Sequential* model_ = nullptr;
    int epochs_ = 0;
    int64_t steps_ = 0;
    int verbose_ = 0;
};

using CallbackPtr = std::shared_ptr<Callback>;

// Records each epoch's logs; fit returns it.
class History : public Callback {
public:
    void on_train_begin(const Logs& logs) override;
    void on_epoch_end(int epoch, const Logs& logs) override;

    std::vector<int> epoch;  // 0-based epoch numbers, as Keras's history.epoch
    std::map<std::string, std::vector<double>> history;
    // Keys in the order they first appeared (for printing and JSON).
    std::vector<std::string> keys;
};

// Keras's progress output: "Epoch 3/50", then at verbose 1 a progress bar with the step count,
// time and running metrics (redrawn in place on a terminal, once per epoch otherwise), at
// verbose 2 one line per epoch, at verbose 0 nothing.
class ProgbarLogger : public Callback {
public:
    // `out` defaults to stdout.
    explicit ProgbarLogger(std::FILE* out = nullptr);

    void on_epoch_begin(int epoch, const Logs& logs) override;
    void on_train_batch_end(int64_t batch, const Logs& logs) override;
    void on_epoch_end(int epoch, const Logs& logs) override;
    bool wants_batch_logs() const override { return verbose_ == 1; }

private:
    void draw(int64_t done, const Logs& logs, bool final_line);

    std::FILE* out_;
    bool dynamic_ = false;  // a terminal: redraw with '\r'
    std::chrono::steady_clock::time_point epoch_start_, last_draw_;
    size_t last_width_ = 0;
};

// Keras's number formatting for logs: 4 decimals, or scientific below 1e-3, as the Progbar.
std::string format_metric(double value);

}  // namespace kiln
