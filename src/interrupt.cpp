#include "kiln/interrupt.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

namespace kiln {
namespace {

std::atomic<int> requested{0};
static_assert(std::atomic<int>::is_always_lock_free, "the handler needs a lock-free flag");

void write_all(const char* text) {
    size_t left = std::strlen(text);
    while (left > 0) {
        const ssize_t n = ::write(STDERR_FILENO, text, left);
        if (n <= 0)
            return;
        text += n;
        left -= static_cast<size_t>(n);
    }
}

// Only async-signal-safe calls: an atomic exchange, write(2) and _exit(2).
void on_signal(int signal) {
    const int before = requested.exchange(signal);
    if (before != 0) {
        write_all("\nkiln: second signal: stopping now, without a final checkpoint\n");
        ::_exit(128 + signal);
    }
    write_all(signal == SIGINT ? "\nkiln: SIGINT: finishing this step and writing a checkpoint "
                                 "(again to stop at once)\n"
                               : "\nkiln: SIGTERM: finishing this step and writing a checkpoint "
                                 "(again to stop at once)\n");
}

}  // namespace

void install_interrupt_handlers() {
    struct sigaction action;
    std::memset(&action, 0, sizeof(action));
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    sigaction(SIGINT, &action, nullptr);
    sigaction(SIGTERM, &action, nullptr);
}

void uninstall_interrupt_handlers() {
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (const int pending = requested.exchange(0))
        raise(pending);
}

int interrupt_requested() {
    return requested.load(std::memory_order_relaxed);
}

void request_interrupt(int signal) {
    requested.store(signal);
}

void clear_interrupt() {
    requested.store(0);
}

}  // namespace kiln
