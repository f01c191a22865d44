// Reliability test 5 (shared/reference/reliability.md, section 7): a corruption and truncation
// corpus for the checkpoint loader.
//
// A small model (Dense, BatchNormalization, Dropout, Dense, Dense; Adam) is fit for one epoch
// and saved twice by kiln: a full model file with its training state (`model.save`) and a Keras 3
// weights file (`model.save_weights`). From those two files the test derives mutants: truncation
// at every 4 KiB boundary and at random offsets, single-byte flips in the first 4 KiB
// (superblock and early headers), in the datasets' data and anywhere, zeroed ranges, a one-byte
// file and an empty file. Each mutant is loaded three ways: load_checkpoint (every weight, the
// config and the training state compared with the original's, bit for bit), and into a model
// with Sequential::load_weights and Sequential::restore_training_state (get_weights() compared
// bit for bit, and the restored step, epoch, learning rate and state).
//
// Each mutant ends as one of
//   rejected           an error Status (good)
//   loaded bit-exact   everything equal to the original (good: a byte that nothing reads
//                      changed; since kiln files carry a checksum of their HDF5 structure,
//                      such bytes, free space and padding, are refused as well)
//   silently different loaded without an error but something differs (BAD)
//   crash              the process died (BAD)      hang   more than 5 s (BAD)
//   threw              an exception where a Status was promised (BAD)
// Mutants run in forked children, ~100 per child, with an alarm per mutant; a batch that dies
// is re-run one mutant per child to find the culprit. The default corpus is 1000 mutants,
// KILN_RELIABILITY_LONG=1 makes it 10,000 (KILN_DAMAGED_MUTANT=<index> runs one mutant in the
// test's own process, to reproduce it under a debugger; KILN_DAMAGED_NO_TRAILER=1 mutates the
// files without their checksum trailer). The suite line reads
//   reliability: damaged checkpoints: N mutants, 0 crashes, 0 hangs, 0 silently different, ...
//
// A second test removes the files' checksum trailer, as an h5py edit or h5repack would, and
// changes each attribute in turn (the epoch, the step, the learning rate, the configs, ...):
// the attribute checksums in /kiln must refuse every change, and a file of an older kiln (no
// trailer, no attribute checksums) must still load.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <hdf5.h>
#include <nlohmann/json.hpp>

#include "io/hdf5_util.h"
#include "kiln/kiln.h"
#include "tests/reliability/forked.h"
#include "tests/test_util.h"

namespace kiln {
namespace {

using reliability::ChildResult;
using reliability::run_in_child;
using reliability::write_all;

constexpr unsigned kHangSeconds = 5;
constexpr size_t kBatch = 100;
constexpr size_t kDefaultMutants = 1000;
constexpr size_t kLongMutants = 10000;
constexpr uint64_t kSeed = 20240611;

// ---- the original files ---------------------------------------------------------------------

CompileOptions cpu() {
    CompileOptions o;
    o.device = DeviceChoice::kCpu;
    o.seed = 7;
    o.log = nullptr;
    return o;
}

std::unique_ptr<Sequential> make_model() {
    auto m = std::make_unique<Sequential>(
        std::vector<LayerPtr>{layers::Dense(16, "relu"), layers::BatchNormalization(),
                              layers::Dropout(0.25f), layers::Dense(8, "tanh"),
                              layers::Dense(3, "softmax")},
        layers::Input({6}));
    m->compile(optimizers::Adam(0.01f), losses::SparseCategoricalCrossentropy(), {"accuracy"},
               cpu());
    return m;
}

struct Original {
    std::string path;
    bool weights_only = false;
    std::string bytes;
    // [offset, offset + size) of every contiguous dataset's data.
    std::vector<std::pair<uint64_t, uint64_t>> data_regions;
};

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

bool write_file(const std::string& path, const char* data, size_t n) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr)
        return false;
    const bool ok = (n == 0 || std::fwrite(data, 1, n, f) == n);
    return std::fclose(f) == 0 && ok;
}

// Where the datasets' values lie in the file, found with the HDF5 C API from the dataset names
// that kiln's checksums record.
std::vector<std::pair<uint64_t, uint64_t>> data_regions(const std::string& path) {
    std::vector<std::pair<uint64_t, uint64_t>> regions;
    CheckpointInfo info;
    if (!inspect_checkpoint(path, &info).is_ok())
        return regions;
    const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0)
        return regions;
    for (const ChecksumResult& c : info.checksums) {
        if (H5Lexists(file, c.dataset.c_str(), H5P_DEFAULT) <= 0)
            continue;  // not a dataset path (an attribute's entry)
        const hid_t set = H5Dopen2(file, c.dataset.c_str(), H5P_DEFAULT);
        if (set < 0)
            continue;
        const haddr_t offset = H5Dget_offset(set);
        const hsize_t size = H5Dget_storage_size(set);
        if (offset != HADDR_UNDEF && size > 0)
            regions.emplace_back(offset, size);
        H5Dclose(set);
    }
    H5Fclose(file);
    return regions;
}

