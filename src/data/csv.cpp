// CSV reader: numeric tables with an optional header row and one label column.
//
// Every field of every data row must be a finite number, and every row must have as many fields
// as the first; the first field that breaks either rule is reported by line and column, because
// a silent NaN or a shifted column would only show up later as a model that does not learn.
#include "kiln/data.h"

#include <sys/stat.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln {
namespace data {
namespace {

// Bounds on one row, so that a malformed file (an unmatched quote, no line ends at all, a
// runaway row) is refused after a bounded read instead of being buffered whole, as CPython's
// csv module bounds a field for the same reason. The widest real tables (a 224 x 224 x 3 image
// per row) stay below both.
constexpr size_t kMaxLineBytes = size_t{8} << 20;
constexpr size_t kMaxColumns = size_t{1} << 18;

// Reads a stream line by line in blocks, so that a line is never held beyond kMaxLineBytes
// (std::getline would buffer a line of any length).
class LineReader {
  public:
    explicit LineReader(std::istream& in) : in_(in), block_(size_t{64} << 10) {}

    // The next line, without its '\n'; false at the end of the input. A line longer than
    // kMaxLineBytes is cut there, with *too_long set, and the rest of it left unread.
    bool next(std::string* line, bool* too_long) {
        line->clear();
        *too_long = false;
        for (;;) {
            if (pos_ == end_) {
                in_.read(block_.data(), static_cast<std::streamsize>(block_.size()));
                end_ = static_cast<size_t>(in_.gcount());
                pos_ = 0;
                if (end_ == 0)
                    return !line->empty();
            }
            const char* start = block_.data() + pos_;
            const auto* newline = static_cast<const char*>(std::memchr(start, '\n', end_ - pos_));
            const size_t take = newline ? static_cast<size_t>(newline - start) : end_ - pos_;
            if (take > kMaxLineBytes - line->size()) {
                *too_long = true;
                return true;
            }
            line->append(start, take);
            pos_ += take;
            if (newline) {
                ++pos_;
                return true;
            }
        }
    }

  private:
    std::istream& in_;
    std::vector<char> block_;
    size_t pos_ = 0, end_ = 0;
};

// Spaces and tabs around a field are not part of it, unless one of them is the delimiter.
bool is_blank(char c, char delimiter) {
    return (c == ' ' || c == '\t') && c != delimiter;
}

// Splits one line into fields. A field may be quoted ("a,b" or "say ""hi"""), as spreadsheets
// write header names; quoted fields spanning lines are not supported and read as unterminated.
bool split_row(std::string_view line, char delimiter, std::vector<std::string>* fields,
               std::string* why) {
    fields->clear();
    size_t i = 0;
    const size_t n = line.size();
    for (;;) {
        while (i < n && is_blank(line[i], delimiter))
            ++i;
        std::string field;
        if (i < n && line[i] == '"') {
            // Quoted: up to the closing quote, with "" standing for one quote.
            ++i;
            for (;;) {
                if (i == n) {
                    *why = "unterminated quoted field";
                    return false;
                }
                if (line[i] == '"') {
                    if (i + 1 < n && line[i + 1] == '"') {
                        field += '"';
                        i += 2;
                        continue;
                    }
                    ++i;
                    break;
                }
                field += line[i++];
            }
            while (i < n && is_blank(line[i], delimiter))
                ++i;
            if (i < n && line[i] != delimiter) {
                *why =
                    "text after the closing quote of field " + std::to_string(fields->size() + 1);
                return false;
            }
        } else {
            size_t end = line.find(delimiter, i);
            if (end == std::string_view::npos)
                end = n;
            size_t last = end;
            while (last > i && is_blank(line[last - 1], delimiter))
                --last;
            field.assign(line.substr(i, last - i));
            i = end;
        }
        if (fields->size() == kMaxColumns) {
            *why = "more than " + std::to_string(kMaxColumns) + " columns, more than kiln reads";
            return false;
        }
        fields->push_back(std::move(field));
        // Here i is at a delimiter or at the end; a trailing delimiter yields an empty field.
        if (i >= n)
            return true;
        ++i;
    }
}

// Parses a whole field as a finite float32. from_chars is used because it ignores the C locale:
// under a German locale strtod stops at the '.' of "0.5".
bool parse_number(const std::string& field, float* value) {
    const char* first = field.data();
    const char* last = field.data() + field.size();
    if (first != last && *first == '+')
        ++first;  // from_chars does not take a leading '+'
    if (first == last)
        return false;
    const auto [end, ec] = std::from_chars(first, last, *value);
    return ec == std::errc() && end == last && std::isfinite(*value);
}

// A column index as text; nine digits at most, so that stoul cannot overflow.
bool is_index(const std::string& s) {
    if (s.empty() || s.size() > 9)
        return false;
    for (char c : s) {
        if (c < '0' || c > '9')
            return false;
    }
    return true;
}

std::string join(const std::vector<std::string>& names) {
    std::string text;
    for (size_t i = 0; i < names.size(); ++i)
        text += (i ? ", " : "") + names[i];
    return text;
}

// Finds the label column: a header name first, then a 0-based index; with nothing asked for,
// the column named "label", else column 0 (the MNIST-as-CSV convention).
Status resolve_label(const std::string& path, const std::string& want,
                     const std::vector<std::string>& header, size_t n_cols, size_t* label_col) {
    if (n_cols < 2) {
        return Status::invalid_argument(path +
                                        ": only one column, so no features besides the "
                                        "label");
    }
    const std::string name = want.empty() ? "label" : want;
    for (size_t c = 0; c < header.size(); ++c) {
        if (header[c] == name) {
            *label_col = c;
            return Status::ok();
        }
    }
    if (want.empty()) {
        *label_col = 0;
        return Status::ok();
    }
    if (is_index(want)) {
        *label_col = static_cast<size_t>(std::stoul(want));
        if (*label_col >= n_cols) {
            return Status::invalid_argument(path + ": label column index " + want +
                                            " is out of range (0-based; the file has " +
                                            std::to_string(n_cols) + " columns)");
        }
        return Status::ok();
    }
    if (header.empty()) {
        return Status::invalid_argument(path + ": label column '" + want +
                                        "' is not a 0-based "
                                        "index and the file has no header row to name it");
    }
    return Status::invalid_argument(path + ": no column named '" + want +
                                    "' (header: " + join(header) + ")");
}

// Reads `path`; with `label` set, one column goes to `label_out` (rows × 1) and the rest to
// `x`, otherwise every column is a feature.
Status read_csv(const std::string& path, const CsvOptions& options, bool label, Array* x,
                Array* label_out) {
    // A quote or line end as delimiter would make rows impossible to split unambiguously.
    if (options.delimiter == '"' || options.delimiter == '\n' || options.delimiter == '\r') {
        return Status::invalid_argument(path + ": invalid CSV delimiter");
    }

    // Open, after checking that the path is a regular file (a directory would "open" fine).
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        const int err = errno;
        if (err == ENOENT)
            return Status::not_found(path + ": no such file");
        return Status::io_error(path + ": cannot open: " + std::strerror(err));
    }
    if (!S_ISREG(st.st_mode))
        return Status::invalid_argument(path + ": not a regular file");
    std::ifstream in(path, std::ios::binary);
    if (!in)
        return Status::io_error(path + ": cannot open: " + std::strerror(errno));

