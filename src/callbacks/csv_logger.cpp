#include "kiln/callbacks/csv_logger.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "callbacks/util.h"
#include "kiln/status.h"

namespace kiln {
namespace callbacks {

namespace {

std::string directory_of(const std::string& path) {
    const size_t slash = path.find_last_of('/');
    if (slash == std::string::npos)
        return ".";
    return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

CSVLogger::CSVLogger(std::string filename, std::string separator, bool append)
    : filename_(std::move(filename)), append_(append) {
    if (filename_.empty())
        throw Error("CSVLogger: the filename is empty");
    if (separator.size() != 1) {
        throw Error("CSVLogger: \"delimiter\" must be a 1-character string, got '" + separator +
                    "'");
    }
    separator_ = separator[0];
    if (separator_ == '"' || separator_ == '\r' || separator_ == '\n') {
        throw Error("CSVLogger: the separator cannot be a quote or a line break");
    }
}

CSVLogger::~CSVLogger() {
    close();
}

void CSVLogger::close() noexcept {
    if (file_)
        std::fclose(file_);
    file_ = nullptr;
}

void CSVLogger::validate(const FitParams&) const {
    const std::string dir = directory_of(filename_);
    if (access(dir.c_str(), W_OK) != 0) {
        throw Error("CSVLogger: cannot write " + filename_ + ": directory '" + dir +
                    "' does not exist or is not writable");
    }
}

void CSVLogger::on_train_begin(const Logs&) {
    close();
    // Keras: the keys of the first epoch's logs, sorted; kiln knows them before the first
    // epoch (fit's epoch_log_keys), val_ ones included.
    keys_ = params_.epoch_log_keys;
    std::sort(keys_.begin(), keys_.end());
    append_header_ = true;
    old_header_.clear();
    if (append_) {
        std::ifstream in(filename_, std::ios::binary);
        if (in) {
            std::getline(in, old_header_);
            if (!old_header_.empty() && old_header_.back() == '\r')
                old_header_.pop_back();
            append_header_ = old_header_.empty();
        }
        std::vector<std::string> fields = {"epoch"};
        fields.insert(fields.end(), keys_.begin(), keys_.end());
        std::string header = row(fields);
        header.resize(header.size() - 2);  // without "\r\n"
        if (!append_header_ && old_header_ != header) {
            warn("CSVLogger: " + filename_ + " has the columns '" + old_header_ +
                 "'; this run writes '" + header + "'");
        }
        file_ = std::fopen(filename_.c_str(), "ab");
        if (!file_) {
            throw Error("CSVLogger: cannot open " + filename_ +
                        " to append: " + std::strerror(errno));
        }
    }
}

std::string CSVLogger::row(const std::vector<std::string>& fields) const {
    // Python's csv.excel dialect: QUOTE_MINIMAL, '"' doubled inside quotes, "\r\n" line ends.
    std::string out;
    for (size_t i = 0; i < fields.size(); ++i) {
        if (i)
            out += separator_;
        const std::string& f = fields[i];
        if (f.find_first_of(std::string(1, separator_) + "\"\r\n") == std::string::npos) {
            out += f;
            continue;
        }
        out += '"';
        for (char ch : f) {
            if (ch == '"')
                out += '"';
            out += ch;
        }
        out += '"';
    }
    return out + "\r\n";
}

void CSVLogger::on_epoch_end(int epoch, const Logs& logs) {
    std::vector<std::string> fields = {std::to_string(epoch)};
    for (const auto& key : keys_) {
        const std::optional<double> v = logs.get(key);
        fields.push_back(v ? detail::python_repr(*v) : "NA");
    }
    std::string text = row(fields);

    if (!file_) {
        // The first row of a replacing run: header and row go to a temporary file beside the
        // target, which then replaces it; the old file survives any failure before this.
        std::vector<std::string> header = {"epoch"};
        header.insert(header.end(), keys_.begin(), keys_.end());
        const std::string tmp = filename_ + ".tmp-" + std::to_string(getpid());
        std::FILE* f = std::fopen(tmp.c_str(), "wb");
        if (!f)
            throw Error("CSVLogger: cannot create " + tmp + ": " + std::strerror(errno));
        const std::string first = row(header) + text;
        const bool ok =
            std::fwrite(first.data(), 1, first.size(), f) == first.size() && std::fflush(f) == 0;
        if (!ok || std::rename(tmp.c_str(), filename_.c_str()) != 0) {
            const std::string why = std::strerror(errno);
            std::fclose(f);
            std::remove(tmp.c_str());
            throw Error("CSVLogger: writing " + filename_ + " failed: " + why);
        }
        file_ = f;  // the same open file, now under its real name
        append_header_ = false;
        return;
    }
    if (append_header_) {
        std::vector<std::string> header = {"epoch"};
        header.insert(header.end(), keys_.begin(), keys_.end());
        text = row(header) + text;
        append_header_ = false;
    }
    // One write per row, flushed, as Keras flushes after each row.
    if (std::fwrite(text.data(), 1, text.size(), file_) != text.size() || std::fflush(file_) != 0) {
        throw Error("CSVLogger: writing " + filename_ + " failed: " + std::strerror(errno));
    }
}

void CSVLogger::on_train_end(const Logs&) {
    close();
}

}  // namespace callbacks
}  // namespace kiln
