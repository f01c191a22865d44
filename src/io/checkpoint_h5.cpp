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
//   /kiln/epoch_sums            float64 (3,): the epoch's running training sums, when batch > 0
//   /kiln/snapshots/<i>         attrs name, taken_at; float32 trainable, nontrainable: the
//                               snapshot slots (EarlyStopping's best weights), flat
//   /kiln/history_epoch         int64 (epochs,): Keras's history.epoch
//   /kiln/history/<key>         float64 (epochs,), one per logs key; attr keys=[in order]
//
// `checksums` is {"algorithm": "crc32", "datasets": {"/model_weights/dense/dense/kernel:0":
// <crc32 of the little-endian bytes>, ...}, "attributes": {"/kiln@epoch": <crc32>, ...}} over
// every dataset kiln wrote, so an h5py user can check a file with
// zlib.crc32(f[path][()].tobytes()), and over every attribute in the file but `checksums`
// itself (attribute_digest says of which bytes). Files written before "attributes" existed
// are read without the attribute check. After the HDF5 data comes a trailer with a checksum of
// the HDF5 structure, checked before libhdf5 reads the file (see "the structure checksum").
//
// The Keras 3 weights layout (shared/reference/hdf5-format.md §2.1), as Keras 3.15 writes it:
//
//   /vars                        empty group, attr name=<model name>
//   /layers/<key>/vars           attr name=<layer name>; datasets "0", "1", ... in Keras's order
//
// where <key> is the layer's class in snake case with a per-class counter ("dense", "dense_1").
#include "kiln/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
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

// What a file's `checksums` attribute records: the CRC-32 of every dataset kiln wrote, by
// absolute path, and (since kiln 0.1 files that carry "attributes") of every attribute, by
// "<object path>@<name>" ("/kiln@epoch", "/@model_config"; attribute_digest says of what).
struct RecordedChecksums {
    std::map<std::string, uint32_t> datasets;
    // False for files written before attributes were covered: those are not checked.
    bool has_attributes = false;
    std::map<std::string, uint32_t> attributes;
};

// The checksums of the datasets and attributes written into one file.
class Checksums {
  public:
    void add(const std::string& path, const void* data, size_t bytes) {
        values_[path] = crc32_of(data, bytes);
    }
    void add_attribute(const std::string& key, uint32_t crc) { attributes_[key] = crc; }
    std::vector<std::string> dataset_paths() const {
        std::vector<std::string> paths;
        for (const auto& entry : values_)
            paths.push_back(entry.first);
        return paths;
    }
    std::string json() const {
        nlohmann::json datasets = nlohmann::json::object();
        for (const auto& [path, crc] : values_)
            datasets[path] = crc;
        nlohmann::json attributes = nlohmann::json::object();
        for (const auto& [key, crc] : attributes_)
            attributes[key] = crc;
        return nlohmann::json{
            {"algorithm", "crc32"}, {"datasets", datasets}, {"attributes", attributes}}
            .dump();
    }
    static Status parse(const std::string& path, const std::string& text, RecordedChecksums* out) {
        const auto j = nlohmann::json::parse(text, nullptr, false);
        const auto is_map = [&](const char* key) {
            return j.contains(key) && j.at(key).is_object();
        };
        bool known_keys = j.is_object();
        if (known_keys) {
            for (const auto& item : j.items()) {
                known_keys = known_keys && (item.key() == "algorithm" || item.key() == "datasets" ||
                                            item.key() == "attributes");
            }
        }
        // Any other key, or a damaged name for "attributes", would otherwise pass unnoticed.
        if (!known_keys || !j.contains("algorithm") || j.at("algorithm") != "crc32" ||
            !is_map("datasets") || (j.contains("attributes") && !is_map("attributes"))) {
            return Status::corruption(path +
                                      ": /kiln: the 'checksums' attribute is not kiln's "
                                      "{\"algorithm\": \"crc32\", \"datasets\": {...}, "
                                      "\"attributes\": {...}}");
        }
        *out = RecordedChecksums();
        out->has_attributes = j.contains("attributes");
        for (const char* section : {"datasets", "attributes"}) {
            if (!j.contains(section))
                continue;
            auto& target = std::string(section) == "datasets" ? out->datasets : out->attributes;
            for (const auto& [name, crc] : j.at(section).items()) {
                if (!crc.is_number_unsigned() || crc.get<uint64_t>() > UINT32_MAX) {
                    return Status::corruption(path + ": /kiln: the checksum of " + name +
                                              " is not a 32-bit number");
                }
                target[name] = static_cast<uint32_t>(crc.get<uint64_t>());
            }
        }
        return Status::ok();
    }

