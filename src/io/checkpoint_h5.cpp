// Checkpoint files: the full-model file of model_h5.cpp or the Keras 3 weights file, plus the
// `kiln` group that exact resume needs and the checksums every reader verifies.
//
// The `kiln` group (the same in both kinds; Keras never looks at it):
//
//   /kiln                       attrs format_version=1, kiln_version, kind ("model"|"weights"),
//                                     resumable, epoch, batch, step, seed, learning_rate,
//                                     optimizer,
//                                     callbacks_state=<JSON>, fit_args=<JSON>, checksums=<JSON>,
//                                     [weights files: model_config, training_config]
//   /kiln/optimizer_state       float32 (slots, trainable weights), unpadded, in layer order
//   /kiln/history_epoch         int64 (epochs,): Keras's history.epoch
//   /kiln/history/<key>         float64 (epochs,), one per logs key; attr keys=[in order]
//
// `checksums` is {"algorithm": "crc32", "datasets": {"/model_weights/dense/dense/kernel:0":
// <crc32 of the little-endian bytes>, ...}} over every dataset kiln wrote, so an h5py user can
// check a file with zlib.crc32(f[path][()].tobytes()).
//
// The Keras 3 weights layout (shared/reference/hdf5-format.md §2.1), as Keras 3.15 writes it:
//
//   /vars                        empty group, attr name=<model name>
//   /layers/<key>/vars           attr name=<layer name>; datasets "0", "1", ... in Keras's order
//
// where <key> is the layer's class in snake case with a per-class counter ("dense", "dense_1").
#include "kiln/checkpoint.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/atomic_h5.h"
#include "io/checkpoint_internal.h"
#include "io/hdf5_util.h"
#include "io/model_h5_internal.h"

#ifndef KILN_VERSION
#define KILN_VERSION "unknown"
#endif

namespace kiln {
namespace {

constexpr const char* kKilnGroup = "kiln";
constexpr int64_t kFormatVersion = 1;
constexpr const char* kWeightsSuffix = ".weights.h5";

// ---- checksums ------------------------------------------------------------------------------

uint32_t crc32_of(const void* data, size_t bytes) {
    uLong crc = crc32(0L, Z_NULL, 0);
    const auto* p = static_cast<const Bytef*>(data);
    // zlib takes a uInt length; feed large buffers in pieces.
    constexpr size_t kPiece = size_t{1} << 30;
    while (bytes > 0) {
        const size_t n = std::min(bytes, kPiece);
        crc = crc32(crc, p, static_cast<uInt>(n));
        p += n;
        bytes -= n;
    }
    return static_cast<uint32_t>(crc);
}

// The checksums of the datasets written into one file, by absolute path.
class Checksums {
  public:
    void add(const std::string& path, const void* data, size_t bytes) {
        values_[path] = crc32_of(data, bytes);
    }
    std::string json() const {
        nlohmann::json datasets = nlohmann::json::object();
        for (const auto& [path, crc] : values_)
            datasets[path] = crc;
        return nlohmann::json{{"algorithm", "crc32"}, {"datasets", datasets}}.dump();
    }
    static Status parse(const std::string& path, const std::string& text,
                        std::map<std::string, uint32_t>* out) {
        const auto j = nlohmann::json::parse(text, nullptr, false);
        if (j.is_discarded() || !j.is_object() || j.value("algorithm", "") != "crc32" ||
            !j.contains("datasets") || !j["datasets"].is_object()) {
            return Status::corruption(path +
                                      ": /kiln: the 'checksums' attribute is not kiln's "
                                      "{\"algorithm\": \"crc32\", \"datasets\": {...}}");
        }
        out->clear();
        for (const auto& [dataset, crc] : j["datasets"].items()) {
            if (!crc.is_number_unsigned() || crc.get<uint64_t>() > UINT32_MAX) {
                return Status::corruption(path + ": /kiln: the checksum of " + dataset +
                                          " is not a 32-bit number");
            }
            (*out)[dataset] = static_cast<uint32_t>(crc.get<uint64_t>());
        }
        return Status::ok();
    }

