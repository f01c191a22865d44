// Replays the fuzz corpora through kiln's loaders in the normal build: every seed
// (tests/fuzz/corpus/<target>/) and every input that ever crashed a fuzz target
// (tests/fuzz/regressions/<target>/), each through exactly the calls its fuzz target makes
// (tests/fuzz/fuzz_targets.h).
//
// Each input must come back as a Status: a crash fails the test by ending it, an exception that
// escapes a loader and a leaked HDF5 identifier fail it here. Seeds named `valid-*` are
// well-formed files and must load; a format change that leaves one behind means running
// tests/fuzz/make_seeds.py again. Inputs that crash or hang inside libhdf5 itself, where kiln
// has no cheap check to stop them, are kept apart in tests/fuzz/libhdf5/ and not replayed. The
// fuzzing itself is Reliability.Fuzz (tests/fuzz/run.sh).
#include <gtest/gtest.h>

#include <stdlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <ostream>
#include <string>
#include <system_error>
#include <vector>

#include "kiln/status.h"
#include "tests/fuzz/fuzz_targets.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

struct Target {
    const char* name;  // fuzz_<name>, and the folder of its inputs
    Status (*run)(const uint8_t* data, size_t size);
    bool uses_hdf5;
};

const Target kTargets[] = {
    {"idx", fuzz::idx, false},
    {"npy", fuzz::npy, false},
    {"csv", fuzz::csv, false},
    {"hdf5", fuzz::hdf5, true},
    {"model_json", fuzz::model_json, false},
    {"checkpoint", fuzz::checkpoint, true},
};

// gtest's name for a parameter in messages.
void PrintTo(const Target& target, std::ostream* os) {
    *os << target.name;
}

// The files of one corpus folder, in name order; none when the folder does not exist (a target
// without regressions has no folder).
std::vector<fs::path> inputs_in(const fs::path& dir) {
    std::vector<fs::path> files;
    if (!fs::is_directory(dir))
        return files;
    for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
        if (entry.is_regular_file())
            files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    return files;
}

std::vector<uint8_t> read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in),
                                std::istreambuf_iterator<char>());
}

// The targets write their scratch files to $TMPDIR: a directory of this test's own, removed at
// the end.
class FuzzReplay : public ::testing::TestWithParam<Target> {
  protected:
    static void SetUpTestSuite() {
        const char* tmp = std::getenv("TMPDIR");
        std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/kiln_fuzz_replay.XXXXXX";
        ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << "mkdtemp(" << pattern << ")";
        scratch_ = pattern;
        ::setenv("TMPDIR", scratch_.c_str(), 1);
    }
    static void TearDownTestSuite() {
        std::error_code ignored;  // a leftover scratch directory is not worth a failure
        fs::remove_all(scratch_, ignored);
    }

  private:
    static std::string scratch_;
};

std::string FuzzReplay::scratch_;

TEST_P(FuzzReplay, EveryInputReturnsAStatus) {
    const Target& target = GetParam();
    const fs::path root = fs::path(KILN_SOURCE_DIR) / "tests" / "fuzz";
    const std::vector<fs::path> seeds = inputs_in(root / "corpus" / target.name);
    ASSERT_FALSE(seeds.empty()) << "no seeds in " << (root / "corpus" / target.name)
                                << "; tests/fuzz/make_seeds.py writes them";
    std::vector<fs::path> inputs = seeds;
    for (const fs::path& p : inputs_in(root / "regressions" / target.name))
        inputs.push_back(p);

    int loaded = 0;
    for (const fs::path& input : inputs) {
        SCOPED_TRACE(input.string());
        const std::vector<uint8_t> bytes = read_bytes(input);
        // vector::data() may be null when empty; the targets take (data, 0) as no bytes.
        static const uint8_t kNothing = 0;
        const uint8_t* data = bytes.empty() ? &kNothing : bytes.data();
        try {
            const Status s = target.run(data, bytes.size());
            loaded += s.is_ok() ? 1 : 0;
            if (input.filename().string().rfind("valid-", 0) == 0) {
                EXPECT_TRUE(s.is_ok()) << "a valid seed was refused: " << s.message();
            }
        } catch (const std::exception& e) {
            ADD_FAILURE() << "an exception escaped the loader: " << e.what();
        } catch (...) {
            ADD_FAILURE() << "an exception of unknown type escaped the loader";
        }
        if (target.uses_hdf5) {
            EXPECT_EQ(fuzz::open_hdf5_objects(), 0) << "HDF5 identifiers left open";
        }
    }
    std::printf("fuzz_%s: %zu inputs replayed (%zu seeds), %d loaded\n", target.name, inputs.size(),
                seeds.size(), loaded);
}

INSTANTIATE_TEST_SUITE_P(Loaders, FuzzReplay, ::testing::ValuesIn(kTargets),
                         [](const ::testing::TestParamInfo<Target>& info) {
                             return std::string(info.param.name);
                         });

}  // namespace
}  // namespace kiln