    // Values are appended row by row; the shapes are set once the row count is known.
    std::vector<std::string> fields;
    std::vector<std::string> header;  // empty when the file has none
    std::string line, why;
    bool too_long = false;
    int64_t line_no = 0;
    size_t n_cols = 0;
    size_t label_col = 0;
    int64_t rows = 0;
    Array features, labels;
    bool first_row = true;

    // Line by line rather than the whole file at once: a large CSV is then held only as floats.
    LineReader lines(in);
    while (lines.next(&line, &too_long)) {
        ++line_no;
        if (too_long) {
            return Status::corruption(path + ": line " + std::to_string(line_no) +
                                      " is longer than " + std::to_string(kMaxLineBytes >> 20) +
                                      " MiB (an unmatched quote, or no line ends?)");
        }
        // Tolerate Windows line ends and the byte-order mark spreadsheet programs write.
        if (!line.empty() && line.back() == '\r')
            line.pop_back();
        if (line_no == 1 && line.compare(0, 3, "\xEF\xBB\xBF") == 0)
            line.erase(0, 3);
        if (line.find_first_not_of(" \t") == std::string::npos)
            continue;  // blank line

        const auto where = [&] { return path + ": line " + std::to_string(line_no); };
        if (!split_row(line, options.delimiter, &fields, &why)) {
            return Status::corruption(where() + ": " + why);
        }

        // The first row fixes the column count and may be the header.
        if (first_row) {
            first_row = false;
            n_cols = fields.size();
            bool has_header = options.header == CsvOptions::Header::kYes;
            if (options.header == CsvOptions::Header::kAuto) {
                // Only text marks a header: an empty field is a data error to report, and
                // pandas writes headers whose first (index) name is empty.
                float unused;
                for (const std::string& f : fields) {
                    if (!f.empty() && !parse_number(f, &unused))
                        has_header = true;
                }
            }
            if (has_header)
                header = fields;

            if (label) {
                Status s = resolve_label(path, options.label_column, header, n_cols, &label_col);
                if (!s.is_ok())
                    return s;
            }
            if (has_header)
                continue;
        }

        // A data row: the right number of fields, each a number.
        if (fields.size() != n_cols) {
            return Status::corruption(where() + ": ragged row: " + std::to_string(fields.size()) +
                                      " fields, expected " + std::to_string(n_cols) +
                                      " as in the first row");
        }
        for (size_t c = 0; c < n_cols; ++c) {
            float value;
            if (!parse_number(fields[c], &value)) {
                // Columns are counted from 1 here, as a spreadsheet or an editor shows them.
                const std::string name = c < header.size() ? " (" + header[c] + ")" : "";
                const std::string problem =
                    fields[c].empty() ? "empty field" : "'" + fields[c] + "' is not a number";
                return Status::corruption(where() + ", column " + std::to_string(c + 1) + name +
                                          ": " + problem);
            }
            if (label && c == label_col) {
                labels.values.push_back(value);
            } else {
                features.values.push_back(value);
            }
        }
        ++rows;
    }
    // The reader ends on EOF and on a read error alike; only badbit tells them apart.
    if (in.bad())
        return Status::io_error(path + ": read failed: " + std::strerror(errno));
    if (rows == 0)
        return Status::corruption(path + ": no data rows");

    // Shapes: rows × features, and rows × 1 for the label.
    const int64_t n_features = static_cast<int64_t>(n_cols) - (label ? 1 : 0);
    features.shape = {rows, n_features};
    features.source = path;
    *x = std::move(features);
    if (label) {
        labels.shape = {rows, 1};
        labels.source = path;
        *label_out = std::move(labels);
    }
    return Status::ok();
}

}  // namespace

Status load_csv(const std::string& path, const CsvOptions& options, Array* x, Array* y) {
    return read_csv(path, options, /*label=*/true, x, y);
}

Status load_csv_features(const std::string& path, const CsvOptions& options, Array* x) {
    return read_csv(path, options, /*label=*/false, x, nullptr);
}

}  // namespace data
}  // namespace kiln
