// Checkpoint requests: what a callback (ModelCheckpoint, BackupAndRestore) asks the model to
// write. The model hands each request to its writer, which copies the weights off the device
// and writes the file atomically (see Sequential::request_checkpoint).
#pragma once

#include <cstdint>
#include <string>

namespace kiln {

struct CheckpointRequest {
    std::string path;
    // A Keras 3 weights file (`*.weights.h5`) instead of a full model file (`*.h5`).
    bool weights_only = false;
    // Write the weights held in this snapshot slot (Sequential::snapshots()) instead of the
    // live parameters; -1 for the live ones.
    int snapshot_slot = -1;
    int epoch = 0;     // epochs completed when the checkpoint is taken (Keras's epoch + 1)
    int64_t step = 0;  // optimizer steps taken
    // The callbacks' state (best value, best epoch, wait, ...) as a JSON object keyed by
    // callback, stored with the checkpoint and handed back on resume.
    std::string callbacks_state_json;
};

}  // namespace kiln
