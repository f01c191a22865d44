// Reliability test 7 (shared/reference/reliability.md, section 7): resource-bomb inputs.
//
// Small hostile files that declare enormous sizes: an NPY of shape (2^40,) with no data, NPY
// header lengths near 2^31 and 65535, shapes whose product overflows, IDX dimensions of 2^31 x
// 2^31, a small .gz IDX that declares a huge size, HDF5 datasets of huge dims (chunked and
// compressed, written by HDF5 itself), kiln checkpoints whose weight or optimizer dataset
// declares a huge shape, a CSV with an unmatched quote before tens of MiB, a CSV with 10^6
// columns, and model descriptions with Dense(units=2^40) or a huge Conv2D.
//
// KILN_RELIABILITY_LONG=1 makes the CSV bombs the full size (1 GiB after the quote, 10^7
// columns). Each file is loaded in a forked child. Pass: every file is rejected with an error
// naming the file and the reason (a word the case expects), in under a second, and the child's peak
// resident memory grows by less than 64 MiB over its level just before the load (the child
// returns its free heap and resets VmHWM before the load; the peak is the higher of its VmHWM
// after the load and wait4's ru_maxrss). The suite line reads
//   reliability: huge declarations: N files, N rejected, max X ms, max Y MiB growth
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <hdf5.h>
#include <zlib.h>

#include "kiln/kiln.h"
#include "tests/reliability/forked.h"
#include "tests/test_util.h"

