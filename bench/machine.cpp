#include "machine.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>

#include "cpu/blas.h"
#include "cpu/parallel.h"

#ifndef KILN_SOURCE_DIR
#define KILN_SOURCE_DIR "."
#endif

namespace kiln {
namespace bench {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

// A peak is what the machine reached at best: on a machine shared with other work, the
// slower repetitions measure the others' load.
double fastest(const std::vector<double>& seconds) {
    return *std::min_element(seconds.begin(), seconds.end());
}

// The command's standard output, trailing newline removed; empty when it fails.
std::string command_output(const std::string& command) {
    FILE* pipe = popen(command.c_str(), "r");
    if (!pipe)
        return "";
    std::string out;
    std::array<char, 256> buf;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0)
        out.append(buf.data(), n);
    if (pclose(pipe) != 0)
        return "";
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r'))
        out.pop_back();
    return out;
}

std::string cpu_model() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("model name", 0) == 0) {
            const size_t colon = line.find(':');
            if (colon != std::string::npos)
                return line.substr(line.find_first_not_of(" \t", colon + 1));
        }
    }
    return "unknown CPU";
}

void find_commit(MachineInfo* m) {
    const std::string dir = KILN_SOURCE_DIR;
    // GIT_OPTIONAL_LOCKS=0: `git status` does not refresh the index of a tree others may be
    // working in.
    const std::string git = "GIT_OPTIONAL_LOCKS=0 git -C '" + dir + "' ";
    if (access((dir + "/.git").c_str(), F_OK) == 0) {
        const std::string head = command_output(git + "rev-parse HEAD 2>/dev/null");
        if (!head.empty()) {
            const std::string changed =
                command_output(git + "status --porcelain --untracked-files=no 2>/dev/null | wc -l");
            m->commit = head;
            if (!changed.empty() && changed != "0")
                m->commit += " (" + changed + " tracked files changed)";
            m->commit_source = "git";
            return;
        }
    }
    // bench/gpu_bundle.sh writes the commit beside a tree that travels without .git.
    std::ifstream in(dir + "/bench/gpu-bundle/COMMIT");
    std::string head, note;
    if (std::getline(in, head) && !head.empty()) {
        std::getline(in, note);
        m->commit = head + (note.empty() ? "" : " " + note);
        m->commit_source = "bench/gpu-bundle/COMMIT";
        return;
    }
    m->commit = "unknown: " + dir + " has no .git and no bench/gpu-bundle/COMMIT";
    m->commit_source = "none";
}

}  // namespace

MachineInfo describe_machine(const Backend& backend) {
    MachineInfo m;
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    m.host = host;
    m.cpu = cpu_model();
    m.cores = static_cast<int>(std::thread::hardware_concurrency());
    m.backend = backend.description();
    if (backend.kind() == DeviceKind::kCpu) {
        m.threads = cpu::ThreadPool::shared().threads();
        const blas::Library& lib = blas::library();
        m.driver = std::string(lib.get_config()) + ", core " + lib.get_corename();
        if (!lib.coretype_note.empty())
            m.driver += ", " + lib.coretype_note;
    } else {
        m.driver = backend.description();
    }
    find_commit(&m);
    return m;
}

std::string load_average() {
    std::ifstream in("/proc/loadavg");
    std::string one, five, fifteen;
    if (!(in >> one >> five >> fifteen))
        return "unknown";
    return one + " " + five + " " + fifteen;
}

Tensor filled(Backend& backend, int64_t n, float value) {
    Tensor t(backend, {n});
    const std::vector<float> host(static_cast<size_t>(n), value);
    t.copy_from_host(host.data());
    return t;
}

std::vector<double> time_calls(Backend& backend, int repetitions, double round_s,
                               const std::function<void()>& op) {
    // The untimed call, then one timed call to size the rounds.
    op();
    backend.synchronize();
    const Clock::time_point probe = Clock::now();
    op();
    backend.synchronize();
    const double once = std::max(seconds_since(probe), 1e-9);
    const int64_t calls = std::clamp<int64_t>(int64_t(round_s / once), 1, 100000);

    std::vector<double> per_call;
    for (int r = 0; r < repetitions; ++r) {
        const Clock::time_point start = Clock::now();
        for (int64_t i = 0; i < calls; ++i)
            op();
        backend.synchronize();
        per_call.push_back(seconds_since(start) / double(calls));
    }
    return per_call;
}

Peak measure_peak(Backend& backend, int64_t gemm_n, size_t copy_bytes, int repetitions) {
    Peak peak;

    // GEMM: values well inside float32's normal range, so no denormal slows a path down.
    {
        const int64_t n = gemm_n;
        Tensor a = filled(backend, n * n, 0.5f), b = filled(backend, n * n, 0.25f);
        Tensor c = filled(backend, n * n, 0.0f);
        peak.gemm_n = n;
        peak.gemm_seconds = time_calls(backend, repetitions, 0.0, [&] {
            backend.gemm(false, false, n, n, n, 1.0f, a.view(), b.view(), 0.0f, c.view());
        });
        peak.gemm_flops_per_s =
            2.0 * double(n) * double(n) * double(n) / fastest(peak.gemm_seconds);
        if (backend.kind() == DeviceKind::kCuda) {
            const Precision before = backend.precision();
            backend.set_precision(Precision::kBf16);
            peak.bf16_gemm_seconds = time_calls(backend, repetitions, 0.0, [&] {
                backend.gemm(false, false, n, n, n, 1.0f, a.view(), b.view(), 0.0f, c.view());
            });
            backend.set_precision(before);
            peak.bf16_gemm_flops_per_s =
                2.0 * double(n) * double(n) * double(n) / fastest(peak.bf16_gemm_seconds);
        }
    }

    // Copies: read `copy_bytes`, write as many.
    const int64_t floats = int64_t(copy_bytes / sizeof(float));
    peak.copy_bytes = size_t(floats) * sizeof(float);
    Tensor src = filled(backend, floats, 1.0f), dst = filled(backend, floats, 0.0f);
    const double moved = 2.0 * double(peak.copy_bytes);
    peak.copy_bytes_per_s = moved / fastest(time_calls(backend, repetitions, 0.05, [&] {
                                backend.copy(dst.data(), src.data(), peak.copy_bytes);
                            }));
    if (backend.kind() == DeviceKind::kCpu) {
        cpu::ThreadPool& pool = cpu::ThreadPool::shared();
        const int chunks = pool.threads() * 4;
        const size_t chunk = (peak.copy_bytes + chunks - 1) / size_t(chunks);
        char* to = static_cast<char*>(dst.data());
        const char* from = static_cast<const char*>(src.data());
        peak.pool_copy_bytes_per_s = moved / fastest(time_calls(backend, repetitions, 0.05, [&] {
                                         pool.parallel_for(chunks, [&](int i) {
                                             const size_t begin = size_t(i) * chunk;
                                             const size_t end =
                                                 std::min(peak.copy_bytes, begin + chunk);
                                             if (begin < end)
                                                 std::memcpy(to + begin, from + begin, end - begin);
                                         });
                                     }));
    }
    return peak;
}

}  // namespace bench
}  // namespace kiln
