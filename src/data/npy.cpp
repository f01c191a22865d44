// NPY reader and writer (numpy's `np.save` format).
//
// A file is the magic "\x93NUMPY", a major and minor version byte, the header length (u16 in
// version 1, u32 in versions 2 and 3, little-endian), a header that is a Python dict literal
// such as {'descr': '<f4', 'fortran_order': False, 'shape': (60000, 784), }, then the raw data.
// The reader parses that literal with a small strict parser rather than pattern matching, so a
// header that is not the dict numpy writes is reported, not half-understood.
#include "kiln/data.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

namespace kiln {
namespace data {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicBytes = 6;
constexpr int kMaxRank = 8;
// numpy itself refuses headers over 10,000 bytes by default; allow more but keep it bounded so
// a corrupt length never turns into a large allocation.
constexpr uint64_t kMaxHeaderBytes = 1 << 20;
// Data is read and converted in pieces of this size, so the file is never held twice.
constexpr size_t kChunkBytes = size_t{1} << 20;

// stdio rather than iostreams: errno is reliable after fopen and fread, so messages can say why.
struct FileCloser {
    void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

std::string shape_text(const Shape& shape) {
    std::string text = "(";
    for (size_t i = 0; i < shape.size(); ++i) {
        text += (i ? ", " : "") + std::to_string(shape[i]);
    }
    return text + (shape.size() == 1 ? ",)" : ")");
}

// ---- the header dict ---------------------------------------------------------------------------

// What the three keys of an NPY header say.
struct Header {
    std::string descr;
    bool fortran_order = false;
    Shape shape;
};

// A recursive-descent parser for the subset of Python literals an NPY header uses: a dict with
// string keys whose values are strings, True/False, or tuples of non-negative integers.
// Errors say what was expected and at which character, so a hand-edited header can be fixed.
class HeaderParser {
  public:
    explicit HeaderParser(const std::string& text) : text_(text) {}

    bool parse(Header* header) {
        bool have_descr = false, have_fortran = false, have_shape = false;
        skip_space();
        if (!consume('{'))
            return fail("expected '{'");
        // Keys in any order, a trailing comma allowed: both are valid Python and other writers
        // than numpy use them.
        for (;;) {
            skip_space();
            if (consume('}'))
                break;
            std::string key;
            if (!parse_string(&key))
                return false;
            skip_space();
            if (!consume(':'))
                return fail("expected ':' after '" + key + "'");
            skip_space();
            if (key == "descr") {
                if (have_descr)
                    return fail("duplicate key 'descr'");
                have_descr = true;
                if (peek() == '[') {
                    return fail("structured dtypes (a list for 'descr') are not supported");
                }
                if (!parse_string(&header->descr))
                    return false;
            } else if (key == "fortran_order") {
                if (have_fortran)
                    return fail("duplicate key 'fortran_order'");
                have_fortran = true;
                if (!parse_bool(&header->fortran_order))
                    return false;
            } else if (key == "shape") {
                if (have_shape)
                    return fail("duplicate key 'shape'");
                have_shape = true;
                if (!parse_shape(&header->shape))
                    return false;
            } else {
                // numpy refuses unknown keys as well: they would mean a format it does not know.
                return fail("unexpected key '" + key + "'");
            }
            skip_space();
            if (consume(','))
                continue;
            skip_space();
            if (consume('}'))
                break;
            return fail("expected ',' or '}'");
        }
        // The spaces and '\n' numpy pads with are all that may follow.
        skip_space();
        if (pos_ != text_.size())
            return fail("unexpected text after the dict");
        if (!have_descr)
            return fail("missing key 'descr'");
        if (!have_fortran)
            return fail("missing key 'fortran_order'");
        if (!have_shape)
            return fail("missing key 'shape'");
        return true;
    }

    const std::string& error() const { return error_; }

