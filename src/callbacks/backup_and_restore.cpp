#include "kiln/callbacks/backup_and_restore.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "callbacks/util.h"
#include "kiln/model.h"
#include "kiln/status.h"

namespace kiln {
namespace callbacks {

namespace {

bool exists(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0;
}

}  // namespace

BackupAndRestore::BackupAndRestore(std::string backup_dir, SaveFreq save_freq,
                                   bool delete_checkpoint, bool double_checkpoint)
    : dir_(std::move(backup_dir)),
      save_freq_(save_freq),
      delete_checkpoint_(delete_checkpoint),
      double_checkpoint_(double_checkpoint) {
    if (dir_.empty())
        throw Error("Empty `backup_dir` argument passed");
    while (dir_.size() > 1 && dir_.back() == '/')
        dir_.pop_back();
}

void BackupAndRestore::validate(const FitParams&) const {
    struct stat st;
    if (stat(dir_.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
        throw Error("BackupAndRestore: backup_dir " + dir_ + " exists and is not a directory");
    }
}

std::optional<ResumePoint> BackupAndRestore::resume_point() {
    if (!model_)
        throw Error("BackupAndRestore: no model (set_model)");
    std::vector<std::string> candidates;
    if (exists(backup_path()))
        candidates.push_back(backup_path());
    if (double_checkpoint_ && exists(previous_backup_path())) {
        candidates.push_back(previous_backup_path());
    }
    if (candidates.empty())
        return std::nullopt;
    std::string failures;
    for (const std::string& path : candidates) {
        TrainingState state;
        const Status s = model_->restore_training_state(path, &state);
        if (s.is_ok()) {
            if (!failures.empty()) {
                warn("BackupAndRestore: " + failures + "; restored the previous backup " + path);
            }
            ResumePoint point;
            point.epoch = state.epoch;
            point.callbacks_state_json = state.callbacks_state_json;
            point.source = path;
            return point;
        }
        failures += (failures.empty() ? "" : "; ") + s.message();
    }
    throw Error("BackupAndRestore: cannot restore from " + dir_ + ": " + failures);
}

void BackupAndRestore::on_train_begin(const Logs&) {
    due_ = false;
}

void BackupAndRestore::on_epoch_end(int epoch, const Logs&) {
    current_epoch_ = epoch + 1;
    last_batch_seen_ = 0;
    if (save_freq_.per_epoch())
        due_ = true;
}

void BackupAndRestore::on_train_batch_end(int64_t batch, const Logs&) {
    if (save_freq_.per_epoch())
        return;
    // Keras's _should_save_on_batch: batches counted across epochs.
    const int64_t add = batch <= last_batch_seen_ ? batch + 1 : batch - last_batch_seen_;
    batches_since_save_ += add;
    last_batch_seen_ = batch;
    if (batches_since_save_ >= save_freq_.batches()) {
        batches_since_save_ = 0;
        due_ = true;
    }
}

void BackupAndRestore::after_epoch_end(int, const Logs&) {
    if (due_)
        backup();
}

void BackupAndRestore::after_train_batch_end(int64_t, const Logs&) {
    if (due_)
        backup();
}

void BackupAndRestore::backup() {
    due_ = false;
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (ec)
        throw Error("BackupAndRestore: cannot create " + dir_ + ": " + ec.message());
    bool rotate = double_checkpoint_;
    if (double_checkpoint_) {
        // The previous backup stays as the fallback: moved, not copied (the new file is written
        // under a temporary name and renamed into place), once its own write has finished. If
        // that write failed, the file there is still the newest complete backup: keep it where
        // it is and go on training (the writer has already warned).
        const Status written = model_->wait_for_checkpoints();
        if (!written.is_ok()) {
            warn("BackupAndRestore: not rotating " + backup_path() +
                 " after a failed write: " + written.message());
            rotate = false;
        }
    }
    if (rotate && exists(backup_path())) {
        if (std::rename(backup_path().c_str(), previous_backup_path().c_str()) != 0) {
            throw Error("BackupAndRestore: cannot move " + backup_path() + " to " +
                        previous_backup_path() + ": " + std::strerror(errno));
        }
    }
    CheckpointRequest request;
    request.path = backup_path();
    request.epoch = current_epoch_;
    request.step = model_->iterations();
    request.callbacks_state_json = model_->callbacks_state_json();
    throw_if_error(model_->request_checkpoint(request).with_context("BackupAndRestore"));
    ++backups_;
}

void BackupAndRestore::on_interrupt(int, int64_t) {
    // The backup the next run continues from, taken after the last finished step.
    backup();
}

void BackupAndRestore::on_train_end(const Logs&) {
    if (!delete_checkpoint_)
        return;
    std::remove(backup_path().c_str());
    std::remove(previous_backup_path().c_str());
    rmdir(dir_.c_str());  // only when empty: kiln never removes files it did not write
}

std::string BackupAndRestore::state_json() const {
    return nlohmann::json(
               {{"batches_since_save", batches_since_save_}, {"last_batch_seen", last_batch_seen_}})
        .dump();
}

void BackupAndRestore::restore_state(const std::string& json) {
    const auto j = detail::parse_state(json, state_key());
    batches_since_save_ = j.value("batches_since_save", int64_t(0));
    last_batch_seen_ = j.value("last_batch_seen", int64_t(0));
}

}  // namespace callbacks
}  // namespace kiln
