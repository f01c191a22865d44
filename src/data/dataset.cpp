// Resolution of a dataset spec (`--data`): an installed NAME, a DIR of IDX or NPY files, a CSV
// file or an HDF5 file, into train and test splits with their shapes checked against each other.
#include "kiln/data.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <iterator>
#include <string>
#include <vector>

namespace kiln {
namespace data {
namespace {

// Datasets installed with the system, each a directory of the four IDX files.
constexpr const char* kInstallRoot = "/usr/share/datasets";
constexpr const char* kKnownNames[] = {"fashion-mnist", "mnist"};

std::string known_names() {
    std::string text;
    for (const char* name : kKnownNames)
        text += std::string(text.empty() ? "" : ", ") + name;
    return text;
}

bool is_known_name(const std::string& spec) {
    return std::find_if(std::begin(kKnownNames), std::end(kKnownNames),
                        [&](const char* name) { return spec == name; }) != std::end(kKnownNames);
}

std::string shape_text(const Shape& shape) {
    std::string text = "(";
    for (size_t i = 0; i < shape.size(); ++i) {
        text += (i ? ", " : "") + std::to_string(shape[i]);
    }
    return text + ")";
}

// stat() rather than std::filesystem: no exceptions to catch, and the same calls the loaders
// use, so "exists" here and "no such file" there cannot disagree.
bool is_dir(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

// Case-insensitive, so DATA.CSV and train.H5 are recognised too.
bool has_suffix(const std::string& s, const std::string& suffix) {
    if (s.size() < suffix.size())
        return false;
    // `suffix` is lower case; the characters of `s` are folded before comparing.
    return std::equal(suffix.begin(), suffix.end(), s.end() - suffix.size(), [](char a, char b) {
        return a == std::tolower(static_cast<unsigned char>(b));
    });
}

std::string basename_of(const std::string& path) {
    const size_t slash = path.find_last_of('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

// IDX files have no extension of their own; the MNIST names ("train-images-idx3-ubyte") and
// gzip are what identify them in practice.
bool looks_like_idx(const std::string& path) {
    const std::string base = basename_of(path);
    return has_suffix(path, ".idx") || has_suffix(path, ".gz") ||
           base.find("-idx") != std::string::npos;
}

// Splits "FILE.h5:/inner/path" into the file and the path inside it; a bare "FILE.h5" gives an
// empty inner path. Returns false when `spec` does not name an HDF5 file.
// The split is at the first ".h5:" because a ':' may also appear inside the dataset path, while
// a file name containing ".h5:" is not worth supporting.
bool split_h5_spec(const std::string& spec, std::string* file, std::string* inner) {
    // Search the lower-cased spec so that "Train.H5:/x" splits as well.
    std::string lower = spec;
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    for (const char* ext : {".h5", ".hdf5"}) {
        if (has_suffix(spec, ext)) {
            *file = spec;
            inner->clear();
            return true;
        }
        const size_t at = lower.find(std::string(ext) + ":");
        if (at != std::string::npos) {
            const size_t colon = at + std::string(ext).size();
            *file = spec.substr(0, colon);
            *inner = spec.substr(colon + 1);
            return true;
        }
    }
    return false;
}

// "/" + "x_train" -> "/x_train"; "/data/" + "x_train" -> "/data/x_train".
std::string join_h5(std::string group, const std::string& name) {
    while (!group.empty() && group.back() == '/')
        group.pop_back();
    if (!group.empty() && group.front() != '/')
        group.insert(group.begin(), '/');
    return group + "/" + name;
}

// A NAME resolves to its installed directory; `*dir` is left empty when `spec` is not a name.
// A name wins over a directory of the same name in the working directory, so that
// `--data mnist` means the same thing wherever it is run; "./mnist" reaches the local one.
Status resolve_name(const std::string& spec, std::string* dir) {
    dir->clear();
    if (!is_known_name(spec))
        return Status::ok();
    *dir = std::string(kInstallRoot) + "/" + spec;
    if (!is_dir(*dir)) {
        return Status::not_found("dataset '" + spec + "' is not installed (" + *dir +
                                 " does not exist)");
    }
    return Status::ok();
}

Status unknown_spec(const std::string& spec) {
    return Status::not_found("'" + spec + "' is not a known dataset name (known: " + known_names() +
                             ") and is neither a directory nor a file");
}

// ---- directories ---------------------------------------------------------------------------

// What a dataset directory holds. Paths of absent files are empty.
struct DirLayout {
    bool idx = false;  // IDX files; otherwise NPY
    std::string x_train, y_train, x_test, y_test;
};

// An IDX file stored plain or gzipped; the plain one wins when both are there.
std::string find_idx(const std::string& dir, const std::string& base) {
    for (const std::string& candidate : {dir + "/" + base, dir + "/" + base + ".gz"}) {
        if (exists(candidate))
            return candidate;
    }
    return "";
}

std::string find_plain(const std::string& dir, const std::string& name) {
    const std::string path = dir + "/" + name;
    return exists(path) ? path : "";
}

// Finds which files of either layout `dir` holds; loads nothing, so that `load_inputs` can take
// the test split without reading the training one.
Status resolve_dir(const std::string& dir, DirLayout* layout) {
    DirLayout idx;
    idx.idx = true;
    idx.x_train = find_idx(dir, "train-images-idx3-ubyte");
    idx.y_train = find_idx(dir, "train-labels-idx1-ubyte");
    idx.x_test = find_idx(dir, "t10k-images-idx3-ubyte");
    idx.y_test = find_idx(dir, "t10k-labels-idx1-ubyte");
    DirLayout npy;
    npy.x_train = find_plain(dir, "x_train.npy");
    npy.y_train = find_plain(dir, "y_train.npy");
    npy.x_test = find_plain(dir, "x_test.npy");
    npy.y_test = find_plain(dir, "y_test.npy");

    // Whichever layout the directory has any file of; IDX when it somehow has both.
    const bool any_idx = !(idx.x_train + idx.y_train + idx.x_test + idx.y_test).empty();
    const bool any_npy = !(npy.x_train + npy.y_train + npy.x_test + npy.y_test).empty();
    if (!any_idx && !any_npy) {
        return Status::not_found(
            dir +
            ": no dataset files: expected train-images-idx3-ubyte[.gz], "
            "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and "
            "t10k-labels-idx1-ubyte[.gz], or x_train.npy, y_train.npy and optionally "
            "x_test.npy, y_test.npy");
    }
    *layout = any_idx ? idx : npy;

    // A split needs both halves; one without the other is a mistake worth reporting.
    const char* x_test_name = layout->idx ? "t10k-images-idx3-ubyte" : "x_test.npy";
    const char* y_test_name = layout->idx ? "t10k-labels-idx1-ubyte" : "y_test.npy";
    if (layout->x_test.empty() != layout->y_test.empty()) {
        return Status::not_found(
            dir + ": has " + (layout->x_test.empty() ? y_test_name : x_test_name) + " but not " +
            (layout->x_test.empty() ? x_test_name : y_test_name));
    }
    return Status::ok();
}

// One array of a dataset directory, with the loader its layout calls for.
Status load_file(const DirLayout& layout, const std::string& path, Array* out) {
    return layout.idx ? load_idx(path, out) : load_npy(path, out);
}

// ---- splits --------------------------------------------------------------------------------

// Puts a split in its documented form: y as (rows × 1) when stored as a vector of labels, x
// scaled when it held pixels, and the row counts of the two agreeing.
Status finish_split(Split* split) {
    // A label vector (N) is the common case; (N, k) targets are left as they are.
    if (split->y.shape.size() == 1)
        split->y.shape.push_back(1);
    if (split->x.rows() == 0)
        return Status::corruption(split->x.source + ": no rows");
    if (split->x.rows() != split->y.rows()) {
        return Status::invalid_argument("inputs and targets disagree: x from " + split->x.source +
                                        " has " + std::to_string(split->x.rows()) +
                                        " rows, y from " + split->y.source + " has " +
                                        std::to_string(split->y.rows()));
    }
    // Only x: 8-bit labels are class indices, and scaling them would break every loss.
    scale_pixels(&split->x);
    return Status::ok();
}

// Loads the x and y files of one split from a dataset directory.
Status load_pair(const DirLayout& layout, const std::string& x_path, const std::string& y_path,
                 Split* split) {
    Status s = load_file(layout, x_path, &split->x);
    if (!s.is_ok())
        return s;
    s = load_file(layout, y_path, &split->y);
    if (!s.is_ok())
        return s;
    return finish_split(split);
}

Status load_dir(const std::string& dir, Dataset* out) {
    DirLayout layout;
    Status s = resolve_dir(dir, &layout);
    if (!s.is_ok())
        return s;
    if (layout.x_train.empty() || layout.y_train.empty()) {
        return Status::not_found(dir + ": no training split (expected " +
                                 (layout.idx ? "train-images-idx3-ubyte[.gz] and "
                                               "train-labels-idx1-ubyte[.gz]"
                                             : "x_train.npy and y_train.npy") +
                                 ")");
    }
    s = load_pair(layout, layout.x_train, layout.y_train, &out->train);
    if (!s.is_ok())
        return s;
    if (!layout.x_test.empty()) {
        s = load_pair(layout, layout.x_test, layout.y_test, &out->test);
        if (!s.is_ok())
            return s;
    }
    return Status::ok();
}

// The HDF5 reader's contract does not promise to name the source, and the row checks below
// need one for their messages.
Status load_h5_array(const std::string& file, const std::string& dataset, Array* out) {
    Status s = load_hdf5_array(file, dataset, out);
    if (!s.is_ok())
        return s;
    if (out->source.empty())
        out->source = file + ":" + dataset;
    return Status::ok();
}

// FILE.h5 (or FILE.h5:/group) holding x_train, y_train and optionally x_test, y_test.
Status load_h5(const std::string& file, const std::string& group, Dataset* out) {
    // List the group first: it tells which splits exist and lets a missing name be reported
    // together with the names that are there.
    const std::string where = group.empty() ? "/" : group;
    std::vector<std::string> names;
    Status s = list_hdf5_datasets(file, where, &names);
    if (!s.is_ok())
        return s;
    const auto has = [&](const char* name) {
        return std::find(names.begin(), names.end(), name) != names.end();
    };
    std::string listed;
    for (const std::string& n : names)
        listed += (listed.empty() ? "" : ", ") + n;
    if (!has("x_train") || !has("y_train")) {
        return Status::not_found(file + ":" + where + ": expected datasets x_train and y_train " +
                                 "(found: " + (listed.empty() ? "none" : listed) + ")");
    }
    if (has("x_test") != has("y_test")) {
        return Status::not_found(
            file + ":" + where + ": has " +
            (has("x_test") ? "x_test but not y_test" : "y_test but not x_test"));
    }

    // The splits.
    s = load_h5_array(file, join_h5(where, "x_train"), &out->train.x);
    if (!s.is_ok())
        return s;
    s = load_h5_array(file, join_h5(where, "y_train"), &out->train.y);
    if (!s.is_ok())
        return s;
    s = finish_split(&out->train);
    if (!s.is_ok())
        return s;
    if (has("x_test")) {
        s = load_h5_array(file, join_h5(where, "x_test"), &out->test.x);
        if (!s.is_ok())
            return s;
        s = load_h5_array(file, join_h5(where, "y_test"), &out->test.y);
        if (!s.is_ok())
            return s;
        s = finish_split(&out->test);
        if (!s.is_ok())
            return s;
    }
    return Status::ok();
}

// One source without the separate test spec: a NAME, DIR, CSV or HDF5 file.
Status load_source(const std::string& spec, const DatasetOptions& options, Dataset* out) {
    // Names and directories first: neither has an extension to go by.
    std::string dir;
    Status s = resolve_name(spec, &dir);
    if (!s.is_ok())
        return s;
    if (!dir.empty())
        return load_dir(dir, out);
    if (is_dir(spec))
        return load_dir(spec, out);

    // Files by extension; "FILE.h5:/group" is checked before existence because the spec as a
    // whole is not a path.
    std::string file, inner;
    if (split_h5_spec(spec, &file, &inner)) {
        if (!exists(file))
            return Status::not_found(file + ": no such file");
        return load_h5(file, inner, out);
    }
    if (!exists(spec))
        return unknown_spec(spec);
    if (has_suffix(spec, ".csv")) {
        s = load_csv(spec, options.csv, &out->train.x, &out->train.y);
        if (!s.is_ok())
            return s;
        return finish_split(&out->train);
    }
    // Single arrays are valid inputs (load_inputs) but not a dataset: say what to give instead.
    if (has_suffix(spec, ".npy")) {
        return Status::invalid_argument(spec +
                                        ": an NPY file holds one array; for a dataset "
                                        "give a directory with x_train.npy and y_train.npy");
    }
    if (looks_like_idx(spec)) {
        return Status::invalid_argument(spec +
                                        ": an IDX file holds one array; for a dataset "
                                        "give the directory holding the four IDX files");
    }
    return Status::unsupported(spec +
                               ": unrecognised dataset file type (expected a directory, "
                               ".csv, .h5 or .hdf5)");
}

// Test inputs must look like training inputs, or the model would fail much later.
Status check_test_matches(const Dataset& data) {
    const auto tail = [](const Shape& s) {
        return Shape(s.begin() + (s.empty() ? 0 : 1), s.end());
    };
    if (tail(data.train.x.shape) != tail(data.test.x.shape)) {
        return Status::invalid_argument(
            "train and test inputs differ in shape: " + data.train.x.source + " is " +
            shape_text(data.train.x.shape) + ", " + data.test.x.source + " is " +
            shape_text(data.test.x.shape));
    }
    if (tail(data.train.y.shape) != tail(data.test.y.shape)) {
        return Status::invalid_argument(
            "train and test targets differ in shape: " + data.train.y.source + " is " +
            shape_text(data.train.y.shape) + ", " + data.test.y.source + " is " +
            shape_text(data.test.y.shape));
    }
    return Status::ok();
}

}  // namespace

void scale_pixels(Array* array) {
    if (!array->from_uint8)
        return;
    for (float& v : array->values)
        v /= 255.0f;
    // Cleared so that scaling twice is harmless: the values are no longer 0..255.
    array->from_uint8 = false;
}

Status load_dataset(const std::string& spec, const DatasetOptions& options, Dataset* out) {
    // The main source.
    Dataset result;
    result.name = spec;
    Status s = load_source(spec, options, &result);
    if (!s.is_ok())
        return s;

    // A separate test source: its test split when it has one (e.g. "fashion-mnist"), else its
    // only split (a second CSV file).
    if (!options.test_spec.empty()) {
        // Refused rather than picking one: silently evaluating on other data than the user
        // believes would make every reported test figure wrong.
        if (result.has_test()) {
            return Status::invalid_argument(
                "'" + spec + "' already has a test split, so the separate test data '" +
                options.test_spec + "' would be ambiguous");
        }
        Dataset test;
        s = load_source(options.test_spec, options, &test);
        if (!s.is_ok())
            return s.with_context("test data");
        result.test = test.has_test() ? std::move(test.test) : std::move(test.train);
    }
    if (result.has_test()) {
        s = check_test_matches(result);
        if (!s.is_ok())
            return s;
    }

    *out = std::move(result);
    return Status::ok();
}

Status load_inputs(const std::string& spec, const DatasetOptions& options, Array* out) {
    Array result;
    Status s;

    // A NAME or DIR: its test inputs only, without reading the training split.
    std::string dir;
    s = resolve_name(spec, &dir);
    if (!s.is_ok())
        return s;
    if (dir.empty() && is_dir(spec))
        dir = spec;
    std::string file, inner;
    if (!dir.empty()) {
        DirLayout layout;
        s = resolve_dir(dir, &layout);
        if (!s.is_ok())
            return s;
        if (layout.x_test.empty()) {
            return Status::not_found(dir + ": no test split to take inputs from (expected " +
                                     (layout.idx ? "t10k-images-idx3-ubyte[.gz]" : "x_test.npy") +
                                     ")");
        }
        s = load_file(layout, layout.x_test, &result);
    } else if (split_h5_spec(spec, &file, &inner)) {
        // FILE.h5:/dataset; a bare FILE.h5 means its x_test.
        if (!exists(file))
            return Status::not_found(file + ": no such file");
        if (inner.empty()) {
            std::vector<std::string> names;
            s = list_hdf5_datasets(file, "/", &names);
            if (!s.is_ok())
                return s;
            if (std::find(names.begin(), names.end(), "x_test") == names.end()) {
                return Status::invalid_argument(file +
                                                ": has no /x_test; name the dataset, as "
                                                "in " +
                                                file + ":/x");
            }
            inner = "/x_test";
        }
        s = load_h5_array(file, inner, &result);
    } else if (!exists(spec)) {
        return unknown_spec(spec);
    } else if (has_suffix(spec, ".npy")) {
        s = load_npy(spec, &result);
    } else if (has_suffix(spec, ".csv")) {
        if (options.csv.label_column.empty()) {
            s = load_csv_features(spec, options.csv, &result);
        } else {
            Array labels;  // read so the column is dropped, then discarded
            s = load_csv(spec, options.csv, &result, &labels);
        }
    } else if (looks_like_idx(spec)) {
        s = load_idx(spec, &result);
    } else {
        return Status::unsupported(spec +
                                   ": unrecognised input file type (expected a "
                                   "directory, .npy, .csv, .h5 or an IDX file)");
    }
    if (!s.is_ok())
        return s;
    if (result.rows() == 0)
        return Status::corruption(result.source + ": no rows");

    // Inputs are scaled exactly as load_dataset scales training inputs, or predictions on
    // 8-bit data would see values 255 times larger than the model was trained on.
    scale_pixels(&result);
    *out = std::move(result);
    return Status::ok();
}

}  // namespace data
}  // namespace kiln
