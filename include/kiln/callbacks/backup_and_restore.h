// Keras's BackupAndRestore: backs the training state up at each epoch's end (or every save_freq
// batches) and, when a fit starts and finds a backup, continues from it.
//
// The backup is one file, `backup_dir/latest.h5`: a full model file with kiln's training state
// (the optimizer's state, the step count, the seed, the learning rate, the history and every
// callback's state), written through Sequential::request_checkpoint, so atomically and without
// making training wait. Resuming goes through Sequential::restore_training_state and continues
// exactly (bit for bit on the CPU) where the backup was taken; a backup taken within an epoch
// resumes at that epoch's start, as Keras's does. Keras writes `latest.weights.h5` and
// `training_metadata.json` instead, and restores the weights and the epoch only.
//
// double_checkpoint keeps the previous backup as `_latest.h5` and falls back to it when the
// latest cannot be read or is missing. delete_checkpoint removes these files (and the directory,
// when that leaves it empty) when the run completes; kiln never deletes anything else in
// backup_dir (Keras removes the whole tree).
#pragma once

#include <string>

#include "kiln/callbacks.h"
#include "kiln/callbacks/save_freq.h"

namespace kiln {
namespace callbacks {

class BackupAndRestore : public Callback {
  public:
    explicit BackupAndRestore(std::string backup_dir, SaveFreq save_freq = SaveFreq(),
                              bool delete_checkpoint = true, bool double_checkpoint = false);

    void validate(const FitParams& params) const override;
    std::optional<ResumePoint> resume_point() override;
    void on_train_begin(const Logs& logs) override;
    void on_epoch_end(int epoch, const Logs& logs) override;
    void on_train_batch_end(int64_t batch, const Logs& logs) override;
    void after_epoch_end(int epoch, const Logs& logs) override;
    void after_train_batch_end(int64_t batch, const Logs& logs) override;
    void on_train_end(const Logs& logs) override;
    void on_interrupt(int epoch, int64_t batches_done) override;

    std::string state_key() const override { return "BackupAndRestore:" + dir_; }
    std::string state_json() const override;
    void restore_state(const std::string& json) override;

    const std::string& backup_dir() const { return dir_; }
    std::string backup_path() const { return dir_ + "/latest.h5"; }
    std::string previous_backup_path() const { return dir_ + "/_latest.h5"; }
    // Backups written in this fit.
    int backups_written() const { return backups_; }

  private:
    void backup();

    std::string dir_;
    SaveFreq save_freq_;
    bool delete_checkpoint_ = true;
    bool double_checkpoint_ = false;
    int current_epoch_ = 0;  // the epoch a backup resumes at (Keras's _current_epoch)
    int64_t batches_since_save_ = 0;
    int64_t last_batch_seen_ = 0;
    bool due_ = false;
    int backups_ = 0;
};

}  // namespace callbacks
}  // namespace kiln
