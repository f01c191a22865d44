#include "checkpoint_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <sstream>
#include <utility>

#include "io/atomic_h5.h"
#include "io/checkpoint_internal.h"

namespace kiln {
namespace {

constexpr const char* kFaultVariable = "KILN_CHECKPOINT_FAULT";
constexpr const char* kLogVariable = "KILN_CHECKPOINT_LOG";

// Host floats from the staged bytes of the model's dtype.
void copy_values(const char* src, DType dtype, size_t n, float* dst) {
    if (dtype == DType::kFloat32) {
        std::memcpy(dst, src, n * sizeof(float));
    } else {
        const double* wide = reinterpret_cast<const double*>(src);
        for (size_t i = 0; i < n; ++i)
            dst[i] = static_cast<float>(wide[i]);
    }
}

}  // namespace

std::vector<LayerWeights> staged_weights(const CheckpointJob& job, const char* host) {
    std::vector<LayerWeights> out;
    for (size_t i = 0; i < job.layers.size(); ++i) {
        LayerWeights lw;
        lw.layer_name = job.model.config.layers[i + 1].name;
        for (const CheckpointJob::Weight& w : job.layers[i]) {
            NamedArray a;
            a.name = w.name;
            a.shape = w.shape;
            a.values.resize(static_cast<size_t>(shape_elements(w.shape)));
            copy_values(host + w.offset, job.dtype, a.values.size(), a.values.data());
            lw.weights.push_back(std::move(a));
        }
        out.push_back(std::move(lw));
    }
    return out;
}

void CheckpointWriter::log_line(const char* event, const CheckpointJob& job,
                                uint32_t weights_crc) const {
    if (log_fd_ < 0)
        return;
    char line[4096];
    const int n = std::snprintf(
        line, sizeof(line), "%s %s epoch=%d batch=%lld step=%lld weights_crc32=%08x\n", event,
        job.path.c_str(), job.state ? job.state->epoch : 0,
        static_cast<long long>(job.state ? job.state->batch : 0),
        static_cast<long long>(job.state ? job.state->step : 0), weights_crc);
    // One write(2) of a whole line on an O_APPEND descriptor: lines from both threads never
    // interleave.
    if (n > 0 && n < static_cast<int>(sizeof(line)))
        (void)!::write(log_fd_, line, static_cast<size_t>(n));
}

CheckpointWriter::CheckpointWriter(Backend& backend, size_t staging_bytes) : backend_(backend) {
    if (const char* log = std::getenv(kLogVariable)) {
        log_fd_ = ::open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (log_fd_ < 0) {
            std::fprintf(stderr, "kiln: warning: %s=%s cannot be opened: %s\n", kLogVariable, log,
                         std::strerror(errno));
        }
    }
    // The fault-injection hooks (header).
    if (const char* faults = std::getenv(kFaultVariable)) {
        std::stringstream list(faults);
        std::string item;
        while (std::getline(list, item, ',')) {
            const size_t eq = item.find('=');
            const std::string key = item.substr(0, eq);
            const std::string value = eq == std::string::npos ? "" : item.substr(eq + 1);
            if (key == "delay") {
                delay_ms_ = std::atoi(value.c_str());
            } else if (key == "fail" && value == "all") {
                fail_all_ = true;
            } else if (key == "fail") {
                fail_writes_.insert(std::atoll(value.c_str()));
            } else if (key == "crash") {
                // read by src/io/atomic_h5.cpp at the point itself
            } else if (!item.empty()) {
                std::fprintf(stderr, "kiln: warning: %s: unknown fault '%s' ignored\n",
                             kFaultVariable, item.c_str());
            }
        }
    }
    for (Slot& slot : slots_)
        slot.staging = backend_.make_staging_buffer(staging_bytes);
    thread_ = std::thread([this] { run(); });
}

CheckpointWriter::~CheckpointWriter() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    changed_.notify_all();
    if (thread_.joinable())
        thread_.join();
    if (log_fd_ >= 0)
        ::close(log_fd_);
}