  private:
    std::map<std::string, uint32_t> values_;
    std::map<std::string, uint32_t> attributes_;
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
    const size_t type_size = H5Tget_size(type.get());
    if (type_size == 0)
        return h5::format_failure(at, "H5Tget_size failed");
    // Before allocating: a chunked dataset may declare gigabytes and store nothing.
    s = h5::check_dataset_storage(dataset.get(), at, *shape,
                                  static_cast<uint64_t>(count) * type_size);
    if (!s.is_ok())
        return s;
    bytes->assign(static_cast<size_t>(count) * element_size, 0);
    if (count > 0 &&
        H5Dread(dataset.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes->data()) < 0) {
        return h5::format_failure(at, "cannot read the values");
    }
    return Status::ok();
}

// Copies what read_raw_dataset read into `dst`. An empty dataset leaves `bytes` (and usually
// the destination) without storage, and memcpy must not be given a null pointer even for zero
// bytes.
void copy_bytes(void* dst, const std::vector<unsigned char>& bytes) {
    if (!bytes.empty())
        std::memcpy(dst, bytes.data(), bytes.size());
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
            const bool attribute = r.dataset.find('@') != std::string::npos;
            return Status::corruption(path + (attribute ? ": attribute " : ": dataset ") +
                                      r.dataset + " " + r.detail +
                                      "; the file is damaged or was changed after kiln wrote it");
        }
    }
    return Status::ok();
}

// ---- attribute checksums --------------------------------------------------------------------

constexpr const char* kChecksumsAttribute = "checksums";
// Attributes are small; a count beyond this is a damaged dataspace, not a value to read.
constexpr hssize_t kMaxAttributeElements = hssize_t{1} << 24;

herr_t collect_attribute_name(hid_t /*object*/, const char* name, const H5A_info_t* /*info*/,
                              void* names) {
    static_cast<std::vector<std::string>*>(names)->emplace_back(name);
    return 0;
}

// The CRC-32 of attribute `name` as kiln reads it, whatever its storage: a tag byte, then for
// strings ('s') each string followed by a NUL, for integers ('i' signed, 'u' unsigned) each
// value as a little-endian 64-bit integer, for floating point ('f') each as a little-endian
// float64.
Status attribute_digest(hid_t object, const h5::Where& where, const std::string& name,
                        uint32_t* crc) {
    const std::string what = "attribute '" + name + "'";
    h5::Attribute attr(H5Aopen(object, name.c_str(), H5P_DEFAULT));
    if (!attr.valid())
        return h5::format_failure(where, "cannot open " + what);
    h5::Datatype type(H5Aget_type(attr.get()));
    if (!type.valid())
        return h5::format_failure(where, "H5Aget_type failed for " + what);
    const H5T_class_t cls = H5Tget_class(type.get());
    std::string bytes;
    if (cls == H5T_STRING) {
        std::vector<std::string> values;
        bool found = false;
        Status s = h5::read_string_list_attribute(object, where, name, &values, &found);
        if (!s.is_ok())
            return s;
        bytes = "s";
        for (const std::string& v : values) {
            bytes += v;
            bytes += '\0';
        }
    } else if (cls == H5T_INTEGER || cls == H5T_FLOAT) {
        h5::Dataspace space(H5Aget_space(attr.get()));
        const hssize_t n = space.valid() ? H5Sget_simple_extent_npoints(space.get()) : -1;
        if (n < 0 || n > kMaxAttributeElements) {
            return Status::corruption(where.str() + ": " + what + " has an invalid size");
        }
        hid_t memory_type = H5T_NATIVE_DOUBLE;
        char tag = 'f';
        if (cls == H5T_INTEGER) {
            const H5T_sign_t sign = H5Tget_sign(type.get());
            if (sign == H5T_SGN_ERROR)
                return h5::format_failure(where, "H5Tget_sign failed for " + what);
            memory_type = sign == H5T_SGN_NONE ? H5T_NATIVE_UINT64 : H5T_NATIVE_INT64;
            tag = sign == H5T_SGN_NONE ? 'u' : 'i';
        }
        // Eight bytes a value whichever of the three memory types.
        std::vector<uint64_t> values(static_cast<size_t>(n));
        if (n > 0 && H5Aread(attr.get(), memory_type, values.data()) < 0)
            return h5::format_failure(where, "cannot read " + what);
        bytes.assign(1, tag);
        for (uint64_t v : values) {
            for (int k = 0; k < 8; ++k)
                bytes += static_cast<char>((v >> (8 * k)) & 0xFF);
        }
    } else {
        return Status::corruption(where.str() + ": " + what + " has a type kiln does not write");
    }
    *crc = crc32_of(bytes.data(), bytes.size());
    return Status::ok();
}