namespace kiln {
namespace {

using reliability::ChildResult;
using reliability::proc_status_kib;
using reliability::run_in_child;
using reliability::write_all;

constexpr double kMaxWallMs = 1000;
constexpr long kMaxGrowthKib = 64 * 1024;
// The child is killed past this, so a loader that hangs fails the case instead of the run.
constexpr double kChildTimeoutS = 20;

// ---- writing hostile files ------------------------------------------------------------------

// Deterministic filler bytes (not all text, not all zero).
std::string garbage(size_t n, uint64_t seed) {
    std::string out(n, '\0');
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out[i] = static_cast<char>(x >> 24);
    }
    return out;
}

void put_be(std::string* out, uint64_t v, int n) {
    for (int i = n - 1; i >= 0; --i)
        out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put_le(std::string* out, uint64_t v, int n) {
    for (int i = 0; i < n; ++i)
        out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

bool write_file(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return out.good();
}

bool write_gz(const std::string& path, const std::string& bytes) {
    gzFile gz = gzopen(path.c_str(), "wb");
    if (gz == nullptr)
        return false;
    const bool ok = gzwrite(gz, bytes.data(), static_cast<unsigned>(bytes.size())) ==
                    static_cast<int>(bytes.size());
    return gzclose(gz) == Z_OK && ok;
}

// An NPY preamble (magic, version, header length as given) followed by `rest`, so that the
// length field can lie about the header.
std::string npy_raw(int major, uint64_t header_len, const std::string& rest) {
    std::string out("\x93NUMPY", 6);
    out.push_back(static_cast<char>(major));
    out.push_back(0);
    put_le(&out, header_len, major == 1 ? 2 : 4);
    return out + rest;
}

// A well-formed NPY 1.0 header declaring `shape` of `descr`, with no data after it.
std::string npy_header_only(const std::string& descr, const std::string& shape) {
    std::string dict =
        "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
    dict.append((64 - (10 + dict.size() + 1) % 64) % 64, ' ');
    dict += '\n';
    return npy_raw(1, dict.size(), dict);
}

std::string idx_header(uint8_t dtype, const std::vector<uint32_t>& dims) {
    std::string out;
    out.push_back(0);
    out.push_back(0);
    out.push_back(static_cast<char>(dtype));
    out.push_back(static_cast<char>(dims.size()));
    for (uint32_t d : dims)
        put_be(&out, d, 4);
    return out;
}

// Writes a file of many lines or one long one without holding it in memory: `first`, then
// `filler` repeated until `bytes` are written.
bool write_repeated(const std::string& path, const std::string& first, const std::string& filler,
                    size_t bytes) {
    std::string block;
    while (block.size() < (size_t{64} << 10))
        block += filler;
    std::ofstream out(path, std::ios::binary);
    out << first;
    for (size_t done = first.size(); done < bytes; done += block.size())
        out.write(block.data(), static_cast<std::streamsize>(block.size()));
    return out.good();
}

// HDF5 dataset layouts for make_h5_dataset.
enum class Layout { kChunkedDeflate, kContiguous };

// Creates (or replaces) dataset `name` in the open file with the given dims, written by HDF5
// itself. Chunked datasets get deflate; `write_one_chunk` stores a first chunk of values, so the
// dataset really has stored bytes (a compression ratio to judge rather than nothing at all).
bool make_h5_dataset(hid_t file, const std::string& name, const std::vector<hsize_t>& dims,
                     hid_t type, Layout layout, bool write_one_chunk = false) {
    if (H5Lexists(file, name.c_str(), H5P_DEFAULT) > 0 &&
        H5Ldelete(file, name.c_str(), H5P_DEFAULT) < 0) {
        return false;
    }
    const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
    const hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    std::vector<hsize_t> chunk(dims.size(), 1);
    chunk.back() = std::min<hsize_t>(dims.back(), 1 << 14);
    if (layout == Layout::kChunkedDeflate) {
        H5Pset_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data());
        H5Pset_deflate(dcpl, 6);
    }
    const hid_t set = H5Dcreate2(file, name.c_str(), type, space, lcpl, dcpl, H5P_DEFAULT);
    bool ok = set >= 0;
    if (ok && write_one_chunk) {
        std::vector<hsize_t> start(dims.size(), 0);
        const hid_t memspace =
            H5Screate_simple(static_cast<int>(chunk.size()), chunk.data(), nullptr);
        H5Sselect_hyperslab(space, H5S_SELECT_SET, start.data(), nullptr, chunk.data(), nullptr);
        size_t n = 1;
        for (hsize_t c : chunk)
            n *= c;
        const std::vector<float> values(n, 0.5f);
        ok = H5Dwrite(set, H5T_NATIVE_FLOAT, memspace, space, H5P_DEFAULT, values.data()) >= 0;
        H5Sclose(memspace);
    }
    if (set >= 0)
        H5Dclose(set);
    H5Pclose(dcpl);
    H5Pclose(lcpl);
    H5Sclose(space);
    return ok;
}

bool write_h5(const std::string& path, const std::function<bool(hid_t)>& fill) {
    const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0)
        return false;
    const bool ok = fill(file);
    return H5Fclose(file) >= 0 && ok;
}

// Opens a file kiln wrote and changes it with `edit`.
bool edit_h5(const std::string& path, const std::function<bool(hid_t)>& edit) {
    const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    if (file < 0)
        return false;
    const bool ok = edit(file);
    return H5Fclose(file) >= 0 && ok;
}

// A valid checkpoint of a small model (Dense(4) on 3 inputs, Dense(2)), with Adam's state,
// written by kiln::save_checkpoint without building a model (no threads in this process).
bool write_small_checkpoint(const std::string& path) {
    const char* json = R"({"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [null, 3], "name": "input"}},
        {"class_name": "Dense", "config": {"name": "dense", "units": 4, "activation": "relu"}},
        {"class_name": "Dense", "config": {"name": "dense_1", "units": 2,
                                           "activation": "softmax"}}]}})";
    SavedModel model;
    if (!model_config_from_json(json, &model.config).is_ok())
        return false;
    model.weights = {
        {"input", {}},
        {"dense",
         {{"kernel", {3, 4}, testing::random_values(12, 1)},
          {"bias", {4}, testing::random_values(4, 2)}}},
        {"dense_1",
         {{"kernel", {4, 2}, testing::random_values(8, 3)},
          {"bias", {2}, testing::random_values(2, 4)}}},
    };
    TrainingState state;
    state.epoch = 1;
    state.step = 4;
    state.learning_rate = 0.001;
    state.optimizer = "Adam";
    state.optimizer_slots = 2;
    state.optimizer_state = testing::random_values(2 * 26, 5);
    state.history_epochs = {0};
    state.history = {{"loss", {0.5}}};
    return save_checkpoint(path, model, is_weights_file_name(path), &state).is_ok();
}

