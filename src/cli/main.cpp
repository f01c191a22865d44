// The `kiln` command: fit, evaluate and predict, with flags named after Keras's arguments.
//
// `kiln fit` alone runs the default job: the MLP 784-256-128-10 on Fashion-MNIST with Adam,
// 50 epochs, batch 32, validation_split 0.1, then the test set.
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "kiln/kiln.h"
#if KILN_WITH_BENCH
#include "bench/suite.h"
#endif

namespace {

using kiln::Error;

struct DataFlags {
    std::string data = "fashion-mnist";
    std::string test_data;
    std::string label_column;
    std::string csv_delimiter = ",";
    int64_t batch_size = 32;
    std::string device = "auto";
    int verbose = 1;
};

void add_data_flags(CLI::App* cmd, DataFlags* f, bool fit) {
    cmd->add_option("--data", f->data,
                    "Dataset: a NAME (fashion-mnist, mnist), a DIR of IDX or NPY files "
                    "(x_train.npy, y_train.npy, x_test.npy, y_test.npy), FILE.csv, or FILE.h5 "
                    "with x_train, y_train, x_test, y_test (or FILE.h5:/group)")
        ->capture_default_str();
    cmd->add_option("--test-data", f->test_data,
                    "A separate test split for sources that hold one (CSV, HDF5)");
    cmd->add_option("--label-column", f->label_column,
                    "CSV label column, by header name or 0-based index (default: 'label', else 0)");
    cmd->add_option("--csv-delimiter", f->csv_delimiter, "CSV field separator")
        ->capture_default_str();
    cmd->add_option("--batch-size", f->batch_size, "Samples per batch (Keras batch_size)")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    cmd->add_option("--device", f->device,
                    "auto: CUDA when a usable GPU is present, else the CPU; cuda; cpu")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "cuda", "cpu"}));
    cmd->add_option(
           "--verbose", f->verbose,
           fit ? "0 silent, 1 progress bar, 2 one line per epoch" : "0 silent, 1 a summary line")
        ->capture_default_str()
        ->check(CLI::Range(0, 2));
}

kiln::DeviceChoice device_choice(const std::string& name) {
    if (name == "cuda")
        return kiln::DeviceChoice::kCuda;
    if (name == "cpu")
        return kiln::DeviceChoice::kCpu;
    return kiln::DeviceChoice::kAuto;
}

kiln::data::DatasetOptions dataset_options(const DataFlags& f) {
    kiln::data::DatasetOptions options;
    options.test_spec = f.test_data;
    options.csv.label_column = f.label_column;
    if (f.csv_delimiter.size() != 1)
        throw Error("--csv-delimiter must be one character");
    options.csv.delimiter = f.csv_delimiter[0];
    return options;
}

// Fails before any work when a file we will write at the end could not be written, so that a
// long run never ends in an error about its output path.
void check_writable(const std::string& path, const char* flag) {
    if (path.empty())
        return;
    const size_t slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
    if (access(dir.empty() ? "/" : dir.c_str(), W_OK) != 0) {
        throw Error(std::string(flag) + " " + path + ": directory '" + dir +
                    "' does not exist or is not writable");
    }
}

// Writes text under a temporary name and renames it over `path`: a failure never leaves a
// partial file or loses an earlier one.
void write_file_atomically(const std::string& path, const std::string& text) {
    const std::string tmp = path + ".tmp-" + std::to_string(getpid());
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        out << text;
        out.flush();
        if (!out) {
            std::remove(tmp.c_str());
            throw Error("writing " + path + " failed");
        }
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw Error("renaming " + tmp + " to " + path + " failed");
    }
}

// The default recipe's model: Input(784) → Dense(256, relu) → Dense(128, relu) →
// Dense(10, softmax).
kiln::ModelConfig default_mlp() {
    kiln::ModelConfig c;
    kiln::LayerConfig input;
    input.class_name = "InputLayer";
    input.name = "input_layer";
    input.input_shape = {784};
    c.layers.push_back(input);
    const std::pair<int64_t, const char*> dense[] = {{256, "relu"}, {128, "relu"}, {10, "softmax"}};
    for (const auto& [units, activation] : dense) {
        kiln::LayerConfig d;
        d.class_name = "Dense";
        d.units = units;
        d.activation = activation;
        c.layers.push_back(d);
    }
    return c;
}

// The callbacks' flags. The defaults are the Keras recipe's two callbacks:
// ModelCheckpoint("best_model.h5", monitor="val_loss", mode="min", save_best_only=True,
// save_weights_only=False, verbose=1) and EarlyStopping(monitor="val_loss", mode="min",
// patience=3, restore_best_weights=True, verbose=1).
struct CallbackFlags {
    std::string checkpoint = "best_model.h5";
    std::string monitor = "val_loss";
    std::string mode = "min";
    bool save_best_only = true;
    bool save_weights_only = false;
    std::string save_freq = "epoch";
    std::optional<double> initial_value_threshold;
    int patience = 3;
    double min_delta = 0.0;
    std::optional<double> baseline;
    int start_from_epoch = 0;
    bool restore_best_weights = true;
    std::string early_stopping = "on";
    std::string csv_log;
    bool csv_append = false;
    std::string csv_separator = ",";
    bool reduce_lr = false;
    double reduce_lr_factor = 0.1;
    int reduce_lr_patience = 10;
    int reduce_lr_cooldown = 0;
    double reduce_lr_min_delta = 1e-4;
    double min_lr = 0.0;
    bool terminate_on_nan = false;
    std::optional<int> save_top_k;
    std::string backup_dir;
    std::string backup_save_freq = "epoch";
    bool keep_backup = false;
    bool double_checkpoint = false;
    std::string lr_schedule;
    std::optional<double> lr_decay_rate;
    int lr_decay_every = 10;
    int lr_decay_epochs = 0;  // 0: --epochs
    double lr_alpha = 0.0;
    // Set after parsing: whether --checkpoint was given, and the ReduceLROnPlateau flags.
    bool checkpoint_given = false;
    bool reduce_lr_given = false;
    bool reduce_lr_factor_given = false;
    bool reduce_lr_patience_given = false;
};