  private:
    char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
    bool consume(char c) {
        if (peek() != c)
            return false;
        ++pos_;
        return true;
    }
    void skip_space() {
        while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) {
            ++pos_;
        }
    }
    bool fail(const std::string& what) {
        error_ = what + " at character " + std::to_string(pos_);
        return false;
    }

    // 'text' or "text"; numpy never writes escapes in these strings, so none are accepted.
    bool parse_string(std::string* out) {
        const char quote = peek();
        if (quote != '\'' && quote != '"')
            return fail("expected a quoted string");
        const size_t end = text_.find(quote, pos_ + 1);
        if (end == std::string::npos)
            return fail("unterminated string");
        *out = text_.substr(pos_ + 1, end - pos_ - 1);
        if (out->find('\\') != std::string::npos)
            return fail("escapes in strings");
        pos_ = end + 1;
        return true;
    }

    bool parse_bool(bool* out) {
        if (text_.compare(pos_, 4, "True") == 0) {
            *out = true;
            pos_ += 4;
            return true;
        }
        if (text_.compare(pos_, 5, "False") == 0) {
            *out = false;
            pos_ += 5;
            return true;
        }
        return fail("expected True or False");
    }

    // (), (n,), (a, b, ...) with an optional trailing comma; Python 2 wrote longs as "3L".
    bool parse_shape(Shape* out) {
        if (!consume('('))
            return fail("expected a tuple for 'shape'");
        for (;;) {
            skip_space();
            if (consume(')'))
                return true;
            if (!std::isdigit(static_cast<unsigned char>(peek()))) {
                return fail("expected a non-negative integer in 'shape'");
            }
            uint64_t dim = 0;
            while (std::isdigit(static_cast<unsigned char>(peek()))) {
                const uint64_t digit = static_cast<uint64_t>(text_[pos_++] - '0');
                if (__builtin_mul_overflow(dim, 10, &dim) ||
                    __builtin_add_overflow(dim, digit, &dim) || dim > INT64_MAX) {
                    return fail("dimension too large in 'shape'");
                }
            }
            consume('L');
            if (out->size() == kMaxRank) {
                return fail("more than " + std::to_string(kMaxRank) + " dimensions in 'shape'");
            }
            out->push_back(static_cast<int64_t>(dim));
            skip_space();
            if (consume(','))
                continue;
            skip_space();
            if (consume(')'))
                return true;
            return fail("expected ',' or ')' in 'shape'");
        }
    }

