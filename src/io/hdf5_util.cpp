#include "io/hdf5_util.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

namespace kiln {
namespace h5 {
namespace {

// Attribute payloads are read whole; Keras's own lists stay far below this.
constexpr uint64_t kMaxAttributeBytes = uint64_t{256} << 20;
// A sanity bound on `name0, name1, ...` pieces and on string counts in one attribute.
constexpr int64_t kMaxListPieces = 1 << 16;
constexpr int64_t kMaxListEntries = int64_t{1} << 24;
// Chunked (possibly compressed) datasets may legitimately store far fewer bytes than they
// declare. Refuse only the implausible: more than this ratio and more than kBombFloor bytes,
// the same shape of rule Keras 3.15 applies to decompression bombs.
constexpr uint64_t kMaxCompressionRatio = 1000;
constexpr uint64_t kBombFloor = uint64_t{64} << 20;

// Collects the descriptions on HDF5's error stack, outermost (the API call) first.
herr_t collect_error(unsigned /*n*/, const H5E_error2_t* err, void* client) {
    auto* descs = static_cast<std::vector<std::string>*>(client);
    if (err != nullptr && err->desc != nullptr && err->desc[0] != '\0') {
        descs->emplace_back(err->desc);
    }
    return 0;
}

// HDF5's account of the last failure: the API-level description and the innermost cause, which
// is usually the useful part ("file signature not found", "errno = 13, ... Permission denied").
std::string error_stack_detail() {
    std::vector<std::string> descs;
    // H5Ewalk2 does not clear the stack it walks, so the failed call's entries are still there.
    (void)H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &descs);
    (void)H5Eclear2(H5E_DEFAULT);
    if (descs.empty())
        return "";
    if (descs.size() == 1 || descs.front() == descs.back())
        return descs.front();
    return descs.front() + ": " + descs.back();
}

std::string with_detail(const Where& where, const std::string& what) {
    std::string message = where.str() + ": " + what;
    std::string detail = error_stack_detail();
    if (!detail.empty())
        message += " (HDF5: " + detail + ")";
    return message;
}

// The link type of `name` below `loc`. H5Lget_info changed its struct in 1.12; only `type` is
// used, which both versions have.
herr_t get_link_type(hid_t loc, const char* name, H5L_type_t* type) {
#if H5_VERSION_GE(1, 12, 0)
    H5L_info2_t info;
    herr_t result = H5Lget_info2(loc, name, &info, H5P_DEFAULT);
#else
    H5L_info_t info;
    herr_t result = H5Lget_info(loc, name, &info, H5P_DEFAULT);
#endif
    if (result >= 0)
        *type = info.type;
    return result;
}

// Splits "a/b/c" (or "/a/b") into its non-empty components. Empty components ("a//b") are
// dropped, as HDF5 itself treats repeated separators as one.
std::vector<std::string> split_path(const std::string& path) {
    std::vector<std::string> parts;
    size_t start = 0;
    while (start <= path.size()) {
        size_t end = path.find('/', start);
        if (end == std::string::npos)
            end = path.size();
        if (end > start)
            parts.push_back(path.substr(start, end - start));
        start = end + 1;
    }
    return parts;
}

// A creation property list of `cls` that records no access/modification times, so the same
// model written twice gives the same bytes (useful for hashing checkpoints).
Status make_untimed_plist(hid_t cls, const Where& where, PropList* out) {
    PropList plist(H5Pcreate(cls));
    if (!plist.valid())
        return io_failure(where, "H5Pcreate failed");
    if (H5Pset_obj_track_times(plist.get(), 0) < 0) {
        return io_failure(where, "H5Pset_obj_track_times failed");
    }
    *out = std::move(plist);
    return Status::ok();
}

// Creates every group on the way to the last component of `name` (which is left for the caller
// to create as a group or dataset). Existing groups are reused.
Status ensure_parent_groups(hid_t loc, const Where& where, const std::string& name) {
    std::vector<std::string> parts = split_path(name);
    if (parts.empty())
        return Status::invalid_argument(where.str() + ": empty object name");
    PropList gcpl;
    std::string prefix = name[0] == '/' ? "/" : "";
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
        prefix += parts[i];
        htri_t exists = H5Lexists(loc, prefix.c_str(), H5P_DEFAULT);
        if (exists < 0)
            return io_failure(where.child(prefix), "H5Lexists failed");
        if (exists == 0) {
            if (!gcpl.valid()) {
                Status s = make_untimed_plist(H5P_GROUP_CREATE, where, &gcpl);
                if (!s.is_ok())
                    return s;
            }
            Group group(H5Gcreate2(loc, prefix.c_str(), H5P_DEFAULT, gcpl.get(), H5P_DEFAULT));
            if (!group.valid())
                return io_failure(where.child(prefix), "H5Gcreate2 failed");
            if (group.close() < 0)
                return io_failure(where.child(prefix), "H5Gclose failed");
        }
        prefix += "/";
    }
    return Status::ok();
}

// Reads every string of the attribute `name`, whatever its string kind and dataspace.
Status read_attribute_strings(hid_t obj, const Where& where, const std::string& name,
                              std::vector<std::string>* out) {
    out->clear();
    const std::string what = "attribute '" + name + "'";
    Attribute attr(H5Aopen(obj, name.c_str(), H5P_DEFAULT));
    if (!attr.valid())
        return format_failure(where, "cannot open " + what);
    Dataspace space(H5Aget_space(attr.get()));
    if (!space.valid())
        return format_failure(where, "H5Aget_space failed for " + what);

    // No elements at all is an empty list, whatever the element type: h5py stores `[]` as a
    // float64 array of shape (0,), and a null dataspace is read the same way defensively.
    H5S_class_t space_class = H5Sget_simple_extent_type(space.get());
    if (space_class == H5S_NO_CLASS) {
        return format_failure(where, "H5Sget_simple_extent_type failed for " + what);
    }
    if (space_class == H5S_NULL)
        return Status::ok();
    hssize_t n = H5Sget_simple_extent_npoints(space.get());
    if (n < 0)
        return format_failure(where, "H5Sget_simple_extent_npoints failed for " + what);
    if (n == 0)
        return Status::ok();
    if (n > kMaxListEntries) {
        return Status::corruption(where.str() + ": " + what + " declares " + std::to_string(n) +
                                  " strings, more than kiln accepts");
    }

    Datatype type(H5Aget_type(attr.get()));
    if (!type.valid())
        return format_failure(where, "H5Aget_type failed for " + what);
    H5T_class_t type_class = H5Tget_class(type.get());
    if (type_class != H5T_STRING) {
        return Status::corruption(where.str() + ": " + what + " is not a string (HDF5 type class " +
                                  std::to_string(static_cast<int>(type_class)) + ")");
    }
    htri_t is_vlen = H5Tis_variable_str(type.get());
    if (is_vlen < 0)
        return format_failure(where, "H5Tis_variable_str failed for " + what);
    // HDF5 does not convert between character sets, so the memory type takes the file's.
    H5T_cset_t cset = H5Tget_cset(type.get());
    if (cset == H5T_CSET_ERROR)
        return format_failure(where, "H5Tget_cset failed for " + what);

    Datatype mem(H5Tcopy(H5T_C_S1));
    if (!mem.valid())
        return format_failure(where, "H5Tcopy failed for " + what);
    if (H5Tset_cset(mem.get(), cset) < 0)
        return format_failure(where, "H5Tset_cset failed");

    const size_t count = static_cast<size_t>(n);
    if (is_vlen > 0) {
        if (H5Tset_size(mem.get(), H5T_VARIABLE) < 0) {
            return format_failure(where, "H5Tset_size failed for " + what);
        }
        std::vector<char*> pointers(count, nullptr);
        if (H5Aread(attr.get(), mem.get(), pointers.data()) < 0) {
            return format_failure(where, "cannot read " + what);
        }
        out->reserve(count);
        for (char* p : pointers)
            out->emplace_back(p != nullptr ? p : "");
            // The strings were allocated by HDF5; give them back the way it requires.
#if H5_VERSION_GE(1, 12, 0)
        herr_t reclaimed = H5Treclaim(mem.get(), space.get(), H5P_DEFAULT, pointers.data());
#else
        herr_t reclaimed = H5Dvlen_reclaim(mem.get(), space.get(), H5P_DEFAULT, pointers.data());
#endif
        if (reclaimed < 0)
            return io_failure(where, "H5Dvlen_reclaim failed for " + what);
        return Status::ok();
    }

    // Fixed-length: `size` bytes per string, padded with NULs or spaces as the type says.
    size_t size = H5Tget_size(type.get());
    if (size == 0)
        return format_failure(where, "H5Tget_size failed for " + what);
    if (static_cast<uint64_t>(size) * count > kMaxAttributeBytes) {
        return Status::corruption(where.str() + ": " + what + " is larger than kiln accepts");
    }
    H5T_str_t pad = H5Tget_strpad(type.get());
    if (pad == H5T_STR_ERROR)
        return format_failure(where, "H5Tget_strpad failed for " + what);
    if (H5Tset_size(mem.get(), size) < 0 || H5Tset_strpad(mem.get(), pad) < 0) {
        return format_failure(where, "cannot build the memory type for " + what);
    }
    std::vector<char> buffer(size * count);
    if (H5Aread(attr.get(), mem.get(), buffer.data()) < 0) {
        return format_failure(where, "cannot read " + what);
    }
    out->reserve(count);
    for (size_t i = 0; i < count; ++i) {
        const char* p = buffer.data() + i * size;
        size_t length = 0;
        if (pad == H5T_STR_SPACEPAD) {
            length = size;
            while (length > 0 && p[length - 1] == ' ')
                --length;
        } else {
            length = strnlen(p, size);
        }
        out->emplace_back(p, length);
    }
    return Status::ok();
}

// A variable-length UTF-8 string type, the kind h5py reads back as `str`.
Status make_vlen_utf8(const Where& where, Datatype* out) {
    Datatype type(H5Tcopy(H5T_C_S1));
    if (!type.valid())
        return io_failure(where, "H5Tcopy failed");
    if (H5Tset_size(type.get(), H5T_VARIABLE) < 0 || H5Tset_cset(type.get(), H5T_CSET_UTF8) < 0) {
        return io_failure(where, "cannot build a variable-length UTF-8 string type");
    }
    *out = std::move(type);
    return Status::ok();
}

// HDF5 strings end at the first NUL; one inside would silently cut the value short.
Status check_no_nul(const Where& where, const std::string& name, const std::string& value) {
    if (value.find('\0') != std::string::npos) {
        return Status::invalid_argument(where.str() + ": the value for attribute '" + name +
                                        "' contains a NUL character");
    }
    return Status::ok();
}

}  // namespace