// The cnn preset's recipe: the default callbacks and ReduceLROnPlateau(factor=0.2, patience=2)
// on the same monitor, which a flag of its own overrides (--reduce-lr-on-plateau=false for
// none). It lowers the rate when val_loss stalls, before EarlyStopping's patience of 3 runs out.
void apply_cnn_recipe(CallbackFlags* f) {
    if (!f->lr_schedule.empty())
        return;  // a schedule sets the rate instead
    if (!f->reduce_lr_given)
        f->reduce_lr = true;
    if (!f->reduce_lr_factor_given)
        f->reduce_lr_factor = 0.2;
    if (!f->reduce_lr_patience_given)
        f->reduce_lr_patience = 2;
}

void add_callback_flags(CLI::App* cmd, CallbackFlags* f) {
    const std::string mc = "Callbacks";
    cmd->add_option("--checkpoint", f->checkpoint,
                    "ModelCheckpoint's filepath, a Python format template over epoch and the "
                    "logs (e.g. ckpt/{epoch:02d}-{val_loss:.2f}.h5), or none")
        ->capture_default_str()
        ->group(mc);
    cmd->add_option("--monitor", f->monitor,
                    "The log key ModelCheckpoint, EarlyStopping and ReduceLROnPlateau watch")
        ->capture_default_str()
        ->group(mc);
    cmd->add_option("--mode", f->mode,
                    "min, max, or auto (minimise losses, maximise accuracy); the recipe's min")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "min", "max"}))
        ->group(mc);
    cmd->add_flag("--save-best-only,!--no-save-best-only", f->save_best_only,
                  "Save only when the monitored value improves (default: on)")
        ->group(mc);
    cmd->add_flag("--save-weights-only", f->save_weights_only,
                  "Save a Keras weights file (*.weights.h5; default name "
                  "best_model.weights.h5)")
        ->group(mc);
    cmd->add_option("--save-freq", f->save_freq, "epoch, or save every N batches")
        ->capture_default_str()
        ->group(mc);
    cmd->add_option("--save-top-k", f->save_top_k,
                    "Keep the K best files (a templated --checkpoint; needs --save-best-only)")
        ->check(CLI::PositiveNumber)
        ->group(mc);
    cmd->add_option("--initial-value-threshold", f->initial_value_threshold,
                    "The best value to beat before the first save")
        ->group(mc);
    cmd->add_option("--early-stopping", f->early_stopping, "on, or none for no EarlyStopping")
        ->capture_default_str()
        ->check(CLI::IsMember({"on", "none"}))
        ->group(mc);
    cmd->add_option("--patience", f->patience, "EarlyStopping: epochs without improvement")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber)
        ->group(mc);
    cmd->add_option("--min-delta", f->min_delta,
                    "EarlyStopping: the smallest change that counts as an improvement")
        ->capture_default_str()
        ->group(mc);
    cmd->add_option("--baseline", f->baseline,
                    "EarlyStopping: a value the monitor must beat to reset the patience")
        ->group(mc);
    cmd->add_option("--start-from-epoch", f->start_from_epoch,
                    "EarlyStopping: warm-up epochs it ignores")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber)
        ->group(mc);
    cmd->add_flag("--restore-best-weights,!--no-restore-best-weights", f->restore_best_weights,
                  "EarlyStopping: end with the best epoch's weights (default: on)")
        ->group(mc);
    cmd->add_option("--csv-log", f->csv_log, "CSVLogger: one row of logs per epoch to FILE")
        ->group(mc);
    cmd->add_flag("--csv-append", f->csv_append, "CSVLogger: append to an existing file")
        ->group(mc);
    cmd->add_option("--csv-separator", f->csv_separator, "CSVLogger: the field separator")
        ->capture_default_str()
        ->group(mc);
    cmd->add_flag("--reduce-lr-on-plateau", f->reduce_lr, "ReduceLROnPlateau on --monitor")
        ->group(mc);
    cmd->add_option("--reduce-lr-factor", f->reduce_lr_factor,
                    "ReduceLROnPlateau: new_lr = lr * factor (< 1)")
        ->capture_default_str()
        ->group(mc);
    cmd->add_option("--reduce-lr-patience", f->reduce_lr_patience,
                    "ReduceLROnPlateau: epochs without improvement")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber)
        ->group(mc);
    cmd->add_option("--reduce-lr-cooldown", f->reduce_lr_cooldown,
                    "ReduceLROnPlateau: epochs to wait after a reduction")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber)
        ->group(mc);
    cmd->add_option("--reduce-lr-min-delta", f->reduce_lr_min_delta,
                    "ReduceLROnPlateau: the smallest change that counts as an improvement")
        ->capture_default_str()
        ->group(mc);
    cmd->add_option("--min-lr", f->min_lr, "ReduceLROnPlateau: the lowest learning rate")
        ->capture_default_str()
        ->group(mc);
    cmd->add_flag("--terminate-on-nan", f->terminate_on_nan,
                  "TerminateOnNaN: stop as soon as the loss is NaN or infinite")
        ->group(mc);
    cmd->add_option("--backup-dir", f->backup_dir,
                    "BackupAndRestore: back the run up in DIR and continue from a backup there")
        ->group(mc);
    cmd->add_option("--backup-save-freq", f->backup_save_freq,
                    "BackupAndRestore: epoch, or back up every N batches")
        ->capture_default_str()
        ->group(mc);
    cmd->add_flag("--keep-backup", f->keep_backup,
                  "BackupAndRestore: keep the backup when the run completes")
        ->group(mc);
    cmd->add_flag("--double-checkpoint", f->double_checkpoint,
                  "BackupAndRestore: keep the previous backup too, as a fallback")
        ->group(mc);
    cmd->add_option("--lr-schedule", f->lr_schedule,
                    "LearningRateScheduler: step (lr0 * rate^floor(epoch / every)), exponential "
                    "(lr0 * rate^epoch) or cosine (Keras's CosineDecay over --lr-decay-epochs)")
        ->check(CLI::IsMember({"step", "exponential", "cosine"}))
        ->group(mc);
    cmd->add_option("--lr-decay-rate", f->lr_decay_rate,
                    "step and exponential: the factor (default 0.5 for step, 0.95 for "
                    "exponential)")
        ->group(mc);
    cmd->add_option("--lr-decay-every", f->lr_decay_every, "step: epochs between drops")
        ->capture_default_str()
        ->check(CLI::PositiveNumber)
        ->group(mc);
    cmd->add_option("--lr-decay-epochs", f->lr_decay_epochs,
                    "cosine: epochs to decay over (default: --epochs)")
        ->group(mc);
    cmd->add_option("--lr-alpha", f->lr_alpha,
                    "cosine: the final rate as a fraction of the initial one")
        ->capture_default_str()
        ->group(mc);
}

