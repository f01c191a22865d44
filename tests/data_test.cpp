// Tests for the dataset loaders (src/data): IDX, NPY, CSV and the resolution of `--data`.
//
// Every test writes its own small files, byte by byte, into a fresh temporary directory, so the
// expected values are known exactly and no test depends on numpy. Malformed files must come
// back as a Status whose message names the file and the problem.
#include <gtest/gtest.h>

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include <hdf5.h>
#include <zlib.h>

#include "kiln/data.h"

namespace kiln {
namespace data {
namespace {

// ---- helpers -----------------------------------------------------------------------------------

// A unique directory under $TMPDIR (or /tmp), removed with everything in it at the end.
class TempDir {
  public:
    TempDir() {
        const char* tmp = std::getenv("TMPDIR");
        std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/kiln_data_test.XXXXXX";
        if (::mkdtemp(pattern.data()) == nullptr) {
            ADD_FAILURE() << "mkdtemp(" << pattern << ") failed: " << std::strerror(errno);
        }
        path_ = pattern;
    }
    ~TempDir() {
        std::error_code ignored;  // a leftover temp directory is not worth failing a test for
        std::filesystem::remove_all(path_, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    std::string file(const std::string& name) const { return path_ + "/" + name; }
    const std::string& path() const { return path_; }

  private:
    std::string path_;
};

void write_file(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(out.good()) << "writing " << path;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_gz(const std::string& path, const std::string& bytes) {
    gzFile gz = gzopen(path.c_str(), "wb");
    ASSERT_NE(gz, nullptr) << "gzopen " << path;
    ASSERT_EQ(gzwrite(gz, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
    ASSERT_EQ(gzclose(gz), Z_OK);
}

// Appends the low `n` bytes of `v`, most significant first (IDX) or least first (NPY).
void put_be(std::string* out, uint64_t v, int n) {
    for (int i = n - 1; i >= 0; --i)
        out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put_le(std::string* out, uint64_t v, int n) {
    for (int i = 0; i < n; ++i)
        out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

uint64_t float_bits(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return b;
}
uint64_t double_bits(double d) {
    uint64_t b;
    std::memcpy(&b, &d, 8);
    return b;
}

// An IDX file: magic (0, 0, dtype, rank), big-endian dims, then `payload` as given.
std::string idx_bytes(uint8_t dtype, const std::vector<uint32_t>& dims,
                      const std::string& payload) {
    std::string out;
    out.push_back(0);
    out.push_back(0);
    out.push_back(static_cast<char>(dtype));
    out.push_back(static_cast<char>(dims.size()));
    for (uint32_t d : dims)
        put_be(&out, d, 4);
    return out + payload;
}

std::string u8_payload(int n) {
    std::string out;
    for (int i = 0; i < n; ++i)
        out.push_back(static_cast<char>(i * 10));
    return out;
}

// An NPY file of the given version around `dict`, padded as numpy pads it.
std::string npy_bytes(int major, const std::string& dict, const std::string& payload) {
    const size_t preamble = major == 1 ? 10 : 12;
    std::string header = dict;
    header.append((64 - (preamble + header.size() + 1) % 64) % 64, ' ');
    header += '\n';
    std::string out("\x93NUMPY", 6);
    out.push_back(static_cast<char>(major));
    out.push_back(0);
    put_le(&out, header.size(), major == 1 ? 2 : 4);
    return out + header + payload;
}

std::string npy_dict(const std::string& descr, const std::string& shape,
                     const char* fortran = "False") {
    return "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }";
}

// The assertion every malformed-input test makes: not ok, and the message names the file and
// says what is wrong.
::testing::AssertionResult fails_with(const Status& s, const std::string& path,
                                      const std::string& word) {
    if (s.is_ok())
        return ::testing::AssertionFailure() << "expected an error, got ok";
    const std::string& msg = s.message();
    if (msg.find(path) == std::string::npos) {
        return ::testing::AssertionFailure() << "message does not name " << path << ": " << msg;
    }
    if (msg.find(word) == std::string::npos) {
        return ::testing::AssertionFailure() << "message does not say '" << word << "': " << msg;
    }
    return ::testing::AssertionSuccess() << msg;
}

// ---- IDX ---------------------------------------------------------------------------------------

TEST(IdxTest, LoadsUint8Plain) {
    TempDir dir;
    const std::string path = dir.file("images-idx3-ubyte");
    write_file(path, idx_bytes(0x08, {2, 1, 3}, u8_payload(6)));

    Array a;
    ASSERT_TRUE(load_idx(path, &a).is_ok());
    EXPECT_EQ(a.shape, (Shape{2, 1, 3}));
    EXPECT_EQ(a.values, (std::vector<float>{0, 10, 20, 30, 40, 50}));
    EXPECT_TRUE(a.from_uint8);
    EXPECT_EQ(a.source, path);
    EXPECT_EQ(a.rows(), 2);
    EXPECT_EQ(a.cols(), 3);
}

TEST(IdxTest, LoadsGzip) {
    TempDir dir;
    const std::string path = dir.file("labels-idx1-ubyte.gz");
    write_gz(path, idx_bytes(0x08, {5}, u8_payload(5)));

    Array a;
    Status s = load_idx(path, &a);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(a.shape, (Shape{5}));
    EXPECT_EQ(a.values, (std::vector<float>{0, 10, 20, 30, 40}));
    EXPECT_TRUE(a.from_uint8);
}

// Larger than the loader's 1 MiB read chunk, so values cross chunk boundaries.
TEST(IdxTest, LoadsGzipAcrossChunks) {
    TempDir dir;
    const std::string path = dir.file("big.idx.gz");
    const uint32_t n = 300000;  // 1.2 MB of int32
    std::string payload;
    for (uint32_t i = 0; i < n; ++i)
        put_be(&payload, static_cast<uint32_t>(-int64_t(i)), 4);
    write_gz(path, idx_bytes(0x0C, {n}, payload));

    Array a;
    Status s = load_idx(path, &a);
    ASSERT_TRUE(s.is_ok()) << s.message();
    ASSERT_EQ(a.values.size(), n);
    EXPECT_EQ(a.values[0], 0.0f);
    EXPECT_EQ(a.values[262144], -262144.0f);
    EXPECT_EQ(a.values[n - 1], -static_cast<float>(n - 1));
    EXPECT_FALSE(a.from_uint8);
}

TEST(IdxTest, LoadsEveryDtype) {
    struct Case {
        uint8_t dtype;
        std::string payload;
        std::vector<float> expected;
    };
    std::vector<Case> cases(5);
    cases[0] = {0x09, "\xFF\x7F", {-1, 127}};
    cases[1].dtype = 0x0B;
    put_be(&cases[1].payload, static_cast<uint16_t>(-300), 2);
    put_be(&cases[1].payload, 1234, 2);
    cases[1].expected = {-300, 1234};
    cases[2].dtype = 0x0C;
    put_be(&cases[2].payload, static_cast<uint32_t>(-70000), 4);
    put_be(&cases[2].payload, 65536, 4);
    cases[2].expected = {-70000, 65536};
    cases[3].dtype = 0x0D;
    put_be(&cases[3].payload, float_bits(1.5f), 4);
    put_be(&cases[3].payload, float_bits(-0.25f), 4);
    cases[3].expected = {1.5f, -0.25f};
    cases[4].dtype = 0x0E;
    put_be(&cases[4].payload, double_bits(-2.25), 8);
    put_be(&cases[4].payload, double_bits(1e10), 8);
    cases[4].expected = {-2.25f, 1e10f};

    TempDir dir;
    for (const Case& c : cases) {
        SCOPED_TRACE(testing::Message() << "dtype 0x" << std::hex << int(c.dtype));
        for (bool gzip : {false, true}) {
            const std::string path = dir.file(gzip ? "a.idx.gz" : "a.idx");
            const std::string bytes = idx_bytes(c.dtype, {2}, c.payload);
            if (gzip) {
                write_gz(path, bytes);
            } else {
                write_file(path, bytes);
            }
            Array a;
            Status s = load_idx(path, &a);
            ASSERT_TRUE(s.is_ok()) << s.message();
            EXPECT_EQ(a.values, c.expected);
            EXPECT_FALSE(a.from_uint8);
        }
    }
}

TEST(IdxTest, RejectsTruncatedHeader) {
    TempDir dir;
    const std::string path = dir.file("short.idx");
    Array a;
    write_file(path, std::string("\0\0\x08", 3));
    EXPECT_TRUE(fails_with(load_idx(path, &a), path, "truncated"));
    // Rank 3 needs 12 bytes of dimensions; give 6.
    write_file(path, idx_bytes(0x08, {}, "").substr(0, 3) + "\x03" + std::string(6, '\0'));
    EXPECT_TRUE(fails_with(load_idx(path, &a), path, "truncated"));

    const std::string gz = dir.file("short.idx.gz");
    write_gz(gz, std::string("\0\0\x08\x02\0\0", 6));
    EXPECT_TRUE(fails_with(load_idx(gz, &a), gz, "truncated"));
}

TEST(IdxTest, RejectsTruncatedData) {
    TempDir dir;
    Array a;
    const std::string path = dir.file("short.idx");
    write_file(path, idx_bytes(0x08, {2, 3}, u8_payload(5)));
    EXPECT_TRUE(fails_with(load_idx(path, &a), path, "truncated"));

    const std::string gz = dir.file("short.idx.gz");
    write_gz(gz, idx_bytes(0x08, {2, 3}, u8_payload(5)));
    EXPECT_TRUE(fails_with(load_idx(gz, &a), gz, "truncated"));

    // An element cut in half.
    write_file(path, idx_bytes(0x0C, {2}, std::string(6, '\x01')));
    EXPECT_TRUE(fails_with(load_idx(path, &a), path, "truncated"));
}

TEST(IdxTest, RejectsDimsThatDisagreeWithData) {
    TempDir dir;
    Array a;
    const std::string path = dir.file("long.idx");
    write_file(path, idx_bytes(0x08, {2, 3}, u8_payload(7)));
    EXPECT_TRUE(fails_with(load_idx(path, &a), path, "size mismatch"));

    const std::string gz = dir.file("long.idx.gz");
    write_gz(gz, idx_bytes(0x08, {2, 3}, u8_payload(7)));
    EXPECT_TRUE(fails_with(load_idx(gz, &a), gz, "size mismatch"));
}

// 2^40 declared elements must be refused from the header alone: allocating for them would
// either fail or take the machine's memory before any check on the data could run.
TEST(IdxTest, RejectsHugeDeclaredSizeWithoutAllocating) {
    TempDir dir;
    Array a;
    const std::string path = dir.file("huge.idx");
    write_file(path, idx_bytes(0x08, {1u << 20, 1u << 20}, u8_payload(16)));
    EXPECT_TRUE(fails_with(load_idx(path, &a), path, "size mismatch"));

    const std::string gz = dir.file("huge.idx.gz");
    write_gz(gz, idx_bytes(0x0E, {1u << 20, 1u << 20}, u8_payload(16)));
    EXPECT_TRUE(fails_with(load_idx(gz, &a), gz, "size mismatch"));

    // Within what deflate could expand to, so only the stream itself can tell: it ends early.
    write_gz(gz, idx_bytes(0x08, {100, 100}, u8_payload(16)));
    EXPECT_TRUE(fails_with(load_idx(gz, &a), gz, "truncated"));
}

TEST(IdxTest, RejectsOverflowingDims) {
    TempDir dir;
    Array a;
    const std::string path = dir.file("overflow.idx");
    write_file(path, idx_bytes(0x08, {0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, ""));
    EXPECT_TRUE(fails_with(load_idx(path, &a), path, "overflow"));
    // Fits 64 bits as elements, not as bytes of doubles.
    write_file(path, idx_bytes(0x0E, {0xFFFFFFFF, 0xFFFFFFFF}, ""));
    EXPECT_TRUE(fails_with(load_idx(path, &a), path, "too large"));
}

TEST(IdxTest, RejectsBadMagicDtypeAndRank) {
    TempDir dir;
    Array a;
    const std::string path = dir.file("bad.idx");
    write_file(path, "PK\x03\x04 not an idx file");
    EXPECT_TRUE(fails_with(load_idx(path, &a), path, "magic"));
    write_file(path, idx_bytes(0x0A, {1}, "x"));
    EXPECT_TRUE(fails_with(load_idx(path, &a), path, "dtype"));
    write_file(path, idx_bytes(0x08, {}, ""));
    EXPECT_TRUE(fails_with(load_idx(path, &a), path, "rank"));
    write_file(path, idx_bytes(0x08, std::vector<uint32_t>(9, 1), "x"));
    EXPECT_TRUE(fails_with(load_idx(path, &a), path, "rank"));
}

TEST(IdxTest, RejectsCorruptGzip) {
    TempDir dir;
    Array a;
    // A valid stream cut in the middle of its deflate data.
    const std::string whole = dir.file("whole.gz");
    std::string payload;
    for (int i = 0; i < 5000; ++i)
        payload.push_back(static_cast<char>((i * 7919) % 251));
    write_gz(whole, idx_bytes(0x08, {5000}, payload));
    const std::string bytes = read_file(whole);
    const std::string cut = dir.file("cut.idx.gz");
    write_file(cut, bytes.substr(0, bytes.size() / 2));
    EXPECT_TRUE(fails_with(load_idx(cut, &a), cut, "truncated"));

    // The gzip magic followed by garbage.
    const std::string garbage = dir.file("garbage.idx.gz");
    write_file(garbage, "\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03 this is no deflate stream");
    EXPECT_FALSE(load_idx(garbage, &a).is_ok());
}

TEST(IdxTest, RejectsMissingFileAndDirectory) {
    TempDir dir;
    Array a;
    const std::string missing = dir.file("missing-idx1-ubyte");
    EXPECT_TRUE(fails_with(load_idx(missing, &a), missing, "no such file"));
    EXPECT_TRUE(fails_with(load_idx(dir.path(), &a), dir.path(), "not a regular file"));
}

// ---- NPY ---------------------------------------------------------------------------------------

TEST(NpyTest, LoadsVersions1To3) {
    TempDir dir;
    std::string payload;
    for (float f : {1.0f, -2.0f, 3.5f, 0.0f, 5.0f, 6.25f})
        put_le(&payload, float_bits(f), 4);
    for (int major : {1, 2, 3}) {
        SCOPED_TRACE(testing::Message() << "version " << major << ".0");
        const std::string path = dir.file("v" + std::to_string(major) + ".npy");
        write_file(path, npy_bytes(major, npy_dict("<f4", "(2, 3)"), payload));
        Array a;
        Status s = load_npy(path, &a);
        ASSERT_TRUE(s.is_ok()) << s.message();
        EXPECT_EQ(a.shape, (Shape{2, 3}));
        EXPECT_EQ(a.values, (std::vector<float>{1, -2, 3.5, 0, 5, 6.25}));
        EXPECT_FALSE(a.from_uint8);
        EXPECT_EQ(a.source, path);
    }
}

TEST(NpyTest, LoadsEveryDtype) {
    struct Case {
        std::string descr;
        int width;
        std::vector<uint64_t> raw;
        std::vector<float> expected;
    };
    const std::vector<Case> cases = {
        {"|u1", 1, {0, 255}, {0, 255}},
        {"|i1", 1, {0xFF, 0x80}, {-1, -128}},
        {"|b1", 1, {0, 1}, {0, 1}},
        {"<i2", 2, {0xFFFE, 0x7FFF}, {-2, 32767}},
        {"<u2", 2, {0xFFFE, 7}, {65534, 7}},
        {"<i4", 4, {static_cast<uint32_t>(-100000), 42}, {-100000, 42}},
        {"<u4", 4, {4000000000u, 1}, {4e9f, 1}},
        {"<i8", 8, {static_cast<uint64_t>(-5), 1ull << 40}, {-5, 1099511627776.0f}},
        {"<u8", 8, {3, 1ull << 63}, {3, 9223372036854775808.0f}},
        {"<f4", 4, {float_bits(0.5f), float_bits(-7.0f)}, {0.5f, -7.0f}},
        {"<f8", 8, {double_bits(0.125), double_bits(-1e-3)}, {0.125f, -1e-3f}},
        // '=' is the reading machine's order and '|' or '>' are unambiguous for one byte.
        {"=f4", 4, {float_bits(2.0f), float_bits(3.0f)}, {2.0f, 3.0f}},
        {">u1", 1, {9, 8}, {9, 8}},
    };
    TempDir dir;
    for (const Case& c : cases) {
        SCOPED_TRACE(c.descr);
        std::string payload;
        for (uint64_t v : c.raw)
            put_le(&payload, v, c.width);
        const std::string path = dir.file("a.npy");
        write_file(path, npy_bytes(1, npy_dict(c.descr, "(2,)"), payload));
        Array a;
        Status s = load_npy(path, &a);
        ASSERT_TRUE(s.is_ok()) << s.message();
        EXPECT_EQ(a.shape, (Shape{2}));
        EXPECT_EQ(a.values, c.expected);
        EXPECT_EQ(a.from_uint8, c.descr == "|u1" || c.descr == ">u1");
    }
}

// numpy always writes the same dict, but other writers (and Python 2) vary the spelling.
TEST(NpyTest, ParsesHeaderVariants) {
    TempDir dir;
    const std::string payload(4, '\x01');
    const std::vector<std::pair<std::string, Shape>> headers = {
        {"{\"descr\": \"|u1\", \"fortran_order\": False, \"shape\": (2, 2)}", {2, 2}},
        {"{'shape': (4,), 'fortran_order': False, 'descr': '|u1'}", {4}},
        {"{'descr':'|u1','fortran_order':False,'shape':(1,2,2,),}", {1, 2, 2}},
        {"{'descr': '|u1', 'fortran_order': False, 'shape': (2L, 2L), }", {2, 2}},
        {"  { 'descr' : '|u1' , 'fortran_order' : False , 'shape' : ( 4 , ) }  ", {4}},
    };
    for (const auto& [dict, shape] : headers) {
        SCOPED_TRACE(dict);
        const std::string path = dir.file("h.npy");
        write_file(path, npy_bytes(1, dict, payload));
        Array a;
        Status s = load_npy(path, &a);
        ASSERT_TRUE(s.is_ok()) << s.message();
        EXPECT_EQ(a.shape, shape);
        EXPECT_EQ(a.values, std::vector<float>(4, 1.0f));
    }
}

TEST(NpyTest, SaveLoadRoundTrip) {
    TempDir dir;
    for (const Shape& shape : {Shape{2, 3}, Shape{7}, Shape{2, 1, 2, 2}, Shape{0, 4}}) {
        SCOPED_TRACE(testing::Message() << shape.size() << "-d");
        const int64_t n =
            std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
        std::vector<float> values(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i)
            values[i] = 0.5f * static_cast<float>(i) - 1.0f;
        const std::string path = dir.file("round.npy");
        ASSERT_TRUE(save_npy(path, shape, values.data()).is_ok());

        // The layout the spec asks for: version 1.0, data aligned to 64, header ends in '\n'.
        const std::string bytes = read_file(path);
        ASSERT_GE(bytes.size(), 10u);
        EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
        const size_t header_len =
            static_cast<unsigned char>(bytes[8]) | static_cast<unsigned char>(bytes[9]) << 8;
        EXPECT_EQ((10 + header_len) % 64, 0u);
        EXPECT_EQ(bytes[10 + header_len - 1], '\n');
        EXPECT_EQ(bytes.size(), 10 + header_len + 4 * values.size());

        Array a;
        Status s = load_npy(path, &a);
        ASSERT_TRUE(s.is_ok()) << s.message();
        EXPECT_EQ(a.shape, shape);
        EXPECT_EQ(a.values, values);
    }
}

TEST(NpyTest, SaveRejectsBadArguments) {
    TempDir dir;
    const std::string path = dir.file("bad.npy");
    EXPECT_TRUE(fails_with(save_npy(path, {2, -1}, nullptr), path, "shape"));
    EXPECT_TRUE(fails_with(save_npy(path, {2}, nullptr), path, "no values"));
    const std::string unwritable = dir.file("no/such/dir/out.npy");
    const float v = 1.0f;
    EXPECT_TRUE(fails_with(save_npy(unwritable, {1}, &v), unwritable, "cannot create"));
}

TEST(NpyTest, RejectsTruncatedFiles) {
    TempDir dir;
    Array a;
    const std::string path = dir.file("t.npy");
    std::string payload;
    for (int i = 0; i < 6; ++i)
        put_le(&payload, float_bits(1.0f), 4);
    const std::string whole = npy_bytes(1, npy_dict("<f4", "(2, 3)"), payload);

    write_file(path, whole.substr(0, 4));  // inside the magic
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "truncated"));
    write_file(path, whole.substr(0, 9));  // inside the header length
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "truncated"));
    write_file(path, whole.substr(0, 40));  // inside the header
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "truncated"));
    write_file(path, whole.substr(0, whole.size() - 3));  // inside the data
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "truncated"));
    write_file(path, whole + "xx");  // more data than the shape says
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "size mismatch"));
}

TEST(NpyTest, RejectsHugeOrOverflowingShapes) {
    TempDir dir;
    Array a;
    const std::string path = dir.file("huge.npy");
    write_file(path, npy_bytes(1, npy_dict("<f4", "(1048576, 1048576)"), std::string(64, '\0')));
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "size mismatch"));
    write_file(path, npy_bytes(1, npy_dict("<f8", "(4294967296, 4294967296, 4)"), ""));
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "overflow"));
    write_file(path, npy_bytes(1, npy_dict("<f8", "(99999999999999999999,)"), ""));
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "too large"));
    write_file(path, npy_bytes(1, npy_dict("<f4", "(1, 1, 1, 1, 1, 1, 1, 1, 1)"), "abcd"));
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "dimensions"));

    // A header length field far beyond the file.
    std::string bytes("\x93NUMPY\x02\x00", 8);
    put_le(&bytes, 0xFFFFFFF0u, 4);
    write_file(path, bytes + "{}");
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "header"));
}