// ---- the library --------------------------------------------------------------------------------

HDF5Session::HDF5Session() {
    // Before HDF5 starts: no clean-up at exit. A file whose H5Fclose failed (a full disk, an
    // I/O error) stays open inside HDF5, and its clean-up at exit would try to flush it again
    // and crash the process (libhdf5 1.10, seen in tests/reliability/disk_faults.py). kiln
    // closes every file it opens; what a failed close leaves is a temporary already removed.
    static const bool no_cleanup_at_exit = [] {
        (void)H5dont_atexit();
        return true;
    }();
    (void)no_cleanup_at_exit;
    static std::recursive_mutex mutex;
    lock_ = std::unique_lock<std::recursive_mutex>(mutex);
    thread_local bool quiet = false;
    if (!quiet) {
        // Without this HDF5 prints its whole error stack to stderr for every failed call,
        // including the ones kiln expects (probing for an attribute) and reports itself.
        (void)H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
        quiet = true;
    }
}

// ---- errors ---------------------------------------------------------------------------------

Where Where::child(const std::string& name) const {
    if (!name.empty() && name[0] == '/')
        return Where{file, name};
    if (path.empty() || path == "/")
        return Where{file, "/" + name};
    return Where{file, path + "/" + name};
}

Status io_failure(const Where& where, const std::string& what) {
    return Status::io_error(with_detail(where, what));
}