// The directory a templated path is written in, up to its first field: "ckpt/{epoch}/m.h5"
// is written under "ckpt".
std::string fixed_part(const std::string& path) {
    const size_t brace = path.find('{');
    return brace == std::string::npos ? path : path.substr(0, path.rfind('/', brace) + 1) + "x";
}

// Builds the callbacks the flags ask for and checks them against the logs this fit will have,
// before any data is read: a bad flag fails the run before any work, and nothing on disk is
// touched.
std::vector<kiln::CallbackPtr> make_callbacks(const CallbackFlags& f, int epochs,
                                              double validation_split, const std::string& metric,
                                              double lr0, int verbose) {
    namespace cb = kiln::callbacks;
    const int say = verbose > 0 ? 1 : 0;  // --verbose 0 silences the callbacks too
    std::vector<kiln::CallbackPtr> out;
    if (f.mode != "auto") {
        const auto d = cb::metric_direction(f.monitor);
        const bool minimise = f.mode == "min";
        if (d && (*d == cb::Direction::kMinimize) != minimise) {
            std::fprintf(stderr,
                         "kiln: warning: --mode %s with --monitor %s, which auto mode "
                         "would %s; pass --mode %s or --mode auto\n",
                         f.mode.c_str(), f.monitor.c_str(), minimise ? "maximise" : "minimise",
                         minimise ? "max" : "min");
        }
    }
    if (f.checkpoint != "none") {
        std::string path = f.checkpoint;
        if (f.save_weights_only && !f.checkpoint_given)
            path = "best_model.weights.h5";
        check_writable(fixed_part(path), "--checkpoint");
        cb::ModelCheckpointArgs a;
        a.monitor = f.monitor;
        a.verbose = say;
        a.save_best_only = f.save_best_only;
        a.save_weights_only = f.save_weights_only;
        a.mode = f.mode;
        a.save_freq = cb::SaveFreq(f.save_freq);
        a.initial_value_threshold = f.initial_value_threshold;
        a.save_top_k = f.save_top_k;
        out.push_back(std::make_shared<cb::ModelCheckpoint>(path, a));
    }
    if (f.early_stopping != "none") {
        cb::EarlyStoppingArgs a;
        a.monitor = f.monitor;
        a.min_delta = f.min_delta;
        a.patience = f.patience;
        a.verbose = say;
        a.mode = f.mode;
        a.baseline = f.baseline;
        a.restore_best_weights = f.restore_best_weights;
        a.start_from_epoch = f.start_from_epoch;
        out.push_back(std::make_shared<cb::EarlyStopping>(a));
    }
    if (f.reduce_lr && !f.lr_schedule.empty()) {
        throw Error(
            "--reduce-lr-on-plateau and --lr-schedule both set the learning rate; "
            "use one");
    }
    if (f.reduce_lr) {
        cb::ReduceLROnPlateauArgs a;
        a.monitor = f.monitor;
        a.factor = f.reduce_lr_factor;
        a.patience = f.reduce_lr_patience;
        a.verbose = say;
        a.mode = f.mode;
        a.min_delta = f.reduce_lr_min_delta;
        a.cooldown = f.reduce_lr_cooldown;
        a.min_lr = f.min_lr;
        out.push_back(std::make_shared<cb::ReduceLROnPlateau>(a));
    }
    if (!f.lr_schedule.empty()) {
        cb::Schedule schedule;
        if (f.lr_schedule == "step") {
            schedule = cb::schedules::step(lr0, f.lr_decay_rate.value_or(0.5), f.lr_decay_every);
        } else if (f.lr_schedule == "exponential") {
            schedule = cb::schedules::exponential(lr0, f.lr_decay_rate.value_or(0.95));
        } else {
            const int decay_epochs = f.lr_decay_epochs > 0 ? f.lr_decay_epochs : epochs;
            schedule = cb::schedules::cosine(lr0, decay_epochs, f.lr_alpha);
        }
        out.push_back(std::make_shared<cb::LearningRateScheduler>(schedule, say));
    }
    if (f.terminate_on_nan)
        out.push_back(std::make_shared<cb::TerminateOnNaN>());
    if (!f.csv_log.empty()) {
        check_writable(f.csv_log, "--csv-log");
        out.push_back(std::make_shared<cb::CSVLogger>(f.csv_log, f.csv_separator, f.csv_append));
    }
    if (!f.backup_dir.empty()) {
        std::string dir = f.backup_dir;
        while (dir.size() > 1 && dir.back() == '/')
            dir.pop_back();
        check_writable(dir, "--backup-dir");  // its parent must exist; the folder is made
        out.push_back(std::make_shared<cb::BackupAndRestore>(dir, cb::SaveFreq(f.backup_save_freq),
                                                             !f.keep_backup, f.double_checkpoint));
    }

    // What fit will check, checked now: the logs' keys follow from the metric and the split.
    std::string metric_key = metric == "none" ? "" : (metric == "acc" ? "accuracy" : metric);
    kiln::FitParams params;
    params.epochs = epochs;
    params.verbose = verbose;
    params.batch_log_keys = kiln::batch_log_keys(metric_key);
    params.epoch_log_keys = kiln::epoch_log_keys(metric_key, validation_split > 0, out);
    for (const auto& c : out)
        c->validate(params);
    // The library follows Keras when the monitored key never comes (warnings, and best-only
    // saves every epoch); on the command line that is a mistake in the flags.
    const bool monitoring =
        (f.checkpoint != "none" && f.save_best_only) || f.early_stopping != "none" || f.reduce_lr;
    if (monitoring && std::find(params.epoch_log_keys.begin(), params.epoch_log_keys.end(),
                                f.monitor) == params.epoch_log_keys.end()) {
        std::string keys;
        for (const auto& k : params.epoch_log_keys)
            keys += (keys.empty() ? "" : ", ") + k;
        std::string hint;
        if (f.monitor.rfind("val_", 0) == 0 && validation_split <= 0) {
            hint = "; val_ keys need validation data, and --validation-split 0 gives none";
        }
        throw Error("--monitor " + f.monitor + ": the logs will have no such key (they will have " +
                    keys + ")" + hint);
    }
    return out;
}