std::string model_json(const std::string& input_shape, const std::string& layers) {
    return R"({"class_name": "Sequential", "config": {"name": "bomb", "layers": [)"
           R"({"class_name": "InputLayer", "config": {"batch_input_shape": [null, )" +
           input_shape + R"(], "name": "input"}}, )" + layers + "]}}";
}

std::string dense_json(const std::string& name, const std::string& units) {
    return R"({"class_name": "Dense", "config": {"name": ")" + name + R"(", "units": )" + units +
           R"(, "activation": "relu"}})";
}

std::string conv_json(const std::string& filters, const std::string& kernel,
                      const std::string& padding) {
    return R"({"class_name": "Conv2D", "config": {"name": "conv2d", "filters": )" + filters +
           R"(, "kernel_size": )" + kernel + R"(, "padding": ")" + padding + R"("}})";
}

// ---- loading, in the child ------------------------------------------------------------------

struct Outcome {
    bool rejected = false;
    std::string message;
};

Outcome from_status(const Status& s) {
    return {!s.is_ok(), s.is_ok() ? "loaded" : s.message()};
}

// A model description is rejected when reading it fails, or when building and compiling the
// model it describes (which allocates the parameters) throws.
Outcome load_model(const std::string& path) {
    ModelConfig config;
    Status s = load_model_config(path, &config);
    if (!s.is_ok())
        return from_status(s);
    try {
        Sequential model(config);
        CompileOptions options;
        options.device = DeviceChoice::kCpu;
        options.log = nullptr;
        model.compile(optimizers::Adam(), losses::MeanSquaredError(), {}, options);
    } catch (const std::exception& e) {
        return {true, std::string("building the model: ") + e.what()};
    }
    return {false, "loaded and compiled"};
}

struct Case {
    std::string name;
    std::string path;    // the file the message must name
    std::string reason;  // a word the message must contain: the check that refused it
    std::function<Outcome()> load;
};

struct Measured {
    bool rejected = false;
    bool names_file = false;
    bool names_reason = false;
    double wall_ms = 0;
    double growth_mib = 0;     // peak resident set over the level before the load
    double vm_growth_mib = 0;  // peak virtual size over the level before the load (for reading)
    std::string message;
    std::string failure;  // why the case failed, empty when it passed
};

Measured measure(const Case& c) {
    const ChildResult r = run_in_child(
        [&](int fd) {
            const long hwm = reliability::reset_peak_rss();
            const long peak = proc_status_kib("VmPeak");
            const Outcome o = c.load();
            const long hwm_after = proc_status_kib("VmHWM");
            const long peak_after = proc_status_kib("VmPeak");
            write_all(fd, std::to_string(hwm) + " " + std::to_string(hwm_after) + " " +
                              std::to_string(peak) + " " + std::to_string(peak_after) + " " +
                              (o.rejected ? "1" : "0") + "\n" + o.message);
            return 0;
        },
        kChildTimeoutS);
    Measured m;
    m.wall_ms = r.wall_ms;
    std::istringstream in(r.output);
    long hwm = 0, hwm_after = 0, peak = 0, peak_after = 0;
    int rejected = 0;
    if (!r.exited || r.exit_code != 0 ||
        !(in >> hwm >> hwm_after >> peak >> peak_after >> rejected)) {
        m.failure = "the child " + r.how() + "; it wrote: " + r.output;
        return m;
    }
    in.get();  // the newline
    std::getline(in, m.message, '\0');
    m.rejected = rejected != 0;
    // The child's own reading and the kernel's account at its exit; either may be the higher.
    const long growth_kib = std::max(r.maxrss_kib, hwm_after) - hwm;
    m.growth_mib = double(growth_kib) / 1024.0;
    m.vm_growth_mib = double(peak_after - peak) / 1024.0;
    m.names_file = m.message.find(c.path) != std::string::npos;
    m.names_reason = m.message.find(c.reason) != std::string::npos;
    if (!m.rejected) {
        m.failure = "accepted";
    } else if (!m.names_file) {
        m.failure = "the message does not name the file";
    } else if (!m.names_reason) {
        m.failure = "the message does not say '" + c.reason + "'";
    } else if (m.wall_ms >= kMaxWallMs) {
        m.failure = "took " + std::to_string(m.wall_ms) + " ms";
    } else if (growth_kib >= kMaxGrowthKib) {
        m.failure = "resident memory grew by " + std::to_string(m.growth_mib) + " MiB";
    }
    return m;
}

