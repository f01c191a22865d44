// Graceful stops on SIGINT and SIGTERM.
//
// After install_interrupt_handlers(), the first SIGINT or SIGTERM is a request, not a kill:
// Sequential::fit finishes the training step under way, writes FitArgs::interrupt_checkpoint
// (a file to resume from, taken after the last finished step), lets the callbacks react
// (BackupAndRestore backs up), waits for every checkpoint the writer holds, and throws
// kiln::Interrupted. `kiln fit` then exits with 128 + the signal: 130 for SIGINT, 143 for
// SIGTERM. A signal after the last step (during the last validation, or once a callback has
// ended the run) finds the run complete: fit returns as usual, and interrupt_requested() says
// that a signal came. A second SIGINT or SIGTERM ends the process at once with the same code; a
// save in flight then leaves only its temporary file, never a damaged published one (files are
// published by rename), and the next run removes it.
#pragma once

#include <string>

#include "kiln/status.h"

namespace kiln {

// Installs the handlers (process-wide, SA_RESTART); calling it again changes nothing.
void install_interrupt_handlers();
// Back to the default handling of both signals; a signal that arrived meanwhile is raised
// again now, so it ends the process as it would have.
void uninstall_interrupt_handlers();
// The signal that asked training to stop, or 0.
int interrupt_requested();
// As if `signal` had arrived once (for tests and embedding programs), and back to none.
void request_interrupt(int signal);
void clear_interrupt();

// What fit throws after stopping for a signal: the checkpoint is on disk when it is thrown.
class Interrupted : public Error {
  public:
    Interrupted(int signal, const std::string& what) : Error(what), signal_(signal) {}
    int signal() const { return signal_; }
    // The shell's convention for a process ended by a signal.
    int exit_code() const { return 128 + signal_; }

  private:
    int signal_;
};

}  // namespace kiln
