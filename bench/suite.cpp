// The cases of `kiln bench` (suite.h), its table and its JSON.
#include "suite.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "fit_timing.h"
#include "machine.h"
#if KILN_WITH_CUDA
#include "launch_cost.h"
#endif

namespace kiln {
namespace bench {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

const char* const kCases[] = {"M1", "M2", "M3", "C1", "V1", "S1", "K1", "O1", "L1"};

constexpr int64_t kQuickSamples = 6000;
// The parameter count of ResNet-18 for CIFAR (performance.md's C3): a buffer far beyond any
// cache, whose optimizer step is bound by memory bandwidth.
constexpr int64_t kLargeBuffer = 11173962;
constexpr int kLaunchChain = 1000;      // kernels per L1 chain
constexpr double kRoundSeconds = 0.02;  // S1 and O1: calls per timed round add up to about this

// One line of the table: a case measured (each repetition's seconds and what one repetition
// did) or skipped with the reason.
struct Row {
    std::string id;    // "M2 b256"
    std::string name;  // the case, "M2"
    std::string what;
    std::string unit;     // one repetition: epoch, pass, snapshot, step, kernel
    std::string skipped;  // why there is no figure
    std::string note;     // the table's last column
    std::vector<double> seconds;
    double samples = 0;  // per repetition, where samples are what it processes
    double flops = 0;
    double bytes = 0;    // memory traffic, read and written
    int64_t reads = -1;  // blocking device reads per epoch; -1 where it is not an epoch
    // The FLOP/s the share is taken of: 0 for the float32 GEMM peak; M3 sets the bf16 one.
    double flops_peak = 0;
    json details = json::object();
};

std::string format_seconds(double s) {
    char buf[32];
    if (s >= 1.0)
        std::snprintf(buf, sizeof(buf), "%.3f s", s);
    else if (s >= 1e-3)
        std::snprintf(buf, sizeof(buf), "%.2f ms", s * 1e3);
    else
        std::snprintf(buf, sizeof(buf), "%.2f us", s * 1e6);
    return buf;
}

// 1.23 G, 456 M: the table's rates.
std::string format_rate(double value) {
    if (!(value > 0))
        return "-";
    const char* prefixes[] = {"", " k", " M", " G", " T", " P"};
    int p = 0;
    while (value >= 1000.0 && p < 5) {
        value /= 1000.0;
        ++p;
    }
    char buf[32];
    std::snprintf(buf, sizeof(buf), value >= 100 ? "%.0f%s" : "%.3g%s", value, prefixes[p]);
    return buf;
}

std::string format_share(double share) {
    if (!(share > 0))
        return "-";
    char buf[16];
    std::snprintf(buf, sizeof(buf), share >= 0.1 ? "%.0f%%" : "%.1f%%", share * 100.0);
    return buf;
}

std::string utc_now() {
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    char buf[32];
    std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

data::Array first_rows(const data::Array& a, int64_t n) {
    data::Array out;
    out.shape = a.shape;
    out.shape[0] = n;
    const size_t row = static_cast<size_t>(a.cols());
    out.values.assign(a.values.begin(), a.values.begin() + static_cast<ptrdiff_t>(row * n));
    out.source = a.source + " (first " + std::to_string(n) + " rows)";
    out.from_uint8 = a.from_uint8;
    return out;
}

// Twice the CPU's last-level cache, and at least 256 MiB: a copy that big measures main memory
// (glibc's memcpy also switches to non-temporal stores above a fraction of that cache, so a copy
// that fits in it runs at another speed).
size_t beyond_last_cache() {
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    return std::max(size_t(256) << 20, l3 > 0 ? 2 * size_t(l3) : 0);
}

// One epoch's work: training steps over the training samples, a forward pass over the rest.
// How a timed fit ran its steps (step graphs) and its Dense GEMMs (cuBLASLt epilogues).
nlohmann::json how_fit_ran(const FitTiming& t) {
    return {{"step_graphs",
             {{"enabled", t.step_graphs.enabled},
              {"captures", t.step_graphs.captures},
              {"replays", t.step_graphs.replays},
              {"eager_steps", t.step_graphs.eager_steps},
              {"train_nodes", t.step_graphs.train_nodes},
              {"val_nodes", t.step_graphs.val_nodes},
              {"off_reason", t.step_graphs.off_reason}}},
            {"dense_gemm_calls_fused", t.fused_gemms},
            {"dense_gemm_calls_unfused", t.unfused_gemms}};
}

double epoch_flops(const Sequential& model, const FitTiming& t) {
    const SampleFlops per_sample = sample_flops(model);
    return double(t.train_samples) * per_sample.train +
           double(t.validation_samples) * per_sample.forward;
}

class Suite {
  public:
    Suite(const SuiteOptions& options, data::Split train) : o_(options), data_(std::move(train)) {
        const std::string& d = o_.device;
        device_ = d == "cuda"  ? DeviceChoice::kCuda
                  : d == "cpu" ? DeviceChoice::kCpu
                               : DeviceChoice::kAuto;
        BackendSelection selection = select_backend(device_);
        backend_ = std::move(selection.backend);
        device_message_ = selection.message;
        if (d == "auto")  // say which device auto chose, and why when it fell back
            std::fprintf(stderr, "kiln: %s\n", device_message_.c_str());
        on_gpu_ = backend_->kind() == DeviceKind::kCuda;
        // Later compiles take the same device; auto would say its line again every time.
        device_ = on_gpu_ ? DeviceChoice::kCuda : DeviceChoice::kCpu;
#if KILN_WITH_CUDA
        if (!on_gpu_)
            gpu_reason_ = "not measured: needs a GPU (this run is on the CPU backend)";
#else
        gpu_reason_ = "not measured: needs a GPU (kiln was built without CUDA)";
#endif
    }

    int run(const std::set<std::string>& cases);

  private:
    // A fit case's trained model and its timing, kept for the cases that reuse them.
    struct Fitted {
        std::unique_ptr<Sequential> model;
        FitTiming timing;
    };

    // A fit case, run once and kept. `checkpoint` is ModelCheckpoint's path; "-" is a fit
    // without one that is kept apart from the plain one ("").
    const Fitted& fit(const std::string& model, int64_t batch, bool sync_at_validation = false,
                      const std::string& checkpoint = "", Precision precision = Precision::kFp32,
                      StepGraphs graphs = StepGraphs::kAuto);
    Row fit_row(const std::string& id, const std::string& what, const std::string& model,
                int64_t batch, Precision precision = Precision::kFp32,
                StepGraphs graphs = StepGraphs::kAuto);
    Row validation_row(const std::string& id, const std::string& model, int64_t batch);
    Row checkpoint_row();
    Row snapshot_row();
    Row optimizer_row(const std::string& id, const std::string& what, int64_t n);
    std::vector<Row> launch_rows();

    json row_json(const Row& r) const;
    void print_header(const MachineInfo& m, const std::string& load_start) const;
    void print_table() const;

    const SuiteOptions& o_;
    data::Split data_;
    DeviceChoice device_ = DeviceChoice::kAuto;
    std::unique_ptr<Backend> backend_;  // the peaks, O1 and L1 run on it; each model has its own
    std::string device_message_;
    bool on_gpu_ = false;
    std::string gpu_reason_;
    std::string work_dir_;
    Peak peak_;
    std::map<std::string, Fitted> fitted_;
    std::vector<Row> rows_;
};

const Suite::Fitted& Suite::fit(const std::string& model, int64_t batch, bool sync_at_validation,
                                const std::string& checkpoint, Precision precision,
                                StepGraphs graphs) {
    const std::string key = model + "/" + std::to_string(batch) +
                            (sync_at_validation ? "/sync" : "") + "/" + checkpoint + "/" +
                            precision_name(precision) + "/" + step_graphs_name(graphs);
    auto found = fitted_.find(key);
    if (found != fitted_.end())
        return found->second;
    Fitted f;
    f.model = compile_model(model, device_, nullptr, precision, graphs);
    FitTimingArgs args;
    args.batch_size = batch;
    args.warmup_epochs = o_.warmup_epochs;
    args.epochs = o_.epochs;
    args.checkpoint_path = checkpoint == "-" ? "" : checkpoint;
    args.sync_at_validation = sync_at_validation;
    f.timing = time_fit(*f.model, data_.x, data_.y, args);
    return fitted_.emplace(key, std::move(f)).first->second;
}

Row Suite::fit_row(const std::string& id, const std::string& what, const std::string& model,
                   int64_t batch, Precision precision, StepGraphs graphs) {
    const Fitted& f = fit(model, batch, false, "", precision, graphs);
    const FitTiming& t = f.timing;
    const SampleFlops per_sample = sample_flops(*f.model);
    Row r;
    r.id = id;
    r.what = what;
    r.unit = "epoch";
    r.seconds = t.epoch_seconds;
    r.samples = double(t.train_samples);
    r.flops = epoch_flops(*f.model, t);
    r.reads = int64_t(t.max_reads_per_epoch);
    r.note = "batch " + std::to_string(batch);
    if (auto acc = t.last.get("val_accuracy")) {
        char buf[32];
        std::snprintf(buf, sizeof(buf), ", val_acc %.3f", *acc);
        r.note += buf;
    }
    if (t.step_graphs.enabled)
        r.note += ", step graphs";
    r.details = {{"model", model},
                 {"batch_size", batch},
                 {"dtype", "float32"},
                 {"precision", precision_name(precision)},
                 {"how", how_fit_ran(t)},
                 {"train_samples", t.train_samples},
                 {"validation_samples", t.validation_samples},
                 {"flop_per_sample_train", per_sample.train},
                 {"flop_per_sample_forward", per_sample.forward}};
    for (const auto& [key, value] : t.last.items())
        r.details[key] = value;
    return r;
}

Row Suite::validation_row(const std::string& id, const std::string& model, int64_t batch) {
    // On the CPU the plain fit's split is exact (its ops finish before they return); on a GPU
    // a fit of its own synchronises when validation starts, so that the split is the device's.
    const Fitted& f = fit(model, batch, /*sync_at_validation=*/on_gpu_);
    const FitTiming& t = f.timing;
    std::vector<double> shares;
    for (size_t i = 0; i < t.epoch_seconds.size(); ++i)
        shares.push_back(t.validation_seconds[i] / t.epoch_seconds[i]);
    Row r;
    r.id = id;
    r.what = "validation pass of " + model + " (batch " + std::to_string(batch) + ")";
    r.unit = "pass";
    r.seconds = t.validation_seconds;
    r.samples = double(t.validation_samples);
    r.flops = double(t.validation_samples) * sample_flops(*f.model).forward;
    r.note = format_share(median(shares)) + " of the epoch";
    r.details = {{"model", model},
                 {"batch_size", batch},
                 {"validation_samples", t.validation_samples},
                 {"epoch_seconds", t.epoch_seconds},
                 {"share_of_epoch", shares},
                 {"median_share_of_epoch", median(shares)},
                 {"synchronised_at_validation", on_gpu_},
                 {"how", how_fit_ran(t)}};
    return r;
}

Row Suite::checkpoint_row() {
    // The baseline is a fit of its own just before, not M1's: on a machine shared with other
    // work, the load drifts between cases further apart.
    const double base = fit("mlp", 32, false, "-").timing.median_epoch();
    const std::string path = work_dir_ + "/k1.h5";
    const Fitted& with = fit("mlp", 32, false, path);
    const double each = with.timing.median_epoch();
    const CheckpointStats stats = with.model->checkpoint_stats();
    std::error_code ec;
    const auto file_bytes = std::filesystem::file_size(path, ec);
    Row r;
    r.id = "K1";
    r.what = "M1 with ModelCheckpoint (full model .h5) every epoch";
    r.unit = "epoch";
    r.seconds = with.timing.epoch_seconds;
    r.samples = double(with.timing.train_samples);
    r.flops = epoch_flops(*with.model, with.timing);
    r.reads = int64_t(with.timing.max_reads_per_epoch);
    char buf[96];
    std::snprintf(buf, sizeof(buf), "%+.1f ms/epoch (%+.1f%%) against none", (each - base) * 1e3,
                  (each / base - 1.0) * 100.0);
    r.note = buf;
    r.details = {
        {"baseline_median_epoch_s", base},      {"overhead_s", each - base},
        {"overhead_share", each / base - 1.0},  {"checkpoints_requested", stats.requested},
        {"checkpoints_written", stats.written}, {"checkpoints_replaced", stats.replaced},
        {"checkpoints_failed", stats.failed},   {"file_bytes", ec ? 0 : uint64_t(file_bytes)}};
    return r;
}

Row Suite::snapshot_row() {
    Sequential& model = *fit("mlp", 32).model;
    SnapshotService& snapshots = model.snapshots();
    const int slot = snapshots.acquire("kiln-bench");
    const double bytes = double(snapshots.bytes());
    Row r;
    r.id = "S1";
    r.what = "one best-weights snapshot of M1 (SnapshotService::take)";
    r.unit = "snapshot";
    r.seconds =
        time_calls(model.backend(), o_.repetitions, kRoundSeconds, [&] { snapshots.take(slot); });
    snapshots.release(slot);
    r.bytes = 2.0 * bytes;
    char buf[48];
    std::snprintf(buf, sizeof(buf), "%.2f MB of weights", bytes / 1e6);
    r.note = buf;
    r.details = {{"weight_bytes", bytes}};
    return r;
}

Row Suite::optimizer_row(const std::string& id, const std::string& what, int64_t n) {
    Backend& b = *backend_;
    OptimizerStep step = optimizers::Adam().hyper;
    step.alpha = float(step.learning_rate * std::sqrt(1.0 - step.beta_2) / (1.0 - step.beta_1));
    const int slots = optimizer_state_slots(step);
    Tensor params = filled(b, n, 0.01f), grads = filled(b, n, 1e-3f);
    Tensor state = filled(b, n * slots, 0.0f);
    Row r;
    r.id = id;
    r.what = what;
    r.unit = "step";
    r.seconds = time_calls(b, o_.repetitions, kRoundSeconds, [&] {
        b.optimizer_update(step, params.view(), grads.view(), state.view(), n);
    });
    // Reads the parameters, the gradients and each state slot; writes the parameters and the
    // slots: 28 bytes a parameter for Adam.
    r.bytes = double(n) * sizeof(float) * double(3 + 2 * slots);
    r.note = std::to_string(n) + " parameters";
    r.details = {{"optimizer", "Adam"}, {"parameters", n}, {"state_slots", slots}};
    return r;
}

std::vector<Row> Suite::launch_rows() {
    std::vector<Row> rows;
#if KILN_WITH_CUDA
    if (on_gpu_) {
        const LaunchCost cost = measure_launch_cost(kLaunchChain, o_.repetitions);
        const double ratio = median(cost.graph) / median(cost.eager);
        for (const bool graph : {false, true}) {
            Row r;
            r.id = graph ? "L1 graph" : "L1 eager";
            r.what = std::string("a chain of tiny kernels, ") +
                     (graph ? "replayed as one CUDA graph" : "launched one by one");
            r.unit = "kernel";
            r.seconds = graph ? cost.graph : cost.eager;
            char buf[64];
            std::snprintf(buf, sizeof(buf), "chain of %d; graph/eager %.2f", cost.kernels, ratio);
            r.note = buf;
            r.details = {{"kernels_per_chain", cost.kernels}, {"graph_over_eager", ratio}};
            rows.push_back(r);
        }
        return rows;
    }
#endif
    Row r;
    r.id = "L1";
    r.what = "kernel launch cost, eager chain against a captured graph";
    r.skipped = gpu_reason_;
    rows.push_back(r);
    return rows;
}

json Suite::row_json(const Row& r) const {
    json j = {{"id", r.id}, {"case", r.name}, {"what", r.what}};
    if (!r.skipped.empty()) {
        j["skipped"] = r.skipped;
        return j;
    }
    const double med = median(r.seconds);
    j["unit"] = r.unit;
    j["repetitions"] = r.seconds.size();
    j["seconds"] = r.seconds;
    j["median_s"] = med;
    j["note"] = r.note;
    if (r.samples > 0)
        j["samples_per_s"] = r.samples / med;
    if (r.flops > 0) {
        const double peak = r.flops_peak > 0 ? r.flops_peak : peak_.gemm_flops_per_s;
        j["flop_per_s"] = r.flops / med;
        j["share_of_peak_flops"] = r.flops / med / peak;
        j["peak_flop_per_s"] = peak;
    }
    if (r.bytes > 0) {
        j["bytes_per_s"] = r.bytes / med;
        j["share_of_peak_bandwidth"] = r.bytes / med / peak_.bandwidth();
    }
    if (r.reads >= 0)
        j["host_reads_per_epoch"] = r.reads;
    j["details"] = r.details;
    return j;
}

void Suite::print_header(const MachineInfo& m, const std::string& load_start) const {
    std::printf("kiln bench - %s\n", utc_now().c_str());
    std::printf("device:  %s\n", m.backend.c_str());
    std::printf("cpu:     %s - %d cores", m.cpu.c_str(), m.cores);
    if (m.threads > 0)
        std::printf(", %d threads used", m.threads);
    std::printf(" - host %s\n", m.host.c_str());
    std::printf("driver:  %s\n", m.driver.c_str());
    std::printf("commit:  %s\n", m.commit.c_str());
    std::printf("load:    %s (1, 5, 15 min, at the start)\n", load_start.c_str());
    std::printf("peak:    float32 GEMM %lld^3: %sFLOP/s; copy of %zu MiB: %sB/s",
                (long long)peak_.gemm_n, format_rate(peak_.gemm_flops_per_s).c_str(),
                peak_.copy_bytes >> 20, format_rate(peak_.copy_bytes_per_s).c_str());
    if (peak_.bf16_gemm_flops_per_s > 0) {
        std::printf("; the GEMM in bf16 precision: %sFLOP/s",
                    format_rate(peak_.bf16_gemm_flops_per_s).c_str());
    }
    if (peak_.pool_copy_bytes_per_s > 0) {
        std::printf(", %sB/s over the pool's threads",
                    format_rate(peak_.pool_copy_bytes_per_s).c_str());
    }
    std::printf(" (read + written)\n");
    std::printf(
        "run:     %s%lld training samples, validation_split 0.1; %d warm-up + %d timed "
        "epochs, %d repetitions of the other cases\n",
        o_.quick ? "--quick: " : "", (long long)data_.x.rows(), o_.warmup_epochs, o_.epochs,
        o_.repetitions);
}

void Suite::print_table() const {
    const std::vector<std::string> header = {"case",  "median", "per",   "samples/s", "FLOP/s",
                                             "%peak", "B/s",    "%peak", "reads",     "note"};
    std::vector<std::vector<std::string>> cells = {header};
    for (const Row& r : rows_) {
        if (!r.skipped.empty()) {
            cells.push_back({r.id, "-", "-", "-", "-", "-", "-", "-", "-", r.skipped});
            continue;
        }
        const double med = median(r.seconds);
        const double flops = r.flops / med, bytes = r.bytes / med;
        cells.push_back(
            {r.id, format_seconds(med), r.unit, r.samples > 0 ? format_rate(r.samples / med) : "-",
             format_rate(flops),
             format_share(flops / (r.flops_peak > 0 ? r.flops_peak : peak_.gemm_flops_per_s)),
             format_rate(bytes), format_share(bytes / peak_.bandwidth()),
             r.reads >= 0 ? std::to_string(r.reads) : "-", r.note});
    }
    std::vector<size_t> widths(header.size(), 0);
    for (const auto& row : cells) {
        for (size_t i = 0; i < row.size(); ++i)
            widths[i] = std::max(widths[i], row[i].size());
    }
    for (size_t k = 0; k < cells.size(); ++k) {
        std::string line;
        for (size_t i = 0; i < cells[k].size(); ++i) {
            const std::string& c = cells[k][i];
            const std::string pad(widths[i] - c.size(), ' ');
            // Names and notes to the left, figures to the right.
            if (i + 1 == cells[k].size())
                line += c;
            else
                line += (i == 0 || i == 2 ? c + pad : pad + c) + "  ";
        }
        std::printf("%s\n", line.c_str());
        if (k == 0) {
            size_t width = 0;
            for (size_t w : widths)
                width += w + 2;
            std::printf("%s\n", std::string(width - 2, '-').c_str());
        }
    }
}

int Suite::run(const std::set<std::string>& cases) {
    const Clock::time_point start = Clock::now();
    const std::string load_start = load_average();
    const MachineInfo machine = describe_machine(*backend_);

    // The peaks first, before the cases have warmed anything.
    const int64_t gemm_n = o_.peak_size > 0 ? o_.peak_size
                           : on_gpu_        ? 8192
                           : o_.quick       ? 2048
                                            : 4096;
    const size_t copy_bytes = o_.peak_copy_mib > 0 ? size_t(o_.peak_copy_mib) << 20
                              : on_gpu_            ? size_t(1) << 30
                                                   : beyond_last_cache();
    peak_ = measure_peak(*backend_, gemm_n, copy_bytes, o_.repetitions);
    print_header(machine, load_start);
    std::fflush(stdout);

    // K1's files go to a folder of their own, removed at the end unless the user named it.
    work_dir_ = o_.work_dir;
    bool remove_work_dir = false;
    if (work_dir_.empty()) {
        const char* tmp = std::getenv("TMPDIR");
        std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/kiln-bench-XXXXXX";
        if (!mkdtemp(templ.data()))
            throw Error("kiln bench: cannot make a folder from " + templ);
        work_dir_ = templ;
        remove_work_dir = true;
    }

    // Each case in order; one that throws is listed as failed and the rest still run.
    int failures = 0;
    const auto add = [&](const std::string& name, const std::function<std::vector<Row>()>& make) {
        if (!cases.count(name))
            return;
        std::vector<Row> made;
        try {
            made = make();
        } catch (const std::exception& e) {
            Row r;
            r.id = name;
            r.skipped = std::string("failed: ") + e.what();
            made = {r};
            ++failures;
        }
        for (Row& r : made) {
            r.name = name;
            rows_.push_back(std::move(r));
        }
    };
    const auto one = [](Row r) { return std::vector<Row>{std::move(r)}; };
    add("M1", [&] {
        std::vector<Row> rows = {fit_row("M1", "MLP 784-256-128-10, Adam, float32", "mlp", 32)};
        // On a GPU, the same fit with every step queued op by op: what the step graphs save.
        if (on_gpu_) {
            rows.push_back(fit_row("M1 eager", "M1 without step graphs", "mlp", 32,
                                   Precision::kFp32, StepGraphs::kOff));
        }
        return rows;
    });
    add("M2", [&] {
        return std::vector<Row>{fit_row("M2 b256", "M1 at batch 256", "mlp", 256),
                                fit_row("M2 b1024", "M1 at batch 1024", "mlp", 1024)};
    });
    add("M3", [&] {
        Row r;
        if (!on_gpu_) {
            r.id = "M3";
            r.what = "MLP 784-2048-2048-2048-10, batch 4096";
            r.skipped = gpu_reason_;
            return one(r);
        }
        // bf16 as kiln has it: GEMM operands in bfloat16 with float32 storage and sums
        // (--precision bf16), its share taken of the same GEMM's peak in that mode, measured
        // in this run; activations are stored in float32 (no bf16 tensors yet).
        r = fit_row("M3", "MLP 784-2048-2048-2048-10, batch 4096, bf16", "mlp-wide", 4096,
                    Precision::kBf16);
        r.flops_peak = peak_.bf16_gemm_flops_per_s;
        r.note += "; bf16 GEMMs, float32 storage; %peak of the bf16 GEMM peak";
        return one(r);
    });
    add("C1", [&] { return one(fit_row("C1", "the cnn preset (mnist_convnet)", "cnn", 128)); });
    add("V1", [&] {
        return std::vector<Row>{validation_row("V1 mlp", "mlp", 32),
                                validation_row("V1 cnn", "cnn", 128)};
    });
    add("S1", [&] { return one(snapshot_row()); });
    add("K1", [&] { return one(checkpoint_row()); });
    add("O1", [&] {
        const int64_t n = compile_model("mlp", device_, nullptr)->parameters().elements();
        return std::vector<Row>{
            optimizer_row("O1 mlp", "one Adam step over M1's flat parameter buffer", n),
            optimizer_row("O1 11.2M", "one Adam step over 11.2M parameters (ResNet-18's count)",
                          kLargeBuffer)};
    });
    add("L1", [&] { return launch_rows(); });
    fitted_.clear();  // the models' writers finish their files before the folder goes
    if (remove_work_dir) {
        std::error_code ec;
        std::filesystem::remove_all(work_dir_, ec);
    }

    const double run_s = std::chrono::duration<double>(Clock::now() - start).count();
    const std::string load_end = load_average();
    std::printf("\n");
    print_table();
    std::printf(
        "\nmedian over the repetitions of what `per` names; FLOP/s and B/s of that work; "
        "%%peak of the peaks above (above 100%%: the work fits in a cache, the peak is "
        "main memory's); reads: blocking device reads per epoch\n");
    std::printf("load at the end: %s; the suite took %.1f s%s\n", load_end.c_str(), run_s,
                o_.quick ? " (--quick; without it every training sample is used)" : "");

    if (!o_.json.empty()) {
        json cases_json = json::array();
        for (const Row& r : rows_)
            cases_json.push_back(row_json(r));
        const json out = {
            {"engine", "kiln"},
            {"version", KILN_VERSION},
            {"date", utc_now()},
            {"machine",
             {{"host", machine.host},
              {"cpu", machine.cpu},
              {"cores", machine.cores},
              {"threads", machine.threads},
              {"backend", machine.backend},
              {"device_message", device_message_},
              {"driver", machine.driver},
              {"gpu", on_gpu_}}},
            {"commit", machine.commit},
            {"commit_source", machine.commit_source},
            {"load_average", {{"start", load_start}, {"end", load_end}}},
            {"peak",
             {{"gemm_n", peak_.gemm_n},
              {"gemm_seconds", peak_.gemm_seconds},
              {"gemm_flop_per_s", peak_.gemm_flops_per_s},
              {"bf16_gemm_seconds", peak_.bf16_gemm_seconds},
              {"bf16_gemm_flop_per_s", peak_.bf16_gemm_flops_per_s},
              {"copy_bytes", peak_.copy_bytes},
              {"copy_bytes_per_s", peak_.copy_bytes_per_s},
              {"pool_copy_bytes_per_s", peak_.pool_copy_bytes_per_s},
              {"bandwidth_bytes_per_s", peak_.bandwidth()}}},
            {"settings",
             {{"quick", o_.quick},
              {"samples", data_.x.rows()},
              {"data", o_.data},
              {"validation_split", 0.1},
              {"epochs", o_.epochs},
              {"warmup_epochs", o_.warmup_epochs},
              {"repetitions", o_.repetitions},
              {"threads", o_.threads}}},
            {"cases", cases_json},
            {"run_seconds", run_s},
        };
        std::ofstream file(o_.json);
        file << out.dump(2) << "\n";
        if (!file)
            throw Error("kiln bench: cannot write " + o_.json);
        std::printf("written: %s\n", o_.json.c_str());
    }
    return failures ? 1 : 0;
}

}  // namespace

CLI::App* add_bench_command(CLI::App& app, SuiteOptions* o) {
    CLI::App* cmd = app.add_subcommand(
        "bench",
        "The throughput suite (M1 M2 M3 C1 V1 S1 K1 O1 L1; bench/suite.h): a table, and JSON "
        "with --json; bench/suite.py runs it beside the PyTorch peers");
    cmd->add_option("--device", o->device, "auto, cuda or cpu")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "cuda", "cpu"}));
    cmd->add_option("--data", o->data, "The dataset, as `kiln fit --data` takes it")
        ->capture_default_str();
    cmd->add_flag("--quick", o->quick,
                  "A short run: the first 6000 samples unless --max-samples says otherwise, and "
                  "a smaller peak GEMM");
    cmd->add_option("--max-samples", o->max_samples, "Train on the first N samples only (0: all)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--epochs", o->epochs, "Timed epochs per training case")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    cmd->add_option("--warmup-epochs", o->warmup_epochs, "Untimed epochs first")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--repetitions", o->repetitions,
                    "Timed repetitions of the other cases and of the peaks")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    cmd->add_option("--cases", o->cases, "Only these cases, comma-separated (M1,S1,...)");
    cmd->add_option("--threads", o->threads, "CPU threads (0: one per core)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--peak-size", o->peak_size,
                    "n of the n^3 float32 GEMM that measures the peak (0: 4096; 2048 with "
                    "--quick; 8192 on a GPU)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--peak-copy-mib", o->peak_copy_mib,
                    "MiB of the copy that measures the bandwidth peak (0: twice the last-level "
                    "cache, at least 256; 1024 on a GPU)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--json", o->json, "Also write every figure to this file");
    cmd->add_option("--work-dir", o->work_dir,
                    "Where K1 writes its checkpoints (default: a temporary folder)");
    return cmd;
}