Status format_failure(const Where& where, const std::string& what) {
    return Status::corruption(with_detail(where, what));
}

std::string shape_to_string(const Shape& shape) {
    std::string text = "(";
    for (size_t i = 0; i < shape.size(); ++i) {
        if (i > 0)
            text += ", ";
        text += std::to_string(shape[i]);
    }
    // Python's spelling of a one-element tuple, which is what Keras users see in messages.
    if (shape.size() == 1)
        text += ",";
    return text + ")";
}

// ---- files and groups -----------------------------------------------------------------------

// Readers use the default file access properties: HDF5 takes a shared lock and, for a file
// whose size is below what its superblock records, fails with "truncated file".
Status open_file_read(const std::string& path, File* out) {
    // Distinguish "not there" from "not HDF5" before HDF5 folds both into "unable to open file".
    struct stat info;
    if (::stat(path.c_str(), &info) != 0)
        return Status::not_found(path + ": no such file");
    if (S_ISDIR(info.st_mode))
        return Status::invalid_argument(path + ": is a directory");

    File file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
    if (!file.valid()) {
        return format_failure(Where{path, ""}, "not an HDF5 file, or truncated or damaged");
    }
    *out = std::move(file);
    return Status::ok();
}

Status create_file_exclusive(const std::string& path, File* out) {
    const Where where{path, ""};
    PropList fapl(H5Pcreate(H5P_FILE_ACCESS));
    if (!fapl.valid())
        return io_failure(where, "H5Pcreate(H5P_FILE_ACCESS) failed");
#if H5_VERSION_GE(1, 10, 2)
    // Pin the newest format features to 1.10's, so a newer libhdf5 on the writing machine never
    // emits structures an HDF5 1.10 reader (Debian 12, many h5py wheels) cannot open. The
    // default upper bound, LATEST, would also turn on superblock-v3 consistency flags that make a
    // file left by a crashed writer refuse to open.
    if (H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_EARLIEST, H5F_LIBVER_V110) < 0) {
        return io_failure(where, "H5Pset_libver_bounds failed");
    }
