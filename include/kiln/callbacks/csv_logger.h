// Keras's CSVLogger: one row per epoch, "epoch" (0-based, as Keras writes it) then every log key
// in sorted order, written as Python's csv module writes them (values as Python prints floats,
// "NA" for a key an epoch lacks, "\r\n" line ends).
//
// append=false replaces the file, but only once the first row is complete: a run that fails
// before its first epoch ends leaves the old file as it was (Keras truncates it at the start).
// append=true adds rows to the file and writes the header only when the file is empty or
// missing; a header that differs from this run's keys is warned about.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "kiln/callbacks.h"

namespace kiln {
namespace callbacks {

class CSVLogger : public Callback {
  public:
    // separator must be one character (Python's csv raises otherwise).
    explicit CSVLogger(std::string filename, std::string separator = ",", bool append = false);
    ~CSVLogger() override;

    void validate(const FitParams& params) const override;
    void on_train_begin(const Logs& logs) override;
    void on_epoch_end(int epoch, const Logs& logs) override;
    void on_train_end(const Logs& logs) override;

    const std::string& filename() const { return filename_; }

  private:
    std::string row(const std::vector<std::string>& fields) const;
    void close() noexcept;

    std::string filename_;
    char separator_ = ',';
    bool append_ = false;
    std::vector<std::string> keys_;
    bool append_header_ = true;
    std::string old_header_;  // the existing file's first line when appending
    std::FILE* file_ = nullptr;
};

}  // namespace callbacks
}  // namespace kiln