struct FitFlags {
    DataFlags data;
    CallbackFlags callbacks;
    std::string model = "mlp";
    int epochs = 50;
    double validation_split = 0.1;
    std::string optimizer = "adam";
    double learning_rate = -1.0;
    std::string loss = "sparse_categorical_crossentropy";
    bool from_logits = false;
    std::string metric = "accuracy";
    uint64_t seed = 1;
    std::string precision = "fp32";    // the GEMMs' operand format (kiln/ops.h)
    std::string step_graphs = "auto";  // kiln/ops.h, StepGraphs
    bool no_shuffle = false;
    std::string metrics_json;
    std::string save;
    bool summary = false;
    std::string resume;  // a kiln checkpoint to continue from
    // Written when SIGINT or SIGTERM stops the run (kiln/interrupt.h); "none" for no file.
    std::string interrupt_checkpoint = "interrupted.h5";
    // Set after parsing: which of the flags that decide the data order were given.
    bool epochs_given = false, batch_size_given = false, validation_split_given = false,
         shuffle_given = false;
};

// A resumed run takes the interrupted run's epochs, batch size, validation split and shuffle
// (the checkpoint's fit_args) unless the flags say otherwise; a flag that differs is allowed,
// with a warning that the run will not be the one that was interrupted.
void take_fit_args(const kiln::TrainingState& state, FitFlags* f) {
    const auto stored = nlohmann::json::parse(state.fit_args_json, nullptr, false);
    if (!stored.is_object())
        return;
    auto take = [&](const char* key, const char* flag, bool given, auto* value) {
        using T = std::remove_pointer_t<decltype(value)>;
        if (!stored.contains(key))
            return;
        const T saved = stored[key].get<T>();
        if (!given) {
            *value = saved;
        } else if (*value != saved) {
            std::fprintf(stderr,
                         "kiln: warning: %s differs from the interrupted run's (%s); the "
                         "resumed run will not be the one that was interrupted\n",
                         flag, stored[key].dump().c_str());
        }
    };
    take("epochs", "--epochs", f->epochs_given, &f->epochs);
    take("batch_size", "--batch-size", f->batch_size_given, &f->data.batch_size);
    take("validation_split", "--validation-split", f->validation_split_given, &f->validation_split);
    bool shuffle = !f->no_shuffle;
    take("shuffle", "--no-shuffle", f->shuffle_given, &shuffle);
    f->no_shuffle = !shuffle;
}

// `kiln fit --resume FILE`: the model, its optimizer, loss and metric as the file has them,
// and the run's state (weights, optimizer state, step, seed, history, callbacks' state).
std::unique_ptr<kiln::Sequential> resume_model(FitFlags* f, kiln::TrainingState* state) {
    kiln::CompileOptions options;
    options.device = device_choice(f->data.device);
    kiln::parse_precision(f->precision, &options.precision);  // checked by the flag
    kiln::parse_step_graphs(f->step_graphs, &options.step_graphs);
    auto model = kiln::load_model(f->resume, options);
    kiln::throw_if_error(model->restore_training_state(f->resume, state));
    take_fit_args(*state, f);
    std::fprintf(stderr, "kiln: resuming from %s: %d of %d epochs done, step %lld\n",
                 f->resume.c_str(), state->epoch, f->epochs, static_cast<long long>(state->step));
    if (state->epoch >= f->epochs) {
        std::fprintf(stderr,
                     "kiln: %s has %d epochs done already; --epochs %d leaves nothing "
                     "to train\n",
                     f->resume.c_str(), state->epoch, f->epochs);
    }
    return model;
}