#endif
    // STRONG: H5Fclose really closes the file (and any object id still open in it), so the
    // bytes are all written when it returns and the caller can fsync and rename.
    if (H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG) < 0) {
        return io_failure(where, "H5Pset_fclose_degree failed");
    }
#if (H5_VERSION_GE(1, 10, 7) && !H5_VERSION_GE(1, 12, 0)) || H5_VERSION_GE(1, 12, 1)
    // Best-effort locking: lock where the file system can, carry on where it cannot (some NFS
    // and WSL mounts), instead of failing every checkpoint there. The temporary name is ours
    // alone, so no reader can race on it.
    if (H5Pset_file_locking(fapl.get(), 1, 1) < 0) {
        return io_failure(where, "H5Pset_file_locking failed");
    }
#endif
    PropList fcpl;
    Status s = make_untimed_plist(H5P_FILE_CREATE, where, &fcpl);
    if (!s.is_ok())
        return s;

    File file(H5Fcreate(path.c_str(), H5F_ACC_EXCL, fcpl.get(), fapl.get()));
    if (!file.valid())
        return io_failure(where, "cannot create the file");
    *out = std::move(file);
    return Status::ok();
}

Status check_hard_path(hid_t loc, const Where& where, const std::string& relative_path,
                       bool* exists) {
    *exists = false;
    std::string prefix = !relative_path.empty() && relative_path[0] == '/' ? "/" : "";
    for (const std::string& part : split_path(relative_path)) {
        prefix += part;
        // H5Lexists fails (rather than answering 0) when an earlier component is not a group.
        htri_t found = H5Lexists(loc, prefix.c_str(), H5P_DEFAULT);
        if (found == 0)
            return Status::ok();
        if (found < 0) {
            (void)H5Eclear2(H5E_DEFAULT);
            return Status::ok();
        }
        H5L_type_t type = H5L_TYPE_ERROR;
        if (get_link_type(loc, prefix.c_str(), &type) < 0) {
            return format_failure(where.child(prefix), "H5Lget_info failed");
        }
        if (type != H5L_TYPE_HARD) {
            return Status::unsupported(where.child(prefix).str() +
                                       ": is a soft or external link; kiln follows only hard "
                                       "links inside the file");
        }
        prefix += "/";
    }
    *exists = true;
    return Status::ok();
}

