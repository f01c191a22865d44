// Errors in kiln.
//
// Expected failures (a missing or malformed file, an invalid configuration) are reported as a
// `Status` returned to the caller. Library faults (a CUDA error, a broken invariant) throw
// `kiln::Error`, which the command-line tool catches once in `main`.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

namespace kiln {

class [[nodiscard]] Status {
  public:
    enum class Code { kOk, kInvalidArgument, kNotFound, kCorruption, kIOError, kUnsupported };

    Status() = default;
    static Status ok() { return Status(); }
    static Status invalid_argument(std::string msg) {
        return {Code::kInvalidArgument, std::move(msg)};
    }
    static Status not_found(std::string msg) { return {Code::kNotFound, std::move(msg)}; }
    static Status corruption(std::string msg) { return {Code::kCorruption, std::move(msg)}; }
    static Status io_error(std::string msg) { return {Code::kIOError, std::move(msg)}; }
    static Status unsupported(std::string msg) { return {Code::kUnsupported, std::move(msg)}; }

    bool is_ok() const { return code_ == Code::kOk; }
    Code code() const { return code_; }
    const std::string& message() const { return message_; }

    // Adds context in front of the message ("reading train.npy: " + message).
    Status with_context(const std::string& context) const {
        if (is_ok())
            return *this;
        return {code_, context + ": " + message_};
    }

  private:
    Status(Code code, std::string msg) : code_(code), message_(std::move(msg)) {}

    Code code_ = Code::kOk;
    std::string message_;
};

// Thrown for faults that the caller cannot be expected to handle, and by the Keras-like API
// (`compile`, `fit`) for invalid arguments, as Keras raises ValueError.
class Error : public std::runtime_error {
  public:
    explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Throws kiln::Error carrying the status message when `status` is not ok.
inline void throw_if_error(const Status& status) {
    if (!status.is_ok())
        throw Error(status.message());
}

}  // namespace kiln
