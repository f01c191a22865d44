// The Sequential model: build, compile, fit, evaluate, predict, save, load; Keras's API in C++.
//
//     kiln::Sequential model({kiln::layers::Dense(256, "relu"), kiln::layers::Dense(10,
//     "softmax")},
//                            kiln::layers::Input({784}));
//     model.compile(kiln::optimizers::Adam(), kiln::losses::SparseCategoricalCrossentropy(),
//                   {"accuracy"});
//     kiln::FitArgs args;
//     args.epochs = 5;
//     args.validation_split = 0.1;
//     kiln::History history = model.fit(x, y, args);
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kiln/backend.h"
#include "kiln/callbacks.h"
#include "kiln/checkpoint.h"
#include "kiln/data.h"
#include "kiln/layers.h"
#include "kiln/losses.h"
#include "kiln/model_config.h"
#include "kiln/optimizers.h"
#include "kiln/snapshot.h"
#include "kiln/tensor.h"

namespace kiln {

class CheckpointWriter;

struct CompileOptions {
    DeviceChoice device = DeviceChoice::kAuto;
    // Seeds the weight initialisers, the shuffles and dropout. Same seed, same backend: the same
    // weights and history, run after run.
    uint64_t seed = 1;
    // float32, or float64 on the CPU (the gradient checks run the real layers in double).
    DType dtype = DType::kFloat32;
    // The format of the GEMMs' operands (kiln/ops.h): kFp32, float32 with TF32 off, is the
    // default; kTf32 and kBf16 round the operands of the Dense and Conv2D GEMMs and keep
    // float32 sums, weights, gradients, optimizer state and activations. Float32 only.
    Precision precision = Precision::kFp32;
    // Whether fit captures its training step and its validation pass as graphs once and
    // replays them (kiln/ops.h, StepGraphs): by default on CUDA only.
    StepGraphs step_graphs = StepGraphs::kAuto;
    // Where the device choice is reported ("kiln: using cpu ..."); null for silence.
    std::FILE* log = stderr;
};

// What the last fit did with step graphs (CompileOptions::step_graphs).
struct StepGraphStats {
    bool enabled = false;     // fit meant to use them
    int64_t captures = 0;     // graphs recorded (training step and validation pass)
    int64_t replays = 0;      // training steps and validation passes run from a graph
    int64_t eager_steps = 0;  // training steps queued op by op (the warm-up, short batches)
    int64_t train_nodes = 0;  // ops (CPU) or nodes (CUDA) of the training step's graph
    int64_t val_nodes = 0;    // the same for the validation pass
    std::string off_reason;   // why fit stopped using them, when a capture failed
};

struct FitArgs {
    int epochs = 1;
    int64_t batch_size = 32;
    // The last fraction of x and y, taken before any shuffling (Keras's rule).
    double validation_split = 0.0;
    // Used instead of validation_split when set.
    std::optional<data::Split> validation_data;
    bool shuffle = true;
    int initial_epoch = 0;
    int verbose = 1;  // 0 silent, 1 progress bar, 2 one line per epoch
    std::vector<CallbackPtr> callbacks;
    // The callbacks' state to continue from (CheckpointRequest::callbacks_state_json, as a
    // resumed checkpoint holds it): each callback whose state key it names gets its state back
    // through restore_state before on_train_begin.
    std::string resume_callbacks_state_json;
    // Where fit writes a checkpoint to resume from when a signal asks it to stop
    // (kiln/interrupt.h); empty for none.
    std::string interrupt_checkpoint;
};

class Sequential {
  public:
    Sequential(std::vector<LayerPtr> layers, layers::Input input, std::string name = "sequential");
    // Builds the model a Keras model description gives.
    explicit Sequential(const ModelConfig& config);
    ~Sequential();
    Sequential(const Sequential&) = delete;
    Sequential& operator=(const Sequential&) = delete;

    // Chooses the backend, allocates and initialises the parameters. Throws kiln::Error for an
    // invalid combination (a loss that cannot apply to the output, an unknown metric).
    void compile(const Optimizer& optimizer, const Loss& loss,
                 const std::vector<std::string>& metrics = {},
                 const CompileOptions& options = CompileOptions());

    History fit(const data::Array& x, const data::Array& y, const FitArgs& args);
    // {"loss": ..., "accuracy": ...} over all of x.
    Logs evaluate(const data::Array& x, const data::Array& y, int64_t batch_size = 32,
                  int verbose = 0);
    // The model's outputs (rows × outputs), probabilities where the model ends in softmax.
    data::Array predict(const data::Array& x, int64_t batch_size = 32);

    // Keras's `model.stop_training`: a callback sets it to end fit after the current epoch.
    bool stop_training = false;

    // ---- weights -------------------------------------------------------------------------
    std::vector<LayerWeights> get_weights() const;
    // Throws kiln::Error naming the layer on a count or shape mismatch.
    void set_weights(const std::vector<LayerWeights>& weights);
    // The flat buffer of trainable parameters on the device (every layer's, padded, in layer
    // order), and that of the non-trainable ones (moving statistics). A snapshot of the model's
    // weights is a copy of both.
    View parameters() const;
    View nontrainable_parameters() const { return nontrainable_.view(); }
    size_t parameter_bytes() const;
    // Keras's count: every weight, or only the trainable ones.
    int64_t count_params(bool trainable_only = false) const;