Status open_group(hid_t loc, const Where& where, const std::string& name, Group* out) {
    bool exists = false;
    Status s = check_hard_path(loc, where, name, &exists);
    if (!s.is_ok())
        return s;
    if (!exists)
        return Status::not_found(where.child(name).str() + ": no such group");
    Group group(H5Gopen2(loc, name.c_str(), H5P_DEFAULT));
    if (!group.valid())
        return format_failure(where.child(name), "cannot open as a group");
    *out = std::move(group);
    return Status::ok();
}

Status create_group(hid_t loc, const Where& where, const std::string& name, Group* out) {
    Status s = ensure_parent_groups(loc, where, name);
    if (!s.is_ok())
        return s;
    PropList gcpl;
    s = make_untimed_plist(H5P_GROUP_CREATE, where, &gcpl);
    if (!s.is_ok())
        return s;
    Group group(H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, gcpl.get(), H5P_DEFAULT));
    if (!group.valid())
        return io_failure(where.child(name), "H5Gcreate2 failed");
    *out = std::move(group);
    return Status::ok();
}

Status list_children(hid_t group, const Where& where, H5I_type_t type,
                     std::vector<std::string>* names) {
    names->clear();
    // Iterating by index keeps to calls whose signatures are the same in HDF5 1.10 and 1.12+
    // (H5Literate and H5Oget_info changed), at the cost of one lookup per child. In the index's
    // native order, then sorted: asking for name order makes HDF5 build a table of every link of
    // a large ("dense") group, and HDF5 1.10 frees that table's unfilled entries when a damaged
    // link stops it half-way, a crash on a hostile file (tests/fuzz/regressions/hdf5/).
    H5G_info_t info;
    if (H5Gget_info(group, &info) < 0)
        return format_failure(where, "H5Gget_info failed");
    for (hsize_t i = 0; i < info.nlinks; ++i) {
        // Ask for the length first, then the name (HDF5 does not count the NUL).
        ssize_t length = H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_NATIVE, i, nullptr,
                                            0, H5P_DEFAULT);
        if (length < 0)
            return format_failure(where, "H5Lget_name_by_idx failed");
        std::vector<char> buffer(static_cast<size_t>(length) + 1, '\0');
        if (H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_NATIVE, i, buffer.data(),
                               buffer.size(), H5P_DEFAULT) < 0) {
            return format_failure(where, "H5Lget_name_by_idx failed");
        }
        std::string name(buffer.data(), static_cast<size_t>(length));

        // Soft and external links are not followed (see check_hard_path).
        H5L_type_t link_type = H5L_TYPE_ERROR;
        if (get_link_type(group, name.c_str(), &link_type) < 0) {
            return format_failure(where.child(name), "H5Lget_info failed");
        }
        if (link_type != H5L_TYPE_HARD)
            continue;

        Object object(H5Oopen(group, name.c_str(), H5P_DEFAULT));
        if (!object.valid())
            return format_failure(where.child(name), "H5Oopen failed");
        H5I_type_t object_type = H5Iget_type(object.get());
        if (object_type == H5I_BADID) {
            return format_failure(where.child(name), "H5Iget_type failed");
        }
        if (object_type == type)
            names->push_back(std::move(name));
    }
    std::sort(names->begin(), names->end());
    return Status::ok();
}

// ---- attributes -----------------------------------------------------------------------------

Status attribute_exists(hid_t obj, const Where& where, const std::string& name, bool* exists) {
    htri_t found = H5Aexists(obj, name.c_str());
    if (found < 0)
        return format_failure(where, "H5Aexists('" + name + "') failed");
    *exists = found > 0;
    return Status::ok();
}