// The digest of every attribute of `object_path` and of every group and dataset below it, by
// "<object path>@<name>"; /kiln's `checksums` (which holds them) is left out.
Status digest_attributes(hid_t file, const std::string& path, const std::string& object_path,
                         std::map<std::string, uint32_t>* out, int depth = 0) {
    const h5::Where where{path, object_path};
    if (depth > 16)
        return Status::corruption(where.str() + ": nested too deeply");
    h5::Object object(H5Oopen(file, object_path.c_str(), H5P_DEFAULT));
    if (!object.valid())
        return h5::format_failure(where, "H5Oopen failed");
    std::vector<std::string> names;
    hsize_t next = 0;
    if (H5Aiterate2(object.get(), H5_INDEX_NAME, H5_ITER_INC, &next, collect_attribute_name,
                    &names) < 0) {
        return h5::format_failure(where, "cannot list the attributes");
    }
    for (const std::string& name : names) {
        if (object_path == std::string("/") + kKilnGroup && name == kChecksumsAttribute)
            continue;
        uint32_t crc = 0;
        Status s = attribute_digest(object.get(), where, name, &crc);
        if (!s.is_ok())
            return s;
        (*out)[object_path + "@" + name] = crc;
    }
    if (H5Iget_type(object.get()) != H5I_GROUP)
        return Status::ok();
    for (H5I_type_t type : {H5I_GROUP, H5I_DATASET}) {
        std::vector<std::string> children;
        Status s = h5::list_children(object.get(), where, type, &children);
        if (!s.is_ok())
            return s;
        for (const std::string& child : children) {
            const std::string child_path = (object_path == "/" ? "/" : object_path + "/") + child;
            s = digest_attributes(file, path, child_path, out, depth + 1);
            if (!s.is_ok())
                return s;
        }
    }
    return Status::ok();
}

// Checks every attribute in the file against the digests recorded, when the file records them:
// each recorded one must be there and match, and each one there must be recorded (an attribute
// added, or one whose name was damaged, is as wrong as a changed value). Appends failures only.
Status verify_attributes(hid_t file, const std::string& path, const RecordedChecksums& recorded,
                         std::vector<ChecksumResult>* results) {
    if (!recorded.has_attributes)
        return Status::ok();
    std::map<std::string, uint32_t> present;
    Status s = digest_attributes(file, path, "/", &present);
    if (!s.is_ok())
        return s;
    for (const auto& [key, crc] : recorded.attributes) {
        const auto it = present.find(key);
        if (it == present.end()) {
            results->push_back({key, false, "recorded in /kiln but not in the file"});
        } else if (it->second != crc) {
            results->push_back(
                {key, false, "stored crc32 " + hex32(crc) + ", computed " + hex32(it->second)});
        }
    }
    for (const auto& [key, crc] : present) {
        if (!recorded.attributes.count(key))
            results->push_back({key, false, "has no checksum recorded in /kiln"});
    }
    return Status::ok();
}