bool CheckpointWriter::busy() const {
    for (const Slot& slot : slots_) {
        if (slot.state != SlotState::kFree)
            return true;
    }
    return false;
}

uint64_t CheckpointWriter::submit(CheckpointJob job, const std::vector<StagingRegion>& regions) {
    Slot* slot = nullptr;
    uint64_t id = 0;
    {
        std::unique_lock<std::mutex> lock(mutex_);
        bool counted_wait = false;
        while (slot == nullptr) {
            // A waiting request for the same file is replaced by this newer one.
            for (Slot& s : slots_) {
                if (s.state == SlotState::kWaiting && s.job.path == job.path &&
                    !s.job.synchronous) {
                    ++stats_.replaced;
                    unfinished_.erase(s.id);
                    s.job = CheckpointJob();
                    slot = &s;
                    break;
                }
            }
            for (Slot& s : slots_) {
                if (slot == nullptr && s.state == SlotState::kFree)
                    slot = &s;
            }
            if (slot != nullptr)
                break;
            // One write in flight and one waiting for another file: wait for the one in flight.
            if (!counted_wait) {
                ++stats_.waited;
                counted_wait = true;
            }
            changed_.wait(lock);
        }
        slot->state = SlotState::kFilling;
        id = next_id_++;
        unfinished_.insert(id);
        ++stats_.requested;
    }

    // Stage outside the lock: on CUDA this queues copies on the training thread's streams.
    try {
        // A checkpoint may hold more than the buffer was made for (snapshot slots acquired
        // since): the slot is ours while it fills, so its buffer can grow here.
        size_t needed = 0;
        for (const StagingRegion& r : regions)
            needed = std::max(needed, r.offset + r.bytes);
        if (needed > slot->staging->bytes())
            slot->staging = backend_.make_staging_buffer(needed);
        slot->staging->stage(regions);
    } catch (...) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            slot->state = SlotState::kFree;
            unfinished_.erase(id);
        }
        changed_.notify_all();
        throw;
    }

    {
        std::lock_guard<std::mutex> lock(mutex_);
        slot->job = std::move(job);
        slot->id = id;
        slot->state = SlotState::kWaiting;
    }
    changed_.notify_all();
    return id;
}

Status CheckpointWriter::wait(uint64_t id) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return unfinished_.count(id) == 0; });
    auto it = finished_.find(id);
    if (it == finished_.end())
        return Status::ok();  // asynchronous, replaced or reported
    Status s = it->second;
    finished_.erase(it);
    return s;
}

void CheckpointWriter::wait_idle() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return !busy(); });
}

Status CheckpointWriter::take_first_failure() {
    std::lock_guard<std::mutex> lock(mutex_);
    Status s = first_failure_;
    first_failure_ = Status::ok();
    return s;
}

Status CheckpointWriter::last_status(const std::string& path) const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!path.empty()) {
        auto it = last_by_path_.find(path);
        return it == last_by_path_.end() ? Status::ok() : it->second;
    }
    for (const auto& [p, s] : last_by_path_) {
        if (!s.is_ok())
            return s;
    }
    return Status::ok();
}

CheckpointStats CheckpointWriter::stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
}

void CheckpointWriter::run() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
        // The oldest waiting request; stop once asked to and nothing is left to write.
        Slot* next = nullptr;
        changed_.wait(lock, [&] {
            next = nullptr;
            for (Slot& s : slots_) {
                if (s.state == SlotState::kWaiting && (next == nullptr || s.id < next->id)) {
                    next = &s;
                }
            }
            return next != nullptr || (stopping_ && !busy());
        });
        if (next == nullptr)
            return;
        next->state = SlotState::kWriting;
        lock.unlock();

        const Status status = write(*next);

        lock.lock();
        finish(next->id, next->job.path, next->job.synchronous, status);
        next->job = CheckpointJob();
        next->state = SlotState::kFree;
        changed_.notify_all();
    }
}

