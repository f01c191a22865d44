// Running one piece of a reliability test in a forked child process, and measuring it.
//
// A child can crash, hang or allocate without taking the test down with it: the parent sees
// how it ended (exit code or signal), how long it ran, its peak resident memory (wait4's
// rusage) and whatever it wrote to a pipe. The child must not return into the test framework;
// run_in_child ends it with _exit.
//
// REQUIRES: the parent has not started threads that the child's work needs (kiln's CPU thread
// pool, a checkpoint writer): only the forking thread exists in the child. Tests therefore run
// everything that trains or builds a model inside children.
#pragma once

#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>

namespace kiln {
namespace reliability {

// KILN_RELIABILITY_LONG=1 asks for the full counts of the reliability suite.
inline bool long_mode() {
    const char* env = std::getenv("KILN_RELIABILITY_LONG");
    return env != nullptr && std::string(env) == "1";
}

// A field of /proc/self/status in KiB ("VmHWM", "VmPeak", "VmRSS"); -1 when not found.
inline long proc_status_kib(const char* field) {
    std::ifstream in("/proc/self/status");
    std::string line;
    const std::string key = std::string(field) + ":";
    while (std::getline(in, line)) {
        if (line.compare(0, key.size(), key) == 0)
            return std::strtol(line.c_str() + key.size(), nullptr, 10);
    }
    return -1;
}

// Starts measuring a peak of resident memory from now: returns the freed heap to the system
// (memory the parent freed before the fork is otherwise resident already and would be reused
// unseen) and resets VmHWM (/proc/self/clear_refs, Linux 4.0+). Returns VmHWM after the reset.
inline long reset_peak_rss() {
    ::malloc_trim(0);
    if (std::FILE* f = std::fopen("/proc/self/clear_refs", "w")) {
        std::fputs("5", f);
        std::fclose(f);
    }
    return proc_status_kib("VmHWM");
}

// Writes all of `text` to `fd`, retrying short writes; errors are ignored (the parent then sees
// a short message, which the test reports).
inline void write_all(int fd, const std::string& text) {
    size_t done = 0;
    while (done < text.size()) {
        const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        done += static_cast<size_t>(n);
    }
}

struct ChildResult {
    bool exited = false;  // by _exit; then exit_code holds the code
    int exit_code = -1;
    bool signaled = false;  // killed; then signal holds the signal
    int signal = 0;
    bool timed_out = false;  // the parent killed it after timeout_s
    double wall_ms = 0;      // fork to reaped
    long maxrss_kib = 0;     // the child's peak resident set (ru_maxrss)
    std::string output;      // everything the child wrote to its pipe

    std::string how() const {
        if (timed_out)
            return "hung (killed after the time limit)";
        if (signaled)
            return std::string("killed by signal ") + std::to_string(signal) + " (" +
                   strsignal(signal) + ")";
        return "exit code " + std::to_string(exit_code);
    }
};

// Forks; the child runs body(fd) with the write end of a pipe and _exits with its result. The
// parent collects the pipe's contents until the child closes it, killing the child (SIGKILL)
// when it runs longer than timeout_s, then reaps it with wait4.
inline ChildResult run_in_child(const std::function<int(int fd)>& body, double timeout_s) {
    ChildResult r;
    int fds[2];
    if (::pipe(fds) != 0) {
        r.output = std::string("pipe failed: ") + std::strerror(errno);
        return r;
    }
    // Anything buffered now would be written twice, once by each process.
    std::fflush(stdout);
    std::fflush(stderr);
    const auto start = std::chrono::steady_clock::now();
    const pid_t pid = ::fork();
    if (pid < 0) {
        ::close(fds[0]);
        ::close(fds[1]);
        r.output = std::string("fork failed: ") + std::strerror(errno);
        return r;
    }
    if (pid == 0) {
        ::close(fds[0]);
        int code = 120;
        try {
            code = body(fds[1]);
        } catch (const std::exception& e) {
            write_all(fds[1], std::string("\nuncaught exception: ") + e.what() + "\n");
            code = 121;
        } catch (...) {
            code = 122;
        }
        ::close(fds[1]);
        std::fflush(stdout);
        std::fflush(stderr);
        ::_exit(code);
    }

    // Parent: read until EOF or the deadline.
    ::close(fds[1]);
    const auto deadline = start + std::chrono::duration<double>(timeout_s);
    char buffer[65536];
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                              deadline - std::chrono::steady_clock::now())
                              .count();
        if (left <= 0) {
            ::kill(pid, SIGKILL);
            r.timed_out = true;
            break;
        }
        pollfd p{fds[0], POLLIN, 0};
        const int ready = ::poll(&p, 1, static_cast<int>(left));
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready <= 0)
            continue;  // the deadline check above decides
        const ssize_t n = ::read(fds[0], buffer, sizeof(buffer));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        r.output.append(buffer, static_cast<size_t>(n));
    }
    ::close(fds[0]);

    int status = 0;
    rusage usage{};
    while (::wait4(pid, &status, 0, &usage) < 0 && errno == EINTR) {
    }
    r.wall_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    r.maxrss_kib = usage.ru_maxrss;
    if (WIFEXITED(status)) {
        r.exited = true;
        r.exit_code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
        r.signaled = true;
        r.signal = WTERMSIG(status);
    }
    return r;
}

}  // namespace reliability
}  // namespace kiln
