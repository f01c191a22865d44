/* A preloaded shim (LD_PRELOAD) that fails chosen file-system calls of kiln's saves, for the
 * disk-fault test (tests/reliability/disk_faults.py).
 *
 * It watches only what a save touches: descriptors opened on a path holding ".tmp-" (kiln's
 * temporaries, src/io/atomic_h5.cpp) or opened as directories (the directory's fsync), and
 * renames whose source holds ".tmp-". Each call on them is one "position", counted from 1 in
 * the order the process makes them: open, write, pwrite, writev, pwritev, ftruncate, fsync,
 * fdatasync, close, rename.
 *
 * KILN_FAULT_SHIM (read once):
 *   "count=FILE"           appends one line per position to FILE ("N call"), failing nothing;
 *   "fail=N:ERRNO"         the N-th position fails with ERRNO (ENOSPC, EIO, EDQUOT or a number);
 *                          a failed close still closes the descriptor, as Linux does.
 * Without it the shim passes every call through.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FDS 4096

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int mode;     /* 0 pass, 1 count, 2 fail */
static long fail_at; /* position to fail */
static int fail_errno;
static long position;     /* positions seen */
static int count_fd = -1; /* the count file */
static unsigned char watched[MAX_FDS];

static int errno_named(const char* name) {
    if (strcmp(name, "ENOSPC") == 0)
        return ENOSPC;
    if (strcmp(name, "EIO") == 0)
        return EIO;
    if (strcmp(name, "EDQUOT") == 0)
        return EDQUOT;
    return atoi(name);
}

typedef int (*open_fn)(const char*, int, ...);
typedef int (*openat_fn)(int, const char*, int, ...);
typedef ssize_t (*pwrite_fn)(int, const void*, size_t, off_t);
typedef ssize_t (*writev_fn)(int, const struct iovec*, int);
typedef ssize_t (*pwritev_fn)(int, const struct iovec*, int, off_t);
typedef int (*ftruncate_fn)(int, off_t);
typedef int (*fd_fn)(int);
typedef int (*rename_fn)(const char*, const char*);

static ssize_t (*real_write)(int, const void*, size_t);

