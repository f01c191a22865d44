// Runs a function when the scope ends, however it ends.
#pragma once

#include <functional>
#include <utility>

namespace kiln {

class ScopeExit {
  public:
    explicit ScopeExit(std::function<void()> f) : f_(std::move(f)) {}
    ~ScopeExit() { f_(); }
    ScopeExit(const ScopeExit&) = delete;
    ScopeExit& operator=(const ScopeExit&) = delete;

  private:
    std::function<void()> f_;
};

}  // namespace kiln