Status read_string_attribute(hid_t obj, const Where& where, const std::string& name,
                             std::string* out) {
    bool exists = false;
    Status s = attribute_exists(obj, where, name, &exists);
    if (!s.is_ok())
        return s;
    if (!exists)
        return Status::not_found(where.str() + ": no attribute '" + name + "'");
    std::vector<std::string> values;
    s = read_attribute_strings(obj, where, name, &values);
    if (!s.is_ok())
        return s;
    if (values.size() != 1) {
        return Status::corruption(where.str() + ": attribute '" + name + "' holds " +
                                  std::to_string(values.size()) + " strings; expected one");
    }
    *out = std::move(values[0]);
    return Status::ok();
}

Status read_string_list_attribute(hid_t obj, const Where& where, const std::string& name,
                                  std::vector<std::string>* out, bool* found) {
    out->clear();
    *found = false;
    bool exists = false;
    Status s = attribute_exists(obj, where, name, &exists);
    if (!s.is_ok())
        return s;
    if (exists) {
        *found = true;
        return read_attribute_strings(obj, where, name, out);
    }

    // Keras splits lists that would pass the 64 KiB object-header limit into numbered pieces.
    for (int64_t piece = 0; piece < kMaxListPieces; ++piece) {
        const std::string piece_name = name + std::to_string(piece);
        s = attribute_exists(obj, where, piece_name, &exists);
        if (!s.is_ok())
            return s;
        if (!exists)
            break;
        *found = true;
        std::vector<std::string> part;
        s = read_attribute_strings(obj, where, piece_name, &part);
        if (!s.is_ok())
            return s;
        out->insert(out->end(), part.begin(), part.end());
    }
    return Status::ok();
}

Status write_string_attribute(hid_t obj, const Where& where, const std::string& name,
                              const std::string& value) {
    Status s = check_no_nul(where, name, value);
    if (!s.is_ok())
        return s;
    Datatype type;
    s = make_vlen_utf8(where, &type);
    if (!s.is_ok())
        return s;
    Dataspace space(H5Screate(H5S_SCALAR));
    if (!space.valid())
        return io_failure(where, "H5Screate(H5S_SCALAR) failed");

    Attribute attr(
        H5Acreate2(obj, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT));
    if (!attr.valid())
        return io_failure(where, "cannot create attribute '" + name + "'");
    // A variable-length string is written from a pointer to its char*, not from the chars.
    const char* text = value.c_str();
    if (H5Awrite(attr.get(), type.get(), &text) < 0) {
        return io_failure(where, "cannot write attribute '" + name + "'");
    }
    if (attr.close() < 0)
        return io_failure(where, "H5Aclose('" + name + "') failed");
    return Status::ok();
}

Status write_string_list_attribute(hid_t obj, const Where& where, const std::string& name,
                                   const std::vector<std::string>& values) {
    for (const std::string& value : values) {
        Status s = check_no_nul(where, name, value);
        if (!s.is_ok())
            return s;
    }
    Datatype type;
    Status s = make_vlen_utf8(where, &type);
    if (!s.is_ok())
        return s;
    const hsize_t dims[1] = {static_cast<hsize_t>(values.size())};
    Dataspace space(H5Screate_simple(1, dims, nullptr));
    if (!space.valid())
        return io_failure(where, "H5Screate_simple failed for '" + name + "'");

    Attribute attr(
        H5Acreate2(obj, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT));
    if (!attr.valid())
        return io_failure(where, "cannot create attribute '" + name + "'");
    // A zero-length attribute has nothing to write; creating it is the whole job.
    if (!values.empty()) {
        std::vector<const char*> pointers;
        pointers.reserve(values.size());
        for (const std::string& value : values)
            pointers.push_back(value.c_str());
        if (H5Awrite(attr.get(), type.get(), pointers.data()) < 0) {
            return io_failure(where, "cannot write attribute '" + name + "'");
        }
    }
    if (attr.close() < 0)
        return io_failure(where, "H5Aclose('" + name + "') failed");
    return Status::ok();
}