TEST(NpyTest, RejectsBadMagicAndVersion) {
    TempDir dir;
    Array a;
    const std::string path = dir.file("bad.npy");
    write_file(path, "PK\x03\x04 this is an npz, not an npy");
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "magic"));
    std::string v4 = npy_bytes(1, npy_dict("<f4", "(1,)"), "abcd");
    v4[6] = 4;
    write_file(path, v4);
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "version"));
}

TEST(NpyTest, RejectsBadHeaderDicts) {
    TempDir dir;
    Array a;
    const std::string path = dir.file("dict.npy");
    for (const std::string& dict : {
             std::string("not a dict"),
             std::string("{'descr': '<f4', 'fortran_order': False}"),  // no shape
             std::string("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1,)}"),
             std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}"),
             std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}"),
             std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (1,) trailing"),
             std::string("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}"),
             std::string("{'descr: '<f4', 'fortran_order': False, 'shape': (1,)}"),
             std::string("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}"),
         }) {
        SCOPED_TRACE(dict);
        write_file(path, npy_bytes(1, dict, "abcd"));
        EXPECT_TRUE(fails_with(load_npy(path, &a), path, "header dict"));
    }
}

TEST(NpyTest, RejectsUnsupportedLayouts) {
    TempDir dir;
    Array a;
    const std::string path = dir.file("layout.npy");
    write_file(path, npy_bytes(1, npy_dict("<f4", "(2, 1)", "True"), std::string(8, '\0')));
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "fortran_order"));
    write_file(path, npy_bytes(1, npy_dict(">f4", "(2,)"), std::string(8, '\0')));
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "big-endian"));
    write_file(path, npy_bytes(1, npy_dict("|f4", "(2,)"), std::string(8, '\0')));
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "byte order"));
    write_file(path, npy_bytes(1, npy_dict("<c8", "(1,)"), std::string(8, '\0')));
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "unsupported NPY dtype"));
    write_file(path, npy_bytes(1, npy_dict("<U10", "(1,)"), std::string(40, '\0')));
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "unsupported NPY dtype"));
    write_file(path, npy_bytes(1, npy_dict("<f4", "()"), std::string(4, '\0')));
    EXPECT_TRUE(fails_with(load_npy(path, &a), path, "scalar"));
}

