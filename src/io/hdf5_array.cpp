// HDF5 datasets as data arrays: `kiln fit --data FILE.h5` and `kiln predict --input FILE.h5:/x`.
#include "kiln/data.h"

#include <utility>

#include "io/hdf5_util.h"

namespace kiln {
namespace data {
namespace {

// Dataset paths are shown and resolved from the root: "x_train" and "/x_train" are the same.
std::string absolute(const std::string& path) {
    if (path.empty())
        return "/";
    return path[0] == '/' ? path : "/" + path;
}

}  // namespace

Status load_hdf5_array(const std::string& file, const std::string& dataset, Array* out) {
    h5::HDF5Session session;
    const std::string path = absolute(dataset);
    h5::File handle;
    Status s = h5::open_file_read(file, &handle);
    if (!s.is_ok())
        return s;

    h5::DatasetInfo info;
    Array array;
    s = h5::read_float_dataset(handle.get(), h5::Where{file, "/"}, path, &info, &array.values);
    if (s.code() == Status::Code::kNotFound) {
        // Say what is there: the usual mistake is a name (x_train vs X_train, or a group).
        std::vector<std::string> names;
        if (list_hdf5_datasets(file, "/", &names).is_ok() && !names.empty()) {
            std::string listed;
            for (const std::string& name : names)
                listed += (listed.empty() ? "" : ", ") + name;
            return Status::not_found(s.message() + " (datasets at the root: " + listed + ")");
        }
        return s;
    }
    if (!s.is_ok())
        return s;

    array.shape = std::move(info.shape);
    array.source = file + ":" + path;
    // 8-bit unsigned data is pixels in every dataset kiln knows; `scale_pixels` keys on this.
    array.from_uint8 = info.type_class == H5T_INTEGER && info.type_size == 1 && info.is_unsigned;
    *out = std::move(array);
    return Status::ok();
}

Status list_hdf5_datasets(const std::string& file, const std::string& group,
                          std::vector<std::string>* names) {
    h5::HDF5Session session;
    h5::File handle;
    Status s = h5::open_file_read(file, &handle);
    if (!s.is_ok())
        return s;

    const std::string path = absolute(group);
    const h5::Where where{file, path};
    h5::Group opened;
    s = h5::open_group(handle.get(), h5::Where{file, "/"}, path, &opened);
    if (!s.is_ok())
        return s;
    return h5::list_children(opened.get(), where, H5I_DATASET, names);
}

}  // namespace data
}  // namespace kiln