// ---- the structure checksum ----------------------------------------------------------------
//
// libhdf5 trusts the file's metadata: a damaged object header or global heap can crash it or
// loop for ever inside H5Fopen, H5Aread or H5Dread (HDF5 1.10.8: a flipped byte in an attribute
// message, a zeroed global-heap object; tests/reliability/damaged_checkpoints_test.cpp finds
// both), before any checksum in /kiln could be read. So kiln checks the HDF5 structure itself
// before libhdf5 sees it. Once the file is closed, kiln appends a trailer:
//
//   regions  n x (offset u64, length u64): every contiguous dataset's values, ascending
//   footer   "\x89KILNSUM" | hdf5_bytes u64 | n u32 | structure_crc u32 | 0 u32 | footer_crc u32
//
// all little-endian, where structure_crc is the CRC-32 of the first hdf5_bytes bytes (the HDF5
// file) without the regions, and footer_crc that of the regions and the footer before it. The
// values are left to the per-dataset checksums, which then name the damaged dataset. HDF5
// ignores bytes past its end of file, so h5py and Keras read the file as before. A file without
// a trailer (an older kiln's, Keras's) is read as before; one with bytes past HDF5's end of file
// that are not a valid trailer is refused (a damaged trailer).

struct Region {
    uint64_t offset = 0;
    uint64_t length = 0;
};

constexpr char kTrailerMagic[8] = {'\x89', 'K', 'I', 'L', 'N', 'S', 'U', 'M'};
constexpr size_t kFooterBytes = 32;
constexpr size_t kRegionBytes = 16;
constexpr uint64_t kMaxRegions = uint64_t{1} << 20;
constexpr size_t kReadPiece = size_t{1} << 20;

void put_le(std::string* out, uint64_t v, int n) {
    for (int i = 0; i < n; ++i)
        out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

uint64_t get_le(const unsigned char* p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i)
        v = (v << 8) | p[i];
    return v;
}