// The HDF5 file inside a kiln file: everything before its checksum trailer.
std::string without_trailer(const std::string& bytes) {
    constexpr char kMagic[8] = {'\x89', 'K', 'I', 'L', 'N', 'S', 'U', 'M'};
    if (bytes.size() < 32 || bytes.compare(bytes.size() - 32, 8, kMagic, 8) != 0)
        return bytes;
    uint64_t hdf5_bytes = 0;
    for (int i = 7; i >= 0; --i)
        hdf5_bytes = (hdf5_bytes << 8) | static_cast<uint8_t>(bytes[bytes.size() - 24 + i]);
    return bytes.substr(0, std::min<uint64_t>(hdf5_bytes, bytes.size()));
}

// Fits the model for an epoch and saves it both ways, in a child: training starts kiln's thread
// pool, which a process that forks afterwards must not have. Fails the calling test on error.
void write_originals(const std::string& dir, std::vector<Original>* out, bool* ok) {
    *ok = false;
    std::vector<Original> originals(2);
    originals[0].path = dir + "/model.h5";
    originals[1].path = dir + "/model.weights.h5";
    originals[1].weights_only = true;
    const ChildResult made = run_in_child(
        [&](int fd) {
            std::unique_ptr<Sequential> model = make_model();
            const data::Array x = testing::make_array({64, 6}, testing::random_values(384, 3));
            const data::Array y = testing::random_labels(64, 3, 4);
            FitArgs args;
            args.epochs = 1;
            args.batch_size = 16;
            args.verbose = 0;
            model->fit(x, y, args);
            Status s = model->save(originals[0].path);
            if (s.is_ok())
                s = model->save_weights(originals[1].path);
            write_all(fd, s.message());
            return s.is_ok() ? 0 : 1;
        },
        120);
    ASSERT_TRUE(made.exited && made.exit_code == 0)
        << "writing the originals: " << made.how() << ": " << made.output;
    for (Original& o : originals) {
        o.bytes = read_file(o.path);
        o.data_regions = data_regions(o.path);
        ASSERT_GT(o.bytes.size(), 4096u) << o.path;
        ASSERT_FALSE(o.data_regions.empty()) << o.path << ": no dataset values found";
    }
    *out = std::move(originals);
    *ok = true;
}

bool write_originals(const std::string& dir, std::vector<Original>* out) {
    bool ok = false;
    write_originals(dir, out, &ok);
    return ok;
}

// ---- mutants --------------------------------------------------------------------------------

enum class Op { kTruncate, kFlip, kZero };

// Where a mutation was aimed, for the breakdown.
enum class Aim { kBoundary, kRandomCut, kHeader, kData, kAnywhere, kZeroRange, kOneByte };
constexpr const char* kAimNames[] = {"truncated at a 4 KiB boundary",
                                     "truncated at a random offset",
                                     "byte flipped in the first 4 KiB",
                                     "byte flipped in dataset values",
                                     "byte flipped anywhere",
                                     "range zeroed",
                                     "one-byte file"};

struct Mutant {
    int file = 0;  // index into the originals
    Op op = Op::kFlip;
    Aim aim = Aim::kAnywhere;
    uint64_t offset = 0;  // truncate: the new size
    uint64_t length = 0;  // zero: how many bytes
    uint8_t mask = 0;     // flip: XORed into the byte

    std::string describe(const std::vector<Original>& originals) const {
        const std::string name = originals[size_t(file)].weights_only ? "weights" : "model";
        char text[160];
        switch (op) {
            case Op::kTruncate:
                std::snprintf(text, sizeof(text), "%s file truncated to %llu bytes", name.c_str(),
                              static_cast<unsigned long long>(offset));
                break;
            case Op::kFlip:
                std::snprintf(text, sizeof(text), "%s file byte %llu ^= 0x%02x", name.c_str(),
                              static_cast<unsigned long long>(offset), mask);
                break;
            case Op::kZero:
                std::snprintf(text, sizeof(text), "%s file bytes [%llu, %llu) zeroed", name.c_str(),
                              static_cast<unsigned long long>(offset),
                              static_cast<unsigned long long>(offset + length));
                break;
        }
        return text;
    }

