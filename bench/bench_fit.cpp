// bench_fit: the epoch time of kiln's default recipe (MLP 784-256-128-10, Adam, batch 32,
// validation_split 0.1 of Fashion-MNIST), on the CPU or a GPU; with --model cnn, of Keras's
// simple MNIST convnet on the same data as 28×28×1 images (kiln/presets.h; the figures use
// --batch-size 128, as the Keras example does).
//
//     bench_fit [--model mlp|cnn] [--device cpu|cuda|auto] [--epochs N] [--warmup-epochs N]
//               [--batch-size B] [--data SPEC] [--threads N] [--early-stopping on|off]
//               [--json FILE]
//
// An epoch is timed from its first step to the end of its validation pass, including the one
// read that brings the epoch's figures to the host, so it is the time a user waits per epoch.
// Warm-up epochs run first and are not timed. The median of the timed epochs is reported with
// samples per second and the blocking device reads per epoch.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/kiln.h"

namespace {

// Times each epoch and counts the backend's blocking reads across it.
class EpochTimer : public kiln::Callback {
  public:
    void on_epoch_begin(int, const kiln::Logs&) override {
        reads_at_begin_ = model_->backend().reads();
        start_ = std::chrono::steady_clock::now();
    }
    void on_epoch_end(int, const kiln::Logs& logs) override {
        seconds.push_back(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
        reads.push_back(model_->backend().reads() - reads_at_begin_);
        last = logs;
    }

    std::vector<double> seconds;
    std::vector<uint64_t> reads;
    kiln::Logs last;

  private:
    uint64_t reads_at_begin_ = 0;
    std::chrono::steady_clock::time_point start_;
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

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
        kiln::Sequential mlp({kiln::layers::Dense(256, "relu"), kiln::layers::Dense(128, "relu"),
                              kiln::layers::Dense(10, "softmax")},
                             kiln::layers::Input({784}));
        kiln::Sequential cnn(kiln::presets::mnist_convnet());
        kiln::Sequential& model = model_name == "cnn" ? cnn : mlp;
        kiln::CompileOptions options;
        options.device = device == "cuda"  ? kiln::DeviceChoice::kCuda
                         : device == "cpu" ? kiln::DeviceChoice::kCpu
                                           : kiln::DeviceChoice::kAuto;
        model.compile(kiln::optimizers::Adam(), kiln::losses::SparseCategoricalCrossentropy(),
                      {"accuracy"}, options);
        auto timer = std::make_shared<EpochTimer>();
        kiln::FitArgs args;
        args.epochs = warmup + epochs;
        args.batch_size = batch;
        args.validation_split = 0.1;
        args.verbose = 0;
        if (early_stopping) {
            kiln::callbacks::EarlyStoppingArgs es;
            es.patience = args.epochs + 1;
            es.restore_best_weights = true;
            args.callbacks.push_back(std::make_shared<kiln::callbacks::EarlyStopping>(es));
        }
        args.callbacks.push_back(timer);  // last, so an epoch's time includes the others' work
        model.fit(data.train.x, data.train.y, args);

        const std::vector<double> timed(timer->seconds.begin() + warmup, timer->seconds.end());
        const double med = median(timed);
        const int64_t train_samples = static_cast<int64_t>(
            std::floor(static_cast<double>(data.train.x.rows()) * (1.0 - args.validation_split)));
        const uint64_t max_reads = *std::max_element(timer->reads.begin(), timer->reads.end());

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
        std::printf("  val_loss %.4f, val_accuracy %.4f\n", *timer->last.get("val_loss"),
                    *timer->last.get("val_accuracy"));

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
                {"val_loss", *timer->last.get("val_loss")},
                {"val_accuracy", *timer->last.get("val_accuracy")},
            };
            std::ofstream(json_path) << j.dump(2) << "\n";
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_fit: %s\n", e.what());
        return 1;
    }
    return 0;
}
