// Small RAII wrappers and checked helpers over the HDF5 C API, shared by the model files
// (model_h5.cpp) and the HDF5 dataset loader (hdf5_array.cpp).
//
// Every helper checks every HDF5 call and returns a Status that names the file, the object path
// and what failed, followed by HDF5's own description from its error stack. HDF5's automatic
// printing of that stack to stderr is switched off (see `HDF5Session`), so a malformed file
// produces kiln's message only.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include <hdf5.h>

#include "kiln/status.h"
#include "kiln/tensor.h"

namespace kiln {
namespace h5 {

// ---- handles --------------------------------------------------------------------------------

// Owns one HDF5 identifier and closes it with `Close`. Movable, not copyable. Destruction never
// throws: HDF5 is a C library, and a failed close there is only an (ignored) error code. Call
// `close()` where the result matters, as for H5Fclose, which is when metadata reaches the file.
template <herr_t (*Close)(hid_t)>
class Handle {
  public:
    Handle() = default;
    explicit Handle(hid_t id) : id_(id) {}
    ~Handle() { (void)close(); }

    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;
    Handle(Handle&& other) noexcept : id_(other.release()) {}
    Handle& operator=(Handle&& other) noexcept {
        if (this != &other) {
            (void)close();
            id_ = other.release();
        }
        return *this;
    }

    hid_t get() const { return id_; }
    bool valid() const { return id_ >= 0; }

    // Gives up ownership without closing.
    hid_t release() noexcept {
        hid_t id = id_;
        id_ = H5I_INVALID_HID;
        return id;
    }

    // Closes now. Returns HDF5's result (negative on failure); closing nothing succeeds.
    herr_t close() noexcept {
        if (id_ < 0)
            return 0;
        herr_t result = Close(id_);
        id_ = H5I_INVALID_HID;
        return result;
    }

  private:
    hid_t id_ = H5I_INVALID_HID;
};

using File = Handle<H5Fclose>;
using Group = Handle<H5Gclose>;
using Dataset = Handle<H5Dclose>;
using Dataspace = Handle<H5Sclose>;
using Datatype = Handle<H5Tclose>;
using Attribute = Handle<H5Aclose>;
using PropList = Handle<H5Pclose>;
using Object = Handle<H5Oclose>;  // anything opened with H5Oopen

// ---- the library --------------------------------------------------------------------------------

// Hold one for the duration of a public call that touches HDF5. It serialises kiln's HDF5 use
// behind one process-wide (recursive) mutex, so a build of the library that is not thread-safe
// is still safe, and it switches HDF5's automatic error printing off for the calling thread:
// in a thread-safe build the error stack and its printing settings are per thread, so doing it
// once at start-up would not cover the checkpoint writer thread.
class HDF5Session {
  public:
    HDF5Session();

  private:
    std::unique_lock<std::recursive_mutex> lock_;
};

// ---- errors ---------------------------------------------------------------------------------

// Where an operation happened, for messages: "best.h5: /model_weights/dense: ...".
struct Where {
    std::string file;
    // The HDF5 object path of the location the helper works in; empty for the file itself.
    std::string path = "/";