    std::string apply(const std::string& original) const {
        std::string bytes = original;
        switch (op) {
            case Op::kTruncate:
                bytes.resize(std::min<uint64_t>(offset, bytes.size()));
                break;
            case Op::kFlip:
                bytes[offset] = static_cast<char>(static_cast<uint8_t>(bytes[offset]) ^ mask);
                break;
            case Op::kZero:
                std::fill(bytes.begin() + long(offset), bytes.begin() + long(offset + length),
                          '\0');
                break;
        }
        return bytes;
    }
};

// A small deterministic generator (splitmix64), so that a failing mutant can be named by its
// index and reproduced.
class Rng {
  public:
    explicit Rng(uint64_t seed) : state_(seed) {}
    uint64_t next() {
        uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    uint64_t below(uint64_t n) { return n ? next() % n : 0; }

  private:
    uint64_t state_;
};

// The corpus: every 4 KiB boundary, the one-byte file of each original, then random mutants
// of the other kinds up to `count`, alternating between the files.
std::vector<Mutant> make_mutants(const std::vector<Original>& originals, size_t count) {
    std::vector<Mutant> mutants;
    for (int f = 0; f < int(originals.size()); ++f) {
        const uint64_t size = originals[size_t(f)].bytes.size();
        for (uint64_t cut = 0; cut < size; cut += 4096) {
            Mutant m;
            m.file = f;
            m.op = Op::kTruncate;
            m.aim = Aim::kBoundary;  // cut 0 is the empty file
            m.offset = cut;
            mutants.push_back(m);
        }
        Mutant one;
        one.file = f;
        one.op = Op::kTruncate;
        one.aim = Aim::kOneByte;
        one.offset = 1;
        mutants.push_back(one);
    }
    Rng rng(kSeed);
    while (mutants.size() < count) {
        Mutant m;
        m.file = int(mutants.size() % originals.size());
        const Original& o = originals[size_t(m.file)];
        const uint64_t size = o.bytes.size();
        const uint64_t pick = rng.below(100);
        if (pick < 15) {
            m.op = Op::kTruncate;
            m.aim = Aim::kRandomCut;
            m.offset = 1 + rng.below(size - 1);
        } else if (pick < 45) {
            m.op = Op::kFlip;
            m.aim = Aim::kHeader;
            m.offset = rng.below(std::min<uint64_t>(size, 4096));
        } else if (pick < 70 && !o.data_regions.empty()) {
            m.op = Op::kFlip;
            m.aim = Aim::kData;
            const auto& region = o.data_regions[rng.below(o.data_regions.size())];
            m.offset = region.first + rng.below(region.second);
        } else if (pick < 85) {
            m.op = Op::kFlip;
            m.aim = Aim::kAnywhere;
            m.offset = rng.below(size);
        } else {
            m.op = Op::kZero;
            m.aim = Aim::kZeroRange;
            static constexpr uint64_t kLengths[] = {1, 2, 4, 8, 16, 64, 512, 4096};
            m.length = kLengths[rng.below(8)];
            m.offset = rng.below(size);
            m.length = std::min(m.length, size - m.offset);
        }
        if (m.op == Op::kFlip) {
            // One bit most of the time (what storage faults look like), any pattern otherwise.
            m.mask = rng.below(2) ? uint8_t(1u << rng.below(8)) : uint8_t(1 + rng.below(255));
        }
        // A zeroing that changes nothing is not a mutant.
        if (m.op == Op::kZero &&
            std::all_of(o.bytes.begin() + long(m.offset),
                        o.bytes.begin() + long(m.offset + m.length), [](char c) { return !c; })) {
            continue;
        }
        mutants.push_back(m);
    }
    return mutants;
}

// ---- comparing what was loaded with the original --------------------------------------------

bool same_bits(const void* a, const void* b, size_t n) {
    return n == 0 || std::memcmp(a, b, n) == 0;
}

// The first difference between two lists of layer weights, or "".
std::string diff_weights(const std::vector<LayerWeights>& a, const std::vector<LayerWeights>& b,
                         const std::string& what) {
    if (a.size() != b.size())
        return what + ": " + std::to_string(a.size()) + " layers vs " + std::to_string(b.size());
    for (size_t i = 0; i < a.size(); ++i) {
        if (a[i].layer_name != b[i].layer_name)
            return what + ": layer " + a[i].layer_name + " vs " + b[i].layer_name;
        if (a[i].weights.size() != b[i].weights.size())
            return what + ": layer " + a[i].layer_name + " weight count";
        for (size_t j = 0; j < a[i].weights.size(); ++j) {
            const NamedArray& x = a[i].weights[j];
            const NamedArray& y = b[i].weights[j];
            if (x.name != y.name || x.shape != y.shape || x.values.size() != y.values.size() ||
                !same_bits(x.values.data(), y.values.data(), x.values.size() * sizeof(float))) {
                return what + ": layer " + a[i].layer_name + " weight " + x.name + " differs";
            }
        }
    }
    return "";
}

std::string diff_state(const TrainingState& a, const TrainingState& b) {
    if (a.kiln_version != b.kiln_version)
        return "kiln_version";
    if (a.resumable != b.resumable)
        return "resumable";
    if (a.epoch != b.epoch)
        return "epoch " + std::to_string(a.epoch) + " vs " + std::to_string(b.epoch);
    if (a.batch != b.batch)
        return "batch";
    if (a.step != b.step)
        return "step " + std::to_string(a.step) + " vs " + std::to_string(b.step);
    if (a.seed != b.seed)
        return "seed";
    if (!same_bits(&a.learning_rate, &b.learning_rate, sizeof(double)))
        return "learning_rate";
    if (a.optimizer != b.optimizer)
        return "optimizer '" + a.optimizer + "'";
    if (a.optimizer_slots != b.optimizer_slots ||
        a.optimizer_state.size() != b.optimizer_state.size() ||
        !same_bits(a.optimizer_state.data(), b.optimizer_state.data(),
                   a.optimizer_state.size() * sizeof(float))) {
        return "optimizer_state";
    }
    if (a.callbacks_state_json != b.callbacks_state_json)
        return "callbacks_state";
    if (a.fit_args_json != b.fit_args_json)
        return "fit_args";
    if (a.history_epochs != b.history_epochs)
        return "history_epoch";
    if (a.history.size() != b.history.size())
        return "history keys";
    for (size_t i = 0; i < a.history.size(); ++i) {
        if (a.history[i].first != b.history[i].first ||
            a.history[i].second.size() != b.history[i].second.size() ||
            !same_bits(a.history[i].second.data(), b.history[i].second.data(),
                       a.history[i].second.size() * sizeof(double))) {
            return "history " + a.history[i].first;
        }
    }
    return "";
}

std::string diff_contents(const CheckpointContents& a, const CheckpointContents& b) {
    if (a.weights_only != b.weights_only || a.has_config != b.has_config)
        return "file kind";
    if (model_config_to_json(a.model.config) != model_config_to_json(b.model.config))
        return "model config";
    if (a.model.training_config_json != b.model.training_config_json)
        return "training config";
    std::string d = diff_weights(a.model.weights, b.model.weights, "weights");
    if (d.empty())
        d = diff_weights(a.keras_layers, b.keras_layers, "weights-file layers");
    if (!d.empty())
        return d;
    if (a.training.has_value() != b.training.has_value())
        return "training state present";
    if (a.training) {
        d = diff_state(*a.training, *b.training);
        if (!d.empty())
            return "training state: " + d;
    }
    return "";
}

// ---- running mutants, in a child ------------------------------------------------------------

// What one mutant did, as the child reports it: one line "index class ms detail".
enum Class : char {
    kRejected = 'R',
    kExact = 'E',
    kDifferent = 'D',
    kThrew = 'X',
    kCrash = 'C',  // set by the parent
    kHang = 'H',   // set by the parent
};

struct Reference {
    CheckpointContents contents;
    std::vector<LayerWeights> weights;   // get_weights() after load_weights of the original
    std::vector<LayerWeights> restored;  // after restore_training_state of the original
    int64_t iterations = 0;
    int epochs = 0;
    double learning_rate = 0;
};

// The same weights with every value changed, set before each load so that a load that claims
// success must really have written every value.
std::vector<LayerWeights> scrambled(std::vector<LayerWeights> weights) {
    for (LayerWeights& lw : weights) {
        for (NamedArray& a : lw.weights) {
            for (float& v : a.values)
                v = -v - 1.0f;
        }
    }
    return weights;
}

// Loads one mutant file three ways and classifies it; `detail` says what differed or why it
// was rejected.
char classify(Sequential& model, const Reference& ref, const std::vector<LayerWeights>& scramble,
              const std::string& path, std::string* detail) {
    char result = kExact;
    const auto worse = [&](char c, const std::string& why) {
        // Different beats threw beats rejected beats exact.
        const auto rank = [](char k) {
            return k == kDifferent ? 3 : k == kThrew ? 2 : k == kRejected ? 1 : 0;
        };
        if (rank(c) > rank(result)) {
            result = c;
            *detail = why;
        }
    };
    try {
        CheckpointContents contents;
        Status s = load_checkpoint(path, &contents);
        if (!s.is_ok()) {
            worse(kRejected, s.message());
        } else {
            const std::string d = diff_contents(contents, ref.contents);
            if (!d.empty())
                worse(kDifferent, "load_checkpoint: " + d);
        }
    } catch (const std::exception& e) {
        worse(kThrew, std::string("load_checkpoint threw: ") + e.what());
    }
    try {
        model.set_weights(scramble);
        Status s = model.load_weights(path);
        if (s.is_ok()) {
            const std::string d = diff_weights(model.get_weights(), ref.weights, "get_weights");
            if (!d.empty())
                worse(kDifferent, "load_weights: " + d);
        } else {
            worse(kRejected, s.message());
        }
    } catch (const std::exception& e) {
        worse(kThrew, std::string("load_weights threw: ") + e.what());
    }
    try {
        model.set_weights(scramble);
        TrainingState state;
        Status s = model.restore_training_state(path, &state);
        if (s.is_ok()) {
            std::string d = diff_weights(model.get_weights(), ref.restored, "get_weights");
            if (d.empty() && ref.contents.training)
                d = diff_state(state, *ref.contents.training);
            if (d.empty() &&
                (model.iterations() != ref.iterations || model.epochs_completed() != ref.epochs ||
                 !same_bits(&ref.learning_rate, &state.learning_rate, 8))) {
                d = "step, epoch or learning rate";
            }
            if (!d.empty())
                worse(kDifferent, "restore_training_state: " + d);
        } else {
            worse(kRejected, s.message());
        }
    } catch (const std::exception& e) {
        worse(kThrew, std::string("restore_training_state threw: ") + e.what());
    }
    return result;
}

// The body of one child: builds the model, reads the references from the originals, then runs
// `indices`, writing one line per mutant to `fd` as it finishes. A mutant that runs past
// kHangSeconds ends the child by SIGALRM.
int run_batch(int fd, const std::vector<Original>& originals, const std::vector<Mutant>& mutants,
              const std::vector<size_t>& indices, const std::string& dir) {
    std::unique_ptr<Sequential> model = make_model();
    std::vector<Reference> refs(originals.size());
    for (size_t f = 0; f < originals.size(); ++f) {
        Reference& r = refs[f];
        Status s = load_checkpoint(originals[f].path, &r.contents);
        if (s.is_ok())
            s = model->load_weights(originals[f].path);
        r.weights = model->get_weights();
        if (s.is_ok())
            s = model->restore_training_state(originals[f].path);
        if (!s.is_ok()) {
            write_all(fd, "setup failed: " + s.message() + "\n");
            return 3;
        }
        r.restored = model->get_weights();
        r.iterations = model->iterations();
        r.epochs = model->epochs_completed();
        r.learning_rate = r.contents.training ? r.contents.training->learning_rate : 0;
    }
    const std::vector<LayerWeights> scramble = scrambled(refs[0].weights);

    const std::string stem = dir + "/mutant_" + std::to_string(::getpid());
    for (size_t index : indices) {
        const Mutant& m = mutants[index];
        const Original& o = originals[size_t(m.file)];
        const std::string path = stem + (o.weights_only ? ".weights.h5" : ".h5");
        const std::string bytes = m.apply(o.bytes);
        if (!write_file(path, bytes.data(), bytes.size())) {
            write_all(fd, "cannot write " + path + "\n");
            return 4;
        }
        const auto start = std::chrono::steady_clock::now();
        ::alarm(kHangSeconds);
        std::string detail;
        const char c = classify(*model, refs[size_t(m.file)], scramble, path, &detail);
        ::alarm(0);
        const double ms =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                .count();
        std::replace(detail.begin(), detail.end(), '\n', ' ');
        write_all(fd, std::to_string(index) + " " + c + " " + std::to_string(ms) + " " +
                          detail.substr(0, 400) + "\n");
    }
    std::remove((stem + ".h5").c_str());
    std::remove((stem + ".weights.h5").c_str());
    return 0;
}

// ---- the parent -----------------------------------------------------------------------------

struct Outcome {
    char cls = 0;  // 0: not run to the end
    double ms = 0;
    std::string detail;
};

// Runs `indices` in one child and fills in the outcomes it reported. Returns the child's result
// so the caller can see whether it ended early.
ChildResult run_children(const std::vector<Original>& originals, const std::vector<Mutant>& mutants,
                         const std::vector<size_t>& indices, const std::string& dir,
                         std::vector<Outcome>* outcomes) {
    const double timeout_s = 60.0 + double(indices.size()) * (kHangSeconds + 1);
    ChildResult r = run_in_child(
        [&](int fd) { return run_batch(fd, originals, mutants, indices, dir); }, timeout_s);
    std::istringstream in(r.output);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        size_t index = 0;
        char cls = 0;
        double ms = 0;
        if (!(fields >> index >> cls >> ms) || index >= outcomes->size())
            continue;
        Outcome& o = (*outcomes)[index];
        o.cls = cls;
        o.ms = ms;
        fields.get();
        std::getline(fields, o.detail);
    }
    return r;
}