int run_fit(FitFlags f) {
    // Everything that can be checked is checked before the data is read or training starts.
    check_writable(f.metrics_json, "--metrics-json");
    check_writable(f.save, "--save");
    const std::string interrupt_checkpoint =
        f.interrupt_checkpoint == "none" ? "" : f.interrupt_checkpoint;
    check_writable(interrupt_checkpoint, "--interrupt-checkpoint");
    if (!interrupt_checkpoint.empty() && kiln::is_weights_file_name(interrupt_checkpoint)) {
        throw Error("--interrupt-checkpoint " + interrupt_checkpoint +
                    ": a file to resume from is a full model file (*.h5, not *.weights.h5)");
    }
    kiln::ModelConfig config;
    std::unique_ptr<kiln::Sequential> owned;
    kiln::TrainingState resumed;
    if (!f.resume.empty()) {
        owned = resume_model(&f, &resumed);
        if (!f.callbacks.reduce_lr &&
            resumed.callbacks_state_json.find("\"ReduceLROnPlateau:") != std::string::npos) {
            std::fprintf(stderr,
                         "kiln: warning: %s was written by a run with ReduceLROnPlateau (the cnn "
                         "preset adds it); without --reduce-lr-on-plateau and its arguments this "
                         "fit continues without it\n",
                         f.resume.c_str());
        }
    } else if (f.model == "mlp") {
        config = default_mlp();
    } else if (f.model == "cnn") {
        config = kiln::presets::mnist_convnet();
        apply_cnn_recipe(&f.callbacks);
    } else {
        kiln::throw_if_error(kiln::load_model_config(f.model, &config));
    }
    if (!owned)
        owned = std::make_unique<kiln::Sequential>(config);
    kiln::Sequential& model = *owned;
    const kiln::Optimizer optimizer = f.resume.empty()
                                          ? kiln::optimizer_from_name(f.optimizer, f.learning_rate)
                                          : model.optimizer();
    const kiln::Loss loss =
        f.resume.empty() ? kiln::loss_from_name(f.loss, f.from_logits) : model.loss();
    const std::string metric = f.resume.empty()              ? f.metric
                               : model.metric_name().empty() ? "none"
                                                             : model.metric_name();
    // The schedules start from the rate as given ("0.001"), not its float32 rounding.
    double lr0 = f.resume.empty() ? f.learning_rate : -1.0;
    if (!(lr0 > 0)) {
        char text[32];
        const auto end = std::to_chars(text, text + sizeof(text), optimizer.hyper.learning_rate);
        lr0 = std::strtod(std::string(text, end.ptr).c_str(), nullptr);
    }
    const std::vector<kiln::CallbackPtr> callbacks =
        make_callbacks(f.callbacks, f.epochs, f.validation_split, metric, lr0, f.data.verbose);

    kiln::data::Dataset data;
    kiln::throw_if_error(kiln::data::load_dataset(f.data.data, dataset_options(f.data), &data));

    kiln::CompileOptions options;
    options.device = device_choice(f.data.device);
    options.seed = f.seed;
    kiln::parse_precision(f.precision, &options.precision);  // checked by the flag
    kiln::parse_step_graphs(f.step_graphs, &options.step_graphs);
    std::vector<std::string> metrics;
    if (!f.metric.empty() && f.metric != "none")
        metrics.push_back(f.metric);
    if (f.resume.empty())
        model.compile(optimizer, loss, metrics, options);
    if (f.summary)
        std::printf("%s", model.summary().c_str());

    kiln::FitArgs args;
    args.epochs = f.epochs;
    args.batch_size = f.data.batch_size;
    args.validation_split = f.validation_split;
    args.shuffle = !f.no_shuffle;
    args.verbose = f.data.verbose;
    args.callbacks = callbacks;
    args.initial_epoch = std::min(resumed.epoch, f.epochs);
    args.resume_callbacks_state_json = resumed.callbacks_state_json;
    args.interrupt_checkpoint = interrupt_checkpoint;
    const auto start = std::chrono::steady_clock::now();
    try {
        model.fit(data.train.x, data.train.y, args);
    } catch (const kiln::Interrupted& stopped) {
        std::fprintf(stderr, "kiln: %s\n", stopped.what());
        if (!interrupt_checkpoint.empty() && model.iterations() > resumed.step) {
            std::fprintf(stderr, "kiln: continue with: kiln fit --resume %s\n",
                         interrupt_checkpoint.c_str());
        }
        return stopped.exit_code();
    }
    // A signal after the last step: training is complete and its files are written; the
    // test set is skipped, --save and --metrics-json are still written, and the exit code
    // says the run was stopped.
    const int late_signal = kiln::interrupt_requested();
    if (late_signal) {
        std::fprintf(stderr,
                     "kiln: signal %d after the last epoch: training is complete; the test "
                     "set is not evaluated\n",
                     late_signal);
    }
    // The whole run's epochs, a resumed run's earlier ones included.
    const kiln::History& history = model.run_history();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    nlohmann::json report;
    report["device"] = model.device_message();
    report["precision"] = kiln::precision_name(model.backend().precision());
    {
        const kiln::StepGraphStats& g = model.step_graph_stats();
        report["step_graphs"] = {{"enabled", g.enabled},         {"captures", g.captures},
                                 {"replays", g.replays},         {"eager_steps", g.eager_steps},
                                 {"train_nodes", g.train_nodes}, {"val_nodes", g.val_nodes},
                                 {"off_reason", g.off_reason}};
    }
    report["epochs"] = history.epoch;
    report["fit_seconds"] = seconds;
    report["host_reads"] = model.backend().reads();
    nlohmann::json hist = nlohmann::json::object();
    for (const auto& key : history.keys)
        hist[key] = history.history.at(key);
    report["history"] = hist;
    if (late_signal) {
        // nothing more to compute
    } else if (data.has_test()) {
        const kiln::Logs test = model.evaluate(data.test.x, data.test.y, f.data.batch_size);
        std::string line;
        for (const auto& [key, value] : test.items()) {
            line +=
                (line.empty() ? "" : " - ") + ("test_" + key) + ": " + kiln::format_metric(value);
            report["test"][key] = value;
        }
        std::printf("%s\n", line.c_str());
    } else {
        std::fprintf(stderr, "kiln: %s has no test split; nothing to evaluate\n",
                     f.data.data.c_str());
    }
    if (!f.save.empty()) {
        kiln::throw_if_error(kiln::is_weights_file_name(f.save) ? model.save_weights(f.save)
                                                                : model.save(f.save));
        if (f.data.verbose > 0)
            std::printf("saved model to %s\n", f.save.c_str());
    }
    if (!f.metrics_json.empty())
        write_file_atomically(f.metrics_json, report.dump(2) + "\n");
    // A checkpoint whose newest write failed was warned about when it failed; the run fails.
    const kiln::Status checkpoints = model.last_checkpoint_status();
    if (!checkpoints.is_ok()) {
        std::fprintf(stderr, "kiln: error: the last checkpoint of the run was not written: %s\n",
                     checkpoints.message().c_str());
        return 1;
    }
    return late_signal ? 128 + late_signal : 0;
}