// ---- datasets -------------------------------------------------------------------------------

Status check_dataset_storage(hid_t dataset, const Where& at, const Shape& shape,
                             uint64_t declared) {
    PropList dcpl(H5Dget_create_plist(dataset));
    if (!dcpl.valid())
        return format_failure(at, "H5Dget_create_plist failed");
    H5D_layout_t layout = H5Pget_layout(dcpl.get());
    if (layout == H5D_LAYOUT_ERROR)
        return format_failure(at, "H5Pget_layout failed");
    if (layout == H5D_VIRTUAL) {
        return Status::unsupported(at.str() +
                                   ": is a virtual dataset (its data lives in other "
                                   "files); kiln reads ordinary datasets only");
    }
    int external = H5Pget_external_count(dcpl.get());
    if (external < 0)
        return format_failure(at, "H5Pget_external_count failed");
    if (external > 0) {
        return Status::unsupported(at.str() +
                                   ": stores its data in external files; kiln reads "
                                   "ordinary datasets only");
    }
    // H5Dget_storage_size returns 0 both for "nothing allocated" and on error; either way the
    // checks below then refuse the dataset.
    const uint64_t stored = H5Dget_storage_size(dataset);
    if (layout == H5D_CONTIGUOUS && declared > 0) {
        if (stored < declared) {
            return Status::corruption(at.str() + ": declares " + shape_to_string(shape) + " (" +
                                      std::to_string(declared) + " bytes) but the file " +
                                      "stores " + std::to_string(stored) +
                                      " (truncated, or never written)");
        }
        haddr_t offset = H5Dget_offset(dataset);
        File owner(H5Iget_file_id(dataset));
        hsize_t file_size = 0;
        if (!owner.valid() || H5Fget_filesize(owner.get(), &file_size) < 0) {
            return format_failure(at, "cannot get the file size");
        }
        if (offset != HADDR_UNDEF && offset + declared > file_size) {
            return Status::corruption(at.str() + ": its data runs past the end of the file " +
                                      "(truncated)");
        }
    } else if (layout == H5D_CHUNKED && declared > kBombFloor &&
               declared / kMaxCompressionRatio > stored) {
        return Status::corruption(at.str() + ": declares " + std::to_string(declared) +
                                  " bytes but stores only " + std::to_string(stored) +
                                  "; refusing an implausible compression ratio");
    }
    return Status::ok();
}

