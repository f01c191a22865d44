// The `kiln` command: fit, evaluate and predict, with flags named after Keras's arguments.
//
// `kiln fit` alone runs the default job: the MLP 784-256-128-10 on Fashion-MNIST with Adam,
// 50 epochs, batch 32, validation_split 0.1, then the test set.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "kiln/kiln.h"

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
    cmd->add_option("--csv-delimiter", f->csv_delimiter, "CSV field separator")->capture_default_str();
    cmd->add_option("--batch-size", f->batch_size, "Samples per batch (Keras batch_size)")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    cmd->add_option("--device", f->device,
                    "auto: CUDA when a usable GPU is present, else the CPU; cuda; cpu")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "cuda", "cpu"}));
    cmd->add_option("--verbose", f->verbose,
                    fit ? "0 silent, 1 progress bar, 2 one line per epoch" : "0 silent, 1 a summary line")
        ->capture_default_str()
        ->check(CLI::Range(0, 2));
}

kiln::DeviceChoice device_choice(const std::string& name) {
    if (name == "cuda") return kiln::DeviceChoice::kCuda;
    if (name == "cpu") return kiln::DeviceChoice::kCpu;
    return kiln::DeviceChoice::kAuto;
}

kiln::data::DatasetOptions dataset_options(const DataFlags& f) {
    kiln::data::DatasetOptions options;
    options.test_spec = f.test_data;
    options.csv.label_column = f.label_column;
    if (f.csv_delimiter.size() != 1) throw Error("--csv-delimiter must be one character");
    options.csv.delimiter = f.csv_delimiter[0];
    return options;
}