// A saved model of either kind: a full .h5 (kiln's or Keras's) or a weights file kiln wrote
// carries its architecture; a Keras weights file needs `architecture`, a model JSON (its
// to_json()), and is then compiled with `loss` and accuracy.
std::unique_ptr<kiln::Sequential> open_model(const std::string& path,
                                             const std::string& architecture,
                                             const std::string& loss,
                                             const kiln::CompileOptions& options) {
    if (architecture.empty()) {
        if (kiln::is_weights_file_name(path)) {
            kiln::CheckpointInfo info;
            kiln::throw_if_error(kiln::inspect_checkpoint(path, &info));
            if (!info.has_config) {
                throw Error(path +
                            " holds weights only, without the model's config (Keras wrote "
                            "it): pass --model MODEL.json (the model's to_json())");
            }
        }
        return kiln::load_model(path, options);
    }
    kiln::ModelConfig config;
    kiln::throw_if_error(kiln::load_model_config(architecture, &config));
    auto model = std::make_unique<kiln::Sequential>(config);
    model->compile(kiln::optimizers::Adam(), kiln::loss_from_name(loss), {"accuracy"}, options);
    kiln::throw_if_error(model->load_weights(path));
    return model;
}

// `kiln inspect FILE`: what a checkpoint holds, and whether its checksums verify.
int run_inspect(const std::string& path) {
    kiln::CheckpointInfo info;
    kiln::throw_if_error(kiln::inspect_checkpoint(path, &info));
    std::printf("%s: %s", path.c_str(),
                info.weights_only ? "weights only (Keras 3 .weights.h5 layout)"
                                  : "full model (Keras legacy HDF5 layout)");
    if (!info.writer.empty())
        std::printf(", written by %s", info.writer.c_str());
    std::printf("\n");
    if (info.has_config)
        std::printf("Model: \"%s\"\n", info.config.name.c_str());
    std::printf(" %-28s %s\n", "Layer (type)", "Weights");
    for (size_t i = 0; i < info.layers.size(); ++i) {
        const kiln::LayerWeights& lw = info.layers[i];
        std::string label = lw.layer_name;
        if (info.has_config && i + 1 < info.config.layers.size()) {
            label += " (" + info.config.layers[i + 1].class_name + ")";
        }
        std::string weights;
        for (const kiln::NamedArray& a : lw.weights) {
            weights += (weights.empty() ? "" : ", ") + a.name + " " + kiln::shape_string(a.shape);
        }
        std::printf(" %-28s %s\n", label.c_str(), weights.empty() ? "-" : weights.c_str());
    }
    std::printf("Total params: %lld\n", static_cast<long long>(info.parameter_count));
    if (info.training) {
        const kiln::TrainingState& t = *info.training;
        const std::string mid_epoch =
            t.batch > 0 ? " (+" + std::to_string(t.batch) + " batches of the next)" : "";
        std::printf("Training state: epoch %d%s, step %lld, seed %llu, %s learning_rate %g, %s\n",
                    t.epoch, mid_epoch.c_str(), static_cast<long long>(t.step),
                    static_cast<unsigned long long>(t.seed), t.optimizer.c_str(), t.learning_rate,
                    t.resumable ? "resumable (kiln fit --resume)"
                                : "not resumable (weights from a snapshot)");
        if (!t.history_epochs.empty()) {
            std::string line;
            for (const auto& [key, values] : t.history) {
                line +=
                    (line.empty() ? "" : " - ") + key + ": " + kiln::format_metric(values.back());
            }
            std::printf("Last epoch (%d): %s\n", t.history_epochs.back() + 1, line.c_str());
        }
        if (t.callbacks_state_json != "{}") {
            std::printf("Callbacks' state: %s\n", t.callbacks_state_json.c_str());
        }
    } else {
        std::printf(
            "No kiln group: no training state or checksums to verify (not written by "
            "kiln)\n");
    }
    if (!info.checksums.empty()) {
        int failed = 0;
        for (const kiln::ChecksumResult& c : info.checksums) {
            if (c.ok)
                continue;
            ++failed;
            std::printf("Checksum FAILED: %s: %s\n", c.dataset.c_str(), c.detail.c_str());
        }
        if (failed == 0) {
            std::printf("Checksums: all %zu datasets verified (crc32)\n", info.checksums.size());
        } else {
            std::fprintf(stderr, "kiln: error: %s: %d of %zu datasets fail their checksums\n",
                         path.c_str(), failed, info.checksums.size());
            return 1;
        }
    }
    return 0;
}