// A file descriptor, closed when it goes.
class Fd {
  public:
    explicit Fd(int fd) : fd_(fd) {}
    ~Fd() {
        if (fd_ >= 0)
            (void)::close(fd_);
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    int get() const { return fd_; }
    int release() { return std::exchange(fd_, -1); }

  private:
    int fd_;
};

// Reads exactly `n` bytes at `offset`; a short read is a file that changed under us.
Status read_exactly(int fd, const std::string& path, uint64_t offset, void* dst, size_t n) {
    auto* p = static_cast<char*>(dst);
    while (n > 0) {
        const ssize_t got = ::pread(fd, p, n, static_cast<off_t>(offset));
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return Status::io_error(path + ": read failed: " + std::strerror(errno));
        if (got == 0)
            return Status::corruption(path + ": ends early (truncated while being read?)");
        p += got;
        n -= static_cast<size_t>(got);
        offset += static_cast<uint64_t>(got);
    }
    return Status::ok();
}

// The CRC-32 of bytes [0, end) of `fd` without `regions` (ascending, disjoint, inside).
Status structure_crc(int fd, const std::string& path, uint64_t end,
                     const std::vector<Region>& regions, uint32_t* crc) {
    std::vector<unsigned char> piece(kReadPiece);
    uLong sum = crc32(0L, Z_NULL, 0);
    uint64_t at = 0;
    size_t next = 0;
    while (at < end) {
        if (next < regions.size() && at == regions[next].offset) {
            at += regions[next++].length;
            continue;
        }
        const uint64_t stop = next < regions.size() ? regions[next].offset : end;
        const size_t n = static_cast<size_t>(std::min<uint64_t>(stop - at, piece.size()));
        Status s = read_exactly(fd, path, at, piece.data(), n);
        if (!s.is_ok())
            return s;
        sum = crc32(sum, piece.data(), static_cast<uInt>(n));
        at += n;
    }
    *crc = static_cast<uint32_t>(sum);
    return Status::ok();
}

// Ascending, disjoint and inside [0, end): what structure_crc needs.
bool valid_regions(const std::vector<Region>& regions, uint64_t end) {
    uint64_t previous_end = 0;
    for (const Region& r : regions) {
        if (r.length == 0 || r.offset < previous_end || r.offset > end || r.length > end - r.offset)
            return false;
        previous_end = r.offset + r.length;
    }
    return true;
}

// Where the values of the datasets kiln wrote lie, from the open file being written, and the
// file's own (temporary) name.
Status value_regions(hid_t file, const std::string& path, const std::vector<std::string>& datasets,
                     std::string* file_name, std::vector<Region>* out) {
    const h5::Where root{path, "/"};
    const ssize_t length = H5Fget_name(file, nullptr, 0);
    if (length <= 0)
        return h5::io_failure(root, "H5Fget_name failed");
    std::vector<char> name(static_cast<size_t>(length) + 1, '\0');
    if (H5Fget_name(file, name.data(), name.size()) < 0)
        return h5::io_failure(root, "H5Fget_name failed");
    *file_name = std::string(name.data(), static_cast<size_t>(length));
    out->clear();
    for (const std::string& dataset : datasets) {
        h5::Dataset d(H5Dopen2(file, dataset.c_str(), H5P_DEFAULT));
        if (!d.valid())
            return h5::io_failure(root.child(dataset), "cannot open the dataset just written");
        const haddr_t offset = H5Dget_offset(d.get());
        const hsize_t size = H5Dget_storage_size(d.get());
        if (offset != HADDR_UNDEF && size > 0)
            out->push_back({static_cast<uint64_t>(offset), static_cast<uint64_t>(size)});
    }
    std::sort(out->begin(), out->end(),
              [](const Region& a, const Region& b) { return a.offset < b.offset; });
    return Status::ok();
}

// Appends the trailer to the closed file `file_name` (the temporary of `path`); the fsync of
// publish_atomically that follows makes it durable with the rest of the file.
Status append_trailer(const std::string& file_name, const std::string& path,
                      const std::vector<Region>& regions) {
    Fd fd(::open(file_name.c_str(), O_RDWR | O_CLOEXEC));
    if (fd.get() < 0)
        return Status::io_error(file_name + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        return Status::io_error(file_name + ": fstat failed: " + std::strerror(errno));
    const uint64_t hdf5_bytes = static_cast<uint64_t>(st.st_size);
    if (!valid_regions(regions, hdf5_bytes) || regions.size() > kMaxRegions) {
        return Status::io_error(path + ": the datasets' values overlap or lie outside the file");
    }
    uint32_t crc = 0;
    Status s = structure_crc(fd.get(), file_name, hdf5_bytes, regions, &crc);
    if (!s.is_ok())
        return s;

    std::string trailer;
    for (const Region& r : regions) {
        put_le(&trailer, r.offset, 8);
        put_le(&trailer, r.length, 8);
    }
    trailer.append(kTrailerMagic, sizeof(kTrailerMagic));
    put_le(&trailer, hdf5_bytes, 8);
    put_le(&trailer, regions.size(), 4);
    put_le(&trailer, crc, 4);
    put_le(&trailer, 0, 4);
    put_le(&trailer, crc32_of(trailer.data(), trailer.size()), 4);
    size_t done = 0;
    while (done < trailer.size()) {
        const ssize_t n = ::pwrite(fd.get(), trailer.data() + done, trailer.size() - done,
                                   static_cast<off_t>(hdf5_bytes + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return Status::io_error(file_name + ": write failed: " + std::strerror(errno));
        done += static_cast<size_t>(n);
    }
    if (::close(fd.release()) != 0)
        return Status::io_error(file_name + ": close failed: " + std::strerror(errno));
    return Status::ok();
}

// HDF5's end of file (base address plus end-of-file address) from a superblock at offset 0
// with 8-byte addresses, as kiln and h5py write them; false when there is none such.
bool hdf5_end_of_file(const unsigned char* head, size_t n, uint64_t* end) {
    static const unsigned char kSignature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    if (n < 64 || std::memcmp(head, kSignature, 8) != 0)
        return false;
    const unsigned version = head[8];
    size_t base_at = 0, end_at = 0;
    if (version == 0 || version == 1) {
        if (head[13] != 8)
            return false;
        base_at = version == 0 ? 24 : 28;
        end_at = base_at + 16;  // after the base and free-space addresses
    } else if (version == 2 || version == 3) {
        if (head[9] != 8)
            return false;
        base_at = 12;
        end_at = 28;  // after the base and superblock-extension addresses
    } else {
        return false;
    }
    const uint64_t base = get_le(head + base_at, 8), eof = get_le(head + end_at, 8);
    if (eof > UINT64_MAX - base)
        return false;
    *end = base + eof;
    return true;
}

// Checks `path`'s trailer, before libhdf5 reads anything of the file (see above). A file that
// cannot be opened is left for open_file_read to report.
Status verify_trailer(const std::string& path) {
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    struct stat st {};
    if (fd.get() < 0 || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))
        return Status::ok();
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    const std::string damaged = "; the file is damaged or was changed after kiln wrote it";

    unsigned char footer[kFooterBytes];
    if (size >= kFooterBytes) {
        Status s = read_exactly(fd.get(), path, size - kFooterBytes, footer, kFooterBytes);
        if (!s.is_ok())
            return s;
    }
    if (size < kFooterBytes || std::memcmp(footer, kTrailerMagic, sizeof(kTrailerMagic)) != 0) {
        // No trailer. Bytes past HDF5's end of file are then a trailer that was damaged.
        unsigned char head[64];
        uint64_t end = 0;
        if (size >= sizeof(head) && read_exactly(fd.get(), path, 0, head, sizeof(head)).is_ok() &&
            hdf5_end_of_file(head, sizeof(head), &end) && end < size) {
            return Status::corruption(path + ": " + std::to_string(size - end) +
                                      " bytes follow the end of the HDF5 data and are not a "
                                      "valid kiln checksum trailer" +
                                      damaged);
        }
        return Status::ok();
    }

    // The footer, then the regions it counts, then the structure they leave.
    const uint64_t hdf5_bytes = get_le(footer + 8, 8);
    const uint64_t n = get_le(footer + 16, 4);
    const uint32_t stored = static_cast<uint32_t>(get_le(footer + 20, 4));
    const uint32_t footer_crc = static_cast<uint32_t>(get_le(footer + 28, 4));
    if (n > kMaxRegions || hdf5_bytes > size ||
        size - hdf5_bytes != n * kRegionBytes + kFooterBytes) {
        return Status::corruption(path +
                                  ": the kiln checksum trailer does not match the file's "
                                  "size (truncated, or the trailer is damaged)" +
                                  damaged);
    }
    std::vector<unsigned char> table(static_cast<size_t>(n * kRegionBytes) + kFooterBytes);
    Status s = read_exactly(fd.get(), path, hdf5_bytes, table.data(), table.size());
    if (!s.is_ok())
        return s;
    if (crc32_of(table.data(), table.size() - 4) != footer_crc) {
        return Status::corruption(path + ": the kiln checksum trailer is damaged" + damaged);
    }
    std::vector<Region> regions(static_cast<size_t>(n));
    for (size_t i = 0; i < regions.size(); ++i) {
        regions[i].offset = get_le(table.data() + i * kRegionBytes, 8);
        regions[i].length = get_le(table.data() + i * kRegionBytes + 8, 8);
    }
    if (!valid_regions(regions, hdf5_bytes)) {
        return Status::corruption(path + ": the kiln checksum trailer lists invalid regions" +
                                  damaged);
    }
    uint32_t actual = 0;
    s = structure_crc(fd.get(), path, hdf5_bytes, regions, &actual);
    if (!s.is_ok())
        return s;
    if (actual != stored) {
        return Status::corruption(path + ": the HDF5 structure (everything but the datasets' " +
                                  "values) fails its checksum: stored crc32 " + hex32(stored) +
                                  ", computed " + hex32(actual) + damaged);
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

    // the running sums of a checkpoint taken within an epoch
    if (!st.epoch_sums.empty()) {
        s = write_vector_dataset(g, where, "epoch_sums", {hsize_t(st.epoch_sums.size())},
                                 H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, st.epoch_sums.data());
        if (!s.is_ok())
            return s;
        sums->add("/kiln/epoch_sums", st.epoch_sums.data(), st.epoch_sums.size() * sizeof(double));
    }

    // the snapshot slots (EarlyStopping's best weights), so a resumed run restores the same
    if (!st.snapshots.empty()) {
        h5::Group snapshots;
        s = h5::create_group(g, where, "snapshots", &snapshots);
        if (!s.is_ok())
            return s;
        const h5::Where snapshots_where = where.child("snapshots");
        for (size_t i = 0; i < st.snapshots.size(); ++i) {
            const SavedSnapshot& snap = st.snapshots[i];
            const std::string index = std::to_string(i);
            h5::Group one;
            s = h5::create_group(snapshots.get(), snapshots_where, index, &one);
            const h5::Where at = snapshots_where.child(index);
            if (s.is_ok())
                s = h5::write_string_attribute(one.get(), at, "name", snap.name);
            if (s.is_ok())
                s = write_int_attribute(one.get(), at, "taken_at", snap.taken_at);
            for (const auto& [name, values] :
                 {std::pair<const char*, const std::vector<float>*>{"trainable", &snap.trainable},
                  {"nontrainable", &snap.nontrainable}}) {
                if (!s.is_ok())
                    break;
                s = write_vector_dataset(one.get(), at, name, {hsize_t(values->size())},
                                         H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, values->data());
                if (s.is_ok()) {
                    sums->add("/kiln/snapshots/" + index + "/" + name, values->data(),
                              values->size() * sizeof(float));
                }
            }
            if (!s.is_ok())
                return s;
            if (one.close() < 0)
                return h5::io_failure(at, "H5Gclose failed");
        }
        if (snapshots.close() < 0)
            return h5::io_failure(snapshots_where, "H5Gclose failed");
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

    // last, the checksums of everything above and of the weights, attributes included
    std::map<std::string, uint32_t> digests;
    s = digest_attributes(file, path, "/", &digests);
    if (!s.is_ok())
        return s;
    for (const auto& [key, crc] : digests)
        sums->add_attribute(key, crc);
    s = h5::write_string_attribute(g, where, kChecksumsAttribute, sums->json());
    if (!s.is_ok())
        return s;
    if (group.close() < 0)
        return h5::io_failure(where, "H5Gclose failed");
    return Status::ok();
}

// Reads the kiln group's training state (without verifying; the caller verifies).
Status read_kiln_group(hid_t file, const std::string& path, TrainingState* st, KilnExtras* extras,
                       RecordedChecksums* checksums, bool read_optimizer_state) {
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
            copy_bytes(st->optimizer_state.data(), bytes);
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

    // the running sums of a checkpoint taken within an epoch
    Shape shape;
    std::vector<unsigned char> bytes;
    st->epoch_sums.clear();
    s = h5::check_hard_path(g, where, "epoch_sums", &exists);
    if (!s.is_ok())
        return s;
    if (exists) {
        s = read_raw_dataset(g, where, "epoch_sums", H5T_NATIVE_DOUBLE, sizeof(double), &shape,
                             &bytes);
        if (!s.is_ok())
            return s;
        if (shape.size() != 1 || shape[0] > 64) {
            return Status::corruption(where.child("epoch_sums").str() +
                                      ": expected a few sums, got " + h5::shape_to_string(shape));
        }
        st->epoch_sums.resize(bytes.size() / sizeof(double));
        copy_bytes(st->epoch_sums.data(), bytes);
    }

    // the snapshot slots
    st->snapshots.clear();
    s = h5::check_hard_path(g, where, "snapshots", &exists);
    if (!s.is_ok())
        return s;
    if (exists) {
        h5::Group snapshots;
        s = h5::open_group(g, where, "snapshots", &snapshots);
        if (!s.is_ok())
            return s;
        const h5::Where snapshots_where = where.child("snapshots");
        for (size_t i = 0;; ++i) {
            const std::string index = std::to_string(i);
            bool more = false;
            s = h5::check_hard_path(snapshots.get(), snapshots_where, index, &more);
            if (!s.is_ok())
                return s;
            if (!more)
                break;
            if (i >= 16)
                return Status::corruption(snapshots_where.str() + ": more than 16 snapshots");
            h5::Group one;
            s = h5::open_group(snapshots.get(), snapshots_where, index, &one);
            const h5::Where at = snapshots_where.child(index);
            SavedSnapshot snap;
            if (s.is_ok())
                s = h5::read_string_attribute(one.get(), at, "name", &snap.name);
            if (s.is_ok()) {
                s = read_scalar_attribute(one.get(), at, "taken_at", H5T_NATIVE_INT64,
                                          &snap.taken_at);
            }
            for (const auto& [name, values] :
                 {std::pair<const char*, std::vector<float>*>{"trainable", &snap.trainable},
                  {"nontrainable", &snap.nontrainable}}) {
                if (!s.is_ok())
                    break;
                s = read_raw_dataset(one.get(), at, name, H5T_NATIVE_FLOAT, sizeof(float), &shape,
                                     &bytes);
                if (s.is_ok()) {
                    values->resize(bytes.size() / sizeof(float));
                    copy_bytes(values->data(), bytes);
                }
            }
            if (!s.is_ok())
                return s;
            st->snapshots.push_back(std::move(snap));
        }
    }

    // the history
    s = read_raw_dataset(g, where, "history_epoch", H5T_NATIVE_INT64, sizeof(int64_t), &shape,
                         &bytes);
    if (!s.is_ok())
        return s;
    const size_t n_epochs = bytes.size() / sizeof(int64_t);
    std::vector<int64_t> epochs(n_epochs);
    copy_bytes(epochs.data(), bytes);
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
        copy_bytes(values.data(), bytes);
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
    // 0. The HDF5 structure, checked before libhdf5 parses any of it.
    Status s = verify_trailer(path);
    if (!s.is_ok())
        return s;
    h5::HDF5Session session;
    h5::File file;
    s = h5::open_file_read(path, &file);
    if (!s.is_ok())
        return s;
    const hid_t f = file.get();
    CheckpointContents contents;
    contents.weights_only = is_weights_file_name(path);

    // 1. The kiln group, and the checksums, before any weight is handed out.
    KilnExtras extras;
    RecordedChecksums recorded;
    if (has_kiln_group(f, path)) {
        TrainingState st;
        s = read_kiln_group(f, path, &st, &extras, &recorded, read_optimizer_state);
        if (!s.is_ok())
            return s;
        std::vector<ChecksumResult> results;
        s = verify_checksums(f, path, contents.weights_only ? "/layers" : "/model_weights",
                             recorded.datasets, &results);
        if (s.is_ok())
            s = verify_attributes(f, path, recorded, &results);
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

uint32_t weights_crc32(const std::vector<LayerWeights>& weights) {
    uLong crc = ::crc32(0L, Z_NULL, 0);
    for (const LayerWeights& layer : weights) {
        for (const NamedArray& a : layer.weights) {
            static_assert(sizeof(a.values[0]) == sizeof(float), "float32 values");
            crc = ::crc32(crc, reinterpret_cast<const Bytef*>(a.values.data()),
                          static_cast<uInt>(a.values.size() * sizeof(float)));
        }
    }
    return static_cast<uint32_t>(crc);
}

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
    std::string temporary;        // the file being written, for its trailer
    std::vector<Region> regions;  // its datasets' values
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
            w = write_kiln_group(file, path, state, extras, &sums);
            if (!w.is_ok())
                return w;
            return value_regions(file, path, sums.dataset_paths(), &temporary, &regions);
        },
        [&]() -> Status {
            // The file is closed; the trailer goes after HDF5's end of file.
            Status t = append_trailer(temporary, path, regions);
            if (!t.is_ok())
                return t;
            return before_rename ? before_rename() : Status::ok();
        });
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
