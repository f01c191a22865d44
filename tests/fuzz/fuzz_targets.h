// What each fuzz target feeds its loader, shared by the libFuzzer executables (fuzz_main.cpp,
// built by tests/fuzz/CMakeLists.txt with ASan and UBSan) and the regression replay
// (tests/fuzz_replay_test.cpp, in the normal build), so a crash input replays exactly the calls
// that crashed.
//
// A target gets arbitrary bytes. Path-based loaders see them as a file: the bytes are written to
// one scratch file per target and process, in $TMPDIR (else /dev/shm, else /tmp). A target
// returns the Status of its main call; whatever the bytes, it must return, not crash, throw,
// hang or allocate without bound. Everything here is inline, and a fuzz executable calls one
// target only, so it links only that loader's sources.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <hdf5.h>

#include "kiln/checkpoint.h"
#include "kiln/data.h"
#include "kiln/model_config.h"
#include "kiln/status.h"

#include "io/model_h5_internal.h"

namespace kiln {
namespace fuzz {

// Datasets of one HDF5 file loaded per input: enough for every seed, and a bound on the time a
// file with thousands of tiny datasets can take.
constexpr size_t kMaxDatasetsPerFile = 8;

// "<dir>/kiln-fuzz-<pid>-<name>": fixed per process, so repeated inputs reuse one file.
inline std::string scratch_path(const std::string& name) {
    const char* dir = std::getenv("TMPDIR");
    std::string base = dir && *dir ? dir : (::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    return base + "/kiln-fuzz-" + std::to_string(::getpid()) + "-" + name;
}

// Writes `data` to the scratch file `name` and returns its path; aborts when it cannot, since
// every later result would then be about a stale file.
inline std::string write_scratch(const std::string& name, const uint8_t* data, size_t size) {
    const std::string path = scratch_path(name);
    std::FILE* f = std::fopen(path.c_str(), "wb");
    const bool ok = f != nullptr && (size == 0 || std::fwrite(data, 1, size, f) == size);
    if (f == nullptr || std::fclose(f) != 0 || !ok) {
        std::fprintf(stderr, "kiln fuzz: cannot write the scratch file %s\n", path.c_str());
        std::abort();
    }
    return path;
}

// HDF5 identifiers still open anywhere in the process: after a loader returns there must be
// none, or a handle leaked (and the next input would reuse the still-open file).
inline ssize_t open_hdf5_objects() {
    return H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
}

// ---- the targets ------------------------------------------------------------------------------

// IDX, plain or gzip: a gzip stream (magic 1f 8b) goes to a ".gz" name, as load_idx decides.
inline Status idx(const uint8_t* data, size_t size) {
    const bool gzip = size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
    const std::string path = write_scratch(gzip ? "idx.gz" : "idx", data, size);
    data::Array array;
    return data::load_idx(path, &array);
}

inline Status npy(const uint8_t* data, size_t size) {
    const std::string path = write_scratch("npy", data, size);
    data::Array array;
    return data::load_npy(path, &array);
}

// CSV with the default options, then two other option sets over the same bytes: without
// labels and no header, and a named label column with ';' and a header.
inline Status csv(const uint8_t* data, size_t size) {
    const std::string path = write_scratch("csv", data, size);
    data::Array x, y;
    const Status s = data::load_csv(path, data::CsvOptions{}, &x, &y);

    data::CsvOptions no_header;
    no_header.header = data::CsvOptions::Header::kNo;
    (void)data::load_csv_features(path, no_header, &x);

    data::CsvOptions named;
    named.label_column = "label";
    named.delimiter = ';';
    named.header = data::CsvOptions::Header::kYes;
    (void)data::load_csv(path, named, &x, &y);
    return s;
}

// An HDF5 dataset file: the datasets at the root are listed, then loaded (the first few), then
// a name that is usually absent (the not-found path lists the root again). Returns the first
// failure of the listing and the loads of listed datasets.
inline Status hdf5(const uint8_t* data, size_t size) {
    const std::string path = write_scratch("data.h5", data, size);
    std::vector<std::string> names;
    Status s = data::list_hdf5_datasets(path, "/", &names);
    if (!s.is_ok())
        return s;
    for (size_t i = 0; i < names.size() && i < kMaxDatasetsPerFile; ++i) {
        data::Array array;
        const Status loaded = data::load_hdf5_array(path, names[i], &array);
        if (s.is_ok())
            s = loaded;
    }
    data::Array array;
    (void)data::load_hdf5_array(path, "x_train", &array);
    return s;
}

// A model description, and what a model file's reader derives from it. A document that parses
// must survive the trip through kiln's writer (model_config_to_json's output must parse again:
// save_model_h5 relies on it); then the weights every layer expects are worked out from the
// declared shapes, as load_model_h5 does before reading them (check_model_h5 does that first,
// then refuses the missing weights).
inline Status model_json(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    SavedModel model;
    const Status s = model_config_from_json(text, &model.config);
    if (s.is_ok()) {
        ModelConfig again;
        const Status round_trip =
            model_config_from_json(model_config_to_json(model.config), &again);
        if (!round_trip.is_ok()) {
            std::fprintf(stderr,
                         "kiln fuzz: a config that parsed does not parse after "
                         "model_config_to_json: %s\n",
                         round_trip.message().c_str());
            std::abort();
        }
        (void)check_model_h5(model);
    }
    return s;
}

// A checkpoint, read as both kinds (load_checkpoint decides by the name: `*.weights.h5` is the
// Keras 3 weights layout, any other `*.h5` the full model), and inspected as both. Returns ok
// when either kind loads, else the full-model error.
inline Status checkpoint(const uint8_t* data, size_t size) {
    const char* const names[] = {"ckpt.h5", "ckpt.weights.h5"};
    Status full_model;
    bool any_ok = false;
    for (int kind = 0; kind < 2; ++kind) {
        const std::string path = write_scratch(names[kind], data, size);
        CheckpointContents contents;
        const Status s = load_checkpoint(path, &contents);
        any_ok = any_ok || s.is_ok();
        if (kind == 0)
            full_model = s;
        CheckpointInfo info;
        (void)inspect_checkpoint(path, &info);
    }
    return any_ok ? Status::ok() : full_model;
}

}  // namespace fuzz
}  // namespace kiln