static void init(void) {
    real_write = (ssize_t(*)(int, const void*, size_t))dlsym(RTLD_NEXT, "write");
    const char* spec = getenv("KILN_FAULT_SHIM");
    if (spec == NULL)
        return;
    if (strncmp(spec, "count=", 6) == 0) {
        const open_fn next_open = (open_fn)dlsym(RTLD_NEXT, "open");
        count_fd = next_open(spec + 6, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        mode = count_fd >= 0 ? 1 : 0;
    } else if (strncmp(spec, "fail=", 5) == 0) {
        char name[32] = {0};
        if (sscanf(spec + 5, "%ld:%31s", &fail_at, name) == 2) {
            fail_errno = errno_named(name);
            mode = 2;
        }
    }
}

/* One position: returns the errno to fail it with, or 0 to let it through. */
static int step(const char* call) {
    pthread_once(&once, init);
    if (mode == 0)
        return 0;
    pthread_mutex_lock(&lock);
    const long n = ++position;
    pthread_mutex_unlock(&lock);
    if (mode == 1) {
        char line[64];
        const int len = snprintf(line, sizeof(line), "%ld %s\n", n, call);
        if (len > 0)
            real_write(count_fd, line, (size_t)len);
        return 0;
    }
    if (n == fail_at) {
        char line[96];
        const int len =
            snprintf(line, sizeof(line), "fault_shim: failing position %ld (%s)\n", n, call);
        if (len > 0)
            real_write(2, line, (size_t)len);
        return fail_errno;
    }
    return 0;
}

static int is_watched(int fd) {
    return fd >= 0 && fd < MAX_FDS && watched[fd];
}

static int wants(const char* path, int flags) {
    return (path != NULL && strstr(path, ".tmp-") != NULL) || (flags & O_DIRECTORY) != 0;
}

/* The next definition of `name` (libc's), looked up once. */
#define REAL(name, type)     \
    static type real_##name; \
    if (!real_##name)        \
    real_##name = (type)dlsym(RTLD_NEXT, #name)

/* `m`: the mode argument open(2) takes after `flags` when it may create the file. */
#define OPEN_MODE(m, flags)                \
    mode_t m = 0;                          \
    if ((flags) & (O_CREAT | O_TMPFILE)) { \
        va_list ap;                        \
        va_start(ap, flags);               \
        m = (mode_t)va_arg(ap, int);       \
        va_end(ap);                        \
    }

static int opened(const char* path, int flags, int fd) {
    if (fd >= 0 && fd < MAX_FDS)
        watched[fd] = (unsigned char)wants(path, flags);
    return fd;
}

/* The fault check of every open: the errno to fail this call with, 0 to let it run. */
static int open_fault(const char* path, int flags) {
    return wants(path, flags) ? step("open") : 0;
}

static int open_common(open_fn real, const char* path, int flags, mode_t m) {
    const int e = open_fault(path, flags);
    if (e) {
        errno = e;
        return -1;
    }
    return opened(path, flags, real(path, flags, m));
}

int open(const char* path, int flags, ...) {
    REAL(open, open_fn);
    OPEN_MODE(m, flags);
    return open_common(real_open, path, flags, m);
}

int open64(const char* path, int flags, ...) {
    REAL(open64, open_fn);
    OPEN_MODE(m, flags);
    return open_common(real_open64, path, flags, m);
}

int openat(int dir, const char* path, int flags, ...) {
    REAL(openat, openat_fn);
    OPEN_MODE(m, flags);
    const int e = open_fault(path, flags);
    if (e) {
        errno = e;
        return -1;
    }
    return opened(path, flags, real_openat(dir, path, flags, m));
}

#define FAIL_IF_WATCHED(fd, name, value) \
    if (is_watched(fd)) {                \
        const int e = step(name);        \
        if (e) {                         \
            errno = e;                   \
            return value;                \
        }                                \
    }

ssize_t write(int fd, const void* buf, size_t n) {
    pthread_once(&once, init);
    FAIL_IF_WATCHED(fd, "write", -1);
    return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void* buf, size_t n, off_t off) {
    REAL(pwrite, pwrite_fn);
    FAIL_IF_WATCHED(fd, "pwrite", -1);
    return real_pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void* buf, size_t n, off_t off) {
    REAL(pwrite64, pwrite_fn);
    FAIL_IF_WATCHED(fd, "pwrite", -1);
    return real_pwrite64(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec* iov, int count) {
    REAL(writev, writev_fn);
    FAIL_IF_WATCHED(fd, "writev", -1);
    return real_writev(fd, iov, count);
}

ssize_t pwritev(int fd, const struct iovec* iov, int count, off_t off) {
    REAL(pwritev, pwritev_fn);
    FAIL_IF_WATCHED(fd, "pwritev", -1);
    return real_pwritev(fd, iov, count, off);
}

int ftruncate(int fd, off_t length) {
    REAL(ftruncate, ftruncate_fn);
    FAIL_IF_WATCHED(fd, "ftruncate", -1);
    return real_ftruncate(fd, length);
}

int ftruncate64(int fd, off_t length) {
    REAL(ftruncate64, ftruncate_fn);
    FAIL_IF_WATCHED(fd, "ftruncate", -1);
    return real_ftruncate64(fd, length);
}

int fsync(int fd) {
    REAL(fsync, fd_fn);
    FAIL_IF_WATCHED(fd, "fsync", -1);
    return real_fsync(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync, fd_fn);
    FAIL_IF_WATCHED(fd, "fdatasync", -1);
    return real_fdatasync(fd);
}

int close(int fd) {
    REAL(close, fd_fn);
    if (is_watched(fd)) {
        watched[fd] = 0;
        const int e = step("close");
        const int result = real_close(fd);
        if (e) {
            errno = e;
            return -1;
        }
        return result;
    }
    return real_close(fd);
}

int rename(const char* from, const char* to) {
    REAL(rename, rename_fn);
    if (from != NULL && strstr(from, ".tmp-") != NULL) {
        const int e = step("rename");
        if (e) {
            errno = e;
            return -1;
        }
    }
    return real_rename(from, to);
}