TEST(NpyTest, RejectsMissingFile) {
    TempDir dir;
    Array a;
    const std::string missing = dir.file("missing.npy");
    EXPECT_TRUE(fails_with(load_npy(missing, &a), missing, "no such file"));
}

// ---- CSV ---------------------------------------------------------------------------------------

TEST(CsvTest, HeaderWithLabelColumnNamedLabel) {
    TempDir dir;
    const std::string path = dir.file("data.csv");
    write_file(path, "a,label,b\n1,2,3\n4,5,6\n");
    Array x, y;
    Status s = load_csv(path, CsvOptions{}, &x, &y);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(x.shape, (Shape{2, 2}));
    EXPECT_EQ(x.values, (std::vector<float>{1, 3, 4, 6}));
    EXPECT_EQ(y.shape, (Shape{2, 1}));
    EXPECT_EQ(y.values, (std::vector<float>{2, 5}));
    EXPECT_EQ(x.source, path);
}

TEST(CsvTest, NoHeaderLabelsColumnZero) {
    TempDir dir;
    const std::string path = dir.file("data.csv");
    write_file(path, "1,2.5,-3\n4,5e-1,+6\n");
    Array x, y;
    Status s = load_csv(path, CsvOptions{}, &x, &y);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(x.shape, (Shape{2, 2}));
    EXPECT_EQ(x.values, (std::vector<float>{2.5f, -3, 0.5f, 6}));
    EXPECT_EQ(y.values, (std::vector<float>{1, 4}));
}

