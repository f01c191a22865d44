// Keras's `save_freq`: "epoch" (at each epoch's end) or a number of batches, counted across
// epoch boundaries. `args.save_freq = "epoch";` or `args.save_freq = 500;`
#pragma once

#include <cstdint>
#include <string>

namespace kiln {
namespace callbacks {

class SaveFreq {
  public:
    SaveFreq() = default;  // "epoch"
    // "epoch" or a positive integer as text (the command line's --save-freq); anything else
    // throws kiln::Error, as Keras raises "Unrecognized save_freq".
    SaveFreq(const char* text);         // NOLINT: implicit, as Keras takes the string
    SaveFreq(const std::string& text);  // NOLINT
    // A positive number of batches; throws kiln::Error otherwise.
    SaveFreq(int batches);      // NOLINT
    SaveFreq(int64_t batches);  // NOLINT

    bool per_epoch() const { return batches_ == 0; }
    int64_t batches() const { return batches_; }
    std::string str() const { return per_epoch() ? "epoch" : std::to_string(batches_); }

  private:
    int64_t batches_ = 0;  // 0: "epoch"
};

}  // namespace callbacks
}  // namespace kiln
