// Callbacks with Keras's hooks and logs. History and the progress bar are callbacks too; Keras's
// other callbacks (ModelCheckpoint, EarlyStopping, ReduceLROnPlateau, CSVLogger, TerminateOnNaN,
// LearningRateScheduler, LambdaCallback, BackupAndRestore) are in kiln/callbacks/.
//
// Logs are keyed as Keras keys them: "loss", "accuracy", "val_loss", "val_accuracy". The epoch
// passed to the hooks is 0-based, as in Keras; messages print it 1-based.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
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

// What fit tells every callback before on_train_begin: Keras's `params`, and the keys the logs
// will have, so that a callback can reject a configuration before any step (a filepath naming a
// key the logs will not have).
struct FitParams {
    int epochs = 0;
    int initial_epoch = 0;
    int64_t steps = 0;  // steps per epoch
    int verbose = 0;    // fit's verbosity
    // The epoch logs' keys in order: "loss", the metric, their "val_" twins when there is
    // validation data, then what callbacks add (add_to_logs), e.g. "learning_rate".
    std::vector<std::string> epoch_log_keys;
    // The batch logs' keys when a peek has completed: "loss" and the metric, never "val_" ones.
    std::vector<std::string> batch_log_keys;
};

// Where a resumed fit starts (see Callback::resume_point).
struct ResumePoint {
    int epoch = 0;                     // the 0-based epoch to start from
    std::string callbacks_state_json;  // as CheckpointRequest::callbacks_state_json
    std::string source;                // the file it came from, for messages
};

class Callback {
  public:
    virtual ~Callback() = default;

    // The model being trained; set by fit before on_train_begin.
    virtual void set_model(Sequential* model) { model_ = model; }
    // Set by fit before validate and on_train_begin.
    virtual void set_params(const FitParams& params) {
        params_ = params;
        epochs_ = params.epochs;
        steps_ = params.steps;
        verbose_ = params.verbose;
    }

    virtual void on_train_begin(const Logs& logs) { (void)logs; }
    virtual void on_train_end(const Logs& logs) { (void)logs; }
    virtual void on_epoch_begin(int epoch, const Logs& logs) { (void)epoch, (void)logs; }
    virtual void on_epoch_end(int epoch, const Logs& logs) { (void)epoch, (void)logs; }
    virtual void on_train_batch_begin(int64_t batch, const Logs& logs) { (void)batch, (void)logs; }
    // Batch logs hold the epoch's running values as of the newest completed non-blocking peek
    // (they may lag the batch by a few steps on a GPU, and are empty until the first peek
    // completes), and only when some callback asks for them through wants_batch_logs():
    // reading them never makes training wait.
    virtual void on_train_batch_end(int64_t batch, const Logs& logs) { (void)batch, (void)logs; }
    virtual void on_test_begin(const Logs& logs) { (void)logs; }
    virtual void on_test_end(const Logs& logs) { (void)logs; }
    virtual bool wants_batch_logs() const { return false; }

    // ---- kiln's hooks beyond Keras's --------------------------------------------------------
    // Throws kiln::Error for a configuration this fit cannot honour (a monitor whose direction
    // auto mode cannot tell, a filepath key the logs will not have). fit calls it on every
    // callback before any on_train_begin and before the dataset goes to the device, so a
    // rejected run has trained nothing and written nothing.
    virtual void validate(const FitParams& params) const { (void)params; }
    // Keys this callback adds to the epoch logs (Keras's ReduceLROnPlateau writes
    // "learning_rate"), and the hook that adds them: fit calls add_to_logs on every callback
    // before any on_epoch_end, so every callback sees the same logs whatever their order.
    virtual std::vector<std::string> added_log_keys() const { return {}; }
    virtual void add_to_logs(int epoch, Logs* logs) { (void)epoch, (void)logs; }
    // Called after every callback's on_epoch_end (on_train_batch_end) for the same epoch
    // (batch). Checkpoint writers make their requests here, so that the callbacks' state a
    // checkpoint stores is the state the next epoch starts from, whatever the callbacks' order.
    virtual void after_epoch_end(int epoch, const Logs& logs) { (void)epoch, (void)logs; }
    virtual void after_train_batch_end(int64_t batch, const Logs& logs) { (void)batch, (void)logs; }
    // Before validate, fit asks each callback whether it resumes an interrupted run
    // (BackupAndRestore finding a backup). One that does has set the model's weights itself and
    // returns the epoch to start from and the callbacks' state to hand back.
    virtual std::optional<ResumePoint> resume_point() { return std::nullopt; }
    // fit is stopping for a signal (kiln/interrupt.h) after `batches_done` batches of `epoch`:
    // a callback that keeps a file to resume from writes it now. on_train_end is not called.
    virtual void on_interrupt(int epoch, int64_t batches_done) { (void)epoch, (void)batches_done; }

    // ---- state that survives a resume ----------------------------------------------------
    // A callback with state (a best value, a wait counter) names itself with a key unique in
    // the run and returns its state as a JSON object; checkpoints store it, and resuming hands
    // it back through restore_state before on_train_begin (which then keeps it instead of
    // starting afresh). fit makes repeated keys unique by appending "#2", "#3", ... in order.
    virtual std::string state_key() const { return ""; }
    virtual std::string state_json() const { return "{}"; }
    virtual void restore_state(const std::string& json) { (void)json; }

    // ---- messages --------------------------------------------------------------------------
    // Where the callback's messages (stdout) and warnings (stderr, "kiln: " first) go; tests
    // pass temporary files.
    void set_output(std::FILE* out, std::FILE* err) {
        msg_out_ = out;
        msg_err_ = err;
    }

  protected:
    // A line on the message stream.
    void say(const std::string& line) const;
    // "kiln: " + text on the warning stream.
    void warn(const std::string& text) const;

    Sequential* model_ = nullptr;
    FitParams params_;
    int epochs_ = 0;
    int64_t steps_ = 0;
    int verbose_ = 0;
    std::FILE* msg_out_ = stdout;
    std::FILE* msg_err_ = stderr;
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

// The keys fit's logs will have: the batch logs' ("loss", then the metric when there is one)
// and the epoch logs' (those, their "val_" twins with validation data, then each callback's
// added_log_keys, once each).
std::vector<std::string> batch_log_keys(const std::string& metric_name);
std::vector<std::string> epoch_log_keys(const std::string& metric_name, bool validation,
                                        const std::vector<CallbackPtr>& callbacks);

// Keras's number formatting for logs: 4 decimals, or scientific below 1e-3, as the Progbar.
std::string format_metric(double value);

}  // namespace kiln