    const std::string& text_;
    size_t pos_ = 0;
    std::string error_;
};

// ---- element types -----------------------------------------------------------------------------

// An NPY element type: what the bytes mean and how many there are.
enum class Kind { kBool, kInt, kUInt, kFloat };

struct ElementType {
    Kind kind;
    size_t size;
};

constexpr bool kHostLittleEndian = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;

// Maps a descr such as "<f4" to an element type, or explains why it is not supported.
Status parse_descr(const std::string& path, const std::string& descr, ElementType* type) {
    const std::string supported = "|u1 |i1 |b1 <i2 <i4 <i8 <u2 <u4 <u8 <f4 <f8";
    if (descr.size() != 3) {
        return Status::unsupported(path + ": unsupported NPY dtype '" + descr +
                                   "' (supported: " + supported + ")");
    }
    const char order = descr[0], kind = descr[1], size = descr[2];
    if (kind == 'b' && size == '1') {
        *type = {Kind::kBool, 1};
    } else if ((kind == 'i' || kind == 'u') &&
               (size == '1' || size == '2' || size == '4' || size == '8')) {
        *type = {kind == 'i' ? Kind::kInt : Kind::kUInt, static_cast<size_t>(size - '0')};
    } else if (kind == 'f' && (size == '4' || size == '8')) {
        *type = {Kind::kFloat, static_cast<size_t>(size - '0')};
    } else {
        return Status::unsupported(path + ": unsupported NPY dtype '" + descr +
                                   "' (supported: " + supported + ")");
    }

    // Byte order matters only for multi-byte types. '=' is the reading machine's own order,
    // as numpy defines it; '|' ("not applicable") cannot describe a multi-byte type.
    if (type->size == 1) {
        if (order != '|' && order != '<' && order != '>' && order != '=') {
            return Status::unsupported(path + ": bad byte order in NPY dtype '" + descr + "'");
        }
        return Status::ok();
    }
    if (order == '<' || (order == '=' && kHostLittleEndian))
        return Status::ok();
    if (order == '>' || order == '=') {
        return Status::unsupported(path + ": big-endian NPY data ('" + descr +
                                   "') is not supported; re-save it little-endian, e.g. "
                                   "np.save(f, a.astype(a.dtype.newbyteorder('<')))");
    }
    return Status::unsupported(path + ": ambiguous byte order in NPY dtype '" + descr +
                               "' (expected '<')");
}

// An unsigned little-endian integer of `n` <= 8 bytes.
uint64_t load_le(const unsigned char* p, size_t n) {
    uint64_t v = 0;
    for (size_t i = n; i > 0; --i)
        v = (v << 8) | p[i - 1];
    return v;
}

// Converts `n` little-endian elements to float. Bytes are assembled explicitly, so this is
// correct on any host byte order.
void convert_le(const ElementType& type, const unsigned char* src, size_t n, float* dst) {
    const size_t w = type.size;
    for (size_t i = 0; i < n; ++i) {
        const uint64_t bits = load_le(src + i * w, w);
        switch (type.kind) {
            case Kind::kBool:
                dst[i] = bits != 0 ? 1.0f : 0.0f;
                break;
            case Kind::kUInt:
                dst[i] = static_cast<float>(bits);
                break;
            case Kind::kInt: {
                // Sign-extend from w bytes.
                const unsigned shift = static_cast<unsigned>(64 - 8 * w);
                dst[i] = static_cast<float>(static_cast<int64_t>(bits << shift) >> shift);
                break;
            }
            case Kind::kFloat:
                if (w == 4) {
                    const uint32_t b32 = static_cast<uint32_t>(bits);
                    std::memcpy(&dst[i], &b32, sizeof(float));
                } else {
                    double d;
                    std::memcpy(&d, &bits, sizeof(double));
                    dst[i] = static_cast<float>(d);
                }
                break;
        }
    }
}

// Opens `path` and reports its size, which bounds every length the header declares.
Status open_for_reading(const std::string& path, File* file, uint64_t* file_bytes) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        const int err = errno;
        if (err == ENOENT)
            return Status::not_found(path + ": no such file");
        return Status::io_error(path + ": cannot open: " + std::strerror(err));
    }
    if (!S_ISREG(st.st_mode))
        return Status::invalid_argument(path + ": not a regular file");
    file->reset(std::fopen(path.c_str(), "rb"));
    if (!*file)
        return Status::io_error(path + ": cannot open: " + std::strerror(errno));
    *file_bytes = static_cast<uint64_t>(st.st_size);
    return Status::ok();
}

// Reads exactly `n` bytes; a short read is a truncated file, described by `what`.
Status read_exact(std::FILE* f, const std::string& path, void* dst, size_t n,
                  const std::string& what) {
    const size_t got = std::fread(dst, 1, n, f);
    if (got == n)
        return Status::ok();
    if (std::ferror(f))
        return Status::io_error(path + ": read failed: " + std::strerror(errno));
    return Status::corruption(path + ": truncated NPY " + what + " (" + std::to_string(got) +
                              " of " + std::to_string(n) + " bytes present)");
}

}  // namespace