// Fails before any work when a file we will write at the end could not be written, so that a
// long run never ends in an error about its output path.
void check_writable(const std::string& path, const char* flag) {
    if (path.empty()) return;
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

struct FitFlags {
    DataFlags data;
    std::string model = "mlp";
    int epochs = 50;
    double validation_split = 0.1;
    std::string optimizer = "adam";
    double learning_rate = -1.0;
    std::string loss = "sparse_categorical_crossentropy";
    bool from_logits = false;
    std::string metric = "accuracy";
    uint64_t seed = 1;
    bool no_shuffle = false;
    std::string metrics_json;
    std::string save;
    bool summary = false;
};

int run_fit(const FitFlags& f) {
    // Everything that can be checked is checked before the data is read or training starts.
    check_writable(f.metrics_json, "--metrics-json");
    check_writable(f.save, "--save");
    kiln::ModelConfig config;
    if (f.model == "mlp") {
        config = default_mlp();
    } else {
        kiln::throw_if_error(kiln::load_model_config(f.model, &config));
    }
    kiln::Sequential model(config);
    const kiln::Optimizer optimizer = kiln::optimizer_from_name(f.optimizer, f.learning_rate);
    const kiln::Loss loss = kiln::loss_from_name(f.loss, f.from_logits);

    kiln::data::Dataset data;
    kiln::throw_if_error(kiln::data::load_dataset(f.data.data, dataset_options(f.data), &data));

    kiln::CompileOptions options;
    options.device = device_choice(f.data.device);
    options.seed = f.seed;
    std::vector<std::string> metrics;
    if (!f.metric.empty() && f.metric != "none") metrics.push_back(f.metric);
    model.compile(optimizer, loss, metrics, options);
    if (f.summary) std::printf("%s", model.summary().c_str());

    kiln::FitArgs args;
    args.epochs = f.epochs;
    args.batch_size = f.data.batch_size;
    args.validation_split = f.validation_split;
    args.shuffle = !f.no_shuffle;
    args.verbose = f.data.verbose;
    const auto start = std::chrono::steady_clock::now();
    const kiln::History history = model.fit(data.train.x, data.train.y, args);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    nlohmann::json report;
    report["device"] = model.device_message();
    report["epochs"] = history.epoch;
    report["fit_seconds"] = seconds;
    report["host_reads"] = model.backend().reads();
    nlohmann::json hist = nlohmann::json::object();
    for (const auto& key : history.keys) hist[key] = history.history.at(key);
    report["history"] = hist;
    if (data.has_test()) {
        const kiln::Logs test = model.evaluate(data.test.x, data.test.y, f.data.batch_size);
        std::string line;
        for (const auto& [key, value] : test.items()) {
            line += (line.empty() ? "" : " - ") + ("test_" + key) + ": " + kiln::format_metric(value);
            report["test"][key] = value;
        }
        std::printf("%s\n", line.c_str());
    } else {
        std::fprintf(stderr, "kiln: %s has no test split; nothing to evaluate\n",
                     f.data.data.c_str());
    }
    if (!f.save.empty()) {
        kiln::throw_if_error(model.save(f.save));
        if (f.data.verbose > 0) std::printf("saved model to %s\n", f.save.c_str());
    }
    if (!f.metrics_json.empty()) write_file_atomically(f.metrics_json, report.dump(2) + "\n");
    return 0;
}

int run_evaluate(const std::string& model_path, const DataFlags& f) {
    kiln::CompileOptions options;
    options.device = device_choice(f.device);
    auto model = kiln::load_model(model_path, options);
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

int run_predict(const std::string& model_path, const DataFlags& f, const std::string& output) {
    check_writable(output, "--output");
    kiln::CompileOptions options;
    options.device = device_choice(f.device);
    auto model = kiln::load_model(model_path, options);
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
    CLI::App app{"kiln: a GPU-native training engine with Keras's fit.\n"
                 "Run `kiln fit` for the default job (an MLP on Fashion-MNIST), or\n"
                 "`kiln COMMAND --help` for a command's flags."};
    app.require_subcommand(1);
    app.set_version_flag("--version", std::string("kiln ") + KILN_VERSION);

    FitFlags fit;
    CLI::App* fit_cmd = app.add_subcommand("fit", "Train a model (default: the MLP recipe on "
                                                  "Fashion-MNIST), then evaluate it on the test set");
    add_data_flags(fit_cmd, &fit.data, true);
    fit_cmd->add_option("--model", fit.model,
                        "mlp (784-256-128-10, relu, softmax) or a Keras model JSON file "
                        "(model.to_json())")
        ->capture_default_str();
    fit_cmd->add_option("--epochs", fit.epochs, "Epochs to train")->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    fit_cmd->add_option("--validation-split", fit.validation_split,
                        "Fraction of the training data, taken from its end before shuffling, "
                        "held out for validation")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 0.999999));
    fit_cmd->add_option("--optimizer", fit.optimizer,
                        "sgd, adam, adamw or rmsprop, with Keras's defaults")
        ->capture_default_str()
        ->check(CLI::IsMember({"sgd", "adam", "adamw", "rmsprop"}));
    fit_cmd->add_option("--learning-rate", fit.learning_rate,
                        "Learning rate (default: the optimizer's Keras default)");
    fit_cmd->add_option("--loss", fit.loss,
                        "sparse_categorical_crossentropy, categorical_crossentropy, "
                        "binary_crossentropy, mean_squared_error (mse), mean_absolute_error (mae)")
        ->capture_default_str();
    fit_cmd->add_flag("--from-logits", fit.from_logits,
                      "The model outputs logits (the cross-entropy losses' from_logits=True)");
    fit_cmd->add_option("--metric", fit.metric,
                        "accuracy (the kind Keras picks for the loss), sparse_categorical_accuracy, "
                        "categorical_accuracy, binary_accuracy, or none")
        ->capture_default_str();
    fit_cmd->add_option("--seed", fit.seed,
                        "Seeds weights, shuffles and dropout: same seed, same backend, same run")
        ->capture_default_str();
    fit_cmd->add_flag("--no-shuffle", fit.no_shuffle, "Keep the training order every epoch");
    fit_cmd->add_option("--metrics-json", fit.metrics_json,
                        "Also write the history and the test figures to this JSON file");
    fit_cmd->add_option("--save", fit.save, "Save the trained model to this .h5 file");
    fit_cmd->add_flag("--summary", fit.summary, "Print the model summary before training");

    std::string eval_model;
    DataFlags eval;
    CLI::App* eval_cmd = app.add_subcommand("evaluate", "Loss and metric of a saved model on a "
                                                        "dataset's test split");
    eval_cmd->add_option("MODEL", eval_model, "A model file saved by kiln or Keras (.h5)")
        ->required();
    add_data_flags(eval_cmd, &eval, false);

    std::string pred_model, pred_output;
    DataFlags pred;
    CLI::App* pred_cmd = app.add_subcommand("predict", "Outputs of a saved model, as an NPY file");
    pred_cmd->add_option("MODEL", pred_model, "A model file saved by kiln or Keras (.h5)")
        ->required();
    add_data_flags(pred_cmd, &pred, false);
    pred_cmd->add_option("--output", pred_output, "Where to write the predictions (.npy)")
        ->required();

    CLI11_PARSE(app, argc, argv);
    try {
        if (fit_cmd->parsed()) return run_fit(fit);
        if (eval_cmd->parsed()) return run_evaluate(eval_model, eval);
        if (pred_cmd->parsed()) return run_predict(pred_model, pred, pred_output);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "kiln: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
