// The checkpoint writer: one thread that owns every checkpoint's HDF5 calls, fed from two
// staging buffers (pinned on CUDA) so that the training loop never waits for the disk.
//
// Bounded memory: at most one write in flight and one waiting. A request for a file that is
// already waiting replaces the waiting one (the newer state of the same file is the one worth
// writing, and the replaced request is counted); a request for another file while both slots
// are busy waits for the write in flight to finish, so no file's newest request is ever dropped
// and the last request of a run is always written.
//
// A failed write is reported on stderr ("kiln: warning: ...", naming the file and the reason),
// the previous file stays as it was (files are published atomically) and training goes on; the
// failure is kept for wait_for_checkpoints and last_status.
//
// Test hooks: the environment variable KILN_CHECKPOINT_FAULT, read when the writer is made,
// holds comma-separated faults to inject: "delay=MS" sleeps MS milliseconds before each write
// (a slow disk), "fail=N" fails the N-th write (1-based) after its temporary file is complete,
// "fail=all" fails every write; "crash=POINT[@N]" ends the process (src/io/atomic_h5.h).
//
// The checkpoint log: when KILN_CHECKPOINT_LOG names a file, each checkpoint appends a line
// when it is requested (on the training thread, with the CRC of the weights it is taken from)
// and one when it is published under its name (on the writer thread, with the CRC of the
// weights it wrote; weights_crc32 in kiln/checkpoint.h):
//   submitted PATH epoch=E batch=B step=S weights_crc32=XXXXXXXX
//   written PATH epoch=E batch=B step=S weights_crc32=XXXXXXXX
// A "written" line is appended only after the rename and the directory's fsync, so a file the
// log calls written survives a kill of the process. The reliability tests read it.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "kiln/backend.h"
#include "kiln/checkpoint.h"
#include "kiln/model_config.h"
#include "kiln/status.h"
#include "kiln/tensor.h"

namespace kiln {

// Everything one checkpoint needs, captured on the training thread; the weights and optimizer
// state arrive through the staging buffer.
struct CheckpointJob {
    std::string path;
    bool weights_only = false;
    // save()/save_weights(): the caller waits for the result and reports it; no warning.
    bool synchronous = false;

    SavedModel model;                    // config and training config; the writer fills the weights
    std::optional<TrainingState> state;  // the writer fills optimizer_state

    // Where each weight is in the staged bytes.
    struct Weight {
        std::string name;
        Shape shape;
        size_t offset = 0;  // bytes into the staging buffer
    };
    std::vector<std::vector<Weight>> layers;  // one entry per layer after the InputLayer
    DType dtype = DType::kFloat32;
    // The optimizer's state: `slots` padded arrays of `n_params` elements from `state_offset`,
    // of which the trainable weights' (element offset, count) ranges are kept, in order.
    size_t state_offset = 0;
    int64_t n_params = 0;
    std::vector<std::pair<int64_t, int64_t>> trainable_ranges;
    // A checkpoint within an epoch: the epoch's running sums (doubles) from `sums_offset`.
    size_t sums_offset = 0;
    int sums_count = 0;
    // A checkpoint to resume from: the snapshot slots taken, each as its two flat buffers.
    struct Snapshot {
        std::string name;
        int64_t taken_at = -1;
        size_t trainable_offset = 0, nontrainable_offset = 0;  // bytes into the staging buffer
        size_t trainable_count = 0, nontrainable_count = 0;    // elements
    };
    std::vector<Snapshot> snapshots;
};

// The job's weights, in layer order, from the staged bytes (`host`, laid out as the job says).
std::vector<LayerWeights> staged_weights(const CheckpointJob& job, const char* host);

class CheckpointWriter {
  public:
    // `staging_bytes` is the size of each of the two staging buffers.
    CheckpointWriter(Backend& backend, size_t staging_bytes);
    // Writes whatever is queued, then stops the thread.
    ~CheckpointWriter();
    CheckpointWriter(const CheckpointWriter&) = delete;
    CheckpointWriter& operator=(const CheckpointWriter&) = delete;

    // Training thread: takes a staging buffer (waiting only as the header says), stages the
    // regions into it, and queues the job. Returns an id for wait().
    uint64_t submit(CheckpointJob job, const std::vector<StagingRegion>& regions);
    // Blocks until the job `id` is finished; its result.
    Status wait(uint64_t id);
    // Blocks until every submitted job is finished.
    void wait_idle();
    // The first failure of an asynchronous write since the last call, which clears it.
    Status take_first_failure();
    // The newest finished write of `path` (of any file when empty: the first failing one).
    Status last_status(const std::string& path) const;
    CheckpointStats stats() const;

    // The checkpoint log (header); `logging` is false when KILN_CHECKPOINT_LOG is not set.
    bool logging() const { return log_fd_ >= 0; }
    void log_line(const char* event, const CheckpointJob& job, uint32_t weights_crc) const;

  private:
    enum class SlotState { kFree, kFilling, kWaiting, kWriting };
    struct Slot {
        std::unique_ptr<StagingBuffer> staging;
        SlotState state = SlotState::kFree;
        CheckpointJob job;
        uint64_t id = 0;
    };

    void run();
    Status write(Slot& slot);
    void finish(uint64_t id, const std::string& path, bool synchronous, const Status& status);
    bool busy() const;  // a slot is filling, waiting or writing (mutex held)

    Backend& backend_;
    int delay_ms_ = 0;
    std::set<int64_t> fail_writes_;  // 1-based write numbers
    bool fail_all_ = false;
    int64_t attempts_ = 0;           // writer thread only
    int log_fd_ = -1;                // KILN_CHECKPOINT_LOG, opened for appending
    std::set<std::string> cleaned_;  // targets whose stale temporaries were removed (writer)

    mutable std::mutex mutex_;
    std::condition_variable changed_;
    Slot slots_[2];
    uint64_t next_id_ = 1;
    std::map<uint64_t, Status> finished_;  // synchronous jobs' results until wait() takes them
    std::set<uint64_t> unfinished_;
    std::map<std::string, Status> last_by_path_;
    Status first_failure_;
    CheckpointStats stats_;
    bool stopping_ = false;
    std::thread thread_;
};

}  // namespace kiln