Status load_npy(const std::string& path, Array* out) {
    File file;
    uint64_t file_bytes = 0;
    Status s = open_for_reading(path, &file, &file_bytes);
    if (!s.is_ok())
        return s;

    // Magic and version.
    unsigned char preamble[kMagicBytes + 2];
    s = read_exact(file.get(), path, preamble, sizeof(preamble), "magic");
    if (!s.is_ok())
        return s;
    if (std::memcmp(preamble, kMagic, kMagicBytes) != 0) {
        return Status::corruption(path + ": bad magic: not an NPY file (expected \\x93NUMPY)");
    }
    const int major = preamble[kMagicBytes], minor = preamble[kMagicBytes + 1];
    if (major < 1 || major > 3 || minor != 0) {
        return Status::unsupported(path + ": unsupported NPY version " + std::to_string(major) +
                                   "." + std::to_string(minor) + " (supported: 1.0, 2.0, 3.0)");
    }

    // Header length, then the header, bounded by the file before it is allocated.
    const size_t len_bytes = major == 1 ? 2 : 4;
    unsigned char len_field[4];
    s = read_exact(file.get(), path, len_field, len_bytes, "header length");
    if (!s.is_ok())
        return s;
    const uint64_t header_len = load_le(len_field, len_bytes);
    const uint64_t data_offset = kMagicBytes + 2 + len_bytes + header_len;
    if (header_len > kMaxHeaderBytes) {
        return Status::corruption(path + ": NPY header length " + std::to_string(header_len) +
                                  " is over the " + std::to_string(kMaxHeaderBytes) +
                                  "-byte limit (a corrupt length field?)");
    }
    if (data_offset > file_bytes) {
        return Status::corruption(path + ": truncated NPY header (declares " +
                                  std::to_string(header_len) + " bytes, the file has " +
                                  std::to_string(file_bytes) + " in all)");
    }
    std::string text(static_cast<size_t>(header_len), '\0');
    s = read_exact(file.get(), path, text.data(), text.size(), "header");
    if (!s.is_ok())
        return s;

    // The dict.
    Header header;
    HeaderParser parser(text);
    if (!parser.parse(&header)) {
        return Status::corruption(path + ": bad NPY header dict: " + parser.error());
    }
    if (header.fortran_order) {
        return Status::unsupported(path +
                                   ": fortran_order=True (column-major) NPY arrays are "
                                   "not supported; save np.ascontiguousarray(a) instead");
    }
    // A scalar has no rows to be a dataset or a batch of inputs.
    if (header.shape.empty()) {
        return Status::unsupported(path + ": 0-d (scalar) NPY arrays are not supported");
    }
    ElementType type{};
    s = parse_descr(path, header.descr, &type);
    if (!s.is_ok())
        return s;

    // Declared size against the bytes present, before allocating for it.
    uint64_t elements = 1;
    for (int64_t dim : header.shape) {
        if (__builtin_mul_overflow(elements, static_cast<uint64_t>(dim), &elements)) {
            return Status::corruption(path + ": NPY shape " + shape_text(header.shape) +
                                      " overflows a 64-bit element count");
        }
    }
    uint64_t data_bytes = 0;
    if (__builtin_mul_overflow(elements, type.size, &data_bytes) ||
        elements > static_cast<uint64_t>(PTRDIFF_MAX) / sizeof(float)) {
        return Status::corruption(path + ": NPY shape " + shape_text(header.shape) +
                                  " is too large to address");
    }
    // Exact, not "at least": extra bytes mean the header's shape is wrong, and reading only a
    // prefix of the data would hide that.
    const uint64_t present = file_bytes - data_offset;
    if (present != data_bytes) {
        return Status::corruption(
            path + ": size mismatch: shape " + shape_text(header.shape) + " of '" + header.descr +
            "' declares " + std::to_string(data_bytes) + " data bytes, file has " +
            std::to_string(present) + (present < data_bytes ? " (truncated)" : ""));
    }

    // Data, converted chunk by chunk into the array allocated once.
    Array result;
    result.shape = header.shape;
    result.source = path;
    result.from_uint8 = type.kind == Kind::kUInt && type.size == 1;
    try {
        result.values.resize(static_cast<size_t>(elements));
        std::vector<unsigned char> chunk(std::min<uint64_t>(kChunkBytes, data_bytes));
        // kChunkBytes is a multiple of every element size, so no element straddles two chunks.
        size_t done = 0;
        while (done < elements) {
            const size_t n = std::min(elements - done, chunk.size() / type.size);
            s = read_exact(file.get(), path, chunk.data(), n * type.size, "data");
            if (!s.is_ok())
                return s;
            convert_le(type, chunk.data(), n, result.values.data() + done);
            done += n;
        }
    } catch (const std::bad_alloc&) {
        return Status::io_error(path + ": out of memory reading shape " + shape_text(header.shape));
    }

    *out = std::move(result);
    return Status::ok();
}