    // ---- gradient checks and debugging ----------------------------------------------------
    // Forward, loss and backward over all of x (one batch, in training mode), without an
    // update; returns the mean loss. The gradients are then in flat_gradients().
    double compute_gradients(const data::Array& x, const data::Array& y);
    // The flat buffers as doubles, padding included, in layer order.
    std::vector<double> flat_parameters() const;
    std::vector<double> flat_gradients() const;
    void set_flat_parameters(const std::vector<double>& values);

    // ---- saving and checkpoints (kiln/checkpoint.h has the formats) --------------------------
    // The Keras legacy HDF5 full-model file (config, weights, training config) with kiln's
    // `kiln` group (optimizer state, epoch, step, seed, history, checksums), written
    // atomically. Waits for the file; its result.
    Status save(const std::string& path) const;
    // The Keras 3 weights file (`*.weights.h5`), with the `kiln` group, written atomically.
    Status save_weights(const std::string& path) const;
    // Sets the weights from a `*.weights.h5` file (Keras's or kiln's), pairing layers by
    // Keras's keys ("dense", "dense_1", ...), or from a full `.h5` file, pairing layers by
    // position as Keras does. A layer or shape mismatch is an error naming the layer; a kiln
    // file whose checksums do not verify is refused.
    Status load_weights(const std::string& path);

    // Writes a checkpoint for a callback without making training wait: the weights (or a
    // snapshot slot's) and the optimizer state are copied off the device into a staging buffer
    // (pinned, on a copy stream, on CUDA) and handed to the model's writer thread, which
    // publishes the file atomically. At most one write is in flight and one waiting; a newer
    // request for the file that is waiting replaces it, a request for another file then waits
    // for the write in flight. A failed write warns on stderr ("kiln: warning: ..."), keeps the
    // previous file and is reported by wait_for_checkpoints and last_checkpoint_status; this
    // returns an error only for a request that cannot be made (a path of the wrong kind).
    Status request_checkpoint(const CheckpointRequest& request);
    // Blocks until every requested checkpoint is on disk; the first failure since the last call.
    // fit waits the same way before on_train_end and before it returns.
    Status wait_for_checkpoints();
    // The newest finished write of `path`, or, with no path, the first target whose newest
    // write failed (ok when every target's newest write succeeded, or none was made). Never
    // waits.
    Status last_checkpoint_status(const std::string& path = "") const;
    CheckpointStats checkpoint_stats() const;

    // Restores a checkpoint written by kiln (full model or weights file, from the live weights)
    // into this compiled model of the same architecture: the weights, the optimizer's state,
    // the step count, the seed, the learning rate and the history. Calling fit with
    // initial_epoch = state->epoch then continues the run exactly as if it had not stopped (bit
    // for bit on the CPU), given the same data and the same fit arguments. *state (when given)
    // receives what the file holds, callbacks_state_json included.
    Status restore_training_state(const std::string& path, TrainingState* state = nullptr);

    // ---- description ---------------------------------------------------------------------
    ModelConfig config() const;
    std::string to_json() const { return model_config_to_json(config()); }
    // Keras's model.summary() table.
    std::string summary() const;
    const std::vector<LayerPtr>& layers() const { return layers_; }
    const Shape& input_shape() const { return input_shape_; }
    const Shape& output_shape() const;
    const std::string& name() const { return name_; }

    // ---- state the callbacks and tools use ----------------------------------------------
    bool compiled() const { return backend_ != nullptr; }
    Backend& backend() const;
    const Loss& loss() const { return loss_; }
    const Optimizer& optimizer() const { return optimizer_; }
    double learning_rate() const { return optimizer_.hyper.learning_rate; }
    void set_learning_rate(double lr) { optimizer_.hyper.learning_rate = static_cast<float>(lr); }
    // Keras's metric key for the compiled metric ("accuracy"), empty when none.
    const std::string& metric_name() const { return metric_name_; }
    int64_t iterations() const { return iterations_; }
    // Epochs completed in this run (restored ones included); what a checkpoint records.
    int epochs_completed() const { return epochs_completed_; }
    // Every epoch of the run, a resumed run's earlier epochs included (fit's History holds
    // only the epochs that fit ran, as Keras's does).
    const History& run_history() const { return run_history_; }
    // Device-side copies of the weights (EarlyStopping's best weights); slots are freed when
    // the model is compiled again or destroyed.
    SnapshotService& snapshots() { return *snapshots_; }
    const SnapshotService& snapshots() const { return *snapshots_; }
    // Every callback's state in the fit running now, as a JSON object keyed by state key (what
    // a checkpoint stores); "{}" outside fit.
    std::string callbacks_state_json() const;
    // A one-line description of the chosen backend and why.
    const std::string& device_message() const { return device_message_; }
    // The last fit's use of step graphs.
    const StepGraphStats& step_graph_stats() const { return graph_stats_; }