Status read_float_dataset(hid_t loc, const Where& where, const std::string& name, DatasetInfo* info,
                          std::vector<float>* values) {
    const Where at = where.child(name);
    bool exists = false;
    Status s = check_hard_path(loc, where, name, &exists);
    if (!s.is_ok())
        return s;
    if (!exists)
        return Status::not_found(at.str() + ": no such dataset");
    Dataset dataset(H5Dopen2(loc, name.c_str(), H5P_DEFAULT));
    if (!dataset.valid())
        return format_failure(at, "cannot open as a dataset");

    // 1. The element type: any integer or floating-point type HDF5 can convert to float.
    Datatype type(H5Dget_type(dataset.get()));
    if (!type.valid())
        return format_failure(at, "H5Dget_type failed");
    DatasetInfo found;
    found.type_class = H5Tget_class(type.get());
    if (found.type_class != H5T_INTEGER && found.type_class != H5T_FLOAT) {
        return Status::unsupported(at.str() + ": holds values of HDF5 type class " +
                                   std::to_string(static_cast<int>(found.type_class)) +
                                   "; kiln reads integer and floating-point datasets only");
    }
    found.type_size = H5Tget_size(type.get());
    if (found.type_size == 0)
        return format_failure(at, "H5Tget_size failed");
    if (found.type_class == H5T_INTEGER) {
        H5T_sign_t sign = H5Tget_sign(type.get());
        if (sign == H5T_SGN_ERROR)
            return format_failure(at, "H5Tget_sign failed");
        found.is_unsigned = sign == H5T_SGN_NONE;
    }

    // 2. The declared shape, bounded before anything is allocated.
    Dataspace space(H5Dget_space(dataset.get()));
    if (!space.valid())
        return format_failure(at, "H5Dget_space failed");
    H5S_class_t space_class = H5Sget_simple_extent_type(space.get());
    if (space_class == H5S_NO_CLASS)
        return format_failure(at, "H5Sget_simple_extent_type failed");
    if (space_class == H5S_NULL) {
        return Status::corruption(at.str() + ": has a null dataspace (no shape, no values)");
    }
    int rank = H5Sget_simple_extent_ndims(space.get());
    if (rank < 0)
        return format_failure(at, "H5Sget_simple_extent_ndims failed");
    std::vector<hsize_t> dims(static_cast<size_t>(rank));
    if (rank > 0 && H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr) < 0) {
        return format_failure(at, "H5Sget_simple_extent_dims failed");
    }
    // Multiply with an overflow check: a hostile file can declare dimensions near 2^64.
    int64_t count = 1;
    bool too_big = false;
    for (hsize_t d : dims) {
        if (d > static_cast<hsize_t>(kMaxDatasetElements) ||
            (d != 0 && count > kMaxDatasetElements / static_cast<int64_t>(d))) {
            too_big = true;
            break;
        }
        found.shape.push_back(static_cast<int64_t>(d));
        count *= static_cast<int64_t>(d);
    }
    if (too_big) {
        return Status::corruption(at.str() + ": declares more than " +
                                  std::to_string(kMaxDatasetElements) +
                                  " elements, more than kiln reads into memory");
    }

    // 3. The declared bytes against what the file really holds, so a truncated or hostile file
    //    is refused rather than read past its end or turned into a huge allocation. `count` is
    //    at most 2^31 and element types a few bytes, so the product cannot overflow.
    s = check_dataset_storage(dataset.get(), at, found.shape,
                              static_cast<uint64_t>(count) * found.type_size);
    if (!s.is_ok())
        return s;

    // 4. Read, converted by HDF5 from the stored type to native float.
    // HDF5 converts integers and other float widths (and byte orders) on the way in; values
    // beyond float range become +-inf (HDF5's default conversion).
    std::vector<float> data(static_cast<size_t>(count));
    if (count > 0 &&
        H5Dread(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()) < 0) {
        return format_failure(at, "cannot read the values");
    }
    *values = std::move(data);
    *info = std::move(found);
    return Status::ok();
}

Status write_float_dataset(hid_t loc, const Where& where, const std::string& name,
                           const Shape& shape, const float* values) {
    const Where at = where.child(name);
    std::vector<hsize_t> dims;
    int64_t count = 1;
    for (int64_t d : shape) {
        if (d < 0) {
            return Status::invalid_argument(at.str() + ": negative dimension in shape " +
                                            shape_to_string(shape));
        }
        dims.push_back(static_cast<hsize_t>(d));
        count *= d;
    }
    if (count > 0 && values == nullptr) {
        return Status::invalid_argument(at.str() + ": no values given");
    }
    Status s = ensure_parent_groups(loc, where, name);
    if (!s.is_ok())
        return s;

    Dataspace space(dims.empty()
                        ? H5Screate(H5S_SCALAR)
                        : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
    if (!space.valid())
        return io_failure(at, "cannot create the dataspace");
    PropList dcpl;
    s = make_untimed_plist(H5P_DATASET_CREATE, at, &dcpl);
    if (!s.is_ok())
        return s;

    // Contiguous, unfiltered, little-endian float32: what Keras writes and what lets h5py users
    // memory-map the weights.
    Dataset dataset(H5Dcreate2(loc, name.c_str(), H5T_IEEE_F32LE, space.get(), H5P_DEFAULT,
                               dcpl.get(), H5P_DEFAULT));
    if (!dataset.valid())
        return io_failure(at, "H5Dcreate2 failed");
    if (count > 0 &&
        H5Dwrite(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values) < 0) {
        return io_failure(at, "H5Dwrite failed");
    }
    if (dataset.close() < 0)
        return io_failure(at, "H5Dclose failed");
    return Status::ok();
}

}  // namespace h5
}  // namespace kiln
