#include "fit_timing.h"

#include <algorithm>
#include <array>
#include <cmath>

namespace kiln {
namespace bench {

double median(std::vector<double> values) {
    if (values.empty())
        return 0.0;
    std::sort(values.begin(), values.end());
    const size_t n = values.size();
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

// ---- EpochTimer ----------------------------------------------------------------------------

namespace {
double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

void EpochTimer::on_epoch_begin(int, const Logs&) {
    reads_at_begin_ = model_->backend().reads();
    validation_seconds.push_back(0.0);  // stays 0 in an epoch without validation
    start_ = Clock::now();
}

void EpochTimer::on_test_begin(const Logs&) {
    if (sync_at_validation_)
        model_->backend().synchronize();
    validation_start_ = Clock::now();
}

void EpochTimer::on_test_end(const Logs&) {
    validation_seconds.back() = seconds_since(validation_start_);
}

void EpochTimer::after_epoch_end(int, const Logs& logs) {
    seconds.push_back(seconds_since(start_));
    reads.push_back(model_->backend().reads() - reads_at_begin_);
    last = logs;
}

// ---- models --------------------------------------------------------------------------------

std::unique_ptr<Sequential> make_model(const std::string& name) {
    using layers::Dense;
    if (name == "mlp") {
        return std::make_unique<Sequential>(
            std::vector<LayerPtr>{Dense(256, "relu"), Dense(128, "relu"), Dense(10, "softmax")},
            layers::Input({784}));
    }
    if (name == "mlp-wide") {
        return std::make_unique<Sequential>(
            std::vector<LayerPtr>{Dense(2048, "relu"), Dense(2048, "relu"), Dense(2048, "relu"),
                                  Dense(10, "softmax")},
            layers::Input({784}));
    }
    if (name == "cnn")
        return std::make_unique<Sequential>(presets::mnist_convnet());
    throw Error("unknown benchmark model '" + name + "' (mlp, mlp-wide or cnn)");
}

std::unique_ptr<Sequential> compile_model(const std::string& name, DeviceChoice device,
                                          std::FILE* log, Precision precision, StepGraphs graphs) {
    std::unique_ptr<Sequential> model = make_model(name);
    CompileOptions options;
    options.device = device;
    options.log = log;
    options.precision = precision;
    options.step_graphs = graphs;
    model->compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {"accuracy"},
                   options);
    return model;
}

SampleFlops sample_flops(const Sequential& model) {
    SampleFlops flops;
    bool first = true;
    for (const LayerPtr& layer : model.layers()) {
        double macs = 0;
        const std::string kind = layer->class_name();
        if (kind == "Dense") {
            macs = double(shape_elements(layer->input_shape())) *
                   double(shape_elements(layer->output_shape()));
        } else if (kind == "Conv2D") {
            // Each output cell (OH, OW, F) sums KH·KW·C products.
            const std::array<int64_t, 2> kernel = layer->config().kernel_size;
            const double channels = double(layer->input_shape().back());
            macs = double(shape_elements(layer->output_shape())) * double(kernel[0]) *
                   double(kernel[1]) * channels;
        } else {
            continue;
        }
        flops.forward += 2 * macs;
        flops.train += (first ? 4 : 6) * macs;  // forward, weight gradient, input gradient
        first = false;
    }
    return flops;
}

// ---- fit -----------------------------------------------------------------------------------

FitTiming time_fit(Sequential& model, const data::Array& x, const data::Array& y,
                   const FitTimingArgs& args) {
    auto timer = std::make_shared<EpochTimer>(args.sync_at_validation);
    FitArgs fit;
    fit.epochs = args.warmup_epochs + args.epochs;
    fit.batch_size = args.batch_size;
    fit.validation_split = args.validation_split;
    fit.verbose = 0;
    if (args.early_stopping) {
        callbacks::EarlyStoppingArgs es;
        es.patience = fit.epochs + 1;
        es.restore_best_weights = true;
        fit.callbacks.push_back(std::make_shared<callbacks::EarlyStopping>(es));
    }
    if (!args.checkpoint_path.empty()) {
        fit.callbacks.push_back(std::make_shared<callbacks::ModelCheckpoint>(args.checkpoint_path));
    }
    fit.callbacks.push_back(timer);  // last, so that an epoch's time includes the others' work
    const uint64_t fused_before = model.backend().fused_gemms();
    const uint64_t unfused_before = model.backend().unfused_gemms();
    model.fit(x, y, fit);

    FitTiming t;
    t.step_graphs = model.step_graph_stats();
    t.fused_gemms = model.backend().fused_gemms() - fused_before;
    t.unfused_gemms = model.backend().unfused_gemms() - unfused_before;
    t.epoch_seconds.assign(timer->seconds.begin() + args.warmup_epochs, timer->seconds.end());
    t.validation_seconds.assign(timer->validation_seconds.begin() + args.warmup_epochs,
                                timer->validation_seconds.end());
    t.max_reads_per_epoch = *std::max_element(timer->reads.begin(), timer->reads.end());
    // Keras's split: floor(n · (1 - split)) samples train, the rest validate.
    t.train_samples =
        static_cast<int64_t>(std::floor(double(x.rows()) * (1.0 - args.validation_split)));
    t.validation_samples = x.rows() - t.train_samples;
    t.last = timer->last;
    return t;
}

}  // namespace bench
}  // namespace kiln
