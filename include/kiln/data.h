// Datasets: loaders for IDX (gzip too), NPY, CSV and HDF5, and the resolution of `--data`.
//
// Every loader checks each declared size against the bytes actually present before it
// allocates, and reports a malformed file as a Status naming the file and the problem.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/status.h"
#include "kiln/tensor.h"

namespace kiln {
namespace data {

// A host array of float32 values, row-major. `source` names where it came from, for messages.
struct Array {
    Shape shape;
    std::vector<float> values;
    std::string source;
    // True when the file stored 8-bit integers (pixels): `scale_pixels` maps them to [0, 1].
    bool from_uint8 = false;

    int64_t rows() const { return shape.empty() ? 0 : shape[0]; }
    int64_t cols() const { return rows() ? static_cast<int64_t>(values.size()) / rows() : 0; }
};

// Divides every value by 255 when the array came from 8-bit data; otherwise leaves it.
void scale_pixels(Array* array);

// IDX (the MNIST format): magic, dtype byte, rank, big-endian dims, data; `.gz` files are
// inflated with zlib. Values are converted to float32 as stored (no scaling).
Status load_idx(const std::string& path, Array* out);

// NPY versions 1.0, 2.0 and 3.0; little-endian (or byte-sized) |u1 |i1 <i2 <i4 <i8 <u2 <u4 <u8
// <f4 <f8 and |b1; C order only.
Status load_npy(const std::string& path, Array* out);
// Writes float32 values as an NPY 1.0 file (for `kiln predict --output`).
Status save_npy(const std::string& path, const Shape& shape, const float* values);

struct CsvOptions {
    // The label column: a header name or a 0-based index as text. Empty: the column named
    // "label" when the file has a header with one, else column 0.
    std::string label_column;
    char delimiter = ',';
    // "auto": a header when the first row has a field that is not a number.
    enum class Header { kAuto, kYes, kNo } header = Header::kAuto;
};

// Reads features into `x` (rows × features) and the label column into `y` (rows × 1).
Status load_csv(const std::string& path, const CsvOptions& options, Array* x, Array* y);
// Reads every column as a feature into `x` (rows × columns), for inputs without labels.
Status load_csv_features(const std::string& path, const CsvOptions& options, Array* x);

// One dataset of an HDF5 file, any numeric type converted to float32. `spec` is
// "FILE.h5:/path/to/dataset".
Status load_hdf5_array(const std::string& file, const std::string& dataset, Array* out);
// Lists the names of the datasets directly inside `group` (e.g. "/").
Status list_hdf5_datasets(const std::string& file, const std::string& group,
                          std::vector<std::string>* names);

// Inputs and targets of one split. y is (rows × 1) class indices for classification data.
struct Split {
    Array x;
    Array y;
};

struct Dataset {
    std::string name;  // "fashion-mnist", or the path it came from
    Split train;
    Split test;  // empty (0 rows) when the source has no test split
    bool has_test() const { return test.x.rows() > 0; }
};

struct DatasetOptions {
    CsvOptions csv;
    // Optional separate test source for files that hold one split (CSV, NPY pairs).
    std::string test_spec;
};

// Resolves `spec`:
// - a NAME: "fashion-mnist" or "mnist", installed under /usr/share/datasets/NAME;
// - a DIR holding the four IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
//   t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) or x_train.npy, y_train.npy and
//   optionally x_test.npy, y_test.npy;
// - FILE.csv (one split; the label column from options.csv);
// - FILE.h5 with datasets x_train, y_train and optionally x_test, y_test, or FILE.h5:/group
//   holding them.
// Rows of x and y must agree; images are flattened to (rows × features) only by the model.
// 8-bit inputs are scaled to [0, 1].
Status load_dataset(const std::string& spec, const DatasetOptions& options, Dataset* out);

// Inputs only (for `kiln predict`): a NAME or DIR (its test split), an NPY, CSV (every column is
// a feature unless options.csv.label_column is set) or FILE.h5:/dataset.
Status load_inputs(const std::string& spec, const DatasetOptions& options, Array* out);

}  // namespace data
}  // namespace kiln
