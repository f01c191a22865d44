#include "cpu/parallel.h"

#include <xmmintrin.h>

#include <cstdlib>
#include <string>

#include "kiln/status.h"

namespace kiln {
namespace cpu {
namespace {

// How long a worker keeps polling for the next job before it sleeps. A training step posts a
// job every few tens of microseconds, so a worker that spins this long is awake for the next
// one; on a busy machine it gives the core back soon after.
constexpr auto kSpin = std::chrono::microseconds(200);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
    for (auto& c : claimed_)
        c.store(true, std::memory_order_relaxed);
    for (int i = 1; i < threads; ++i)
        workers_.emplace_back([this, i] { worker_main(i); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_.store(true);
        generation_.fetch_add(2);
    }
    wake_.notify_all();
    for (auto& w : workers_)
        w.join();
}

ThreadPool& ThreadPool::shared() {
    static ThreadPool pool([] {
        if (const char* env = std::getenv("KILN_NUM_THREADS")) {
            const int n = std::atoi(env);
            if (n >= 1)
                return n;
        }
        const unsigned cores = std::thread::hardware_concurrency();
        return cores ? static_cast<int>(cores) : 1;
    }());
    return pool;
}

void ThreadPool::run_chunks(int owner) {
    const int n = n_chunks_;
    const int t = threads();
    // This thread's own share first, in order, then everything else.
    const int begin = static_cast<int>(int64_t(n) * owner / t);
    const int end = static_cast<int>(int64_t(n) * (owner + 1) / t);
    auto try_run = [&](int c) {
        if (claimed_[c].load(std::memory_order_relaxed))
            return;
        if (claimed_[c].exchange(true, std::memory_order_acq_rel))
            return;
        (*fn_)(c);
        done_.fetch_add(1, std::memory_order_acq_rel);
    };
    for (int c = begin; c < end; ++c)
        try_run(c);
    for (int c = 0; c < n; ++c)
        try_run(c);
}

void ThreadPool::parallel_for(int n_chunks, const std::function<void(int)>& fn) {
    if (n_chunks <= 0)
        return;
    if (workers_.empty() || n_chunks == 1) {
        for (int c = 0; c < n_chunks; ++c)
            fn(c);
        return;
    }
    if (n_chunks > kMaxChunks)
        throw Error("ThreadPool: at most 256 chunks per loop");

    // Post the job: mark the generation odd, wait until no worker is inside the previous job,
    // rewrite the fields, then publish the even generation.
    const uint64_t g = generation_.load() + 1;
    generation_.store(g);
    while (active_.load() > 0)
        cpu_relax();
    fn_ = &fn;
    n_chunks_ = n_chunks;
    done_.store(0, std::memory_order_relaxed);
    for (int c = 0; c < n_chunks; ++c)
        claimed_[c].store(false, std::memory_order_relaxed);
    {
        std::lock_guard<std::mutex> lock(mutex_);
        generation_.store(g + 1);
    }
    wake_.notify_all();

    run_chunks(0);

    // Every chunk is claimed now; wait for those still running on other threads.
    while (done_.load(std::memory_order_acquire) < n_chunks)
        cpu_relax();
}

void ThreadPool::worker_main(int index) {
    // The backend's ops flush denormals to zero (cpu_backend.cpp says why); its workers run
    // only those ops, so they keep the mode for good.
    _mm_setcsr(_mm_getcsr() | 0x8040);
    uint64_t seen = 0;
    auto ready = [&](uint64_t g) { return g % 2 == 0 && g != seen; };
    for (;;) {
        // Poll for a while, then sleep until the next job.
        const auto spin_until = std::chrono::steady_clock::now() + kSpin;
        uint64_t g = generation_.load(std::memory_order_acquire);
        while (!ready(g) && !stopping_.load(std::memory_order_relaxed) &&
               std::chrono::steady_clock::now() < spin_until) {
            for (int i = 0; i < 64 && !ready(g); ++i) {
                cpu_relax();
                g = generation_.load(std::memory_order_acquire);
            }
        }
        if (!ready(g)) {
            std::unique_lock<std::mutex> lock(mutex_);
            wake_.wait(lock, [&] { return stopping_.load() || ready(generation_.load()); });
            g = generation_.load();
        }
        if (stopping_.load())
            return;
        // Announce, then check the job is still the one seen: the caller either sees this
        // worker in active_ and waits, or this worker sees the generation move on.
        active_.fetch_add(1);
        if (generation_.load() == g) {
            seen = g;
            run_chunks(index);
        }
        active_.fetch_sub(1);
    }
}

}  // namespace cpu
}  // namespace kiln
