// The Sequential model: build, compile, fit, evaluate, predict, save, load; Keras's API in C++.
//
//     kiln::Sequential model({kiln::layers::Dense(256, "relu"), kiln::layers::Dense(10, "softmax")},
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
#include "kiln/tensor.h"

namespace kiln {

struct CompileOptions {
    DeviceChoice device = DeviceChoice::kAuto;
    // Seeds the weight initialisers, the shuffles and dropout. Same seed, same backend: the same
    // weights and history, run after run.
    uint64_t seed = 1;
    // float32, or float64 on the CPU (the gradient checks run the real layers in double).
    DType dtype = DType::kFloat32;
    // Where the device choice is reported ("kiln: using cpu ..."); null for silence.
    std::FILE* log = stderr;
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

    // ---- saving --------------------------------------------------------------------------
    // The Keras legacy HDF5 full-model file (config, weights, training config), written
    // atomically.
    Status save(const std::string& path) const;

    // Writes a checkpoint for a callback. Training does not wait for the disk where the
    // writer is asynchronous; a failure is reported as a Status here or by
    // wait_for_checkpoints, and never leaves a partial file.
    // TODO(checkpoint): synchronous for now; the checkpoint-files issue makes it asynchronous
    // (pinned staging on a copy stream, one writer thread) and adds weights-only files.
    Status request_checkpoint(const CheckpointRequest& request);
    // Blocks until every requested checkpoint is on disk; the first failure since the last call.
    Status wait_for_checkpoints();

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
    // A one-line description of the chosen backend and why.
    const std::string& device_message() const { return device_message_; }

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
    // Forward, loss, backward and the optimizer update on the `rows` samples in the batch
    // buffers.
    void train_step(int64_t rows);
    // Adds one set's loss and metric over x, y (device tensors) into acc[slot].
    void evaluate_on_device(const View& x, const View& y, int64_t rows, int64_t batch,
                            int slot);
    Logs logs_from(const double* acc, int slot, const std::string& prefix) const;
    std::string training_config_json() const;

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

    Tensor params_, grads_, opt_state_;
    Tensor nontrainable_;   // non-trainable weights; never updated by the optimizer
    int64_t n_params_ = 0;  // elements of the flat buffers, padding included
    std::unique_ptr<Buffers> buffers_;
    std::vector<View> layer_inputs_;  // each layer's input in the last forward pass
};

// Loads a model saved by Sequential::save or written by Keras (`.h5`): builds it, compiles it
// when the file has a training config (else with Adam and the given loss defaults), and sets
// its weights.
std::unique_ptr<Sequential> load_model(const std::string& path,
                                       const CompileOptions& options = CompileOptions());

}  // namespace kiln
