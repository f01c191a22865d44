// bench_fit: the epoch time of kiln's default recipe (MLP 784-256-128-10, Adam, batch 32,
// validation_split 0.1 of Fashion-MNIST), on the CPU or a GPU; with --model cnn, of Keras's
// simple MNIST convnet on the same data as 28×28×1 images (kiln/presets.h; the figures use
// --batch-size 128, as the Keras example does).
//
//     bench_fit [--model mlp|cnn] [--device cpu|cuda|auto] [--epochs N] [--warmup-epochs N]
//               [--batch-size B] [--data SPEC] [--threads N] [--early-stopping on|off]
//               [--json FILE]
//
// An epoch is timed as fit_timing.h says: its steps, its validation pass, the one read that
// brings its figures to the host and the callbacks' work at its end, so it is the time a user
// waits per epoch. Warm-up epochs run first and are not timed. `kiln bench` runs this and the
// other cases of the suite (bench/suite.h). The median of the timed epochs is reported with
// samples per second and the blocking device reads per epoch.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fit_timing.h"
#include "kiln/kiln.h"

namespace {

int usage(const char* why) {
    std::fprintf(stderr,
                 "bench_fit: %s\nusage: bench_fit [--model mlp|cnn] [--device cpu|cuda|auto] "
                 "[--epochs N] [--warmup-epochs N] [--batch-size B] [--data SPEC] [--threads N] "
                 "[--json FILE]\n",
                 why);
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    std::string device = "cpu", data_spec = "fashion-mnist", json_path, model_name = "mlp";
    int epochs = 3, warmup = 1, threads = 0;
    int64_t batch = 32;
    // EarlyStopping with restore_best_weights and a patience that never runs out: every epoch
    // pays the monitor and, when val_loss improves, the device-side snapshot.
    bool early_stopping = false;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (i + 1 >= argc)
            return usage(("missing value for " + arg).c_str());
        const char* value = argv[++i];
        if (arg == "--model") {
            model_name = value;
        } else if (arg == "--device") {
            device = value;
        } else if (arg == "--epochs") {
            epochs = std::atoi(value);
        } else if (arg == "--warmup-epochs") {
            warmup = std::atoi(value);
        } else if (arg == "--batch-size") {
            batch = std::atoll(value);
        } else if (arg == "--data") {
            data_spec = value;
        } else if (arg == "--threads") {
            threads = std::atoi(value);
        } else if (arg == "--early-stopping") {
            early_stopping = std::string(value) == "on";
        } else if (arg == "--json") {
            json_path = value;
        } else {
            return usage(("unknown flag " + arg).c_str());
        }
    }
    if (epochs < 1 || warmup < 0 || batch < 1)
        return usage("need epochs >= 1, batch >= 1");
    if (model_name != "mlp" && model_name != "cnn")
        return usage("--model is mlp or cnn");
    // The CPU backend reads KILN_NUM_THREADS when it first starts its pool.
    if (threads > 0)
        setenv("KILN_NUM_THREADS", std::to_string(threads).c_str(), 1);

    kiln::data::Dataset data;
    const kiln::Status status = kiln::data::load_dataset(data_spec, {}, &data);
    if (!status.is_ok()) {
        std::fprintf(stderr, "bench_fit: %s\n", status.message().c_str());
        return 1;
    }
    try {
        const kiln::DeviceChoice choice = device == "cuda"  ? kiln::DeviceChoice::kCuda
                                          : device == "cpu" ? kiln::DeviceChoice::kCpu
                                                            : kiln::DeviceChoice::kAuto;
        std::unique_ptr<kiln::Sequential> compiled = kiln::bench::compile_model(model_name, choice);
        kiln::Sequential& model = *compiled;
        kiln::bench::FitTimingArgs args;
        args.batch_size = batch;
        args.warmup_epochs = warmup;
        args.epochs = epochs;
        args.early_stopping = early_stopping;
        const kiln::bench::FitTiming timing =
            kiln::bench::time_fit(model, data.train.x, data.train.y, args);

        const std::vector<double>& timed = timing.epoch_seconds;
        const double med = timing.median_epoch();
        const int64_t train_samples = timing.train_samples;
        const uint64_t max_reads = timing.max_reads_per_epoch;
        const kiln::Logs& last = timing.last;

        std::printf("kiln bench_fit: %s, %s\n", model_name.c_str(),
                    model.backend().description().c_str());
        std::printf("  batch %lld, %lld training samples, %d warm-up + %d timed epochs\n",
                    static_cast<long long>(batch), static_cast<long long>(train_samples), warmup,
                    epochs);
        for (size_t i = 0; i < timed.size(); ++i)
            std::printf("  epoch %zu: %.3f s\n", i + 1, timed[i]);
        std::printf("  median epoch: %.3f s (%.0f samples/s), device reads per epoch: %llu\n", med,
                    static_cast<double>(train_samples) / med,
                    static_cast<unsigned long long>(max_reads));
        std::printf("  val_loss %.4f, val_accuracy %.4f\n", *last.get("val_loss"),
                    *last.get("val_accuracy"));

        if (!json_path.empty()) {
            nlohmann::json j = {
                {"engine", "kiln"},
                {"model", model_name},
                {"early_stopping", early_stopping},
                {"device", model.backend().description()},
                {"batch_size", batch},
                {"epoch_times_s", timed},
                {"median_epoch_s", med},
                {"samples_per_s", static_cast<double>(train_samples) / med},
                {"host_reads_per_epoch", max_reads},
                {"val_loss", *last.get("val_loss")},
                {"val_accuracy", *last.get("val_accuracy")},
            };
            std::ofstream(json_path) << j.dump(2) << "\n";
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_fit: %s\n", e.what());
        return 1;
    }
    return 0;
}