// Which check refused a file, from its message, for the breakdown.
std::string rejection_reason(const std::string& message) {
    if (message.find("HDF5 structure") != std::string::npos)
        return "structure checksum";
    if (message.find("checksum trailer") != std::string::npos)
        return "trailer";
    if (message.find(": attribute /") != std::string::npos)
        return "attribute checksum";
    if (message.find(": dataset /") != std::string::npos)
        return "dataset checksum";
    return "HDF5 or format checks";
}

class DamagedCheckpoints : public ::testing::Test {
  protected:
    void SetUp() override { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
    testing::TempDir dir_;
};

TEST_F(DamagedCheckpoints, RejectedOrBitExact) {
    const auto start = std::chrono::steady_clock::now();
    const size_t count = reliability::long_mode() ? kLongMutants : kDefaultMutants;

    // 1. The originals. KILN_DAMAGED_NO_TRAILER=1 removes their checksum trailers first, to
    //    see how files without one (an older kiln's) fare: libhdf5 can then crash or hang.
    std::vector<Original> originals;
    ASSERT_TRUE(write_originals(dir_.path(), &originals));
    if (const char* env = std::getenv("KILN_DAMAGED_NO_TRAILER"); env && std::string(env) == "1") {
        for (Original& o : originals) {
            o.bytes = without_trailer(o.bytes);
            ASSERT_TRUE(write_file(o.path, o.bytes.data(), o.bytes.size()));
        }
    }
    for (const Original& o : originals) {
        std::printf("  original %s: %zu bytes, %zu datasets\n", o.path.c_str(), o.bytes.size(),
                    o.data_regions.size());
    }

    // 2. The mutants, in batches of kBatch per child; KILN_DAMAGED_MUTANT=<index> runs that one
    //    in this process instead (for a debugger), printing its line.
    const std::vector<Mutant> mutants = make_mutants(originals, count);
    if (const char* only = std::getenv("KILN_DAMAGED_MUTANT")) {
        const size_t index = std::strtoull(only, nullptr, 10);
        ASSERT_LT(index, mutants.size());
        std::printf("  mutant %zu: %s\n", index, mutants[index].describe(originals).c_str());
        std::fflush(stdout);
        EXPECT_EQ(run_batch(STDOUT_FILENO, originals, mutants, {index}, dir_.path()), 0);
        return;
    }
    std::vector<Outcome> outcomes(mutants.size());
    int batch_crashes = 0;
    for (size_t first = 0; first < mutants.size(); first += kBatch) {
        std::vector<size_t> batch;
        for (size_t i = first; i < std::min(mutants.size(), first + kBatch); ++i)
            batch.push_back(i);
        const ChildResult r = run_children(originals, mutants, batch, dir_.path(), &outcomes);
        if (r.exited && r.exit_code == 0)
            continue;
        if (r.exited && r.exit_code >= 3 && r.exit_code <= 4) {
            FAIL() << "a batch child could not start: " << r.output;
        }
        // The child died (or hung): re-run what it did not finish, one mutant per child.
        ++batch_crashes;
        std::printf(
            "  batch from mutant %zu ended early (%s); re-running its unfinished "
            "mutants one by one\n",
            first, r.how().c_str());
        for (size_t i : batch) {
            if (outcomes[i].cls != 0)
                continue;
            const ChildResult one = run_children(originals, mutants, {i}, dir_.path(), &outcomes);
            if (outcomes[i].cls != 0)
                continue;
            const bool hang = one.timed_out || (one.signaled && one.signal == SIGALRM);
            outcomes[i].cls = hang ? kHang : kCrash;
            outcomes[i].detail = one.how();
        }
    }

    // 3. The counts, the breakdown by aim and by what refused the file, and every bad mutant.
    std::map<std::string, size_t> reasons;
    for (size_t i = 0; i < mutants.size(); ++i) {
        if (outcomes[i].cls == kRejected)
            reasons[rejection_reason(outcomes[i].detail)]++;
    }
    std::string by_reason;
    for (const auto& [reason, n] : reasons)
        by_reason += (by_reason.empty() ? "" : ", ") + reason + " " + std::to_string(n);
    std::printf("  rejected by: %s\n", by_reason.c_str());
    std::map<char, size_t> total;
    std::map<int, std::map<char, size_t>> by_aim;
    double max_ms = 0;
    int listed = 0;
    for (size_t i = 0; i < mutants.size(); ++i) {
        const Outcome& o = outcomes[i];
        total[o.cls]++;
        by_aim[int(mutants[i].aim)][o.cls]++;
        max_ms = std::max(max_ms, o.ms);
        const bool bad = o.cls != kRejected && o.cls != kExact;
        if (bad && listed++ < 40) {
            std::printf("  BAD mutant %zu (%s): %c: %s\n", i,
                        mutants[i].describe(originals).c_str(), o.cls, o.detail.c_str());
        }
    }
    for (const auto& [aim, counts] : by_aim) {
        size_t n = 0;
        for (const auto& [cls, k] : counts)
            n += k;
        std::printf("  %-34s %5zu: %zu rejected, %zu bit-exact, %zu bad\n", kAimNames[aim], n,
                    counts.count(kRejected) ? counts.at(kRejected) : 0,
                    counts.count(kExact) ? counts.at(kExact) : 0,
                    n - (counts.count(kRejected) ? counts.at(kRejected) : 0) -
                        (counts.count(kExact) ? counts.at(kExact) : 0));
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("  %d batch(es) ended early; slowest mutant %.1f ms; %.1f s in all\n",
                batch_crashes, max_ms, seconds);
    std::printf(
        "reliability: damaged checkpoints: %zu mutants, %zu crashes, %zu hangs, %zu "
        "silently different, %zu threw, %zu rejected, %zu loaded bit-exact\n",
        mutants.size(), total[kCrash], total[kHang], total[kDifferent], total[kThrew],
        total[kRejected], total[kExact]);
    EXPECT_EQ(total[kCrash], 0u);
    EXPECT_EQ(total[kHang], 0u);
    EXPECT_EQ(total[kDifferent], 0u);
    EXPECT_EQ(total[kThrew], 0u);
    EXPECT_EQ(total[kRejected] + total[kExact], mutants.size());
}

// ---- attributes, with the trailer removed ---------------------------------------------------

// Changes the value of attribute `key` ("<object path>@<name>") of `path` so that the file
// stays well-formed: a digit or a letter of a string moved on by one, a number plus one.
// Returns false, with *why, when the attribute holds nothing to change.
bool tamper(const std::string& path, const std::string& key, std::string* why) {
    const size_t at = key.rfind('@');
    const std::string object_path = key.substr(0, at), name = key.substr(at + 1);
    h5::File file(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    h5::Object object(file.valid() ? H5Oopen(file.get(), object_path.c_str(), H5P_DEFAULT) : -1);
    h5::Attribute attr(object.valid() ? H5Aopen(object.get(), name.c_str(), H5P_DEFAULT) : -1);
    if (!attr.valid()) {
        *why = "cannot open it";
        return false;
    }
    h5::Datatype type(H5Aget_type(attr.get()));
    h5::Dataspace space(H5Aget_space(attr.get()));
    const h5::Where where{path, object_path};
    if (H5Tget_class(type.get()) == H5T_STRING) {
        std::vector<std::string> values;
        bool found = false;
        if (!h5::read_string_list_attribute(object.get(), where, name, &values, &found).is_ok()) {
            *why = "cannot read it";
            return false;
        }
        if (values.empty()) {
            values.push_back("x");
        } else {
            std::string& v = values[0];
            const size_t digit = v.find_last_of("0123456789");
            const size_t letter = v.find_last_of("abcdefghijklmnopqrstuvwxyz");
            if (digit != std::string::npos) {
                v[digit] = static_cast<char>('0' + (v[digit] - '0' + 1) % 10);
            } else if (letter != std::string::npos) {
                v[letter] = static_cast<char>('a' + (v[letter] - 'a' + 1) % 26);
            } else {
                v += "x";
            }
        }
        const bool scalar = H5Sget_simple_extent_type(space.get()) == H5S_SCALAR;
        attr.close();
        if (H5Adelete(object.get(), name.c_str()) < 0) {
            *why = "cannot delete it";
            return false;
        }
        const Status s = scalar
                             ? h5::write_string_attribute(object.get(), where, name, values[0])
                             : h5::write_string_list_attribute(object.get(), where, name, values);
        *why = s.message();
        return s.is_ok() && file.close() >= 0;
    }
    const hssize_t n = H5Sget_simple_extent_npoints(space.get());
    if (n <= 0) {
        *why = "holds no number";
        return false;
    }
    std::vector<double> values(static_cast<size_t>(n));
    if (H5Aread(attr.get(), H5T_NATIVE_DOUBLE, values.data()) < 0) {
        *why = "cannot read it";
        return false;
    }
    values[0] += 1;
    return H5Awrite(attr.get(), H5T_NATIVE_DOUBLE, values.data()) >= 0 && attr.close() >= 0 &&
           file.close() >= 0;
}

// The keys of the attributes a file's checksums cover, and the JSON itself.
std::vector<std::string> covered_attributes(const std::string& path, std::string* json_text) {
    std::vector<std::string> keys;
    h5::HDF5Session session;
    h5::File file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
    h5::Group kiln(file.valid() ? H5Gopen2(file.get(), "kiln", H5P_DEFAULT) : -1);
    if (!kiln.valid() ||
        !h5::read_string_attribute(kiln.get(), h5::Where{path, "/kiln"}, "checksums", json_text)
             .is_ok()) {
        return keys;
    }
    const auto j = nlohmann::json::parse(*json_text, nullptr, false);
    if (j.is_object() && j.contains("attributes") && j["attributes"].is_object()) {
        for (const auto& item : j["attributes"].items())
            keys.push_back(item.key());
    }
    return keys;
}

// Without its trailer a kiln file is what an h5py edit or h5repack leaves: the checksums in /kiln
// must then still catch a changed attribute (the training state, the config), and a file of an
// older kiln (no trailer, no attribute checksums) must load as before.
TEST_F(DamagedCheckpoints, ChangedAttributesAreRejectedWithoutTheTrailer) {
    std::vector<Original> originals;
    ASSERT_TRUE(write_originals(dir_.path(), &originals));
    size_t tampered = 0, rejected = 0, named = 0;
    for (const Original& o : originals) {
        SCOPED_TRACE(o.path);
        const std::string suffix = o.weights_only ? ".weights.h5" : ".h5";
        const std::string stripped = dir_.file("stripped" + suffix);
        const std::string bare = without_trailer(o.bytes);
        ASSERT_LT(bare.size(), o.bytes.size()) << "no trailer";
        ASSERT_TRUE(write_file(stripped, bare.data(), bare.size()));

        // Without the trailer: the same contents.
        CheckpointContents reference, loaded;
        ASSERT_TRUE(load_checkpoint(o.path, &reference).is_ok());
        const Status s = load_checkpoint(stripped, &loaded);
        ASSERT_TRUE(s.is_ok()) << s.message();
        EXPECT_EQ(diff_contents(loaded, reference), "");

        // Each attribute changed, and one added: refused.
        std::string json_text;
        std::vector<std::string> keys = covered_attributes(stripped, &json_text);
        ASSERT_GT(keys.size(), 10u) << json_text;
        for (const std::string& key : keys) {
            const std::string path = dir_.file("tampered" + suffix);
            ASSERT_TRUE(write_file(path, bare.data(), bare.size()));
            std::string why;
            if (!tamper(path, key, &why)) {
                ADD_FAILURE() << key << ": could not change it: " << why;
                continue;
            }
            ++tampered;
            CheckpointContents c;
            const Status t = load_checkpoint(path, &c);
            if (t.is_ok()) {
                ADD_FAILURE() << key << ": changed, and the file still loads";
                continue;
            }
            ++rejected;
            named += t.message().find(key) != std::string::npos ? 1 : 0;
        }
        {
            const std::string path = dir_.file("added" + suffix);
            ASSERT_TRUE(write_file(path, bare.data(), bare.size()));
            h5::File file(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
            h5::Group kiln(H5Gopen2(file.get(), "kiln", H5P_DEFAULT));
            ASSERT_TRUE(
                h5::write_string_attribute(kiln.get(), h5::Where{path, "/kiln"}, "extra", "{}")
                    .is_ok());
            kiln.close();
            file.close();
            CheckpointContents c;
            const Status t = load_checkpoint(path, &c);
            ++tampered;
            EXPECT_FALSE(t.is_ok()) << "an added attribute went unnoticed";
            rejected += t.is_ok() ? 0 : 1;
            named += t.message().find("/kiln@extra") != std::string::npos ? 1 : 0;
        }

        // An older kiln's file: no "attributes" in the checksums.
        const std::string older = dir_.file("older" + suffix);
        ASSERT_TRUE(write_file(older, bare.data(), bare.size()));
        {
            auto j = nlohmann::json::parse(json_text);
            j.erase("attributes");
            h5::File file(H5Fopen(older.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
            h5::Group kiln(H5Gopen2(file.get(), "kiln", H5P_DEFAULT));
            ASSERT_GE(H5Adelete(kiln.get(), "checksums"), 0);
            ASSERT_TRUE(h5::write_string_attribute(kiln.get(), h5::Where{older, "/kiln"},
                                                   "checksums", j.dump())
                            .is_ok());
        }
        CheckpointContents old_contents;
        const Status t = load_checkpoint(older, &old_contents);
        ASSERT_TRUE(t.is_ok()) << t.message();
        EXPECT_EQ(diff_contents(old_contents, reference), "");
    }
    std::printf(
        "  attributes changed in files without their trailer: %zu, %zu rejected (%zu "
        "naming the attribute); older files without attribute checksums load\n",
        tampered, rejected, named);
    EXPECT_EQ(rejected, tampered);
}

}  // namespace
}  // namespace kiln