int run_evaluate(const std::string& model_path, const DataFlags& f, const std::string& architecture,
                 const std::string& loss) {
    kiln::CompileOptions options;
    options.device = device_choice(f.device);
    auto model = open_model(model_path, architecture, loss, options);
    kiln::data::Dataset data;
    kiln::throw_if_error(kiln::data::load_dataset(f.data, dataset_options(f), &data));
    const kiln::data::Split& split = data.has_test() ? data.test : data.train;
    const kiln::Logs logs = model->evaluate(split.x, split.y, f.batch_size, f.verbose);
    std::string line;
    for (const auto& [key, value] : logs.items()) {
        line += (line.empty() ? "" : " - ") + key + ": " + kiln::format_metric(value);
    }
    std::printf("%s\n", line.c_str());
    return 0;
}

int run_predict(const std::string& model_path, const DataFlags& f, const std::string& output,
                const std::string& architecture) {
    check_writable(output, "--output");
    kiln::CompileOptions options;
    options.device = device_choice(f.device);
    auto model = open_model(model_path, architecture, "sparse_categorical_crossentropy", options);
    kiln::data::Array x;
    kiln::throw_if_error(kiln::data::load_inputs(f.data, dataset_options(f), &x));
    const kiln::data::Array y = model->predict(x, f.batch_size);
    // Write beside the target, then rename, so a failure never leaves half a file.
    const std::string tmp = output + ".tmp-" + std::to_string(getpid());
    const kiln::Status status = kiln::data::save_npy(tmp, y.shape, y.values.data());
    if (!status.is_ok()) {
        std::remove(tmp.c_str());
        kiln::throw_if_error(status);
    }
    if (std::rename(tmp.c_str(), output.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw Error("renaming " + tmp + " to " + output + " failed");
    }
    if (f.verbose > 0) {
        std::printf("wrote predictions %s to %s\n", kiln::shape_string(y.shape).c_str(),
                    output.c_str());
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    // First of all, so that a signal during start-up is a request too (fit takes it at its
    // first step); the other commands go back to the default handling below.
    kiln::install_interrupt_handlers();
    CLI::App app{
        "kiln: a GPU-native training engine with Keras's fit.\n"
        "Run `kiln fit` for the default job (an MLP on Fashion-MNIST), or\n"
        "`kiln COMMAND --help` for a command's flags."};
    app.require_subcommand(1);
    app.set_version_flag("--version", std::string("kiln ") + KILN_VERSION);

    FitFlags fit;
    CLI::App* fit_cmd = app.add_subcommand("fit",
                                           "Train a model (default: the MLP recipe on "
                                           "Fashion-MNIST), then evaluate it on the test set");
    add_data_flags(fit_cmd, &fit.data, true);
    fit_cmd
        ->add_option("--model", fit.model,
                     "mlp (784-256-128-10, relu, softmax), cnn (Keras's simple MNIST convnet "
                     "on 28x28x1 images: two Conv2D + MaxPooling2D, Dropout 0.5, Dense 10; its "
                     "recipe adds ReduceLROnPlateau(factor 0.2, patience 2) to the default "
                     "callbacks, --reduce-lr-on-plateau=false for none) or a Keras model JSON "
                     "file (model.to_json())")
        ->capture_default_str();
    fit_cmd->add_option("--epochs", fit.epochs, "Epochs to train")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    fit_cmd
        ->add_option("--validation-split", fit.validation_split,
                     "Fraction of the training data, taken from its end before shuffling, "
                     "held out for validation")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 0.999999));
    fit_cmd
        ->add_option("--optimizer", fit.optimizer,
                     "sgd, adam, adamw or rmsprop, with Keras's defaults")
        ->capture_default_str()
        ->check(CLI::IsMember({"sgd", "adam", "adamw", "rmsprop"}));
    fit_cmd->add_option("--learning-rate", fit.learning_rate,
                        "Learning rate (default: the optimizer's Keras default)");
    fit_cmd
        ->add_option("--loss", fit.loss,
                     "sparse_categorical_crossentropy, categorical_crossentropy, "
                     "binary_crossentropy, mean_squared_error (mse), mean_absolute_error (mae)")
        ->capture_default_str();
    fit_cmd->add_flag("--from-logits", fit.from_logits,
                      "The model outputs logits (the cross-entropy losses' from_logits=True)");
    fit_cmd
        ->add_option("--metric", fit.metric,
                     "accuracy (the kind Keras picks for the loss), sparse_categorical_accuracy, "
                     "categorical_accuracy, binary_accuracy, or none")
        ->capture_default_str();
    fit_cmd
        ->add_option("--seed", fit.seed,
                     "Seeds weights, shuffles and dropout: same seed, same backend, same run")
        ->capture_default_str();
    fit_cmd
        ->add_option("--precision", fit.precision,
                     "GEMM operands: fp32 (TF32 off), tf32, or bf16 (Dense in bfloat16, Conv2D "
                     "in TF32); float32 sums, weights and optimizer state in every mode")
        ->capture_default_str()
        ->check(CLI::IsMember({"fp32", "tf32", "bf16"}));
    fit_cmd
        ->add_option("--step-graphs", fit.step_graphs,
                     "Capture the training step and the validation pass once as graphs and "
                     "replay them: auto (on CUDA only), on, off")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "on", "off"}));
    fit_cmd->add_flag("--no-shuffle", fit.no_shuffle, "Keep the training order every epoch");
    fit_cmd->add_option("--metrics-json", fit.metrics_json,
                        "Also write the history and the test figures to this JSON file");
    fit_cmd->add_option("--save", fit.save,
                        "Save the trained model to this .h5 file (or its weights, with the "
                        "training state, to a .weights.h5 file)");
    fit_cmd->add_flag("--summary", fit.summary, "Print the model summary before training");
    fit_cmd
        ->add_option("--interrupt-checkpoint", fit.interrupt_checkpoint,
                     "On SIGINT or SIGTERM: finish the step, write this file to --resume "
                     "from, exit 130 or 143 (a second signal exits at once); none for no file")
        ->capture_default_str();
    CLI::Option* resume = fit_cmd->add_option(
        "--resume", fit.resume,
        "Continue the run a kiln checkpoint (.h5 or .weights.h5) was taken from, to --epochs: "
        "its model, optimizer, loss and metric, weights, optimizer state, step, seed, history "
        "and callbacks' state; with the same data and flags, the same run as one that never "
        "stopped");
    for (const char* owned_by_file : {"--model", "--optimizer", "--learning-rate", "--loss",
                                      "--from-logits", "--metric", "--seed"}) {
        resume->excludes(fit_cmd->get_option(owned_by_file));
    }
    add_callback_flags(fit_cmd, &fit.callbacks);

    std::string eval_model;
    DataFlags eval;
    CLI::App* eval_cmd = app.add_subcommand("evaluate",
                                            "Loss and metric of a saved model on a "
                                            "dataset's test split");
    eval_cmd
        ->add_option("MODEL", eval_model,
                     "A model file saved by kiln or Keras (.h5), or a weights file "
                     "(.weights.h5: kiln's, or Keras's with --model)")
        ->required();
    add_data_flags(eval_cmd, &eval, false);
    std::string eval_architecture, eval_loss = "sparse_categorical_crossentropy";
    eval_cmd->add_option("--model", eval_architecture,
                         "The model JSON (to_json()) for a weights file that has no config");
    eval_cmd->add_option("--loss", eval_loss, "The loss, with --model")->capture_default_str();

    std::string pred_model, pred_output;
    DataFlags pred;
    CLI::App* pred_cmd = app.add_subcommand("predict", "Outputs of a saved model, as an NPY file");
    pred_cmd
        ->add_option("MODEL", pred_model,
                     "A model file saved by kiln or Keras (.h5), or a weights file "
                     "(.weights.h5: kiln's, or Keras's with --model)")
        ->required();
    add_data_flags(pred_cmd, &pred, false);
    pred_cmd->add_option("--output", pred_output, "Where to write the predictions (.npy)")
        ->required();
    std::string pred_architecture;
    pred_cmd->add_option("--model", pred_architecture,
                         "The model JSON (to_json()) for a weights file that has no config");

    std::string inspect_path;
    CLI::App* inspect_cmd = app.add_subcommand(
        "inspect",
        "What a model or checkpoint file holds (layers, shapes, parameters, epoch, "
        "metrics) and whether its checksums verify; exits non-zero if one fails");
    inspect_cmd->add_option("FILE", inspect_path, "A .h5 or .weights.h5 file")->required();

