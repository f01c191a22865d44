// The CPU backend's threads: a small pool that splits a loop into chunks and never makes the
// caller wait for a thread that has not started.
//
// Why not OpenMP's parallel for: on a 2-core machine shared with other work, a team barrier
// waits for every thread, and a thread the OS has descheduled holds everyone up for a time
// slice. An epoch of the default recipe took 3 to 10 times longer with 2 spinning OpenMP
// threads than with 1 on the project's build machine under load. Here each chunk is claimed
// through an atomic flag: every thread first takes the chunks of its own share (so that on a
// quiet machine a thread keeps touching the same memory step after step, which stays in its
// L2), then takes whatever is left. The caller waits only for chunks another thread has
// already claimed, so on a busy machine the loop degrades to one thread, never below it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln {
namespace cpu {

class ThreadPool {
  public:
    // `threads` counts the caller: 1 runs everything inline.
    explicit ThreadPool(int threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int threads() const { return static_cast<int>(workers_.size()) + 1; }

    // Runs fn(chunk) for chunk in [0, n_chunks), each exactly once, and returns when all have
    // finished. Not reentrant: fn must not call parallel_for.
    void parallel_for(int n_chunks, const std::function<void(int)>& fn);

    // The backend's pool: KILN_NUM_THREADS threads when set, else one per core.
    static ThreadPool& shared();

  private:
    static constexpr int kMaxChunks = 256;

    void worker_main(int index);
    // Claims and runs chunks: first those of `owner`'s share, then any left.
    void run_chunks(int owner);

    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::atomic<bool> stopping_{false};

    // The current job. `generation_` is odd while the caller rewrites the job's fields and even
    // once they are ready; a worker runs a job only after announcing itself in `active_` and
    // seeing the same even generation again (so it never reads fields being rewritten).
    std::atomic<uint64_t> generation_{0};
    const std::function<void(int)>* fn_ = nullptr;
    int n_chunks_ = 0;
    std::atomic<bool> claimed_[kMaxChunks];
    std::atomic<int> done_{0};
    std::atomic<int> active_{0};  // workers inside run_chunks for the current job
};

}  // namespace cpu
}  // namespace kiln