TEST(CsvTest, LabelByNameAndByIndex) {
    TempDir dir;
    const std::string path = dir.file("data.csv");
    write_file(path, "f0,f1,target\n1,2,3\n4,5,6\n");
    Array x, y;
    CsvOptions by_name;
    by_name.label_column = "target";
    ASSERT_TRUE(load_csv(path, by_name, &x, &y).is_ok());
    EXPECT_EQ(x.values, (std::vector<float>{1, 2, 4, 5}));
    EXPECT_EQ(y.values, (std::vector<float>{3, 6}));

    CsvOptions by_index;
    by_index.label_column = "1";
    ASSERT_TRUE(load_csv(path, by_index, &x, &y).is_ok());
    EXPECT_EQ(x.values, (std::vector<float>{1, 3, 4, 6}));
    EXPECT_EQ(y.values, (std::vector<float>{2, 5}));

    // Without a header only an index can name the column.
    const std::string bare = dir.file("bare.csv");
    write_file(bare, "1,2,3\n4,5,6\n");
    by_index.label_column = "2";
    ASSERT_TRUE(load_csv(bare, by_index, &x, &y).is_ok());
    EXPECT_EQ(y.values, (std::vector<float>{3, 6}));
}

TEST(CsvTest, DelimiterQuotesLineEndsAndExplicitHeader) {
    TempDir dir;
    const std::string path = dir.file("data.csv");
    write_file(path, "\xEF\xBB\xBF\"lab;el\" ; \"x \"\"1\"\"\"\r\n\r\n 7 ; 8 \r\n9;10\r\n\n");
    CsvOptions options;
    options.delimiter = ';';
    options.label_column = "lab;el";
    Array x, y;
    Status s = load_csv(path, options, &x, &y);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(x.values, (std::vector<float>{8, 10}));
    EXPECT_EQ(y.values, (std::vector<float>{7, 9}));

    // A numeric first row is data under kAuto, a header under kYes.
    const std::string numeric = dir.file("numeric.csv");
    write_file(numeric, "0,1\n2,3\n4,5\n");
    options = CsvOptions{};
    ASSERT_TRUE(load_csv(numeric, options, &x, &y).is_ok());
    EXPECT_EQ(y.rows(), 3);
    options.header = CsvOptions::Header::kYes;
    ASSERT_TRUE(load_csv(numeric, options, &x, &y).is_ok());
    EXPECT_EQ(y.values, (std::vector<float>{2, 4}));
}