  private:
    struct Buffers;

    void build();
    // Frees every device buffer of the model and its layers (before the backend goes).
    void release_device_state();
    void ensure_buffers(int64_t batch);
    void check_inputs(const data::Array& x, const char* what) const;
    void check_targets(const data::Array& y, int64_t rows, const char* what) const;
    // Runs the layers forward on `n` rows already in the input buffer; returns the output view.
    View forward(const StepContext& ctx, const View& input, int64_t n);
    void backward(const StepContext& ctx, int64_t n);
    // What a training step reads: the training set on the device, the epoch's permutation and
    // the StepScalars (kiln/ops.h).
    struct StepInputs {
        View x, y, perm, scalars;
        View acc;  // fit's accumulators; the step adds into the training set
        int64_t batch_size = 0;
        int64_t x_cols = 0, y_cols = 0;
    };
    // Queues one training step on `rows` samples: the gather of batch s.batch, forward, loss,
    // backward, the optimizer update and advance_step, every per-step value read from the
    // StepScalars on the device, so that the same ops replay as a graph (the host's
    // iterations_ is moved on by the caller).
    void queue_train_step(const StepInputs& in, int64_t rows);
    // fit's answer to a signal (kiln/interrupt.h): the interrupt checkpoint, the callbacks'
    // on_interrupt, the writer drained; throws Interrupted.
    [[noreturn]] void stop_for_signal(int signal, const FitArgs& args,
                                      const std::vector<CallbackPtr>& callbacks, int epoch,
                                      int64_t iterations_at_start);
    // Adds one set's loss and metric over x, y (device tensors) into acc[slot].
    void evaluate_on_device(const View& x, const View& y, int64_t rows, int64_t batch,
                            const View& acc, int slot);
    Logs logs_from(const double* acc, int slot, const std::string& prefix) const;
    std::string training_config_json() const;
    // The model's checkpoint writer, made at the first checkpoint after compile.
    CheckpointWriter& checkpoint_writer() const;
    // Captures a checkpoint's metadata and stages its bytes; returns the writer's job id.
    uint64_t submit_checkpoint(const CheckpointRequest& request, bool synchronous) const;
    // Sets the weights from a file's contents (load_weights, restore_training_state).
    Status apply_weights(const CheckpointContents& contents, const std::string& path);

    std::string name_;
    Shape input_shape_;
    std::vector<LayerPtr> layers_;

    std::unique_ptr<Backend> backend_;
    std::string device_message_;
    Optimizer optimizer_;
    Loss loss_;
    LossSpec loss_spec_;
    std::string metric_name_;
    uint64_t seed_ = 1;
    DType dtype_ = DType::kFloat32;
    int64_t iterations_ = 0;  // optimizer steps taken (Keras's optimizer.iterations)
    StepGraphs step_graphs_ = StepGraphs::kAuto;
    StepGraphStats graph_stats_;
    // Counts the reallocations of the buffers a captured graph uses; a graph made under
    // another count is stale.
    uint64_t buffers_generation_ = 0;
    // The accumulators of the fit under way (a checkpoint within an epoch stores the training
    // sums); null outside fit.
    View fit_sums_;

    Tensor params_, grads_, opt_state_;
    Tensor nontrainable_;   // non-trainable weights; never updated by the optimizer
    int64_t n_params_ = 0;  // elements of the flat buffers, padding included
    std::unique_ptr<Buffers> buffers_;
    std::vector<View> layer_inputs_;  // each layer's input in the last forward pass

    int epochs_completed_ = 0;
    int64_t batches_in_epoch_ = 0;  // of the epoch under way; 0 between epochs
    History run_history_;
    std::string fit_args_json_ = "{}";  // the last fit's arguments (TrainingState::fit_args_json)
    // A restored checkpoint taken within an epoch: where the next fit continues (the epoch,
    // the batches done and the running sums), if its batch size and data order are the same.
    struct MidEpoch {
        int epoch = 0;
        int64_t batch = 0;
        std::vector<double> sums;
        std::string fit_args_json;
        std::string source;  // the file, for messages
    };
    std::optional<MidEpoch> resume_within_epoch_;
    // Mutable: save() is const, and a save is a write through the writer.
    mutable std::unique_ptr<CheckpointWriter> writer_;

    // After backend_, so that its slots go first.
    std::unique_ptr<SnapshotService> snapshots_ = std::make_unique<SnapshotService>(*this);
    // The callbacks of the fit running now and their unique state keys (callbacks_state_json).
    const std::vector<CallbackPtr>* active_callbacks_ = nullptr;
    std::vector<std::string> active_state_keys_;
};

// Loads a model saved by Sequential::save or written by Keras (`.h5`): builds it, compiles it
// when the file has a training config (else with Adam and the given loss defaults), and sets
// its weights.
std::unique_ptr<Sequential> load_model(const std::string& path,
                                       const CompileOptions& options = CompileOptions());

}  // namespace kiln
