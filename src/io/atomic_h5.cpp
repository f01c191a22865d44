#include "io/atomic_h5.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <utility>

#include "io/hdf5_util.h"

namespace kiln {
namespace h5 {
namespace {

constexpr const char* kTemporaryInfix = ".tmp-";
constexpr size_t kRandomDigits = 16;

std::string errno_text(int error) {
    return std::strerror(error);
}

// The temporary file of one save: removed when the save fails at any step before the rename.
class TemporaryFile {
  public:
    TemporaryFile() = default;
    ~TemporaryFile() {
        if (!path_.empty())
            (void)::unlink(path_.c_str());
    }
    TemporaryFile(const TemporaryFile&) = delete;
    TemporaryFile& operator=(const TemporaryFile&) = delete;

    void own(std::string path) { path_ = std::move(path); }
    void release() { path_.clear(); }  // renamed into place: nothing left to remove

  private:
    std::string path_;
};

std::string prefix_in_dir(const std::filesystem::path& target) {
    return "." + target.filename().string() + kTemporaryInfix;
}

// "<dir>/.<basename>.tmp-<pid>-<random>": in the target's directory, so the rename stays on one
// file system and is atomic; hidden, and recognisable as a stale leftover after a crash.
std::string temporary_name(const std::filesystem::path& target) {
    std::random_device device;
    const uint64_t random = (static_cast<uint64_t>(device()) << 32) ^ device();
    char suffix[64];
    std::snprintf(suffix, sizeof(suffix), "%ld-%016llx", static_cast<long>(::getpid()),
                  static_cast<unsigned long long>(random));
    return (target.parent_path() / (prefix_in_dir(target) + suffix)).string();
}

// HDF5 never calls fsync (its default driver has no flush callback), so durability is ours.
Status fsync_path(const std::string& path, bool directory) {
    const int flags = O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0);
    const int fd = ::open(path.c_str(), flags);
    if (fd < 0)
        return Status::io_error(path + ": cannot open to sync: " + errno_text(errno));
    const int result = ::fsync(fd);
    const int error = errno;
    ::close(fd);
    // Some file systems cannot sync a directory (EINVAL); the rename is then as durable as
    // that file system makes it, which is all anyone can do there.
    if (result != 0 && !(directory && error == EINVAL)) {
        return Status::io_error(path + ": fsync failed: " + errno_text(error));
    }
    return Status::ok();
}

// The pid of a temporary named "<prefix><pid>-<16 hex>", or -1 when the rest of the name does
// not have that form (then it is not ours, and is never touched).
long temporary_owner(const std::string& rest) {
    const size_t dash = rest.find('-');
    if (dash == 0 || dash == std::string::npos || rest.size() - dash - 1 != kRandomDigits) {
        return -1;
    }
    for (size_t i = 0; i < dash; ++i) {
        if (!std::isdigit(static_cast<unsigned char>(rest[i])))
            return -1;
    }
    for (size_t i = dash + 1; i < rest.size(); ++i) {
        if (!std::isxdigit(static_cast<unsigned char>(rest[i])))
            return -1;
    }
    return std::strtol(rest.substr(0, dash).c_str(), nullptr, 10);
}

}  // namespace

void crash_point(const char* point) {
    // The requested point and occurrence, parsed once; reached counts are per process.
    static const std::pair<std::string, long> wanted = [] {
        std::pair<std::string, long> w{"", 0};
        const char* faults = std::getenv("KILN_CHECKPOINT_FAULT");
        if (faults == nullptr)
            return w;
        const std::string list = faults;
        size_t start = 0;
        while (start <= list.size()) {
            const size_t comma = std::min(list.find(',', start), list.size());
            const std::string item = list.substr(start, comma - start);
            if (item.compare(0, 6, "crash=") == 0) {
                const std::string spec = item.substr(6);
                const size_t at = spec.find('@');
                w.first = spec.substr(0, at);
                w.second = at == std::string::npos ? 1 : std::atol(spec.c_str() + at + 1);
            }
            start = comma + 1;
        }
        return w;
    }();
    static std::atomic<long> reached{0};
    if (wanted.first.empty() || wanted.first != point)
        return;
    if (reached.fetch_add(1) + 1 == wanted.second) {
        std::fprintf(stderr, "kiln: injected crash at '%s' (KILN_CHECKPOINT_FAULT)\n", point);
        std::fflush(stderr);
        ::_exit(kCrashExitCode);
    }
}

std::string temporary_prefix(const std::string& path) {
    return prefix_in_dir(std::filesystem::path(path)) + std::to_string(::getpid()) + "-";
}

Status publish_atomically(const std::string& path, const std::function<Status(hid_t file)>& write,
                          const std::function<Status()>& before_rename) {
    const std::filesystem::path target(path);
    if (target.filename().empty())
        return Status::invalid_argument(path + ": names no file");

    // 1. Everything under a fresh temporary name beside the target.
    const std::string temporary = temporary_name(target);
    TemporaryFile cleanup;
    {
        // H5F_ACC_EXCL creates the file only if the name is free, so whatever exists under it
        // after a failed save is ours to remove. The random suffix keeps the name free in
        // practice; the check makes sure a leftover of someone else's is never deleted.
        struct stat existing;
        if (::lstat(temporary.c_str(), &existing) == 0) {
            return Status::io_error("the temporary name " + temporary + " is already taken");
        }
        cleanup.own(temporary);
        File file;
        Status s = create_file_exclusive(temporary, &file);
        if (!s.is_ok())
            return s;
        crash_point("created");
        s = write(file.get());
        if (!s.is_ok())
            return s;
        crash_point("written");
        // 2. H5Fclose is where HDF5 writes the metadata; a failure here is a failed save.
        if (file.close() < 0)
            return io_failure(Where{temporary, ""}, "H5Fclose failed");
    }
    crash_point("closed");
    // What the caller adds to the closed file (the checkpoint trailer), made durable below.
    if (before_rename) {
        Status s = before_rename();
        if (!s.is_ok())
            return s;
    }

    // 3. Make the bytes durable, publish them under the final name, make the rename durable.
    Status s = fsync_path(temporary, false);
    if (!s.is_ok())
        return s;
    crash_point("synced");
    if (std::rename(temporary.c_str(), path.c_str()) != 0) {
        return Status::io_error("renaming " + temporary + " to " + path +
                                " failed: " + errno_text(errno));
    }
    cleanup.release();
    crash_point("renamed");
    const std::string directory = target.parent_path().string();
    s = fsync_path(directory.empty() ? "." : directory, true);
    if (!s.is_ok())
        return s.with_context("saved, but not yet durable");
    crash_point("published");
    return Status::ok();
}

void remove_stale_temporaries(const std::string& path, std::vector<std::string>* removed) {
    const std::filesystem::path target(path);
    const std::string prefix = prefix_in_dir(target);
    std::string directory = target.parent_path().string();
    if (directory.empty())
        directory = ".";
    DIR* dir = ::opendir(directory.c_str());
    if (dir == nullptr)
        return;
    std::vector<std::string> stale;
    while (const dirent* entry = ::readdir(dir)) {
        const std::string name = entry->d_name;
        if (name.compare(0, prefix.size(), prefix) != 0)
            continue;
        const long pid = temporary_owner(name.substr(prefix.size()));
        if (pid <= 0)
            continue;
        // Alive (or not ours to signal: EPERM) means someone may still be writing it.
        if (pid == static_cast<long>(::getpid()))
            continue;
        if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH)
            continue;
        stale.push_back((std::filesystem::path(directory) / name).string());
    }
    ::closedir(dir);
    for (const std::string& file : stale) {
        if (::unlink(file.c_str()) == 0 && removed != nullptr)
            removed->push_back(file);
    }
}

}  // namespace h5
}  // namespace kiln