#if KILN_WITH_BENCH
    kiln::bench::SuiteOptions bench;
    CLI::App* bench_cmd = kiln::bench::add_bench_command(app, &bench);
#endif

    CLI11_PARSE(app, argc, argv);
    fit.callbacks.checkpoint_given = fit_cmd->count("--checkpoint") > 0;
    fit.callbacks.reduce_lr_given = fit_cmd->count("--reduce-lr-on-plateau") > 0;
    fit.callbacks.reduce_lr_factor_given = fit_cmd->count("--reduce-lr-factor") > 0;
    fit.callbacks.reduce_lr_patience_given = fit_cmd->count("--reduce-lr-patience") > 0;
    fit.epochs_given = fit_cmd->count("--epochs") > 0;
    fit.batch_size_given = fit_cmd->count("--batch-size") > 0;
    fit.validation_split_given = fit_cmd->count("--validation-split") > 0;
    fit.shuffle_given = fit_cmd->count("--no-shuffle") > 0;
    try {
        if (fit_cmd->parsed())
            return run_fit(fit);
        kiln::uninstall_interrupt_handlers();
        if (eval_cmd->parsed()) {
            return run_evaluate(eval_model, eval, eval_architecture, eval_loss);
        }
        if (pred_cmd->parsed()) {
            return run_predict(pred_model, pred, pred_output, pred_architecture);
        }
        if (inspect_cmd->parsed())
            return run_inspect(inspect_path);
#if KILN_WITH_BENCH
        if (bench_cmd->parsed())
            return kiln::bench::run_suite(bench);
#endif
    } catch (const std::exception& e) {
        std::fprintf(stderr, "kiln: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
