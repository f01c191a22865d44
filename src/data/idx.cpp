// IDX reader (the MNIST format), plain or gzip-compressed.
//
// Layout: two zero bytes, a dtype byte, a rank byte, `rank` big-endian u32 dimensions, then the
// elements, big-endian, row-major. Nothing in the file is trusted: the rank, every dimension and
// their product are checked, and the declared size is compared with the bytes that are really
// there before anything of that size is allocated.
#include "kiln/data.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include <zlib.h>

namespace kiln {
namespace data {
namespace {

constexpr int kMaxRank = 8;
// Data is read and converted in pieces of this size, so a file is never held twice (as bytes
// and as floats) and a gzip stream never makes us allocate ahead of what it has yielded.
constexpr size_t kChunkBytes = size_t{1} << 20;
// Deflate cannot expand data by more than 1032:1 (zlib's FAQ), so a declared size beyond that
// multiple of the compressed file size is impossible and is rejected before reading any data.
constexpr uint64_t kMaxDeflateRatio = 1032;

// "(60000, 28, 28)", for messages.
std::string shape_text(const Shape& shape) {
    std::string text = "(";
    for (size_t i = 0; i < shape.size(); ++i) {
        text += (i ? ", " : "") + std::to_string(shape[i]);
    }
    return text + ")";
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A sequential byte source over a plain or gzip file, so that one parser serves both. (gzread
// would read a plain file too, but only stdio lets the exact size be checked up front.)
// `read` fills `n` bytes unless the data ends first; `*got` says how many arrived.
class ByteSource {
  public:
    virtual ~ByteSource() = default;
    [[nodiscard]] virtual Status read(unsigned char* dst, size_t n, size_t* got) = 0;
};

class PlainSource : public ByteSource {
  public:
    PlainSource(const std::string& path, std::FILE* file) : path_(path), file_(file) {}
    ~PlainSource() override { std::fclose(file_); }

    Status read(unsigned char* dst, size_t n, size_t* got) override {
        *got = std::fread(dst, 1, n, file_);
        if (*got < n && std::ferror(file_)) {
            return Status::io_error(path_ + ": read failed: " + std::strerror(errno));
        }
        return Status::ok();
    }

  private:
    std::string path_;
    std::FILE* file_;
};

class GzipSource : public ByteSource {
  public:
    GzipSource(const std::string& path, gzFile file) : path_(path), file_(file) {}
    ~GzipSource() override { gzclose(file_); }

    Status read(unsigned char* dst, size_t n, size_t* got) override {
        *got = 0;
        while (*got < n) {
            // gzread takes an unsigned count; the chunks we ask for are far below its limit.
            const unsigned want = static_cast<unsigned>(std::min<size_t>(n - *got, 1u << 30));
            const int r = gzread(file_, dst + *got, want);
            if (r < 0)
                return error();
            if (r == 0)
                break;
            *got += static_cast<size_t>(r);
        }
        // A stream cut short reads as a short count; zlib records why (Z_BUF_ERROR), and a
        // corrupt stream as Z_DATA_ERROR. Either is a broken file, not the end of the data.
        int errnum = Z_OK;
        gzerror(file_, &errnum);
        if (errnum != Z_OK && errnum != Z_STREAM_END)
            return error();
        return Status::ok();
    }

  private:
    Status error() {
        int errnum = Z_OK;
        const char* msg = gzerror(file_, &errnum);
        if (errnum == Z_ERRNO) {
            return Status::io_error(path_ + ": read failed: " + std::strerror(errno));
        }
        return Status::corruption(path_ + ": corrupt or truncated gzip data (" +
                                  std::string(msg ? msg : "zlib error") + ")");
    }

    std::string path_;
    gzFile file_;
};

// Opens `path`, checking first that it is a regular file so that errors name the real problem.
// `*file_bytes` is the size on disk (compressed size for `.gz`).
Status open_source(const std::string& path, std::unique_ptr<ByteSource>* source,
                   uint64_t* file_bytes) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        const int err = errno;
        if (err == ENOENT)
            return Status::not_found(path + ": no such file");
        return Status::io_error(path + ": cannot open: " + std::strerror(err));
    }
    if (!S_ISREG(st.st_mode))
        return Status::invalid_argument(path + ": not a regular file");
    *file_bytes = static_cast<uint64_t>(st.st_size);

    if (ends_with(path, ".gz")) {
        gzFile gz = gzopen(path.c_str(), "rb");
        if (!gz)
            return Status::io_error(path + ": cannot open: " + std::strerror(errno));
        // Larger than the 8 KiB default: the images file inflates to 47 MB.
        gzbuffer(gz, 128 * 1024);
        source->reset(new GzipSource(path, gz));
    } else {
        std::FILE* f = std::fopen(path.c_str(), "rb");
        if (!f)
            return Status::io_error(path + ": cannot open: " + std::strerror(errno));
        source->reset(new PlainSource(path, f));
    }
    return Status::ok();
}

struct IdxType {
    const char* name;
    size_t size;
};

// The element types the IDX format defines, by their dtype byte; size 0 means "not defined".
IdxType idx_type(unsigned char code) {
    switch (code) {
        case 0x08:
            return {"unsigned byte", 1};
        case 0x09:
            return {"signed byte", 1};
        case 0x0B:
            return {"short", 2};
        case 0x0C:
            return {"int", 4};
        case 0x0D:
            return {"float", 4};
        case 0x0E:
            return {"double", 8};
        default:
            return {nullptr, 0};
    }
}

// An unsigned big-endian integer of `n` <= 8 bytes.
uint64_t load_be(const unsigned char* p, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i)
        v = (v << 8) | p[i];
    return v;
}

// Converts `n` big-endian elements of type `code` to float. Bytes are assembled explicitly, so
// this is correct on any host byte order.
void convert_be(unsigned char code, const unsigned char* src, size_t n, float* dst) {
    switch (code) {
        case 0x08:
            for (size_t i = 0; i < n; ++i)
                dst[i] = static_cast<float>(src[i]);
            break;
        case 0x09:
            for (size_t i = 0; i < n; ++i)
                dst[i] = static_cast<float>(static_cast<int8_t>(src[i]));
            break;
        case 0x0B:
            for (size_t i = 0; i < n; ++i) {
                dst[i] = static_cast<float>(static_cast<int16_t>(load_be(src + 2 * i, 2)));
            }
            break;
        case 0x0C:
            for (size_t i = 0; i < n; ++i) {
                dst[i] = static_cast<float>(static_cast<int32_t>(load_be(src + 4 * i, 4)));
            }
            break;
        case 0x0D:
            for (size_t i = 0; i < n; ++i) {
                const uint32_t bits = static_cast<uint32_t>(load_be(src + 4 * i, 4));
                std::memcpy(&dst[i], &bits, sizeof(float));
            }
            break;
        case 0x0E:
            for (size_t i = 0; i < n; ++i) {
                const uint64_t bits = load_be(src + 8 * i, 8);
                double d;
                std::memcpy(&d, &bits, sizeof(double));
                dst[i] = static_cast<float>(d);
            }
            break;
        default:
            break;  // rejected by the header check before any data is read
    }
}

}  // namespace

Status load_idx(const std::string& path, Array* out) {
    // Open.
    std::unique_ptr<ByteSource> source;
    uint64_t file_bytes = 0;
    const bool gzip = ends_with(path, ".gz");
    Status s = open_source(path, &source, &file_bytes);
    if (!s.is_ok())
        return s;

    // Magic: two zero bytes, the dtype, the rank.
    unsigned char magic[4];
    size_t got = 0;
    s = source->read(magic, sizeof(magic), &got);
    if (!s.is_ok())
        return s;
    if (got < sizeof(magic)) {
        return Status::corruption(path + ": truncated IDX header (" + std::to_string(got) +
                                  " bytes; the magic number alone is 4)");
    }
    if (magic[0] != 0 || magic[1] != 0) {
        char hex[64];
        std::snprintf(hex, sizeof(hex), "0x%02x 0x%02x", magic[0], magic[1]);
        return Status::corruption(path + ": bad magic: not an IDX file (starts with " + hex +
                                  ", expected 0x00 0x00)");
    }
    const IdxType type = idx_type(magic[2]);
    if (type.size == 0) {
        char hex[8];
        std::snprintf(hex, sizeof(hex), "0x%02x", magic[2]);
        return Status::unsupported(path + ": unknown IDX dtype byte " + hex +
                                   " (known: 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E)");
    }
    const int rank = magic[3];
    if (rank < 1 || rank > kMaxRank) {
        return Status::corruption(path + ": invalid IDX rank " + std::to_string(rank) +
                                  " (expected 1.." + std::to_string(kMaxRank) + ")");
    }

    // Dimensions, and their product checked for overflow in elements and in bytes.
    unsigned char dim_bytes[4 * kMaxRank];
    s = source->read(dim_bytes, 4 * static_cast<size_t>(rank), &got);
    if (!s.is_ok())
        return s;
    if (got < 4 * static_cast<size_t>(rank)) {
        return Status::corruption(path + ": truncated IDX header: rank " + std::to_string(rank) +
                                  " needs " + std::to_string(4 * rank) + " bytes of dimensions, " +
                                  std::to_string(got) + " present");
    }
    // Each dimension is a u32, so it fits Shape's int64_t; only the product can overflow.
    Shape shape;
    uint64_t elements = 1;
    for (int d = 0; d < rank; ++d) {
        const uint64_t dim = load_be(dim_bytes + 4 * d, 4);
        shape.push_back(static_cast<int64_t>(dim));
        if (__builtin_mul_overflow(elements, dim, &elements)) {
            return Status::corruption(path + ": IDX dimensions " + shape_text(shape) +
                                      " overflow a 64-bit element count");
        }
    }
    // The converted array is 4 bytes per element whatever the stored type, so that is the size
    // that must be addressable, not only the stored one.
    uint64_t data_bytes = 0;
    if (__builtin_mul_overflow(elements, type.size, &data_bytes) ||
        elements > static_cast<uint64_t>(PTRDIFF_MAX) / sizeof(float)) {
        return Status::corruption(path + ": IDX shape " + shape_text(shape) +
                                  " is too large to address");
    }

    // The declared size against the bytes available, before allocating for it.
    const uint64_t header_bytes = 4 + 4 * static_cast<uint64_t>(rank);
    // A plain file's size answers exactly; a gzip file's only bounds the inflated size (its
    // trailer holds the size modulo 2^32, of the last member only, so it cannot be trusted).
    if (!gzip) {
        const uint64_t present = file_bytes - header_bytes;
        if (present != data_bytes) {
            return Status::corruption(
                path + ": size mismatch: shape " + shape_text(shape) + " of " + type.name +
                " declares " + std::to_string(data_bytes) + " data bytes, file has " +
                std::to_string(present) + (present < data_bytes ? " (truncated)" : ""));
        }
    } else if (data_bytes / kMaxDeflateRatio > file_bytes) {
        return Status::corruption(path + ": size mismatch: shape " + shape_text(shape) +
                                  " declares " + std::to_string(data_bytes) +
                                  " data bytes, more than a " + std::to_string(file_bytes) +
                                  "-byte gzip file can inflate to");
    }

    // Data, converted chunk by chunk. For a plain file the size is now known to be right and
    // the whole array is reserved at once; for gzip the array grows only as data arrives.
    Array result;
    result.shape = shape;
    result.source = path;
    result.from_uint8 = magic[2] == 0x08;
    try {
        result.values.reserve(gzip ? std::min<uint64_t>(elements, kChunkBytes) : elements);
        // kChunkBytes is a multiple of every element size, so no element straddles two reads.
        std::vector<unsigned char> chunk(std::min<uint64_t>(kChunkBytes, data_bytes));
        uint64_t remaining = data_bytes;
        while (remaining > 0) {
            const size_t want = static_cast<size_t>(std::min<uint64_t>(remaining, chunk.size()));
            s = source->read(chunk.data(), want, &got);
            if (!s.is_ok())
                return s;
            if (got < want) {
                return Status::corruption(
                    path + ": truncated IDX data: shape " + shape_text(shape) + " declares " +
                    std::to_string(data_bytes) + " data bytes, the data ends after " +
                    std::to_string(data_bytes - remaining + got));
            }
            const size_t n = want / type.size;
            const size_t old_size = result.values.size();
            result.values.resize(old_size + n);
            convert_be(magic[2], chunk.data(), n, result.values.data() + old_size);
            remaining -= want;
        }
    } catch (const std::bad_alloc&) {
        // A valid but huge file (or a gzip stream that keeps inflating) on a small machine.
        return Status::io_error(path + ": out of memory reading shape " + shape_text(shape));
    }

    // Anything after the declared data means the header and the data disagree. (A plain file's
    // size was compared exactly above; a gzip stream's length is only known by reading on.)
    if (gzip) {
        unsigned char extra;
        s = source->read(&extra, 1, &got);
        if (!s.is_ok())
            return s;
        if (got != 0) {
            return Status::corruption(path + ": size mismatch: data continues past the " +
                                      std::to_string(data_bytes) + " bytes that shape " +
                                      shape_text(shape) + " declares");
        }
    }

    *out = std::move(result);
    return Status::ok();
}

}  // namespace data
}  // namespace kiln
