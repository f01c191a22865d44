#!/usr/bin/env python3
"""Says whose fault each crash input of a fuzz target is: kiln's, or libhdf5's alone.

Usage: triage.py FUZZ_BINARY INPUT...

Replays each input once and reads the sanitizer's report. An input is libhdf5's when the
innermost frame that is not the sanitizer runtime, libFuzzer, libc or libstdc++ lies in libhdf5,
and, for a bad access to memory, that memory was not allocated by kiln either (a buffer too
small that kiln handed to H5Dread would crash inside libhdf5 too, and is kiln's bug). Everything
else is kiln's: UBSan reports (only kiln's code is instrumented), leaks (libhdf5's own are
suppressed, tests/fuzz/lsan.supp), uncaught exceptions, leaked HDF5 identifiers, and any report
without a stack to tell.

Prints one line per input: `kiln|libhdf5 <TAB> what <TAB> where <TAB> input`, e.g.
`libhdf5  SEGV  H5MM_xfree < H5O_msg_reset < H5G__link_release_table  crash-91f6...`, and
leaves the replay's report beside the input as INPUT.report.
"""

import os
import re
import subprocess
import sys

# Frames that belong to the machinery around the code that failed.
RUNTIME_FUNCTIONS = re.compile(
    r"^(__asan|__lsan|__ubsan|__sanitizer|__interceptor|__interception|___interceptor|"
    r"fuzzer::|malloc|calloc|realloc|free|posix_memalign|aligned_alloc|memalign|valloc|"
    r"operator new|operator delete|__cxa_|__gxx_|__libc_|_start|raise|abort|"
    r"std::terminate|__gnu_cxx::__verbose_terminate|LLVMFuzzerTestOneInput|"
    r"mem(cpy|move|set|cmp|chr)|str(n?cpy|n?len|n?cmp|chr|dup|ndup)|wmem|bcmp)")
# glibc's and the C++ runtime's libraries, and glibc's own sources ("nptl/pthread_kill.c:43").
RUNTIME_MODULES = re.compile(r"/(libc\.so|libc-|libstdc\+\+\.so|libgcc_s\.so|libm\.so|"
                             r"ld-linux|libpthread)|^(nptl|signal|stdlib|csu|string|malloc|misc|"
                             r"sysdeps|libio)/")
# "#3 0x7f.. in FUNCTION LOCATION (BuildId: ..)", where the function (which may hold spaces) is
# missing for a symbol-less frame and LOCATION is "file:line:col" or "(module+0x1234)".
FRAME = re.compile(r"^\s*#(\d+)\s+0x[0-9a-f]+\s+(?:in\s+(.+?)\s+)?(\S+?)"
                   r"(?:\s+\(BuildId:[^)]*\))?\s*$")


def parse_frames(lines):
    """The frames of one stack trace: (function or '', location or module)."""
    frames = []
    for line in lines:
        m = FRAME.match(line)
        if not m:
            if frames:
                break
            continue
        frames.append((m.group(2) or "", m.group(3).strip("()")))
    return frames


def innermost(frames):
    """The first frame that is neither sanitizer, libFuzzer nor system runtime, or None."""
    for function, where in frames:
        if RUNTIME_MODULES.search(where):
            continue
        if RUNTIME_FUNCTIONS.match(function):
            continue
        return function, where
    return None


def is_libhdf5(frame):
    return frame is not None and "libhdf5" in frame[1]


def short_name(function):
    """'ns::Class::method' from a full C++ signature: no return type, templates or parameters."""
    name = function
    while True:
        shorter = re.sub(r"<[^<>]*>", "", name)
        if shorter == name:
            break
        name = shorter
    name = name.split("(")[0].strip()
    return name.split(" ")[-1]


def describe(frames):
    """'f < g < h': the innermost three libhdf5 or kiln frames, for grouping the findings."""
    names = []
    for function, where in frames:
        if not function or RUNTIME_MODULES.search(where) or RUNTIME_FUNCTIONS.match(function):
            continue  # libhdf5's static functions have no symbol
        names.append(short_name(function))
        if len(names) == 3:
            break
    return " < ".join(names) or "?"


def stacks(report):
    """The report's stack traces, in order: the failing one first, then 'allocated by' etc."""
    lines = report.splitlines()
    result = []
    i = 0
    while i < len(lines):
        if FRAME.match(lines[i]):
            j = i
            while j < len(lines) and FRAME.match(lines[j]):
                j += 1
            header = lines[i - 1] if i > 0 else ""
            result.append((header, parse_frames(lines[i:j])))
            i = j
        else:
            i += 1
    return result


def classify(report):
    """(owner, what, where) for one replay's output."""
    what = "crash"
    for pattern, name in [(r"ERROR: libFuzzer: timeout", "timeout"),
                          (r"ERROR: libFuzzer: out-of-memory \(malloc", "malloc over limit"),
                          (r"ERROR: libFuzzer: out-of-memory", "rss over limit"),
                          (r"ERROR: LeakSanitizer", "leak"),
                          (r"runtime error:", "undefined behaviour"),
                          (r"AddressSanitizer: requested allocation size", "allocation too big"),
                          (r"AddressSanitizer: ([\w-]+)", None),
                          (r"terminate called after throwing", "uncaught exception"),
                          (r"ERROR: libFuzzer: deadly signal", "deadly signal")]:
        m = re.search(pattern, report)
        if m:
            what = name or m.group(1)
            break
    if what in ("undefined behaviour", "leak", "rss over limit"):
        m = re.search(r"^(\S+:\d+:\d+): runtime error", report, re.M)
        return "kiln", what, m.group(1) if m else "-"
    all_stacks = stacks(report)
    if not all_stacks:
        return "kiln", what, "no stack"
    failing = all_stacks[0][1]
    frame = innermost(failing)
    owner = "libhdf5" if is_libhdf5(frame) else "kiln"
    # A bad access inside libhdf5 to memory kiln allocated is kiln's (a buffer too small).
    for header, frames in all_stacks[1:]:
        if "allocated by" in header or "freed by" in header:
            if owner == "libhdf5" and not is_libhdf5(innermost(frames)):
                owner = "kiln"
    return owner, what, describe(failing)


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    binary = sys.argv[1]
    env = dict(os.environ)
    for path in sys.argv[2:]:
        run = subprocess.run([binary, "-runs=1", "-timeout=5", "-rss_limit_mb=2048",
                              "-malloc_limit_mb=256", path],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                             timeout=120)
        report = run.stdout.decode("utf-8", "replace")
        with open(path + ".report", "w") as f:
            f.write(report)
        if run.returncode == 0:
            # It did not fail again alone (a leak or state from earlier inputs): kiln's to look at.
            owner, what, where = "kiln", "not reproduced alone", "-"
        else:
            owner, what, where = classify(report)
        print("%s\t%s\t%s\t%s" % (owner, what, where, os.path.basename(path)))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
