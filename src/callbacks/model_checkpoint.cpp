#include "kiln/callbacks/model_checkpoint.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include <fmt/args.h>

#include "callbacks/util.h"
#include "io/atomic_h5.h"
#include "kiln/model.h"
#include "kiln/status.h"

namespace kiln {
namespace callbacks {

// ---- SaveFreq ------------------------------------------------------------------------------

SaveFreq::SaveFreq(const char* text) : SaveFreq(std::string(text ? text : "")) {}

SaveFreq::SaveFreq(const std::string& text) {
    if (text == "epoch")
        return;
    size_t used = 0;
    long long n = 0;
    try {
        n = std::stoll(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used == 0 || used != text.size() || n <= 0) {
        throw Error("Unrecognized save_freq: " + text +
                    ". Expected save_freq are 'epoch' or a positive number of batches");
    }
    batches_ = n;
}

SaveFreq::SaveFreq(int batches) : SaveFreq(static_cast<int64_t>(batches)) {}

SaveFreq::SaveFreq(int64_t batches) : batches_(batches) {
    if (batches <= 0) {
        throw Error("Unrecognized save_freq: " + std::to_string(batches) +
                    ". Expected save_freq are 'epoch' or a positive number of batches");
    }
}

// ---- the filepath template -----------------------------------------------------------------

namespace detail {

std::vector<std::string> template_fields(const std::string& text, std::string* error) {
    std::vector<std::string> names;
    for (size_t i = 0; i < text.size(); ++i) {
        const char ch = text[i];
        if (ch == '}') {
            if (i + 1 < text.size() && text[i + 1] == '}') {
                ++i;
                continue;
            }
            *error = "single '}' encountered in format string";
            return names;
        }
        if (ch != '{')
            continue;
        if (i + 1 < text.size() && text[i + 1] == '{') {
            ++i;
            continue;
        }
        // A field: the name runs to ':', '!' or '}'; a spec may nest one level of braces.
        size_t j = i + 1;
        while (j < text.size() && text[j] != ':' && text[j] != '!' && text[j] != '}')
            ++j;
        const std::string name = text.substr(i + 1, j - i - 1);
        int depth = 1;
        for (; j < text.size() && depth > 0; ++j) {
            if (text[j] == '{')
                ++depth;
            if (text[j] == '}')
                --depth;
        }
        if (depth != 0) {
            *error = "expected '}' before end of string";
            return names;
        }
        if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0]))) {
            *error = "a positional field '{" + name +
                     "}' (only named fields: epoch, batch and "
                     "the logs' keys)";
            return names;
        }
        names.push_back(name);
        i = j - 1;
    }
    return names;
}

}  // namespace detail

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_directory(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

ModelCheckpoint::ModelCheckpoint(std::string filepath, ModelCheckpointArgs args)
    : MonitorCallback("ModelCheckpoint", args.monitor, args.mode, 0.0, args.check_finite),
      filepath_(std::move(filepath)),
      args_(std::move(args)) {
    args_.mode = mode();
    // Keras checks the extension of the template itself.
    if (args_.save_weights_only) {
        if (!ends_with(filepath_, ".weights.h5")) {
            throw Error(
                "When using save_weights_only=True in ModelCheckpoint, the filepath "
                "provided must end in `.weights.h5` (Keras weights format). Received: "
                "filepath=" +
                filepath_);
        }
    } else if (ends_with(filepath_, ".keras")) {
        throw Error(
            "ModelCheckpoint: kiln writes Keras's HDF5 model format, not the .keras "
            "archive: name the file .h5. Received: filepath=" +
            filepath_);
    } else if (ends_with(filepath_, ".weights.h5")) {
        throw Error(
            "ModelCheckpoint: a full-model file must not be named *.weights.h5 (Keras "
            "reads that name as a weights file): pass save_weights_only=true or name it "
            ".h5. Received: filepath=" +
            filepath_);
    } else if (!ends_with(filepath_, ".h5")) {
        throw Error(
            "The filepath provided must end in `.h5` (Keras's HDF5 model format). "
            "Received: filepath=" +
            filepath_);
    }
    std::string error;
    placeholders_ = detail::template_fields(filepath_, &error);
    if (!error.empty()) {
        throw Error("Failed to format this callback filepath: \"" + filepath_ +
                    "\". Reason: " + error);
    }
    if (args_.save_top_k) {
        if (*args_.save_top_k < -1) {
            throw Error("ModelCheckpoint: save_top_k must be >= -1, got " +
                        std::to_string(*args_.save_top_k));
        }
        if (!args_.save_best_only) {
            throw Error(
                "ModelCheckpoint: save_top_k ranks the files by the monitored value; it "
                "needs save_best_only=true");
        }
    }
    if (args_.every_n_epochs < 1) {
        throw Error("ModelCheckpoint: every_n_epochs must be >= 1, got " +
                    std::to_string(args_.every_n_epochs));
    }
    if (args_.train_time_interval) {
        if (!(*args_.train_time_interval > 0)) {
            throw Error(
                "ModelCheckpoint: train_time_interval must be a positive number of "
                "seconds");
        }
        if (!args_.save_freq.per_epoch() || args_.every_n_epochs != 1) {
            throw Error(
                "ModelCheckpoint: train_time_interval, an integer save_freq and "
                "every_n_epochs are mutually exclusive");
        }
    }
    best_ = args_.initial_value_threshold;
}

bool ModelCheckpoint::needs_logs_for_batch() const {
    if (args_.save_best_only)
        return true;
    for (const auto& name : placeholders_) {
        if (name != "epoch" && name != "batch")
            return true;
    }
    return false;
}

void ModelCheckpoint::validate(const FitParams& params) const {
    MonitorCallback::validate(params);  // Keras resolves the direction even without best-only

    // Every field of the template must be there when the saves happen.
    const bool batches = batch_level();
    std::vector<std::string> have = {"epoch"};
    if (batches)
        have.push_back("batch");
    const std::vector<std::string>& keys = batches ? params.batch_log_keys : params.epoch_log_keys;
    have.insert(have.end(), keys.begin(), keys.end());
    for (const auto& name : placeholders_) {
        if (!detail::contains(have, name)) {
            throw Error("Failed to format this callback filepath: \"" + filepath_ +
                        "\". Reason: the logs will have no key '" + name + "' " +
                        (batches ? "at a batch-level save (batch logs have no val_ keys)"
                                 : "at an epoch's end") +
                        "; the fields there are: " + detail::join(have, ", "));
        }
    }
    // A bad format spec ("{epoch:.2f}": an integer has no precision) fails now, not at the save.
    Logs dummy;
    for (const auto& k : keys)
        dummy.set(k, 0.0);
    (void)format_filepath(0, batches ? std::optional<int64_t>(0) : std::nullopt, dummy);
    // Batch logs never hold val_ keys: best-only saves on them could compare nothing.
    if (batches && args_.save_best_only && !detail::contains(params.batch_log_keys, monitor())) {
        throw Error("ModelCheckpoint: save_best_only with " +
                    std::string(args_.train_time_interval ? "train_time_interval"
                                                          : "save_freq=" + args_.save_freq.str()) +
                    " compares batch logs, which will have no '" + monitor() + "' (they have " +
                    detail::join(params.batch_log_keys, ", ") +
                    "): monitor one of those, or save at the epoch's end (save_freq='epoch')");
    }
    if (placeholders_.empty() && is_directory(filepath_)) {
        throw Error(
            "Please specify a non-directory filepath for ModelCheckpoint. Filepath used "
            "is an existing directory: " +
            filepath_);
    }
}

std::string ModelCheckpoint::format_filepath(int epoch, std::optional<int64_t> batch,
                                             const Logs& logs) const {
    fmt::dynamic_format_arg_store<fmt::format_context> store;
    std::vector<std::string> have;
    store.push_back(fmt::arg("epoch", epoch + 1));
    have.push_back("epoch");
    // Keras: batch + 1 for batch-level saves, unless the logs have a "batch" of their own.
    if (batch && !logs.contains("batch")) {
        store.push_back(fmt::arg("batch", *batch + 1));
        have.push_back("batch");
    }
    for (const auto& [key, value] : logs.items()) {
        if (key == "epoch" || (key == "batch" && !batch))
            continue;
        store.push_back(fmt::arg(key.c_str(), detail::PyFloat{value}));
        have.push_back(key);
    }
    for (const auto& name : placeholders_) {
        if (!detail::contains(have, name)) {
            throw Error("Failed to format this callback filepath: \"" + filepath_ +
                        "\". Reason: no key '" + name + "' in the logs (they have " +
                        detail::join(have, ", ") + ")");
        }
    }
    try {
        return fmt::vformat(filepath_, store);
    } catch (const fmt::format_error& e) {
        throw Error("Failed to format this callback filepath: \"" + filepath_ +
                    "\". Reason: " + e.what());
    }
}

void ModelCheckpoint::on_train_begin(const Logs&) {
    (void)direction();
    // Keras keeps `best` across fit() calls (the file on disk is still the best); so does kiln.
    reset_missing_warning();
    batch_save_due_ = false;
    pending_.clear();
    last_time_save_ = std::chrono::steady_clock::now();
}

void ModelCheckpoint::on_epoch_begin(int epoch, const Logs&) {
    current_epoch_ = epoch;
}

void ModelCheckpoint::on_train_batch_end(int64_t batch, const Logs& logs) {
    if (!batch_level())
        return;
    if (args_.train_time_interval) {
        const auto now = std::chrono::steady_clock::now();
        if (std::chrono::duration<double>(now - last_time_save_).count() >=
            *args_.train_time_interval) {
            last_time_save_ = now;
            batch_save_due_ = true;
        }
    } else {
        // Keras's _should_save_on_batch: batches counted across epochs.
        const int64_t add = batch <= last_batch_seen_ ? batch + 1 : batch - last_batch_seen_;
        batches_since_save_ += add;
        last_batch_seen_ = batch;
        if (batches_since_save_ >= args_.save_freq.batches()) {
            batches_since_save_ = 0;
            batch_save_due_ = true;
        }
    }
    // A due save waits for logs when it needs them (no peek has completed yet on a GPU).
    if (batch_save_due_ && (!logs.empty() || !needs_logs_for_batch())) {
        batch_save_due_ = false;
        save_point(current_epoch_, batch, logs);
    }
}

void ModelCheckpoint::on_epoch_end(int epoch, const Logs& logs) {
    current_epoch_ = epoch;
    if (batch_level()) {
        // A batch-level save still waiting for logs is made with the epoch's final figures,
        // which are what the last batch's logs would have shown.
        if (batch_save_due_) {
            batch_save_due_ = false;
            Logs batch_logs;
            for (const auto& [key, value] : logs.items()) {
                if (key.rfind("val_", 0) != 0)
                    batch_logs.set(key, value);
            }
            save_point(epoch, std::max<int64_t>(steps_ - 1, 0), batch_logs);
        }
        return;
    }
    if ((epoch + 1) % args_.every_n_epochs != 0)
        return;
    save_point(epoch, std::nullopt, logs);
}

void ModelCheckpoint::save_point(int epoch, std::optional<int64_t> batch, const Logs& logs) {
    const std::string path = format_filepath(epoch, batch, logs);
    const std::string e = "Epoch " + std::to_string(epoch + 1) + ": ";
    bool save = true;
    if (args_.save_top_k) {
        save = decide_top_k(epoch, path, logs);
    } else if (args_.save_best_only) {
        const std::optional<double> current = logs.get(monitor());
        if (!current) {
            warn_missing_once("Can save best model only with " + monitor() + " available.");
        } else {
            const std::string from = best_ ? detail::python_fixed5(*best_)
                                           : (direction() == Direction::kMinimize ? "inf" : "-inf");
            if (is_improvement(*current, best_)) {
                if (args_.verbose > 0) {
                    say(e + monitor() + " improved from " + from + " to " +
                        detail::python_fixed5(*current) + ", saving model to " + path);
                }
                best_ = *current;
            } else {
                if (args_.verbose > 0)
                    say(e + monitor() + " did not improve from " + from);
                save = false;
            }
        }
    } else if (args_.verbose > 0) {
        say(e + "saving model to " + path);
    }
    const int epochs_done = batch ? epoch : epoch + 1;
    if (save)
        pending_.push_back({path, epochs_done});
    if (args_.save_last) {
        const std::string last = last_path(epoch, batch, logs);
        if (!save || last != path)
            pending_.push_back({last, epochs_done});
    }
}

bool ModelCheckpoint::decide_top_k(int epoch, const std::string& path, const Logs& logs) {
    const int k = *args_.save_top_k;
    const std::string e = "Epoch " + std::to_string(epoch + 1) + ": ";
    const std::optional<double> current = logs.get(monitor());
    if (!current) {
        // Unlike the best-only save, a file without a score cannot be ranked.
        warn_missing_once("Can save best model only with " + monitor() + " available.");
        return false;
    }
    if (k == 0)
        return false;
    // Lightning stores a NaN as the worst score, so that it never ranks as the best.
    const bool minimize = direction() == Direction::kMinimize;
    double score = *current;
    if (check_finite() && !std::isfinite(score))
        score = minimize ? INFINITY : -INFINITY;
    if (std::isnan(score))
        score = minimize ? INFINITY : -INFINITY;

    // The same path already kept (a template without {epoch}) is replaced in place.
    auto same = std::find_if(top_k_.begin(), top_k_.end(),
                             [&](const auto& item) { return item.first == path; });
    std::vector<std::pair<std::string, double>> others = top_k_;
    if (same != top_k_.end())
        others.erase(others.begin() + (same - top_k_.begin()));
    bool enter = k == -1 || static_cast<int>(others.size()) < k;
    size_t worst = 0;
    if (!enter) {
        for (size_t i = 1; i < others.size(); ++i) {
            if (better(others[worst].second, others[i].second))
                worst = i;
        }
        enter = better(score, others[worst].second);
    }
    if (!enter) {
        if (args_.verbose > 0) {
            say(e + monitor() + " was not in top " + std::to_string(k));
        }
        return false;
    }
    if (k != -1 && static_cast<int>(others.size()) >= k) {
        displaced_.push_back(others[worst].first);
        others.erase(others.begin() + static_cast<long>(worst));
    }
    others.emplace_back(path, score);
    top_k_ = std::move(others);
    double best = top_k_.front().second;
    for (const auto& item : top_k_) {
        if (better(item.second, best))
            best = item.second;
    }
    best_ = best;
    if (args_.verbose > 0) {
        say(e + monitor() + " reached " + detail::python_fixed5(*current) + " (best " +
            detail::python_fixed5(best) + "), saving model to " + path + " as top " +
            std::to_string(k));
    }
    return true;
}

std::string ModelCheckpoint::last_path(int epoch, std::optional<int64_t> batch,
                                       const Logs& logs) const {
    const std::string formatted = format_filepath(epoch, batch, logs);
    const size_t slash = formatted.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "" : formatted.substr(0, slash + 1);
    return dir + (args_.save_weights_only ? "last.weights.h5" : "last.h5");
}

void ModelCheckpoint::after_train_batch_end(int64_t, const Logs&) {
    flush();
}
void ModelCheckpoint::after_epoch_end(int, const Logs&) {
    flush();
}

void ModelCheckpoint::flush() {
    if (pending_.empty() && displaced_.empty())
        return;
    if (!model_)
        throw Error("ModelCheckpoint: no model to save (set_model)");
    const std::vector<Pending> pending = std::move(pending_);
    pending_.clear();
    const std::string state = pending.empty() ? "" : model_->callbacks_state_json();
    for (const Pending& p : pending) {
        if (is_directory(p.path)) {
            throw Error(
                "Please specify a non-directory filepath for ModelCheckpoint. Filepath "
                "used is an existing directory: " +
                p.path);
        }
        // Keras creates the file's directory when a save happens.
        const std::filesystem::path parent = std::filesystem::path(p.path).parent_path();
        if (!parent.empty()) {
            std::error_code ec;
            std::filesystem::create_directories(parent, ec);
            if (ec) {
                throw Error("ModelCheckpoint: cannot create the directory " + parent.string() +
                            " for " + p.path + ": " + ec.message());
            }
        }
        CheckpointRequest request;
        request.path = p.path;
        request.weights_only = args_.save_weights_only;
        request.epoch = p.epochs_done;
        request.step = model_->iterations();
        request.callbacks_state_json = state;
        const Status s = model_->request_checkpoint(request);
        if (!s.is_ok())
            throw Error("ModelCheckpoint: " + s.message());
        saved_.push_back(p.path);
    }
    if (displaced_.empty())
        return;
    // A displaced top-k file goes only once its replacement is complete on disk. A failed
    // write keeps every displaced file (training goes on; the writer has already warned).
    const Status written = model_->wait_for_checkpoints();
    if (!written.is_ok()) {
        warn("ModelCheckpoint: keeping the files displaced from the top " +
             std::to_string(*args_.save_top_k) + ", since a write failed: " + written.message());
        displaced_.clear();
        return;
    }
    for (const std::string& old : displaced_) {
        bool kept = false;
        for (const auto& item : top_k_)
            kept = kept || item.first == old;
        for (const Pending& p : pending)
            kept = kept || p.path == old;
        if (!kept)
            h5::crash_point("deleting");
        if (!kept && std::remove(old.c_str()) != 0 && errno != ENOENT) {
            warn("ModelCheckpoint: could not delete " + old + ", displaced from the top " +
                 std::to_string(*args_.save_top_k));
        }
    }
    displaced_.clear();
}

void ModelCheckpoint::on_train_end(const Logs&) {
    flush();
}

std::vector<std::pair<std::string, double>> ModelCheckpoint::best_k_models() const {
    auto out = top_k_;
    std::stable_sort(out.begin(), out.end(),
                     [&](const auto& a, const auto& b) { return better(a.second, b.second); });
    return out;
}

std::string ModelCheckpoint::state_json() const {
    nlohmann::json top = nlohmann::json::array();
    for (const auto& [path, score] : top_k_)
        top.push_back({path, detail::json_double(score)});
    nlohmann::json j = {{"best", detail::json_optional(best_)},
                        {"batches_since_save", batches_since_save_},
                        {"last_batch_seen", last_batch_seen_},
                        {"top_k", top}};
    return j.dump();
}

void ModelCheckpoint::restore_state(const std::string& json) {
    const auto j = detail::parse_state(json, state_key());
    try {
        if (j.contains("best"))
            best_ = detail::optional_from_json(j["best"]);
        batches_since_save_ = j.value("batches_since_save", int64_t(0));
        last_batch_seen_ = j.value("last_batch_seen", int64_t(0));
        top_k_.clear();
        if (j.contains("top_k")) {
            for (const auto& item : j["top_k"]) {
                top_k_.emplace_back(item.at(0).get<std::string>(),
                                    detail::double_from_json(item.at(1)));
            }
        }
    } catch (const nlohmann::json::exception& e) {
        throw Error(state_key() + ": bad saved state " + json + ": " + e.what());
    }
}

}  // namespace callbacks
}  // namespace kiln
