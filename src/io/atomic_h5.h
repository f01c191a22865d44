// Publishing an HDF5 file atomically, for every file kind kiln writes (full models, weights-only
// files, checkpoints): a reader of the target path sees the old file or the new one, never a
// partial one, whatever happens during the save (shared/reference/hdf5-format.md §4.7,
// shared/reference/reliability.md §1.8).
#pragma once

#include <hdf5.h>

#include <functional>
#include <string>
#include <vector>

#include "kiln/status.h"

namespace kiln {
namespace h5 {

// Writes a new HDF5 file with `write` and publishes it as `path`:
//   1. creates "<dir>/.<name>.tmp-<pid>-<random>" beside the target (H5F_ACC_EXCL, so the name
//      is ours), and runs `write` on the open file;
//   2. closes it, checking H5Fclose (where HDF5 writes its metadata);
//   3. fsyncs the file (HDF5 never does), renames it over `path`, fsyncs the directory.
// On any failure before the rename the temporary is removed and `path` is left as it was.
// Every failure names the target and the reason. The caller holds an HDF5Session.
// `before_rename`, when given, runs once the temporary is closed, before its fsync (so what it
// appends to the file is made durable with the rest); a failure it returns fails the save there
// (the checkpoint trailer and the writer's fault injection use it).
Status publish_atomically(const std::string& path, const std::function<Status(hid_t file)>& write,
                          const std::function<Status()>& before_rename = {});

// Removes what a crashed save of `path` left beside it: files named ".<name>.tmp-<pid>-<16 hex>"
// whose process <pid> is gone (a live process's temporary may still be being written, and is
// left alone). Appends the removed paths to *removed when given. Best effort: a directory that
// cannot be listed is not an error here; the save itself reports what is wrong with it.
void remove_stale_temporaries(const std::string& path, std::vector<std::string>* removed = nullptr);

// The crash points of the save protocol, for the reliability tests. When KILN_CHECKPOINT_FAULT
// holds "crash=POINT" (or "crash=POINT@N", the N-th time the point is reached; 1 when omitted),
// reaching POINT ends the process at once with _exit(kCrashExitCode), as a power cut or a kill
// there would, after one line on stderr. The points of publish_atomically, in order: "created"
// (the temporary exists, empty), "written" (the datasets are written, not yet closed), "closed",
// "synced" (the file's fsync done), "renamed" (published, the directory not yet synced),
// "published" (the directory synced). Other modules add their own (ModelCheckpoint's
// "deleting" before it removes a file that left the top k).
constexpr int kCrashExitCode = 86;
void crash_point(const char* point);

// The name `publish_atomically` would use for `path` in this process, without the random part:
// ".<name>.tmp-<pid>-". For tests.
std::string temporary_prefix(const std::string& path);

}  // namespace h5
}  // namespace kiln
