#include "kiln/callbacks.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

namespace kiln {

void Logs::set(const std::string& key, double value) {
    for (auto& item : items_) {
        if (item.first == key) {
            item.second = value;
            return;
        }
    }
    items_.emplace_back(key, value);
}

std::optional<double> Logs::get(const std::string& key) const {
    for (const auto& item : items_) {
        if (item.first == key)
            return item.second;
    }
    return std::nullopt;
}

std::vector<std::string> batch_log_keys(const std::string& metric_name) {
    std::vector<std::string> keys = {"loss"};
    if (!metric_name.empty())
        keys.push_back(metric_name);
    return keys;
}

std::vector<std::string> epoch_log_keys(const std::string& metric_name, bool validation,
                                        const std::vector<CallbackPtr>& callbacks) {
    std::vector<std::string> keys = batch_log_keys(metric_name);
    if (validation) {
        const size_t n = keys.size();
        for (size_t i = 0; i < n; ++i)
            keys.push_back("val_" + keys[i]);
    }
    for (const auto& cb : callbacks) {
        for (const std::string& key : cb->added_log_keys()) {
            if (std::find(keys.begin(), keys.end(), key) == keys.end())
                keys.push_back(key);
        }
    }
    return keys;
}

void Callback::say(const std::string& line) const {
    if (!msg_out_)
        return;
    std::fprintf(msg_out_, "%s\n", line.c_str());
    std::fflush(msg_out_);
}

void Callback::warn(const std::string& text) const {
    if (!msg_err_)
        return;
    std::fprintf(msg_err_, "kiln: %s\n", text.c_str());
    std::fflush(msg_err_);
}

std::string format_metric(double value) {
    char text[32];
    // Keras's Progbar: four decimals, scientific for values of magnitude 1e-3 and below.
    std::snprintf(text, sizeof(text), std::fabs(value) > 1e-3 ? "%.4f" : "%.4e", value);
    return text;
}

// ---- History -------------------------------------------------------------------------------

void History::on_train_begin(const Logs&) {
    // Keras keeps the history of earlier fits of the same callback; kiln starts afresh.
    epoch.clear();
    history.clear();
    keys.clear();
}

void History::on_epoch_end(int e, const Logs& logs) {
    epoch.push_back(e);
    for (const auto& [key, value] : logs.items()) {
        if (!history.count(key))
            keys.push_back(key);
        history[key].push_back(value);
    }
}

// ---- ProgbarLogger -------------------------------------------------------------------------
namespace {

constexpr int kBarWidth = 30;            // Keras's Progbar width
constexpr double kRedrawSeconds = 0.05;  // Keras redraws at most every 50 ms

std::string format_per_step(double seconds) {
    char text[32];
    if (seconds >= 1) {
        std::snprintf(text, sizeof(text), "%.0fs/step", seconds);
    } else if (seconds >= 1e-3) {
        std::snprintf(text, sizeof(text), "%.0fms/step", seconds * 1e3);
    } else {
        std::snprintf(text, sizeof(text), "%.0fus/step", seconds * 1e6);
    }
    return text;
}

std::string format_eta(double seconds) {
    char text[32];
    const long s = static_cast<long>(seconds);
    if (s > 3600) {
        std::snprintf(text, sizeof(text), "%ld:%02ld:%02ld", s / 3600, (s % 3600) / 60, s % 60);
    } else if (s > 60) {
        std::snprintf(text, sizeof(text), "%ld:%02ld", s / 60, s % 60);
    } else {
        std::snprintf(text, sizeof(text), "%lds", s);
    }
    return text;
}

std::string format_logs(const Logs& logs) {
    std::string text;
    for (const auto& [key, value] : logs.items())
        text += " - " + key + ": " + format_metric(value);
    return text;
}

}  // namespace

ProgbarLogger::ProgbarLogger(std::FILE* out) : out_(out ? out : stdout) {
    dynamic_ = isatty(fileno(out_)) != 0;
}

void ProgbarLogger::on_epoch_begin(int epoch, const Logs&) {
    if (verbose_ == 0)
        return;
    std::fprintf(out_, "Epoch %d/%d\n", epoch + 1, epochs_);
    std::fflush(out_);
    epoch_start_ = last_draw_ = std::chrono::steady_clock::now();
    last_width_ = 0;
}

void ProgbarLogger::on_train_batch_end(int64_t batch, const Logs& logs) {
    if (verbose_ != 1 || !dynamic_)
        return;
    const auto now = std::chrono::steady_clock::now();
    if (std::chrono::duration<double>(now - last_draw_).count() < kRedrawSeconds &&
        batch + 1 < steps_) {
        return;
    }
    last_draw_ = now;
    draw(batch + 1, logs, false);
}

void ProgbarLogger::on_epoch_end(int, const Logs& logs) {
    if (verbose_ == 0)
        return;
    draw(steps_, logs, true);
}

void ProgbarLogger::draw(int64_t done, const Logs& logs, bool final_line) {
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start_).count();
    const double per_step = done > 0 ? elapsed / static_cast<double>(done) : 0.0;
    const std::string steps = std::to_string(steps_);
    std::string line;
    if (verbose_ == 2) {
        // Keras's verbose=2 line: steps, time, metrics, time per epoch and per step.
        line = steps + "/" + steps + " - " + std::to_string(std::lround(elapsed)) + "s" +
               format_logs(logs) + " - " + format_per_step(per_step);
        std::fprintf(out_, "%s\n", line.c_str());
        std::fflush(out_);
        return;
    }
    std::string count = std::to_string(done);
    count = std::string(steps.size() - std::min(steps.size(), count.size()), ' ') + count;
    const int filled = steps_ > 0 ? static_cast<int>(kBarWidth * done / steps_) : kBarWidth;
    std::string bar(static_cast<size_t>(filled), '=');
    if (done < steps_) {
        if (filled > 0)
            bar.back() = '>';
        bar += std::string(static_cast<size_t>(kBarWidth - filled), '.');
    }
    line = count + "/" + steps + " [" + bar + "]";
    if (final_line) {
        line += " - " + std::to_string(std::lround(elapsed)) + "s " + format_per_step(per_step);
    } else {
        line += " - ETA: " + format_eta(per_step * static_cast<double>(steps_ - done));
    }
    line += format_logs(logs);
    if (dynamic_) {
        // Pad with spaces to wipe a longer previous line.
        const size_t width = line.size();
        if (width < last_width_)
            line += std::string(last_width_ - width, ' ');
        last_width_ = width;
        std::fprintf(out_, "\r%s%s", line.c_str(), final_line ? "\n" : "");
    } else if (final_line) {
        std::fprintf(out_, "%s\n", line.c_str());
    }
    std::fflush(out_);
}

}  // namespace kiln
