// Helpers shared by kiln's tests.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <csignal>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/math.h"
#include "kiln/callbacks.h"
#include "kiln/data.h"
#include "kiln/interrupt.h"

namespace kiln {
namespace testing {

// Deterministic pseudo-random values in [lo, hi).
inline std::vector<float> random_values(size_t n, uint64_t seed, float lo = -1.0f,
                                        float hi = 1.0f) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) {
        v[i] = lo + (hi - lo) * math::uniform01(math::hash3(seed, 7, i));
    }
    return v;
}

inline data::Array make_array(Shape shape, std::vector<float> values, std::string source = "test") {
    data::Array a;
    a.shape = std::move(shape);
    a.values = std::move(values);
    a.source = std::move(source);
    return a;
}

// Class labels 0..classes-1 as a (n × 1) array.
inline data::Array random_labels(int64_t n, int64_t classes, uint64_t seed) {
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        v[size_t(i)] = float(math::hash3(seed, 11, uint64_t(i)) % uint64_t(classes));
    }
    return make_array({n, 1}, std::move(v));
}

// Every element of `actual` within atol + rtol·|expected| of `expected`; names the worst one.
template <typename A, typename B>
::testing::AssertionResult all_close(const std::vector<A>& actual, const std::vector<B>& expected,
                                     double atol, double rtol) {
    if (actual.size() != expected.size()) {
        return ::testing::AssertionFailure()
               << "sizes differ: " << actual.size() << " vs " << expected.size();
    }
    double worst = 0;
    size_t worst_i = 0;
    for (size_t i = 0; i < actual.size(); ++i) {
        const double a = double(actual[i]), e = double(expected[i]);
        const double excess = std::fabs(a - e) - (atol + rtol * std::fabs(e));
        if (!(excess <= worst) || std::isnan(a) != std::isnan(e)) {
            worst = std::isnan(excess) ? INFINITY : excess;
            worst_i = i;
        }
    }
    if (worst > 0) {
        return ::testing::AssertionFailure()
               << "element " << worst_i << ": " << double(actual[worst_i]) << " vs expected "
               << double(expected[worst_i]) << " (atol " << atol << ", rtol " << rtol << ")";
    }
    return ::testing::AssertionSuccess();
}

// A fresh directory under /tmp, removed with its contents when the object goes away.
class TempDir {
  public:
    TempDir() {
        char pattern[] = "/tmp/kiln-test-XXXXXX";
        path_ = mkdtemp(pattern);
    }
    ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }
    std::string file(const std::string& name) const { return path_ + "/" + name; }

  private:
    std::string path_;
};

// The installed Fashion-MNIST, or the directory KILN_FASHION_MNIST_DIR names.
inline std::string fashion_mnist_dir() {
    const char* env = std::getenv("KILN_FASHION_MNIST_DIR");
    return env ? env : "/usr/share/datasets/fashion-mnist";
}

// Asks fit to stop, as a SIGINT would, at the end of one batch of one epoch.
class InterruptAt : public Callback {
  public:
    InterruptAt(int epoch, int64_t batch) : epoch_(epoch), batch_(batch) {}
    void on_epoch_begin(int epoch, const Logs&) override { current_ = epoch; }
    void on_train_batch_end(int64_t batch, const Logs&) override {
        if (current_ == epoch_ && batch == batch_)
            request_interrupt(SIGINT);
    }

  private:
    int epoch_ = 0, current_ = -1;
    int64_t batch_ = 0;
};

}  // namespace testing
}  // namespace kiln