TEST(CsvTest, FeaturesOnly) {
    TempDir dir;
    const std::string path = dir.file("inputs.csv");
    write_file(path, "a,b,c\n1,2,3\n");
    Array x;
    ASSERT_TRUE(load_csv_features(path, CsvOptions{}, &x).is_ok());
    EXPECT_EQ(x.shape, (Shape{1, 3}));
    EXPECT_EQ(x.values, (std::vector<float>{1, 2, 3}));
}

TEST(CsvTest, RejectsNonNumbersWithLineAndColumn) {
    TempDir dir;
    Array x, y;
    const std::string path = dir.file("bad.csv");
    write_file(path, "a,b,c\n1,2,3\n4,five,6\n");
    Status s = load_csv(path, CsvOptions{}, &x, &y);
    EXPECT_TRUE(fails_with(s, path, "not a number"));
    EXPECT_NE(s.message().find("line 3"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("column 2"), std::string::npos) << s.message();

    write_file(path, "1,2,\n");
    s = load_csv(path, CsvOptions{}, &x, &y);
    EXPECT_TRUE(fails_with(s, path, "empty field"));
    write_file(path, "1,2\n3,nan\n");
    EXPECT_TRUE(fails_with(load_csv(path, CsvOptions{}, &x, &y), path, "not a number"));
    write_file(path, "1,1e999\n");
    CsvOptions no_header;
    no_header.header = CsvOptions::Header::kNo;
    EXPECT_TRUE(fails_with(load_csv(path, no_header, &x, &y), path, "not a number"));
    write_file(path, "1,\"2\n");
    EXPECT_TRUE(fails_with(load_csv(path, no_header, &x, &y), path, "unterminated"));
}

TEST(CsvTest, RejectsDirectoriesAndQuoteDelimiter) {
    TempDir dir;
    Array x, y;
    EXPECT_TRUE(
        fails_with(load_csv(dir.path(), CsvOptions{}, &x, &y), dir.path(), "not a regular file"));
    const std::string path = dir.file("data.csv");
    write_file(path, "1,2\n");
    CsvOptions quote;
    quote.delimiter = '"';
    EXPECT_TRUE(fails_with(load_csv(path, quote, &x, &y), path, "delimiter"));
}

TEST(CsvTest, RejectsRaggedRows) {
    TempDir dir;
    Array x, y;
    const std::string path = dir.file("ragged.csv");
    write_file(path, "1,2,3\n4,5\n");
    Status s = load_csv(path, CsvOptions{}, &x, &y);
    EXPECT_TRUE(fails_with(s, path, "ragged"));
    EXPECT_NE(s.message().find("line 2"), std::string::npos) << s.message();
}

TEST(CsvTest, RejectsBadLabelColumnsAndEmptyFiles) {
    TempDir dir;
    Array x, y;
    const std::string path = dir.file("data.csv");
    write_file(path, "a,b\n1,2\n");
    CsvOptions options;
    options.label_column = "nope";
    EXPECT_TRUE(fails_with(load_csv(path, options, &x, &y), path, "no column named 'nope'"));
    options.label_column = "5";
    EXPECT_TRUE(fails_with(load_csv(path, options, &x, &y), path, "out of range"));

    write_file(path, "a,b\n");
    EXPECT_TRUE(fails_with(load_csv(path, CsvOptions{}, &x, &y), path, "no data rows"));
    write_file(path, "label\n1\n");
    EXPECT_TRUE(fails_with(load_csv(path, CsvOptions{}, &x, &y), path, "no features"));

    const std::string missing = dir.file("missing.csv");
    EXPECT_TRUE(fails_with(load_csv(missing, CsvOptions{}, &x, &y), missing, "no such file"));
}

// ---- datasets ----------------------------------------------------------------------------------

TEST(DatasetTest, ScalePixelsOnlyScalesEightBitDataOnce) {
    Array pixels;
    pixels.shape = {1, 3};
    pixels.values = {0, 51, 255};
    pixels.from_uint8 = true;
    scale_pixels(&pixels);
    EXPECT_EQ(pixels.values, (std::vector<float>{0, 0.2f, 1}));
    scale_pixels(&pixels);
    EXPECT_EQ(pixels.values, (std::vector<float>{0, 0.2f, 1}));

    Array floats;
    floats.values = {0, 51, 255};
    scale_pixels(&floats);
    EXPECT_EQ(floats.values, (std::vector<float>{0, 51, 255}));
}

// A directory of the four IDX files in the MNIST names, with 4 train and 2 test 2×2 images.
void write_idx_dir(const TempDir& dir, bool gzip) {
    const auto put = [&](const std::string& name, const std::string& bytes) {
        if (gzip) {
            write_gz(dir.file(name + ".gz"), bytes);
        } else {
            write_file(dir.file(name), bytes);
        }
    };
    put("train-images-idx3-ubyte", idx_bytes(0x08, {4, 2, 2}, std::string(16, '\xFF')));
    put("train-labels-idx1-ubyte", idx_bytes(0x08, {4}, std::string("\x01\x02\x03\x04", 4)));
    put("t10k-images-idx3-ubyte", idx_bytes(0x08, {2, 2, 2}, std::string(8, '\x33')));
    put("t10k-labels-idx1-ubyte", idx_bytes(0x08, {2}, std::string("\x05\x06", 2)));
}

TEST(DatasetTest, LoadsIdxDirectoryPlainAndGzip) {
    for (bool gzip : {false, true}) {
        SCOPED_TRACE(gzip ? "gzip" : "plain");
        TempDir dir;
        write_idx_dir(dir, gzip);
        Dataset d;
        Status s = load_dataset(dir.path(), DatasetOptions{}, &d);
        ASSERT_TRUE(s.is_ok()) << s.message();
        EXPECT_EQ(d.name, dir.path());
        EXPECT_EQ(d.train.x.shape, (Shape{4, 2, 2}));
        EXPECT_EQ(d.train.x.values, std::vector<float>(16, 1.0f));  // 255 scaled
        EXPECT_EQ(d.train.y.shape, (Shape{4, 1}));
        EXPECT_EQ(d.train.y.values, (std::vector<float>{1, 2, 3, 4}));  // labels unscaled
        ASSERT_TRUE(d.has_test());
        EXPECT_EQ(d.test.x.values, std::vector<float>(8, 0.2f));
        EXPECT_EQ(d.test.y.values, (std::vector<float>{5, 6}));

        Array inputs;
        s = load_inputs(dir.path(), DatasetOptions{}, &inputs);
        ASSERT_TRUE(s.is_ok()) << s.message();
        EXPECT_EQ(inputs.shape, (Shape{2, 2, 2}));
        EXPECT_EQ(inputs.values, std::vector<float>(8, 0.2f));
    }
}

TEST(DatasetTest, LoadsNpyDirectory) {
    TempDir dir;
    std::string x;
    for (float f : {1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f})
        put_le(&x, float_bits(f), 4);
    write_file(dir.file("x_train.npy"), npy_bytes(1, npy_dict("<f4", "(3, 2)"), x));
    write_file(dir.file("y_train.npy"), npy_bytes(1, npy_dict("<i8", "(3,)"),
                                                  std::string("\x02\0\0\0\0\0\0\0"
                                                              "\x00\0\0\0\0\0\0\0"
                                                              "\x01\0\0\0\0\0\0\0",
                                                              24)));
    Dataset d;
    Status s = load_dataset(dir.path(), DatasetOptions{}, &d);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(d.train.x.shape, (Shape{3, 2}));
    EXPECT_EQ(d.train.x.values, (std::vector<float>{1, 2, 3, 4, 5, 6}));
    EXPECT_EQ(d.train.y.shape, (Shape{3, 1}));
    EXPECT_EQ(d.train.y.values, (std::vector<float>{2, 0, 1}));
    EXPECT_FALSE(d.has_test());

    // Inputs come from the test split, which this directory lacks.
    Array inputs;
    EXPECT_TRUE(fails_with(load_inputs(dir.path(), DatasetOptions{}, &inputs), dir.path(),
                           "no test split"));

    // Half a test split is a mistake, not an absent split.
    write_file(dir.file("x_test.npy"), npy_bytes(1, npy_dict("<f4", "(1, 2)"), x.substr(0, 8)));
    EXPECT_TRUE(
        fails_with(load_dataset(dir.path(), DatasetOptions{}, &d), dir.path(), "y_test.npy"));
    write_file(dir.file("y_test.npy"), npy_bytes(1, npy_dict("|u1", "(1,)"), "\x07"));
    s = load_dataset(dir.path(), DatasetOptions{}, &d);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(d.test.y.values, (std::vector<float>{7}));  // u1 labels are never scaled
    s = load_inputs(dir.path(), DatasetOptions{}, &inputs);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(inputs.values, (std::vector<float>{1, 2}));
}

TEST(DatasetTest, RejectsRowMismatchNamingBothSources) {
    TempDir dir;
    write_file(dir.file("x_train.npy"), npy_bytes(1, npy_dict("|u1", "(3, 2)"), "abcdef"));
    write_file(dir.file("y_train.npy"), npy_bytes(1, npy_dict("|u1", "(2,)"), "\x01\x02"));
    Dataset d;
    Status s = load_dataset(dir.path(), DatasetOptions{}, &d);
    EXPECT_TRUE(fails_with(s, dir.file("x_train.npy"), "3 rows"));
    EXPECT_TRUE(fails_with(s, dir.file("y_train.npy"), "has 2"));
}

TEST(DatasetTest, RejectsTestSplitOfAnotherShape) {
    TempDir dir;
    write_file(dir.file("x_train.npy"), npy_bytes(1, npy_dict("|u1", "(2, 3)"), "abcdef"));
    write_file(dir.file("y_train.npy"), npy_bytes(1, npy_dict("|u1", "(2,)"), "\x01\x02"));
    write_file(dir.file("x_test.npy"), npy_bytes(1, npy_dict("|u1", "(3, 2)"), "abcdef"));
    write_file(dir.file("y_test.npy"), npy_bytes(1, npy_dict("|u1", "(3,)"), "\x01\x02\x03"));
    Dataset d;
    EXPECT_TRUE(fails_with(load_dataset(dir.path(), DatasetOptions{}, &d), dir.file("x_test.npy"),
                           "differ in shape"));
}

TEST(DatasetTest, LoadsCsvWithSeparateTestFile) {
    TempDir dir;
    const std::string train = dir.file("train.csv");
    const std::string test = dir.file("test.csv");
    write_file(train, "x0,x1,label\n0.5,1,0\n2,3,1\n4,5,1\n");
    write_file(test, "x0,x1,label\n6,7,0\n");
    DatasetOptions options;
    options.test_spec = test;
    Dataset d;
    Status s = load_dataset(train, options, &d);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(d.train.x.shape, (Shape{3, 2}));
    EXPECT_EQ(d.train.y.values, (std::vector<float>{0, 1, 1}));
    ASSERT_TRUE(d.has_test());
    EXPECT_EQ(d.test.x.values, (std::vector<float>{6, 7}));
    EXPECT_EQ(d.test.y.values, (std::vector<float>{0}));

    // Without the label column named, every CSV column is an input; with it, it is dropped.
    Array inputs;
    ASSERT_TRUE(load_inputs(test, DatasetOptions{}, &inputs).is_ok());
    EXPECT_EQ(inputs.shape, (Shape{1, 3}));
    options = DatasetOptions{};
    options.csv.label_column = "label";
    ASSERT_TRUE(load_inputs(test, options, &inputs).is_ok());
    EXPECT_EQ(inputs.values, (std::vector<float>{6, 7}));

    // A broken test file is reported as such.
    write_file(test, "x0,x1,label\n6,7\n");
    options.test_spec = test;
    EXPECT_TRUE(fails_with(load_dataset(train, options, &d), test, "ragged"));
}

TEST(DatasetTest, LoadsSingleArrayInputs) {
    TempDir dir;
    const std::string npy = dir.file("x.npy");
    write_file(npy, npy_bytes(1, npy_dict("|u1", "(1, 2)"), std::string("\x00\xFF", 2)));
    Array inputs;
    Status s = load_inputs(npy, DatasetOptions{}, &inputs);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(inputs.values, (std::vector<float>{0, 1}));  // 8-bit inputs are scaled

    const std::string idx = dir.file("t10k-images-idx3-ubyte.gz");
    write_gz(idx, idx_bytes(0x08, {1, 1, 2}, std::string("\x00\x33", 2)));
    s = load_inputs(idx, DatasetOptions{}, &inputs);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(inputs.values, (std::vector<float>{0, 0.2f}));

    Dataset d;
    EXPECT_TRUE(fails_with(load_dataset(npy, DatasetOptions{}, &d), npy, "one array"));
}

TEST(DatasetTest, RejectsUnknownSpecs) {
    Dataset d;
    Status s = load_dataset("fashion_mnist", DatasetOptions{}, &d);
    EXPECT_TRUE(fails_with(s, "fashion_mnist", "neither a directory nor a file"));
    EXPECT_NE(s.message().find("fashion-mnist"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("mnist"), std::string::npos) << s.message();
    Array a;
    EXPECT_TRUE(fails_with(load_inputs("no/such/data.npy", DatasetOptions{}, &a),
                           "no/such/data.npy", "neither a directory nor a file"));

    TempDir dir;
    EXPECT_TRUE(
        fails_with(load_dataset(dir.path(), DatasetOptions{}, &d), dir.path(), "no dataset files"));
    const std::string txt = dir.file("notes.txt");
    write_file(txt, "hello");
    EXPECT_TRUE(fails_with(load_dataset(txt, DatasetOptions{}, &d), txt, "file type"));
    const std::string h5 = dir.file("missing.h5");
    EXPECT_TRUE(fails_with(load_dataset(h5 + ":/group", DatasetOptions{}, &d), h5, "no such file"));
}

// ---- HDF5 (the reader itself is tested with src/io; this checks the dataset wiring) -----------

// Writes `values` as a dataset `name` of `type` (float or int) into the open file or group.
template <typename T>
void write_h5(hid_t where, const char* name, hid_t type, const std::vector<hsize_t>& dims,
              const std::vector<T>& values) {
    const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
    const hid_t set = H5Dcreate2(where, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(set, 0) << name;
    EXPECT_GE(H5Dwrite(set, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
    H5Dclose(set);
    H5Sclose(space);
}

TEST(DatasetTest, LoadsHdf5File) {
    TempDir dir;
    const std::string path = dir.file("data.h5");
    const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    write_h5<float>(file, "x_train", H5T_NATIVE_FLOAT, {3, 2}, {1, 2, 3, 4, 5, 6});
    write_h5<int>(file, "y_train", H5T_NATIVE_INT, {3}, {0, 1, 2});
    const hid_t group = H5Gcreate2(file, "split", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    write_h5<float>(group, "x_train", H5T_NATIVE_FLOAT, {1, 2}, {7, 8});
    write_h5<int>(group, "y_train", H5T_NATIVE_INT, {1}, {1});
    write_h5<float>(group, "x_test", H5T_NATIVE_FLOAT, {1, 2}, {9, 10});
    write_h5<int>(group, "y_test", H5T_NATIVE_INT, {1}, {2});
    H5Gclose(group);
    H5Fclose(file);

    Dataset d;
    Status s = load_dataset(path, DatasetOptions{}, &d);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(d.train.x.shape, (Shape{3, 2}));
    EXPECT_EQ(d.train.x.values, (std::vector<float>{1, 2, 3, 4, 5, 6}));
    EXPECT_EQ(d.train.y.shape, (Shape{3, 1}));
    EXPECT_EQ(d.train.y.values, (std::vector<float>{0, 1, 2}));
    EXPECT_FALSE(d.has_test());

    s = load_dataset(path + ":/split", DatasetOptions{}, &d);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(d.train.x.values, (std::vector<float>{7, 8}));
    ASSERT_TRUE(d.has_test());
    EXPECT_EQ(d.test.y.values, (std::vector<float>{2}));

    Array inputs;
    s = load_inputs(path + ":/split/x_test", DatasetOptions{}, &inputs);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(inputs.values, (std::vector<float>{9, 10}));

    // A group without the expected datasets says what it does hold.
    EXPECT_TRUE(
        fails_with(load_dataset(path + ":/nothing", DatasetOptions{}, &d), path, "nothing"));
}

// ---- the installed Fashion-MNIST ---------------------------------------------------------------

TEST(DatasetTest, LoadsInstalledFashionMnist) {
    const std::string dir = "/usr/share/datasets/fashion-mnist";
    if (access(dir.c_str(), R_OK) != 0) {
        GTEST_SKIP() << dir << " is not installed (the system package with Fashion-MNIST)";
    }
    Dataset d;
    Status s = load_dataset("fashion-mnist", DatasetOptions{}, &d);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(d.name, "fashion-mnist");

    // Images keep their (N, 28, 28) shape; the model flattens them.
    EXPECT_EQ(d.train.x.shape, (Shape{60000, 28, 28}));
    ASSERT_EQ(d.train.x.values.size(), 60000u * 784u);
    const auto [lo, hi] = std::minmax_element(d.train.x.values.begin(), d.train.x.values.end());
    EXPECT_EQ(*lo, 0.0f);
    EXPECT_EQ(*hi, 1.0f);
    // The first image's pixel sum, as bytes, is 76247 (checked with Python's gzip module).
    const float first =
        std::accumulate(d.train.x.values.begin(), d.train.x.values.begin() + 784, 0.0f);
    EXPECT_NEAR(first, 76247.0f / 255.0f, 1e-2f);

    // Labels: (N, 1), integers 0..9, 6000 of each class, the first ones 9, 0, 0, 3.
    EXPECT_EQ(d.train.y.shape, (Shape{60000, 1}));
    std::vector<int> counts(10, 0);
    for (float label : d.train.y.values) {
        ASSERT_TRUE(label >= 0 && label <= 9 && label == static_cast<int>(label)) << label;
        ++counts[static_cast<int>(label)];
    }
    EXPECT_EQ(counts, std::vector<int>(10, 6000));
    EXPECT_EQ(std::vector<float>(d.train.y.values.begin(), d.train.y.values.begin() + 4),
              (std::vector<float>{9, 0, 0, 3}));

    ASSERT_TRUE(d.has_test());
    EXPECT_EQ(d.test.x.shape, (Shape{10000, 28, 28}));
    EXPECT_EQ(d.test.y.shape, (Shape{10000, 1}));
    EXPECT_EQ(d.test.y.values[0], 9.0f);

    // `kiln predict --input fashion-mnist` reads the test images alone, scaled the same way.
    Array inputs;
    s = load_inputs("fashion-mnist", DatasetOptions{}, &inputs);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(inputs.shape, (Shape{10000, 28, 28}));
    EXPECT_EQ(inputs.values, d.test.x.values);
}

}  // namespace
}  // namespace data
}  // namespace kiln