void CheckpointWriter::finish(uint64_t id, const std::string& path, bool synchronous,
                              const Status& status) {
    unfinished_.erase(id);
    last_by_path_[path] = status;
    if (status.is_ok()) {
        ++stats_.written;
    } else {
        ++stats_.failed;
    }
    if (synchronous) {
        finished_[id] = status;
        return;
    }
    if (!status.is_ok()) {
        if (first_failure_.is_ok())
            first_failure_ = status;
        std::fprintf(stderr,
                     "kiln: warning: checkpoint not written: %s (training goes on; the "
                     "previous %s, if any, is unchanged)\n",
                     status.message().c_str(), path.c_str());
    }
}

Status CheckpointWriter::write(Slot& slot) {
    CheckpointJob& job = slot.job;
    try {
        if (delay_ms_ > 0)
            std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
        const int64_t attempt = ++attempts_;
        const bool inject = fail_all_ || fail_writes_.count(attempt) > 0;

        // 1. The bytes off the device, then into the file's shapes and types.
        slot.staging->wait();
        const char* host = static_cast<const char*>(slot.staging->host());
        const size_t element = dtype_size(job.dtype);
        job.model.weights = staged_weights(job, host);
        if (job.state && job.state->optimizer_slots > 0) {
            TrainingState& st = *job.state;
            int64_t per_slot = 0;
            for (const auto& range : job.trainable_ranges)
                per_slot += range.second;
            st.optimizer_state.resize(static_cast<size_t>(per_slot * st.optimizer_slots));
            float* out = st.optimizer_state.data();
            for (int k = 0; k < st.optimizer_slots; ++k) {
                const char* base =
                    host + job.state_offset + static_cast<size_t>(k * job.n_params) * element;
                for (const auto& [offset, count] : job.trainable_ranges) {
                    copy_values(base + static_cast<size_t>(offset) * element, job.dtype,
                                static_cast<size_t>(count), out);
                    out += count;
                }
            }
        }

        if (job.state) {
            for (const CheckpointJob::Snapshot& snap : job.snapshots) {
                SavedSnapshot saved;
                saved.name = snap.name;
                saved.taken_at = snap.taken_at;
                saved.trainable.resize(snap.trainable_count);
                saved.nontrainable.resize(snap.nontrainable_count);
                copy_values(host + snap.trainable_offset, job.dtype, snap.trainable_count,
                            saved.trainable.data());
                copy_values(host + snap.nontrainable_offset, job.dtype, snap.nontrainable_count,
                            saved.nontrainable.data());
                job.state->snapshots.push_back(std::move(saved));
            }
        }
        if (job.state && job.sums_count > 0) {
            job.state->epoch_sums.resize(static_cast<size_t>(job.sums_count));
            std::memcpy(job.state->epoch_sums.data(), host + job.sums_offset,
                        job.state->epoch_sums.size() * sizeof(double));
        }

        // 2. A crashed run's temporaries beside this target go the first time it is written.
        if (cleaned_.insert(job.path).second) {
            std::vector<std::string> removed;
            h5::remove_stale_temporaries(job.path, &removed);
            for (const std::string& file : removed) {
                std::fprintf(stderr, "kiln: removed %s, left by an interrupted save\n",
                             file.c_str());
            }
        }

        // 3. The file, published atomically.
        auto fault = [&]() -> Status {
            if (!inject)
                return Status::ok();
            return Status::io_error("injected failure (" + std::string(kFaultVariable) +
                                    ") of write " + std::to_string(attempt));
        };
        const Status saved = save_checkpoint(job.path, job.model, job.weights_only,
                                             job.state ? &*job.state : nullptr, fault);
        if (saved.is_ok() && logging())
            log_line("written", job, weights_crc32(job.model.weights));
        return saved;
    } catch (const std::exception& e) {
        return Status::io_error(job.path + ": cannot save the checkpoint: " + e.what());
    }
}

}  // namespace kiln