// ---- the cases ------------------------------------------------------------------------------

class HugeDeclarations : public ::testing::Test {
  protected:
    void SetUp() override {
        // HDF5's own error printing would only repeat what the Status says.
        H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    }

    // Adds a case whose file `write` creates at `path`.
    void add(const std::string& name, const std::string& file, bool written,
             const std::string& reason, std::function<Outcome(const std::string&)> load) {
        ASSERT_TRUE(written) << "could not write the file for case " << name;
        cases_.push_back({name, file, reason, [load, file] { return load(file); }});
    }

    std::string file(const std::string& name) const { return dir_.file(name); }

    testing::TempDir dir_;
    std::vector<Case> cases_;
};

Outcome npy(const std::string& p) {
    data::Array a;
    return from_status(data::load_npy(p, &a));
}
Outcome idx(const std::string& p) {
    data::Array a;
    return from_status(data::load_idx(p, &a));
}
Outcome csv(const std::string& p) {
    data::Array x, y;
    return from_status(data::load_csv(p, data::CsvOptions(), &x, &y));
}
Outcome h5_x(const std::string& p) {
    data::Array a;
    return from_status(data::load_hdf5_array(p, "/x", &a));
}
Outcome dataset(const std::string& p) {
    data::Dataset d;
    return from_status(data::load_dataset(p, data::DatasetOptions(), &d));
}
Outcome checkpoint(const std::string& p) {
    CheckpointContents c;
    return from_status(load_checkpoint(p, &c));
}