Status save_npy(const std::string& path, const Shape& shape, const float* values) {
    // Check the shape: non-negative dims and a count we can write.
    uint64_t elements = 1;
    for (int64_t dim : shape) {
        if (dim < 0 || __builtin_mul_overflow(elements, static_cast<uint64_t>(dim), &elements)) {
            return Status::invalid_argument(path + ": cannot save shape " + shape_text(shape));
        }
    }
    if (elements > 0 && values == nullptr) {
        return Status::invalid_argument(path + ": no values to save for shape " +
                                        shape_text(shape));
    }

    // The header dict, padded with spaces and ended by '\n' so that the data starts at a
    // multiple of 64 bytes, as the format asks (it lets readers memory-map aligned data).
    std::string dims;
    for (size_t i = 0; i < shape.size(); ++i)
        dims += (i ? ", " : "") + std::to_string(shape[i]);
    if (shape.size() == 1)
        dims += ",";
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
    const size_t preamble = kMagicBytes + 2 + 2;
    const size_t unpadded = preamble + header.size() + 1;
    header.append((64 - unpadded % 64) % 64, ' ');
    header += '\n';
    if (header.size() > 0xFFFF) {
        return Status::invalid_argument(path + ": shape " + shape_text(shape) +
                                        " does not fit an NPY 1.0 header");
    }

    // Write magic, version 1.0, the little-endian header length, the header, then the data.
    // TODO(data): write under a temporary name and rename, as checkpoints do, so that a crash
    // cannot leave a partial predictions file; not needed yet for `kiln predict --output`.
    File file(std::fopen(path.c_str(), "wb"));
    if (!file)
        return Status::io_error(path + ": cannot create: " + std::strerror(errno));
    std::string head(kMagic, kMagicBytes);
    head += '\x01';
    head += '\x00';
    head += static_cast<char>(header.size() & 0xFF);
    head += static_cast<char>(header.size() >> 8);
    head += header;
    bool ok = std::fwrite(head.data(), 1, head.size(), file.get()) == head.size();
    if (kHostLittleEndian) {
        // No call for an empty array: `values` may then be null, which fwrite does not allow.
        ok = ok && (elements == 0 ||
                    std::fwrite(values, sizeof(float), elements, file.get()) == elements);
    } else {
        // Big-endian host: swap each value into the little-endian order the header declares.
        for (uint64_t i = 0; ok && i < elements; ++i) {
            uint32_t bits;
            std::memcpy(&bits, &values[i], sizeof(bits));
            const unsigned char le[4] = {
                static_cast<unsigned char>(bits), static_cast<unsigned char>(bits >> 8),
                static_cast<unsigned char>(bits >> 16), static_cast<unsigned char>(bits >> 24)};
            ok = std::fwrite(le, 1, 4, file.get()) == 4;
        }
    }
    // fclose flushes the buffer, so its result is part of whether the write succeeded.
    const int write_errno = errno;
    const bool closed = std::fclose(file.release()) == 0;
    if (!ok || !closed) {
        const std::string why = std::strerror(ok ? errno : write_errno);
        std::remove(path.c_str());  // a partial file would only fail later, less clearly
        return Status::io_error(path + ": write failed: " + why);
    }
    return Status::ok();
}

}  // namespace data
}  // namespace kiln