    // The location of a child `name` (which may itself contain '/').
    Where child(const std::string& name) const;
    std::string str() const { return path.empty() ? file : file + ": " + path; }
};

// Status for a failed HDF5 call: `where: what: <HDF5's own messages>`. Clears HDF5's error
// stack. `io` failures are environment problems (cannot create, write, flush); the others are
// files that are not what they claim to be.
Status io_failure(const Where& where, const std::string& what);
Status format_failure(const Where& where, const std::string& what);

// ---- files and groups -----------------------------------------------------------------------

// Opens an existing file read-only. A missing path is NotFound, a file that is not HDF5 (or is
// truncated) is Corruption.
Status open_file_read(const std::string& path, File* out);

// Creates a new file that must not exist yet (H5F_ACC_EXCL), with the format bounds and close
// semantics the checkpoint writer needs (see hdf5_util.cpp).
Status create_file_exclusive(const std::string& path, File* out);

// Checks that every component of `relative_path` below `loc` exists and is a hard link (soft
// and external links are refused, as Keras refuses them: an external link can point anywhere).
// Sets *exists to false, with an ok Status, when some component is missing.
Status check_hard_path(hid_t loc, const Where& where, const std::string& relative_path,
                       bool* exists);

// Opens the group `name` below `loc`; NotFound when it is not there.
Status open_group(hid_t loc, const Where& where, const std::string& name, Group* out);
// Creates `name` below `loc`, creating intermediate groups of a path like "a/b" as needed.
Status create_group(hid_t loc, const Where& where, const std::string& name, Group* out);

// Names of the hard links directly below `group` whose target is of `type` (H5I_DATASET,
// H5I_GROUP), in name order.
Status list_children(hid_t group, const Where& where, H5I_type_t type,
                     std::vector<std::string>* names);

// ---- attributes -----------------------------------------------------------------------------

Status attribute_exists(hid_t obj, const Where& where, const std::string& name, bool* exists);

// A scalar string attribute, stored as variable- or fixed-length, ASCII or UTF-8 (a one-element
// array is accepted too). NotFound when absent.
Status read_string_attribute(hid_t obj, const Where& where, const std::string& name,
                             std::string* out);

// A list of strings as Keras stores `layer_names` and `weight_names`: one attribute `name`, or,
// when Keras had to split a long list, `name0`, `name1`, ... concatenated in order. Variable-
// and fixed-length strings are both read; an attribute with no elements (h5py writes an empty
// Python list as a float64 array of shape (0,)) is an empty list. *found is false, with an ok
// Status, when neither form is present.
Status read_string_list_attribute(hid_t obj, const Where& where, const std::string& name,
                                  std::vector<std::string>* out, bool* found);

// Scalar, variable-length UTF-8: what Keras and h5py write, read back by h5py as `str`.
Status write_string_attribute(hid_t obj, const Where& where, const std::string& name,
                              const std::string& value);
// One-dimensional, variable-length UTF-8; an empty list is a zero-length 1-D attribute (never a
// scalar or a null dataspace, which Keras cannot iterate).
Status write_string_list_attribute(hid_t obj, const Where& where, const std::string& name,
                                   const std::vector<std::string>& values);

// ---- datasets -------------------------------------------------------------------------------

// Upper bound on the elements of one dataset read into host memory (8 GiB of float32). Larger
// declarations are refused before anything is allocated.
constexpr int64_t kMaxDatasetElements = int64_t{1} << 31;

// What a dataset stores, as found before reading it.
struct DatasetInfo {
    Shape shape;
    H5T_class_t type_class = H5T_NO_CLASS;  // H5T_INTEGER or H5T_FLOAT
    size_t type_size = 0;                   // bytes per element in the file
    bool is_unsigned = false;               // integer types only
};

// Checks what the open `dataset` declares, `declared` bytes of `shape`, against what the file
// stores, before anything of that size is allocated: virtual datasets and external raw-data
// files are refused, a contiguous dataset must store all of its bytes inside the file, and a
// chunked (compressed) one may not declare more than 1000 times what it stores once past 64 MiB.
Status check_dataset_storage(hid_t dataset, const Where& at, const Shape& shape, uint64_t declared);

// Reads the numeric dataset `name` (a path below `loc`) converted to float32 by HDF5. The declared
// shape is checked against kMaxDatasetElements and against the bytes the file actually stores
// before any allocation; virtual and external datasets are refused.
Status read_float_dataset(hid_t loc, const Where& where, const std::string& name, DatasetInfo* info,
                          std::vector<float>* values);

// Writes `values` (shape_elements(shape) of them) as a contiguous little-endian float32 dataset,
// creating intermediate groups of a `name` like "dense/kernel:0". An empty shape is a scalar.
Status write_float_dataset(hid_t loc, const Where& where, const std::string& name,
                           const Shape& shape, const float* values);

// "(256, 128)", for messages. (Local to io so the io code does not depend on tensor.cpp.)
std::string shape_to_string(const Shape& shape);

}  // namespace h5
}  // namespace kiln