TEST_F(HugeDeclarations, RejectedFastAndBounded) {
    const uint64_t k2e31 = uint64_t{1} << 31;

    // NPY
    std::string f = file("shape_2e40_f8.npy");
    add("npy shape (2^40,) float64, no data", f,
        write_file(f, npy_header_only("<f8", "(1099511627776,)")), "size mismatch", npy);
    f = file("header_len_2e31.npy");
    add("npy v2 header length 2^31-16, garbage", f,
        write_file(f, npy_raw(2, k2e31 - 16, garbage(4096, 1))), "header length", npy);
    f = file("header_len_65535_short.npy");
    add("npy v1 header length 65535, 4 KiB of garbage", f,
        write_file(f, npy_raw(1, 65535, garbage(4096, 2))), "truncated", npy);
    f = file("header_len_65535_garbage.npy");
    add("npy v1 header length 65535 of garbage", f,
        write_file(f, npy_raw(1, 65535, garbage(65535 + 64, 3))), "header", npy);
    f = file("shape_2e31x2e31.npy");
    add("npy shape (2^31, 2^31) float32", f,
        write_file(f, npy_header_only("<f4", "(2147483648, 2147483648)")), "too large", npy);
    f = file("shape_2e32x2e32.npy");
    add("npy shape (2^32, 2^32) uint8 (count overflows)", f,
        write_file(f, npy_header_only("|u1", "(4294967296, 4294967296)")), "overflows", npy);

    // IDX
    f = file("dims_2e31x2e31.idx");
    add("idx dims 2^31 x 2^31", f,
        write_file(f, idx_header(0x08, {uint32_t(k2e31), uint32_t(k2e31)}) + garbage(64, 4)),
        "too large", idx);
    f = file("dims_overflow.idx");
    add("idx dims (2^32-1)^3 (count overflows int64)", f,
        write_file(f, idx_header(0x0E, {0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu})), "overflow", idx);
    f = file("declares_2e40-idx1-ubyte.gz");
    add("idx.gz declaring 2^40 bytes (99-byte file)", f,
        write_gz(f, idx_header(0x08, {1u << 20, 1u << 20}) + std::string(4096, '\0')), "inflate",
        idx);
    f = file("declares_1gib-idx1-ubyte.gz");
    add("idx.gz declaring 1 GiB, holding 1.1 MiB", f,
        write_gz(f, idx_header(0x08, {1u << 20, 1u << 10}) + garbage(1100 * 1024, 5)), "truncated",
        idx);

    // HDF5 datasets, written by HDF5
    f = file("chunked_2e40.h5");
    add("h5 /x (2^40,) float64, chunked + deflate", f,
        write_h5(f,
                 [](hid_t h) {
                     return make_h5_dataset(h, "x", {hsize_t(1) << 40}, H5T_IEEE_F64LE,
                                            Layout::kChunkedDeflate);
                 }),
        "declares more than", h5_x);
    f = file("chunked_2e31x2e31.h5");
    add("h5 /x (2^31, 2^31) float32, chunked + deflate", f,
        write_h5(f,
                 [&](hid_t h) {
                     return make_h5_dataset(h, "x", {k2e31, k2e31}, H5T_IEEE_F32LE,
                                            Layout::kChunkedDeflate);
                 }),
        "declares more than", h5_x);
    f = file("chunked_2e30_one_chunk.h5");
    add("h5 /x (2^30,) float32, chunked + deflate, one chunk stored", f,
        write_h5(f,
                 [](hid_t h) {
                     return make_h5_dataset(h, "x", {hsize_t(1) << 30}, H5T_IEEE_F32LE,
                                            Layout::kChunkedDeflate, /*write_one_chunk=*/true);
                 }),
        "compression ratio", h5_x);
    f = file("contiguous_2e28_unwritten.h5");
    add("h5 /x (2^28,) float32, contiguous, never written", f,
        write_h5(f,
                 [](hid_t h) {
                     return make_h5_dataset(h, "x", {hsize_t(1) << 28}, H5T_IEEE_F32LE,
                                            Layout::kContiguous);
                 }),
        "never written", h5_x);
    f = file("dataset_x_train_2e40.h5");
    add("h5 dataset file, x_train (2^40,) chunked (load_dataset)", f,
        write_h5(f,
                 [](hid_t h) {
                     return make_h5_dataset(h, "x_train", {hsize_t(1) << 40}, H5T_IEEE_F32LE,
                                            Layout::kChunkedDeflate) &&
                            make_h5_dataset(h, "y_train", {4}, H5T_IEEE_F32LE, Layout::kContiguous);
                 }),
        "declares more than", dataset);

    // kiln checkpoints with one dataset replaced by a huge declaration
    const std::string kernel = "/model_weights/dense/dense/kernel:0";
    const auto huge_kernel = [&](const std::string& name, std::vector<hsize_t> dims, Layout layout,
                                 const std::string& reason, const std::string& target = "") {
        const std::string p = file(name);
        const std::string dataset_path = target.empty() ? kernel : target;
        add("checkpoint " + name + ": " + dataset_path, p,
            write_small_checkpoint(p) && edit_h5(p,
                                                 [&](hid_t h) {
                                                     return make_h5_dataset(h, dataset_path, dims,
                                                                            H5T_IEEE_F32LE, layout);
                                                 }),
            reason, checkpoint);
    };
    huge_kernel("kernel_2e20x2e20.h5", {1u << 20, 1u << 20}, Layout::kChunkedDeflate,
                "more elements");
    huge_kernel("kernel_2e15x2e15_chunked.h5", {1u << 15, 1u << 15}, Layout::kChunkedDeflate,
                "compression ratio");
    huge_kernel("kernel_2e15x2e15_contiguous.h5", {1u << 15, 1u << 15}, Layout::kContiguous,
                "never written");
    huge_kernel("optimizer_2x2e29.h5", {2, 1u << 29}, Layout::kChunkedDeflate, "compression ratio",
                "/kiln/optimizer_state");
    huge_kernel("vars_2e15x2e15.weights.h5", {1u << 15, 1u << 15}, Layout::kChunkedDeflate,
                "compression ratio", "/layers/dense/vars/0");

    // CSV. The long run uses the sizes of reliability.md's test 7: 1 GiB after the quote,
    // 10^7 columns (whose 20 MB row is then refused for its length before its count).
    const bool full = reliability::long_mode();
    const size_t quoted_mib = full ? 1024 : 48;
    const int columns = full ? 10000000 : 1000000;
    const std::string wide_reason = full ? "longer than" : "columns";
    f = file("unmatched_quote_one_line.csv");
    add("csv unmatched quote, then " + std::to_string(quoted_mib) + " MiB without a line end", f,
        write_repeated(f, "label,a,b\n1,\"2,", "0123456789abcdef", quoted_mib << 20), "longer than",
        csv);
    f = file("unmatched_quote_rows.csv");
    add("csv unmatched quote, then 16 MiB of rows", f,
        write_repeated(f, "label,a,b\n1,\"2,3\n", "1,2,3\n", size_t{16} << 20), "unterminated",
        csv);
    std::string wide;
    for (int i = 0; i <= columns; ++i)
        wide += i ? ",0" : "0";
    const std::string count = full ? "10^7+1" : "10^6+1";
    f = file("wide_data.csv");
    add("csv " + count + " columns (a data row)", f, write_file(f, wide + "\n" + wide + "\n"),
        wide_reason, csv);
    std::string wide_header;
    for (int i = 0; i <= columns; ++i)
        wide_header += (i ? ",c" : "c") + std::to_string(i);
    f = file("wide_header.csv");
    add("csv " + count + " columns (a header row)", f,
        write_file(f, wide_header + "\n" + wide + "\n"), wide_reason, csv);
    wide.clear();
    wide.shrink_to_fit();
    wide_header.clear();
    wide_header.shrink_to_fit();

    // model descriptions
    f = file("dense_2e40.json");
    add("model Dense(units=2^40)", f,
        write_file(f, model_json("784", dense_json("dense", "1099511627776"))), "parameters",
        load_model);
    f = file("dense_chain.json");
    add("model Dense(65536) -> Dense(65536)", f,
        write_file(f, model_json("784", dense_json("dense", "65536") + ", " +
                                            dense_json("dense_1", "65536"))),
        "parameters", load_model);
    f = file("input_2e40.json");
    add("model input (2^40,) -> Dense(10)", f,
        write_file(f, model_json("1099511627776", dense_json("dense", "10"))), "elements",
        load_model);
    f = file("conv_filters_2e40.json");
    add("model Conv2D(filters=2^40)", f,
        write_file(f, model_json("28, 28, 1", conv_json("1099511627776", "[3, 3]", "same"))),
        "parameters", load_model);
    f = file("conv_kernel_2e20.json");
    add("model Conv2D(kernel_size=2^20 x 2^20, padding same)", f,
        write_file(f, model_json("28, 28, 1", conv_json("64", "[1048576, 1048576]", "same"))),
        "parameters", load_model);

    // Load each in its own child and measure.
    int rejected = 0, failed = 0;
    double max_ms = 0, max_growth = 0;
    for (const Case& c : cases_) {
        const Measured m = measure(c);
        rejected += m.rejected ? 1 : 0;
        max_ms = std::max(max_ms, m.wall_ms);
        max_growth = std::max(max_growth, m.growth_mib);
        std::string shown = m.message.substr(0, 240);
        std::printf("  %-62s %s %6.1f ms %6.1f MiB (vm %+.1f MiB): %s\n", c.name.c_str(),
                    m.failure.empty() ? "ok  " : "FAIL", m.wall_ms, m.growth_mib, m.vm_growth_mib,
                    shown.c_str());
        if (!m.failure.empty()) {
            ++failed;
            ADD_FAILURE() << c.name << " (" << c.path << "): " << m.failure
                          << "; message: " << m.message;
        }
    }
    std::printf(
        "reliability: huge declarations: %zu files, %d rejected, max %.0f ms, "
        "max %.1f MiB growth\n",
        cases_.size(), rejected, max_ms, max_growth);
    EXPECT_EQ(failed, 0);
}

}  // namespace
}  // namespace kiln