int run_suite(const SuiteOptions& options) {
    // The CPU backend reads KILN_NUM_THREADS when it first starts its pool.
    if (options.threads > 0)
        setenv("KILN_NUM_THREADS", std::to_string(options.threads).c_str(), 1);

    std::set<std::string> cases;
    std::stringstream list(options.cases);
    for (std::string name; std::getline(list, name, ',');) {
        if (name.empty())
            continue;
        if (std::find(std::begin(kCases), std::end(kCases), name) == std::end(kCases))
            throw Error("kiln bench: unknown case '" + name +
                        "' (M1, M2, M3, C1, V1, S1, K1, O1, L1)");
        cases.insert(name);
    }
    if (cases.empty())
        cases.insert(std::begin(kCases), std::end(kCases));

    data::Dataset dataset;
    const Status status = data::load_dataset(options.data, {}, &dataset);
    if (!status.is_ok())
        throw Error(status.message());
    data::Split train = std::move(dataset.train);
    const int64_t wanted = options.max_samples > 0 ? options.max_samples
                           : options.quick         ? kQuickSamples
                                                   : 0;
    if (wanted > 0 && wanted < train.x.rows()) {
        train.x = first_rows(train.x, wanted);
        train.y = first_rows(train.y, wanted);
    }
    if (train.x.rows() < 20)
        throw Error("kiln bench: needs at least 20 training samples, has " +
                    std::to_string(train.x.rows()));

    Suite suite(options, std::move(train));
    return suite.run(cases);
}

}  // namespace bench
}  // namespace kiln