  private:
    std::map<std::string, uint32_t> values_;
};

// Elements of a shape (io/ keeps off tensor.cpp, as hdf5_util does).
int64_t element_count(const Shape& shape) {
    int64_t n = 1;
    for (int64_t d : shape)
        n *= d;
    return n;
}

std::string hex32(uint32_t v) {
    char text[16];
    std::snprintf(text, sizeof(text), "%08x", v);
    return text;
}

// ---- small HDF5 helpers beyond hdf5_util.h --------------------------------------------------

Status write_scalar_attribute(hid_t obj, const h5::Where& where, const std::string& name,
                              hid_t file_type, hid_t memory_type, const void* value) {
    h5::Dataspace space(H5Screate(H5S_SCALAR));
    if (!space.valid())
        return h5::io_failure(where, "H5Screate(H5S_SCALAR) failed");
    h5::Attribute attr(
        H5Acreate2(obj, name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT));
    if (!attr.valid())
        return h5::io_failure(where, "cannot create attribute '" + name + "'");
    if (H5Awrite(attr.get(), memory_type, value) < 0) {
        return h5::io_failure(where, "cannot write attribute '" + name + "'");
    }
    if (attr.close() < 0)
        return h5::io_failure(where, "H5Aclose('" + name + "') failed");
    return Status::ok();
}

Status write_int_attribute(hid_t obj, const h5::Where& where, const std::string& name,
                           int64_t value) {
    return write_scalar_attribute(obj, where, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

// A numeric scalar attribute (or a one-element array), converted by HDF5 to `memory_type`.
Status read_scalar_attribute(hid_t obj, const h5::Where& where, const std::string& name,
                             hid_t memory_type, void* value) {
    bool exists = false;
    Status s = h5::attribute_exists(obj, where, name, &exists);
    if (!s.is_ok())
        return s;
    if (!exists)
        return Status::corruption(where.str() + ": no attribute '" + name + "'");
    h5::Attribute attr(H5Aopen(obj, name.c_str(), H5P_DEFAULT));
    if (!attr.valid())
        return h5::format_failure(where, "cannot open attribute '" + name + "'");
    h5::Dataspace space(H5Aget_space(attr.get()));
    if (!space.valid())
        return h5::format_failure(where, "H5Aget_space failed for " + name);
    if (H5Sget_simple_extent_npoints(space.get()) != 1) {
        return Status::corruption(where.str() + ": attribute '" + name + "' is not one number");
    }
    h5::Datatype type(H5Aget_type(attr.get()));
    if (!type.valid())
        return h5::format_failure(where, "H5Aget_type failed for " + name);
    const H5T_class_t cls = H5Tget_class(type.get());
    if (cls != H5T_INTEGER && cls != H5T_FLOAT) {
        return Status::corruption(where.str() + ": attribute '" + name + "' is not a number");
    }
    if (H5Aread(attr.get(), memory_type, value) < 0) {
        return h5::format_failure(where, "cannot read attribute '" + name + "'");
    }
    return Status::ok();
}

// A contiguous dataset of `n` values of `memory_type`, stored as `file_type`.
Status write_vector_dataset(hid_t loc, const h5::Where& where, const std::string& name,
                            const std::vector<hsize_t>& dims, hid_t file_type, hid_t memory_type,
                            const void* values) {
    const h5::Where at = where.child(name);
    h5::Dataspace space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
    if (!space.valid())
        return h5::io_failure(at, "cannot create the dataspace");
    h5::PropList dcpl(H5Pcreate(H5P_DATASET_CREATE));
    if (!dcpl.valid() || H5Pset_obj_track_times(dcpl.get(), 0) < 0) {
        return h5::io_failure(at, "cannot make the dataset creation properties");
    }
    h5::Dataset dataset(H5Dcreate2(loc, name.c_str(), file_type, space.get(), H5P_DEFAULT,
                                   dcpl.get(), H5P_DEFAULT));
    if (!dataset.valid())
        return h5::io_failure(at, "H5Dcreate2 failed");
    hsize_t count = 1;
    for (hsize_t d : dims)
        count *= d;
    if (count > 0 &&
        H5Dwrite(dataset.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values) < 0) {
        return h5::io_failure(at, "H5Dwrite failed");
    }
    if (dataset.close() < 0)
        return h5::io_failure(at, "H5Dclose failed");
    return Status::ok();
}

// Reads a numeric dataset as `memory_type` (elements of `element_size` bytes) into raw bytes,
// with the declared size bounded and checked against what the file stores.
Status read_raw_dataset(hid_t loc, const h5::Where& where, const std::string& name,
                        hid_t memory_type, size_t element_size, Shape* shape,
                        std::vector<unsigned char>* bytes) {
    const h5::Where at = where.child(name);
    bool exists = false;
    Status s = h5::check_hard_path(loc, where, name, &exists);
    if (!s.is_ok())
        return s;
    if (!exists)
        return Status::not_found(at.str() + ": no such dataset");
    h5::Dataset dataset(H5Dopen2(loc, name.c_str(), H5P_DEFAULT));
    if (!dataset.valid())
        return h5::format_failure(at, "cannot open as a dataset");
    h5::Dataspace space(H5Dget_space(dataset.get()));
    if (!space.valid())
        return h5::format_failure(at, "H5Dget_space failed");
    const int rank = H5Sget_simple_extent_ndims(space.get());
    if (rank < 0)
        return h5::format_failure(at, "H5Sget_simple_extent_ndims failed");
    std::vector<hsize_t> dims(static_cast<size_t>(rank));
    if (rank > 0 && H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr) < 0) {
        return h5::format_failure(at, "H5Sget_simple_extent_dims failed");
    }
    int64_t count = 1;
    shape->clear();
    for (hsize_t d : dims) {
        if (d > static_cast<hsize_t>(h5::kMaxDatasetElements) ||
            (d != 0 && count > h5::kMaxDatasetElements / static_cast<int64_t>(d))) {
            return Status::corruption(at.str() + ": declares more elements than kiln reads");
        }
        count *= static_cast<int64_t>(d);
        shape->push_back(static_cast<int64_t>(d));
    }
    h5::Datatype type(H5Dget_type(dataset.get()));
    if (!type.valid())
        return h5::format_failure(at, "H5Dget_type failed");
    const uint64_t declared = static_cast<uint64_t>(count) * H5Tget_size(type.get());
    h5::PropList dcpl(H5Dget_create_plist(dataset.get()));
    if (!dcpl.valid())
        return h5::format_failure(at, "H5Dget_create_plist failed");
    if (H5Pget_layout(dcpl.get()) == H5D_CONTIGUOUS && declared > 0 &&
        H5Dget_storage_size(dataset.get()) < declared) {
        return Status::corruption(at.str() +
                                  ": stores fewer bytes than its shape declares "
                                  "(truncated, or never written)");
    }
    bytes->assign(static_cast<size_t>(count) * element_size, 0);
    if (count > 0 &&
        H5Dread(dataset.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes->data()) < 0) {
        return h5::format_failure(at, "cannot read the values");
    }
    return Status::ok();
}

// The stored element type of a dataset: class and size.
Status dataset_type(hid_t loc, const h5::Where& where, const std::string& name, H5T_class_t* cls,
                    size_t* size) {
    h5::Dataset dataset(H5Dopen2(loc, name.c_str(), H5P_DEFAULT));
    if (!dataset.valid())
        return h5::format_failure(where.child(name), "cannot open");
    h5::Datatype type(H5Dget_type(dataset.get()));
    if (!type.valid())
        return h5::format_failure(where.child(name), "H5Dget_type failed");
    *cls = H5Tget_class(type.get());
    *size = H5Tget_size(type.get());
    return Status::ok();
}

// Every dataset below `group_path` (absolute, "/model_weights"), recursively, by absolute path.
Status list_datasets(hid_t file, const std::string& path, const std::string& group_path,
                     std::vector<std::string>* out, int depth = 0) {
    if (depth > 16)
        return Status::corruption(path + ": " + group_path + ": nested too deeply");
    const h5::Where root{path, "/"};
    h5::Group group;
    Status s = h5::open_group(file, root, group_path, &group);
    if (s.code() == Status::Code::kNotFound)
        return Status::ok();
    if (!s.is_ok())
        return s;
    const h5::Where where{path, group_path};
    std::vector<std::string> names;
    s = h5::list_children(group.get(), where, H5I_DATASET, &names);
    if (!s.is_ok())
        return s;
    for (const auto& n : names)
        out->push_back(group_path + "/" + n);
    s = h5::list_children(group.get(), where, H5I_GROUP, &names);
    if (!s.is_ok())
        return s;
    for (const auto& n : names) {
        s = list_datasets(file, path, group_path + "/" + n, out, depth + 1);
        if (!s.is_ok())
            return s;
    }
    return Status::ok();
}

// Reads `dataset` (absolute) with its stored type and checks it against `expected`.
ChecksumResult verify_dataset(hid_t file, const std::string& path, const std::string& dataset,
                              uint32_t expected) {
    ChecksumResult r;
    r.dataset = dataset;
    const h5::Where root{path, "/"};
    bool exists = false;
    Status s = h5::check_hard_path(file, root, dataset, &exists);
    if (s.is_ok() && !exists) {
        r.detail = "recorded in /kiln but not in the file";
        return r;
    }
    H5T_class_t cls = H5T_NO_CLASS;
    size_t size = 0;
    if (s.is_ok())
        s = dataset_type(file, root, dataset, &cls, &size);
    hid_t memory_type = -1;
    if (s.is_ok()) {
        if (cls == H5T_FLOAT && size == 4)
            memory_type = H5T_NATIVE_FLOAT;
        if (cls == H5T_FLOAT && size == 8)
            memory_type = H5T_NATIVE_DOUBLE;
        if (cls == H5T_INTEGER && size == 8)
            memory_type = H5T_NATIVE_INT64;
        if (memory_type < 0) {
            r.detail = "holds a type kiln does not write";
            return r;
        }
    }
    Shape shape;
    std::vector<unsigned char> bytes;
    if (s.is_ok())
        s = read_raw_dataset(file, root, dataset, memory_type, size, &shape, &bytes);
    if (!s.is_ok()) {
        r.detail = "cannot be read: " + s.message();
        return r;
    }
    const uint32_t actual = crc32_of(bytes.data(), bytes.size());
    r.ok = actual == expected;
    if (!r.ok)
        r.detail = "stored crc32 " + hex32(expected) + ", computed " + hex32(actual);
    return r;
}

// Checks every dataset below the weight groups and the kiln group against the recorded
// checksums: each recorded one must match, and each present one must be recorded.
Status verify_checksums(hid_t file, const std::string& path, const std::string& weights_root,
                        const std::map<std::string, uint32_t>& recorded,
                        std::vector<ChecksumResult>* results) {
    std::vector<std::string> present;
    Status s = list_datasets(file, path, weights_root, &present);
    if (s.is_ok())
        s = list_datasets(file, path, std::string("/") + kKilnGroup, &present);
    if (!s.is_ok())
        return s;
    for (const auto& [dataset, crc] : recorded) {
        results->push_back(verify_dataset(file, path, dataset, crc));
    }
    for (const std::string& dataset : present) {
        if (recorded.count(dataset))
            continue;
        ChecksumResult r;
        r.dataset = dataset;
        r.detail = "has no checksum recorded in /kiln";
        results->push_back(r);
    }
    return Status::ok();
}

Status first_checksum_failure(const std::string& path, const std::vector<ChecksumResult>& results) {
    for (const ChecksumResult& r : results) {
        if (!r.ok) {
            return Status::corruption(path + ": dataset " + r.dataset + " " + r.detail +
                                      "; the file is damaged or was changed after kiln wrote it");
        }
    }
    return Status::ok();
}

// ---- the kiln group -------------------------------------------------------------------------

struct KilnExtras {
    std::string kind;               // "model" or "weights"
    std::string model_config_json;  // weights files only
    std::string training_config_json;
};

Status write_kiln_group(hid_t file, const std::string& path, const TrainingState* state,
                        const KilnExtras& extras, Checksums* sums) {
    const h5::Where root{path, "/"};
    h5::Group group;
    Status s = h5::create_group(file, root, kKilnGroup, &group);
    if (!s.is_ok())
        return s;
    const h5::Where where = root.child(kKilnGroup);
    const hid_t g = group.get();
    TrainingState none;
    none.resumable = false;
    const TrainingState& st = state ? *state : none;

    s = write_int_attribute(g, where, "format_version", kFormatVersion);
    if (s.is_ok())
        s = h5::write_string_attribute(g, where, "kiln_version", KILN_VERSION);
    if (s.is_ok())
        s = h5::write_string_attribute(g, where, "kind", extras.kind);
    if (s.is_ok())
        s = write_int_attribute(g, where, "resumable", st.resumable ? 1 : 0);
    if (s.is_ok())
        s = write_int_attribute(g, where, "epoch", st.epoch);
    if (s.is_ok())
        s = write_int_attribute(g, where, "batch", st.batch);
    if (s.is_ok())
        s = write_int_attribute(g, where, "step", st.step);
    if (s.is_ok()) {
        s = write_scalar_attribute(g, where, "seed", H5T_STD_U64LE, H5T_NATIVE_UINT64, &st.seed);
    }
    if (s.is_ok()) {
        s = write_scalar_attribute(g, where, "learning_rate", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE,
                                   &st.learning_rate);
    }
    if (s.is_ok())
        s = h5::write_string_attribute(g, where, "optimizer", st.optimizer);
    if (s.is_ok()) {
        s = h5::write_string_attribute(
            g, where, "callbacks_state",
            st.callbacks_state_json.empty() ? "{}" : st.callbacks_state_json);
    }
    if (s.is_ok()) {
        s = h5::write_string_attribute(g, where, "fit_args",
                                       st.fit_args_json.empty() ? "{}" : st.fit_args_json);
    }
    if (s.is_ok() && !extras.model_config_json.empty()) {
        s = h5::write_string_attribute(g, where, "model_config", extras.model_config_json);
    }
    if (s.is_ok() && !extras.training_config_json.empty()) {
        s = h5::write_string_attribute(g, where, "training_config", extras.training_config_json);
    }
    if (!s.is_ok())
        return s;

    // the optimizer's state
    if (st.optimizer_slots > 0) {
        const size_t per_slot = st.optimizer_state.size() / size_t(st.optimizer_slots);
        if (per_slot * size_t(st.optimizer_slots) != st.optimizer_state.size()) {
            return Status::invalid_argument(
                where.str() + ": optimizer state of " + std::to_string(st.optimizer_state.size()) +
                " values is not " + std::to_string(st.optimizer_slots) + " equal slots");
        }
        const std::vector<hsize_t> dims = {hsize_t(st.optimizer_slots), hsize_t(per_slot)};
        s = write_vector_dataset(g, where, "optimizer_state", dims, H5T_IEEE_F32LE,
                                 H5T_NATIVE_FLOAT, st.optimizer_state.data());
        if (!s.is_ok())
            return s;
        sums->add("/kiln/optimizer_state", st.optimizer_state.data(),
                  st.optimizer_state.size() * sizeof(float));
    }

    // the history
    std::vector<int64_t> epochs(st.history_epochs.begin(), st.history_epochs.end());
    s = write_vector_dataset(g, where, "history_epoch", {hsize_t(epochs.size())}, H5T_STD_I64LE,
                             H5T_NATIVE_INT64, epochs.data());
    if (!s.is_ok())
        return s;
    sums->add("/kiln/history_epoch", epochs.data(), epochs.size() * sizeof(int64_t));
    h5::Group history;
    s = h5::create_group(g, where, "history", &history);
    if (!s.is_ok())
        return s;
    const h5::Where history_where = where.child("history");
    std::vector<std::string> keys;
    for (const auto& [key, values] : st.history) {
        if (key.empty() || key.find('/') != std::string::npos || key == "." || key == "..") {
            return Status::invalid_argument(history_where.str() + ": the logs key '" + key +
                                            "' cannot name a dataset");
        }
        s = write_vector_dataset(history.get(), history_where, key, {hsize_t(values.size())},
                                 H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, values.data());
        if (!s.is_ok())
            return s;
        sums->add("/kiln/history/" + key, values.data(), values.size() * sizeof(double));
        keys.push_back(key);
    }
    s = h5::write_string_list_attribute(history.get(), history_where, "keys", keys);
    if (!s.is_ok())
        return s;
    if (history.close() < 0)
        return h5::io_failure(history_where, "H5Gclose failed");

    // last, the checksums of everything above and of the weights
    s = h5::write_string_attribute(g, where, "checksums", sums->json());
    if (!s.is_ok())
        return s;
    if (group.close() < 0)
        return h5::io_failure(where, "H5Gclose failed");
    return Status::ok();
}

// Reads the kiln group's training state (without verifying; the caller verifies).
Status read_kiln_group(hid_t file, const std::string& path, TrainingState* st, KilnExtras* extras,
                       std::map<std::string, uint32_t>* checksums, bool read_optimizer_state) {
    const h5::Where root{path, "/"};
    h5::Group group;
    Status s = h5::open_group(file, root, kKilnGroup, &group);
    if (!s.is_ok())
        return s;
    const h5::Where where = root.child(kKilnGroup);
    const hid_t g = group.get();

    int64_t version = 0, resumable = 0, epoch = 0;
    s = read_scalar_attribute(g, where, "format_version", H5T_NATIVE_INT64, &version);
    if (!s.is_ok())
        return s;
    if (version < 1 || version > kFormatVersion) {
        return Status::unsupported(where.str() + ": format_version " + std::to_string(version) +
                                   " is newer than this kiln reads (" +
                                   std::to_string(kFormatVersion) + "); upgrade kiln");
    }
    s = h5::read_string_attribute(g, where, "kiln_version", &st->kiln_version);
    if (s.is_ok())
        s = h5::read_string_attribute(g, where, "kind", &extras->kind);
    if (s.is_ok())
        s = read_scalar_attribute(g, where, "resumable", H5T_NATIVE_INT64, &resumable);
    if (s.is_ok())
        s = read_scalar_attribute(g, where, "epoch", H5T_NATIVE_INT64, &epoch);
    if (s.is_ok())
        s = read_scalar_attribute(g, where, "batch", H5T_NATIVE_INT64, &st->batch);
    if (s.is_ok())
        s = read_scalar_attribute(g, where, "step", H5T_NATIVE_INT64, &st->step);
    if (s.is_ok())
        s = read_scalar_attribute(g, where, "seed", H5T_NATIVE_UINT64, &st->seed);
    if (s.is_ok()) {
        s = read_scalar_attribute(g, where, "learning_rate", H5T_NATIVE_DOUBLE, &st->learning_rate);
    }
    if (s.is_ok())
        s = h5::read_string_attribute(g, where, "optimizer", &st->optimizer);
    if (s.is_ok()) {
        s = h5::read_string_attribute(g, where, "callbacks_state", &st->callbacks_state_json);
    }
    if (s.is_ok())
        s = h5::read_string_attribute(g, where, "fit_args", &st->fit_args_json);
    std::string checksums_json;
    if (s.is_ok())
        s = h5::read_string_attribute(g, where, "checksums", &checksums_json);
    if (!s.is_ok())
        return s;
    if (epoch < 0 || epoch > INT32_MAX || st->step < 0 || st->batch < 0) {
        return Status::corruption(where.str() + ": epoch " + std::to_string(epoch) + ", step " +
                                  std::to_string(st->step) + " are not counts");
    }
    st->epoch = static_cast<int>(epoch);
    st->resumable = resumable != 0;
    s = Checksums::parse(path, checksums_json, checksums);
    if (!s.is_ok())
        return s;
    for (const char* name : {"model_config", "training_config"}) {
        bool exists = false;
        s = h5::attribute_exists(g, where, name, &exists);
        if (s.is_ok() && exists) {
            s = h5::read_string_attribute(g, where, name,
                                          std::string(name) == "model_config"
                                              ? &extras->model_config_json
                                              : &extras->training_config_json);
        }
        if (!s.is_ok())
            return s;
    }

    // the optimizer's state
    bool exists = false;
    s = h5::check_hard_path(g, where, "optimizer_state", &exists);
    if (!s.is_ok())
        return s;
    st->optimizer_slots = 0;
    st->optimizer_state.clear();
    if (exists) {
        Shape shape;
        std::vector<unsigned char> bytes;
        if (read_optimizer_state) {
            s = read_raw_dataset(g, where, "optimizer_state", H5T_NATIVE_FLOAT, sizeof(float),
                                 &shape, &bytes);
            if (!s.is_ok())
                return s;
            st->optimizer_state.resize(bytes.size() / sizeof(float));
            std::memcpy(st->optimizer_state.data(), bytes.data(), bytes.size());
        } else {
            h5::Dataset d(H5Dopen2(g, "optimizer_state", H5P_DEFAULT));
            h5::Dataspace space(d.valid() ? H5Dget_space(d.get()) : -1);
            hsize_t dims[2] = {0, 0};
            if (!space.valid() || H5Sget_simple_extent_ndims(space.get()) != 2 ||
                H5Sget_simple_extent_dims(space.get(), dims, nullptr) < 0) {
                return h5::format_failure(where.child("optimizer_state"), "not 2-D");
            }
            shape = {int64_t(dims[0]), int64_t(dims[1])};
        }
        if (shape.size() != 2) {
            return Status::corruption(where.child("optimizer_state").str() +
                                      ": expected (slots, weights), got " +
                                      h5::shape_to_string(shape));
        }
        st->optimizer_slots = static_cast<int>(shape[0]);
    }

    // the history
    Shape shape;
    std::vector<unsigned char> bytes;
    s = read_raw_dataset(g, where, "history_epoch", H5T_NATIVE_INT64, sizeof(int64_t), &shape,
                         &bytes);
    if (!s.is_ok())
        return s;
    const size_t n_epochs = bytes.size() / sizeof(int64_t);
    std::vector<int64_t> epochs(n_epochs);
    std::memcpy(epochs.data(), bytes.data(), bytes.size());
    st->history_epochs.assign(epochs.begin(), epochs.end());
    h5::Group history;
    s = h5::open_group(g, where, "history", &history);
    if (!s.is_ok())
        return s;
    const h5::Where history_where = where.child("history");
    std::vector<std::string> keys;
    bool found = false;
    s = h5::read_string_list_attribute(history.get(), history_where, "keys", &keys, &found);
    if (!s.is_ok())
        return s;
    st->history.clear();
    for (const std::string& key : keys) {
        if (key.empty() || key.find('/') != std::string::npos) {
            return Status::corruption(history_where.str() + ": invalid key '" + key + "'");
        }
        s = read_raw_dataset(history.get(), history_where, key, H5T_NATIVE_DOUBLE, sizeof(double),
                             &shape, &bytes);
        if (!s.is_ok())
            return s;
        std::vector<double> values(bytes.size() / sizeof(double));
        std::memcpy(values.data(), bytes.data(), bytes.size());
        if (values.size() != n_epochs) {
            return Status::corruption(history_where.child(key).str() + ": " +
                                      std::to_string(values.size()) + " values for " +
                                      std::to_string(n_epochs) + " epochs");
        }
        st->history.emplace_back(key, std::move(values));
    }
    return Status::ok();
}

// ---- the Keras 3 weights layout -------------------------------------------------------------

Status write_weights_layout(hid_t file, const std::string& path, const SavedModel& model,
                            Checksums* sums) {
    const h5::Where root{path, "/"};
    const std::vector<LayerConfig>& layers = model.config.layers;
    if (layers.empty() || layers[0].class_name != "InputLayer") {
        return Status::invalid_argument("the model config does not start with an InputLayer");
    }
    // weights: one entry per layer after the InputLayer, or one per layer with the
    // InputLayer's (empty) first, as save_model_h5 accepts them
    size_t first = 0;
    if (model.weights.size() == layers.size() && model.weights[0].weights.empty()) {
        first = 1;
    } else if (model.weights.size() + 1 != layers.size()) {
        return Status::invalid_argument("the model has " + std::to_string(layers.size() - 1) +
                                        " layers after the InputLayer but " +
                                        std::to_string(model.weights.size()) +
                                        " entries of weights");
    }
    std::vector<std::string> classes;
    for (size_t i = 1; i < layers.size(); ++i)
        classes.push_back(layers[i].class_name);
    const std::vector<std::string> keys = keras_weight_keys(classes);

    // the model's own (empty) vars group: Keras 3.0-3.5 fail to load a file without it
    h5::Group vars;
    Status s = h5::create_group(file, root, "vars", &vars);
    if (s.is_ok())
        s = h5::write_string_attribute(vars.get(), root.child("vars"), "name", model.config.name);
    if (!s.is_ok())
        return s;
    h5::Group layers_group;
    s = h5::create_group(file, root, "layers", &layers_group);
    if (!s.is_ok())
        return s;
    for (size_t i = 0; i < keys.size(); ++i) {
        const LayerWeights& lw = model.weights[first + i];
        const std::string group_path = "layers/" + keys[i] + "/vars";
        h5::Group group;
        s = h5::create_group(file, root, group_path, &group);
        const h5::Where where = root.child(group_path);
        if (s.is_ok()) {
            s = h5::write_string_attribute(group.get(), where, "name", layers[i + 1].name);
        }
        if (!s.is_ok())
            return s;
        for (size_t j = 0; j < lw.weights.size(); ++j) {
            const NamedArray& a = lw.weights[j];
            if (static_cast<int64_t>(a.values.size()) != element_count(a.shape)) {
                return Status::invalid_argument("layer '" + layers[i + 1].name + "': " + a.name +
                                                " holds " + std::to_string(a.values.size()) +
                                                " values for shape " +
                                                h5::shape_to_string(a.shape));
            }
            const std::string name = std::to_string(j);
            s = h5::write_float_dataset(group.get(), where, name, a.shape, a.values.data());
            if (!s.is_ok())
                return s;
            sums->add("/" + group_path + "/" + name, a.values.data(),
                      a.values.size() * sizeof(float));
        }
        if (group.close() < 0)
            return h5::io_failure(where, "H5Gclose failed");
    }
    return Status::ok();
}

// Dataset names "0", "1", ... in numeric order; anything else is refused.
Status sorted_var_names(const std::string& where, std::vector<std::string> names,
                        std::vector<std::string>* out) {
    std::vector<std::pair<long, std::string>> numbered;
    for (const std::string& n : names) {
        if (n.empty() || n.size() > 9 ||
            !std::all_of(n.begin(), n.end(), [](char c) { return std::isdigit(uint8_t(c)); })) {
            return Status::corruption(where + ": dataset '" + n +
                                      "' is not a Keras variable "
                                      "index");
        }
        numbered.emplace_back(std::stol(n), n);
    }
    std::sort(numbered.begin(), numbered.end());
    out->clear();
    for (size_t i = 0; i < numbered.size(); ++i) {
        if (numbered[i].first != static_cast<long>(i)) {
            return Status::corruption(where + ": variables are not numbered 0.." +
                                      std::to_string(numbered.size() - 1));
        }
        out->push_back(numbered[i].second);
    }
    return Status::ok();
}

Status read_weights_layout(hid_t file, const std::string& path, std::vector<LayerWeights>* layers) {
    const h5::Where root{path, "/"};
    h5::Group group;
    Status s = h5::open_group(file, root, "layers", &group);
    if (s.code() == Status::Code::kNotFound) {
        return Status::corruption(path +
                                  ": no 'layers' group; not a Keras 3 weights file (a "
                                  "legacy weights file must not be named *.weights.h5)");
    }
    if (!s.is_ok())
        return s;
    std::vector<std::string> keys;
    s = h5::list_children(group.get(), root.child("layers"), H5I_GROUP, &keys);
    if (!s.is_ok())
        return s;
    layers->clear();
    for (const std::string& key : keys) {
        LayerWeights lw;
        lw.layer_name = key;
        const std::string vars_path = "layers/" + key + "/vars";
        h5::Group vars;
        s = h5::open_group(file, root, vars_path, &vars);
        if (s.code() == Status::Code::kNotFound) {
            layers->push_back(std::move(lw));  // a weightless layer Keras wrote no vars for
            continue;
        }
        if (!s.is_ok())
            return s;
        const h5::Where where = root.child(vars_path);
        std::vector<std::string> names, ordered;
        s = h5::list_children(vars.get(), where, H5I_DATASET, &names);
        if (s.is_ok())
            s = sorted_var_names(where.str(), names, &ordered);
        if (!s.is_ok())
            return s;
        for (const std::string& name : ordered) {
            NamedArray a;
            a.name = name;
            h5::DatasetInfo info;
            s = h5::read_float_dataset(vars.get(), where, name, &info, &a.values);
            if (!s.is_ok())
                return s;
            a.shape = info.shape;
            lw.weights.push_back(std::move(a));
        }
        layers->push_back(std::move(lw));
    }
    return Status::ok();
}

bool has_kiln_group(hid_t file, const std::string& path) {
    bool exists = false;
    Status s = h5::check_hard_path(file, h5::Where{path, "/"}, kKilnGroup, &exists);
    return s.is_ok() && exists;
}

// Pairs a weights file's groups with the config's layers (by Keras's keys) into
// SavedModel::weights order.
Status pair_weights_with_config(const std::string& path, const ModelConfig& config,
                                const std::vector<LayerWeights>& keras_layers,
                                std::vector<LayerWeights>* out) {
    std::vector<std::string> classes;
    for (size_t i = 1; i < config.layers.size(); ++i) {
        classes.push_back(config.layers[i].class_name);
    }
    const std::vector<std::string> keys = keras_weight_keys(classes);
    out->clear();
    for (size_t i = 0; i < keys.size(); ++i) {
        LayerWeights lw;
        lw.layer_name = config.layers[i + 1].name;
        for (const LayerWeights& k : keras_layers) {
            if (k.layer_name == keys[i])
                lw.weights = k.weights;
        }
        out->push_back(std::move(lw));
    }
    for (const LayerWeights& k : keras_layers) {
        if (!k.weights.empty() && std::find(keys.begin(), keys.end(), k.layer_name) == keys.end()) {
            return Status::corruption(path + ": group layers/" + k.layer_name +
                                      " has weights but the file's model_config has no such "
                                      "layer");
        }
    }
    return Status::ok();
}

// Opens `path` and reads everything; `strict` turns a checksum failure into the result, else
// it is only reported in *checks.
Status read_checkpoint(const std::string& path, bool strict, bool read_optimizer_state,
                       CheckpointContents* out, std::vector<ChecksumResult>* checks,
                       std::string* writer) {
    h5::HDF5Session session;
    h5::File file;
    Status s = h5::open_file_read(path, &file);
    if (!s.is_ok())
        return s;
    const hid_t f = file.get();
    CheckpointContents contents;
    contents.weights_only = is_weights_file_name(path);

    // 1. The kiln group, and the checksums, before any weight is handed out.
    KilnExtras extras;
    std::map<std::string, uint32_t> recorded;
    if (has_kiln_group(f, path)) {
        TrainingState st;
        s = read_kiln_group(f, path, &st, &extras, &recorded, read_optimizer_state);
        if (!s.is_ok())
            return s;
        std::vector<ChecksumResult> results;
        s = verify_checksums(f, path, contents.weights_only ? "/layers" : "/model_weights",
                             recorded, &results);
        if (!s.is_ok())
            return s;
        if (strict) {
            s = first_checksum_failure(path, results);
            if (!s.is_ok())
                return s;
        }
        if (checks)
            *checks = std::move(results);
        if (writer)
            *writer = "kiln " + st.kiln_version;
        contents.training = std::move(st);
    } else if (writer) {
        bool exists = false;
        if (h5::attribute_exists(f, h5::Where{path, "/"}, "writer", &exists).is_ok() && exists) {
            (void)h5::read_string_attribute(f, h5::Where{path, "/"}, "writer", writer);
        }
    }

    // 2. The weights, by the file's kind.
    if (contents.weights_only) {
        s = read_weights_layout(f, path, &contents.keras_layers);
        if (!s.is_ok())
            return s;
        if (!extras.model_config_json.empty()) {
            s = model_config_from_json(extras.model_config_json, &contents.model.config);
            if (!s.is_ok())
                return s.with_context(path + ": /kiln model_config");
            contents.model.training_config_json = extras.training_config_json;
            s = pair_weights_with_config(path, contents.model.config, contents.keras_layers,
                                         &contents.model.weights);
            if (!s.is_ok())
                return s;
            contents.has_config = true;
        }
    } else {
        s = read_model_h5(f, path, &contents.model);
        if (!s.is_ok())
            return s;
        contents.has_config = true;
    }
    *out = std::move(contents);
    return Status::ok();
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool is_weights_file_name(const std::string& path) {
    return ends_with(path, kWeightsSuffix);
}

std::vector<std::string> keras_weight_keys(const std::vector<std::string>& class_names) {
    // keras.src.utils.naming.to_snake_case: drop non-word characters, then "_" before an upper
    // case letter that starts a lower-case run, and between a lower-case letter and an upper
    // case one; then lower-case everything.
    static const std::regex non_word("[^A-Za-z0-9_]+");
    static const std::regex word_start("(.)([A-Z][a-z]+)");
    static const std::regex camel("([a-z])([A-Z])");
    std::map<std::string, int> used;
    std::vector<std::string> keys;
    for (const std::string& class_name : class_names) {
        std::string name = std::regex_replace(class_name, non_word, "");
        name = std::regex_replace(name, word_start, "$1_$2");
        name = std::regex_replace(name, camel, "$1_$2");
        for (char& c : name)
            c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        auto it = used.find(name);
        if (it == used.end()) {
            used[name] = 0;
            keys.push_back(name);
        } else {
            keys.push_back(name + "_" + std::to_string(++it->second));
        }
    }
    return keys;
}

Status save_checkpoint(const std::string& path, const SavedModel& model, bool weights_only,
                       const TrainingState* state) {
    return save_checkpoint(path, model, weights_only, state, {});
}

Status save_checkpoint(const std::string& path, const SavedModel& model, bool weights_only,
                       const TrainingState* state, const std::function<Status()>& before_rename) {
    const std::string context =
        path + ": cannot save the " + std::string(weights_only ? "weights" : "model");
    if (weights_only != is_weights_file_name(path)) {
        return Status::invalid_argument(
            context + (weights_only ? ": a weights-only file must be named *.weights.h5 (Keras "
                                      "reads any other name as a full model file)"
                                    : ": a full model file must not be named *.weights.h5 "
                                      "(Keras reads that name as a weights-only file)"));
    }
    // Validate before touching the disk.
    if (!weights_only) {
        Status s = check_model_h5(model);
        if (!s.is_ok())
            return s.with_context(context);
    }
    if (state != nullptr && state->optimizer_slots > 0 &&
        state->optimizer_state.size() % size_t(state->optimizer_slots) != 0) {
        return Status::invalid_argument(context + ": the optimizer state does not divide into " +
                                        std::to_string(state->optimizer_slots) + " slots");
    }

    h5::HDF5Session session;
    Status s = h5::publish_atomically(
        path,
        [&](hid_t file) {
            Checksums sums;
            KilnExtras extras;
            Status w;
            if (weights_only) {
                extras.kind = "weights";
                extras.model_config_json = model_config_to_json(model.config);
                extras.training_config_json = model.training_config_json;
                w = write_weights_layout(file, path, model, &sums);
            } else {
                extras.kind = "model";
                std::vector<WrittenWeight> written;
                w = write_model_h5(file, path, model, &written);
                for (const WrittenWeight& ww : written) {
                    sums.add(ww.path, ww.array->values.data(),
                             ww.array->values.size() * sizeof(float));
                }
            }
            if (!w.is_ok())
                return w;
            return write_kiln_group(file, path, state, extras, &sums);
        },
        before_rename);
    return s.with_context(context);
}

Status load_checkpoint(const std::string& path, CheckpointContents* out) {
    return read_checkpoint(path, /*strict=*/true, /*read_optimizer_state=*/true, out, nullptr,
                           nullptr);
}

Status inspect_checkpoint(const std::string& path, CheckpointInfo* out) {
    CheckpointContents contents;
    CheckpointInfo info;
    info.path = path;
    Status s = read_checkpoint(path, /*strict=*/false, /*read_optimizer_state=*/false, &contents,
                               &info.checksums, &info.writer);
    if (!s.is_ok())
        return s;
    info.weights_only = contents.weights_only;
    info.written_by_kiln = contents.training.has_value();
    info.has_config = contents.has_config;
    info.config = contents.model.config;
    const std::vector<LayerWeights>& source =
        contents.has_config ? contents.model.weights : contents.keras_layers;
    for (const LayerWeights& lw : source) {
        LayerWeights shapes;
        shapes.layer_name = lw.layer_name;
        for (const NamedArray& a : lw.weights) {
            info.parameter_count += element_count(a.shape);
            shapes.weights.push_back(NamedArray{a.name, a.shape, {}});
        }
        info.layers.push_back(std::move(shapes));
    }
    info.training = std::move(contents.training);
    *out = std::move(info);
    return Status::ok();
}

}  // namespace kiln
