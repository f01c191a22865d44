// Checkpoint files and requests.
//
// Two file kinds, chosen by the file name as Keras chooses them:
//   - `*.h5`: the full model in the Keras legacy layout (model_config, model_weights), which
//     `keras.models.load_model` reads;
//   - `*.weights.h5`: the weights only, in the Keras 3 layout (layers/<class>[_k]/vars/<i>), which
//     `model.load_weights` reads.
// kiln adds a group `kiln` to both, which Keras ignores: what exact resume needs (the optimizer
// state, epoch, step, the seed, the callbacks' state, the history), kiln's version and a CRC-32
// of every dataset kiln wrote. A reader that finds a `kiln` group verifies every dataset against
// it; a mismatch is an error that names the dataset. Files Keras wrote (no `kiln` group) are read
// as Keras reads them.
//
// Requests: a callback (ModelCheckpoint, BackupAndRestore) asks the model for a checkpoint with
// Sequential::request_checkpoint; the model copies the weights and optimizer state off the
// device into pinned host memory and hands them to its one writer thread, which publishes the
// file atomically (temporary name beside the target, fsync, rename, fsync of the directory).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kiln/model_config.h"
#include "kiln/status.h"

namespace kiln {

struct CheckpointRequest {
    std::string path;
    // A Keras 3 weights file (`*.weights.h5`) instead of a full model file (`*.h5`).
    bool weights_only = false;
    // Write the weights held in this snapshot slot (Sequential::snapshots()) instead of the
    // live parameters; -1 for the live ones. Such a file holds no optimizer state and cannot be
    // resumed from (its weights are from an earlier step than the optimizer's state).
    int snapshot_slot = -1;
    int epoch = 0;     // epochs completed when the checkpoint is taken (Keras's epoch + 1)
    int64_t step = 0;  // optimizer steps taken
    // The callbacks' state (best value, best epoch, wait, ...) as a JSON object keyed by
    // callback, stored with the checkpoint and handed back on resume.
    std::string callbacks_state_json;
};

// What happened to the checkpoint requests of one model so far.
struct CheckpointStats {
    int64_t requested = 0;  // accepted by request_checkpoint (and save, save_weights)
    int64_t written = 0;    // published under their target name
    int64_t failed = 0;     // not written; the previous file was kept
    // Dropped unwritten because a newer request for the same file came while it waited: the
    // newer one is written instead.
    int64_t replaced = 0;
    // How often request_checkpoint waited for the writer (a request for another file while one
    // write was in flight and one was waiting).
    int64_t waited = 0;
};

// A snapshot slot's weights (SnapshotService: EarlyStopping's best weights), kept in a
// checkpoint to resume from so that a resumed run restores the same best weights.
struct SavedSnapshot {
    std::string name;       // the slot's name (EarlyStopping::snapshot_name)
    int64_t taken_at = -1;  // optimizer steps when it was taken
    // The model's two flat buffers as the slot holds them (kiln's layout, padding included).
    std::vector<float> trainable, nontrainable;
};

// The state a resumed run continues from: the `kiln` group of a checkpoint file.
struct TrainingState {
    std::string kiln_version;  // of the writer
    // False for a file written from a snapshot slot: its weights do not go with the optimizer
    // state, so it cannot be resumed from.
    bool resumable = true;
    int epoch = 0;  // epochs completed
    // Batches done of the epoch under way when the checkpoint was taken; 0 at an epoch's end.
    // A resumed fit with the same batch size and data order continues after that batch.
    int64_t batch = 0;
    // With batch > 0: the epoch's running training sums so far (loss, metric, samples: the
    // AccumulatorSlots of one set), so the resumed epoch's logs are those of a run that never
    // stopped. Empty at an epoch's end, and in files written before kiln 0.1 kept them.
    std::vector<double> epoch_sums;
    // The snapshot slots taken when the checkpoint was (resumable files only).
    std::vector<SavedSnapshot> snapshots;
    int64_t step = 0;   // optimizer steps taken (Sequential::iterations)
    uint64_t seed = 1;  // with epoch and step, the state of every RNG (they are counter-based)
    double learning_rate = 0;  // as it was (a callback may have changed it)
    std::string optimizer;     // Keras's class name, "Adam"
    // The optimizer's slots (Adam: m then v), each over every trainable weight in layer and
    // weight order, without the flat buffer's padding: optimizer_slots × (trainable count).
    int optimizer_slots = 0;
    std::vector<float> optimizer_state;
    std::string callbacks_state_json = "{}";
    // The fit arguments that decide the data order, as JSON: {"epochs", "batch_size",
    // "validation_split", "validation_data", "shuffle"}; "{}" when the model has not been fit.
    // `kiln fit --resume` takes them as its defaults.
    std::string fit_args_json = "{}";
    // Keras's history.epoch and history.history up to `epoch`, keys in their order.
    std::vector<int> history_epochs;
    std::vector<std::pair<std::string, std::vector<double>>> history;
};

// Everything kiln reads from a checkpoint file of either kind.
struct CheckpointContents {
    bool weights_only = false;  // a `*.weights.h5` file
    // A full model file always has a config; a weights file only when kiln wrote it.
    bool has_config = false;
    SavedModel model;
    // Weights file: one entry per group below `layers`, named by the group (Keras's "dense",
    // "dense_1", ...), its weights named "0", "1", ... in order; Sequential::load_weights pairs
    // them with the model's layers. (When the file has a config, model.weights holds the same
    // weights in the config's layer order too.)
    std::vector<LayerWeights> keras_layers;
    std::optional<TrainingState> training;  // present in files kiln wrote
};

// Writes a checkpoint of either kind atomically. `weights_only` needs a path ending in
// ".weights.h5" (Keras reads any other name as the legacy layout); its datasets are named from
// the config's class names (keras_weight_keys), and the config itself goes into the `kiln`
// group so that kiln can rebuild the model from the file. `state` may be null (no training
// state; the checksums are written all the same).
Status save_checkpoint(const std::string& path, const SavedModel& model, bool weights_only,
                       const TrainingState* state);
// Reads a file of either kind, kiln's or Keras's, by its name; verifies every checksum a `kiln`
// group records (a mismatch, or a kiln dataset without one, is Corruption naming the dataset).
Status load_checkpoint(const std::string& path, CheckpointContents* out);

// A file's kind by its name, as Keras decides it.
bool is_weights_file_name(const std::string& path);

// CRC-32 (zlib's) of every weight's float32 values, little-endian, layer by layer in order: the
// figure the checkpoint log (KILN_CHECKPOINT_LOG, src/checkpoint_writer.h) records for each
// checkpoint, and what get_weights() of a model loaded from that file gives again.
uint32_t weights_crc32(const std::vector<LayerWeights>& weights);
// Keras's key for a layer in a weights file: the class name in snake case ("Conv2D" ->
// "conv2d", "MaxPooling2D" -> "max_pooling2d"), with "_<k>" for the k-th repeat of the class.
std::vector<std::string> keras_weight_keys(const std::vector<std::string>& class_names);

// ---- inspection ---------------------------------------------------------------------------

struct ChecksumResult {
    std::string dataset;  // "/model_weights/dense/dense/kernel:0"
    bool ok = false;
    std::string detail;  // on failure: "stored crc32 1a2b3c4d, computed 5e6f7a8b", "missing"
};

struct CheckpointInfo {
    std::string path;
    bool weights_only = false;
    bool written_by_kiln = false;  // has a `kiln` group
    std::string writer;            // the root `writer` attribute or the kiln version, if any
    bool has_config = false;
    ModelConfig config;
    // Per layer (or weights-file group): its name and its weights' names and shapes.
    std::vector<LayerWeights> layers;  // values left empty
    int64_t parameter_count = 0;
    std::optional<TrainingState> training;  // optimizer_state left empty
    std::vector<ChecksumResult> checksums;  // every dataset a `kiln` group records, or lacks
    bool checksums_ok() const {
        for (const auto& c : checksums) {
            if (!c.ok)
                return false;
        }
        return true;
    }
};

// Describes a file without loading it into a model. Checksum failures are reported in
// `checksums`, not as an error; an error is a file that cannot be read at all.
Status inspect_checkpoint(const std::string& path, CheckpointInfo* out);

}  // namespace kiln
