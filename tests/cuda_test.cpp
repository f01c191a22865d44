// The CUDA backend against the CPU reference, op by op: the same inputs (fixed seeds) go to both
// backends and the outputs are compared, element by element, within an absolute plus relative
// tolerance sized to the op's float32 rounding (the backends sum in different orders, and nvcc
// fuses multiply-adds). Ops that only move bits or draw from the counter-based RNG (permutation,
// gather, dropout, multiply) must match bit for bit. Reductions must also give the same bits on
// every CUDA run (no atomics).
//
// Where there is no usable GPU (CI), every test skips with make_cuda_backend's reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "kiln/backend.h"
#include "kiln/model.h"
#include "kiln/ops.h"
#include "kiln/status.h"
#include "kiln/tensor.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::random_values;

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
    return DType::kFloat32;
}
template <>
constexpr DType dtype_of<double>() {
    return DType::kFloat64;
}
template <>
constexpr DType dtype_of<int32_t>() {
    return DType::kInt32;
}
template <>
constexpr DType dtype_of<uint8_t>() {
    return DType::kUInt8;
}

// "element 17 (row 1, col 7)" for a matrix with `cols` columns, "element 17" otherwise.
std::string where(size_t i, int64_t cols) {
    std::ostringstream out;
    out << "element " << i;
    if (cols > 1)
        out << " (row " << i / size_t(cols) << ", col " << i % size_t(cols) << ")";
    return out.str();
}

// Every CUDA value within atol + rtol·|cpu| of the CPU's; on failure names how many are not and
// the worst one, with both values.
template <typename T>
::testing::AssertionResult matches_cpu(const std::vector<T>& cpu, const std::vector<T>& cuda,
                                       double atol, double rtol, int64_t cols = 0) {
    if (cpu.size() != cuda.size()) {
        return ::testing::AssertionFailure()
               << "sizes differ: cpu " << cpu.size() << ", cuda " << cuda.size();
    }
    size_t bad = 0, worst_i = 0;
    double worst_excess = 0;
    for (size_t i = 0; i < cpu.size(); ++i) {
        const double e = double(cpu[i]), a = double(cuda[i]);
        if (std::isnan(e) && std::isnan(a))
            continue;
        double excess = std::fabs(a - e) - (atol + rtol * std::fabs(e));
        if (std::isnan(excess))
            excess = std::numeric_limits<double>::infinity();
        if (excess > 0) {
            ++bad;
            if (excess > worst_excess || bad == 1) {
                worst_excess = excess;
                worst_i = i;
            }
        }
    }
    if (bad == 0)
        return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << bad << " of " << cpu.size() << " elements differ beyond atol " << atol << " + rtol "
           << rtol << "; worst is " << where(worst_i, cols) << ": cpu "
           << ::testing::PrintToString(cpu[worst_i]) << ", cuda "
           << ::testing::PrintToString(cuda[worst_i]) << ", |diff| "
           << std::fabs(double(cuda[worst_i]) - double(cpu[worst_i]));
}

// The same bits, element by element; on failure names how many differ and the first one.
template <typename T>
::testing::AssertionResult bit_identical(const std::vector<T>& expected,
                                         const std::vector<T>& actual, int64_t cols = 0) {
    if (expected.size() != actual.size()) {
        return ::testing::AssertionFailure()
               << "sizes differ: " << expected.size() << " vs " << actual.size();
    }
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
        if (std::memcmp(&expected[i], &actual[i], sizeof(T)) != 0) {
            if (bad++ == 0)
                first = i;
        }
    }
    if (bad == 0)
        return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << bad << " of " << expected.size() << " elements differ; first is "
           << where(first, cols) << ": expected " << ::testing::PrintToString(expected[first])
           << ", got " << ::testing::PrintToString(actual[first]);
}

// One array on each backend, holding the same values.
struct Both {
    Tensor cpu;
    Tensor cuda;
};

class CudaVsCpuTest : public ::testing::Test {
  protected:
    void SetUp() override {
        std::string why;
        cuda_ = make_cuda_backend(&why);
        if (!cuda_)
            GTEST_SKIP() << why;
        cpu_ = make_cpu_backend();
    }

    void TearDown() override {
        if (cuda_)
            cuda_->synchronize();
    }

    template <typename T>
    Both both(const std::vector<T>& host, Shape shape) {
        Both b{Tensor(*cpu_, shape, dtype_of<T>()), Tensor(*cuda_, shape, dtype_of<T>())};
        EXPECT_EQ(size_t(b.cpu.elements()), host.size()) << "test bug: shape and values differ";
        b.cpu.copy_from_host(host.data());
        b.cuda.copy_from_host(host.data());
        return b;
    }

    template <typename T>
    static std::vector<T> values(const Tensor& t) {
        std::vector<T> out(static_cast<size_t>(t.elements()));
        t.copy_to_host(out.data());
        return out;
    }

    std::unique_ptr<Backend> cpu_;
    std::unique_ptr<Backend> cuda_;
};

std::vector<ActivationSpec> all_activations() {
    return {{Activation::kLinear, 0.0f},  {Activation::kRelu, 0.0f},
            {Activation::kSigmoid, 0.0f}, {Activation::kTanh, 0.0f},
            {Activation::kSoftmax, 0.0f}, {Activation::kGelu, 0.0f},
            {Activation::kElu, 1.0f},     {Activation::kLeakyRelu, 0.2f}};
}

// ---- the backend itself ------------------------------------------------------------------------

TEST_F(CudaVsCpuTest, DescribesTheDeviceAndSupportsOnlyFloat32) {
    const std::string description = cuda_->description();
    EXPECT_EQ(description.rfind("cuda:0 ", 0), 0u) << description;
    EXPECT_NE(description.find("sm_"), std::string::npos) << description;
    EXPECT_NE(description.find("GiB"), std::string::npos) << description;
    EXPECT_EQ(cuda_->kind(), DeviceKind::kCuda);
    EXPECT_TRUE(cuda_->supports(DType::kFloat32));
    EXPECT_FALSE(cuda_->supports(DType::kFloat64));
    EXPECT_FALSE(cuda_->supports(DType::kBFloat16));
}

TEST_F(CudaVsCpuTest, OtherDtypesThrowNamingTheOpAndDtype) {
    Tensor a(*cuda_, {4, 4}, DType::kFloat64), c(*cuda_, {4, 4}, DType::kFloat64);
    try {
        cuda_->gemm(false, false, 4, 4, 4, 1.0f, a.view(), a.view(), 0.0f, c.view());
        FAIL() << "gemm on float64 did not throw";
    } catch (const Error& e) {
        const std::string message = e.what();
        EXPECT_NE(message.find("gemm"), std::string::npos) << message;
        EXPECT_NE(message.find("float64"), std::string::npos) << message;
    }
    EXPECT_THROW(cuda_->multiply(a.view(), a.view(), c.view(), 16), Error);
}

TEST_F(CudaVsCpuTest, UploadCopyFillAndReadRoundTrip) {
    const std::vector<float> host = random_values(1000, 1);
    Tensor x(*cuda_, {1000}), y(*cuda_, {1000});
    x.copy_from_host(host.data());
    cuda_->copy(y.data(), x.data(), x.bytes());
    EXPECT_TRUE(bit_identical(host, values<float>(y)));

    cuda_->fill_zero(y.view());
    EXPECT_TRUE(bit_identical(std::vector<float>(1000, 0.0f), values<float>(y)));
}

// The host buffer may be reused as soon as upload returns, even for uploads larger than the
// backend's staging.
TEST_F(CudaVsCpuTest, UploadLetsTheHostBufferBeReusedAtOnce) {
    const size_t n = (size_t{10} << 20) / sizeof(float) + 77;  // 10 MiB and a ragged end
    std::vector<float> host = random_values(n, 2);
    const std::vector<float> original = host;
    Tensor x(*cuda_, {int64_t(n)});
    x.copy_from_host(host.data());
    std::fill(host.begin(), host.end(), -1.0f);  // overwrite while the copy may be in flight
    EXPECT_TRUE(bit_identical(original, values<float>(x)));
}

TEST_F(CudaVsCpuTest, ReadIsCountedOncePerCall) {
    Tensor x(*cuda_, {16});
    cuda_->fill_zero(x.view());
    std::vector<float> out(16, 1.0f);
    const uint64_t before = cuda_->reads();
    cuda_->read(out.data(), x.data(), x.bytes());
    EXPECT_EQ(cuda_->reads(), before + 1);
    EXPECT_TRUE(bit_identical(std::vector<float>(16, 0.0f), out));
    cuda_->read(out.data(), x.data(), 0);
    EXPECT_EQ(cuda_->reads(), before + 2);
}

TEST_F(CudaVsCpuTest, PeekReturnsTheNewestCompletedCopyAndIsNotARead) {
    const std::vector<double> acc = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0};
    Tensor x(*cuda_, {6}, DType::kFloat64);
    x.copy_from_host(acc.data());
    const uint64_t reads_before = cuda_->reads();

    // The first peek may find nothing completed; once the stream has drained, the next one must.
    std::vector<double> seen(6, 0.0);
    cuda_->peek(seen.data(), x.data(), x.bytes());
    cuda_->synchronize();
    ASSERT_TRUE(cuda_->peek(seen.data(), x.data(), x.bytes()));
    EXPECT_TRUE(bit_identical(acc, seen));

    // New values reach a later peek.
    const std::vector<double> later = {7.0, 8.0, 9.0, 10.0, 11.0, 12.0};
    x.copy_from_host(later.data());
    cuda_->peek(seen.data(), x.data(), x.bytes());
    cuda_->synchronize();
    ASSERT_TRUE(cuda_->peek(seen.data(), x.data(), x.bytes()));
    EXPECT_TRUE(bit_identical(later, seen));

    EXPECT_EQ(cuda_->reads(), reads_before);
    EXPECT_THROW(cuda_->peek(seen.data(), x.data(), Backend::kPeekBytes + 8), Error);
}

// ---- dense algebra -----------------------------------------------------------------------------

// Out of device memory is an error that says how much was asked for and how much is free,
// and the backend stays usable after it.
TEST_F(CudaVsCpuTest, OutOfMemoryNamesTheSizeAndTheFreeMemory) {
    const size_t huge = size_t(1) << 50;  // 1 PiB
    try {
        void* p = cuda_->allocate(huge);
        cuda_->deallocate(p, huge);
        FAIL() << "allocating 1 PiB succeeded";
    } catch (const Error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("out of device memory allocating " + std::to_string(huge) + " bytes"),
                  std::string::npos)
            << what;
        EXPECT_NE(what.find("bytes free"), std::string::npos) << what;
    }
    const Both small = both(std::vector<float>{1, 2, 3}, {3});
    EXPECT_EQ(values<float>(small.cuda), (std::vector<float>{1, 2, 3}));
}

TEST_F(CudaVsCpuTest, GemmMatchesForEveryTranspositionAndShape) {
    struct Case {
        int64_t m, n, k;
    };
    const Case cases[] = {{1, 1, 1}, {33, 17, 65}, {128, 10, 784}, {5, 300, 3}};
    for (const Case& s : cases) {
        for (int ta = 0; ta < 2; ++ta) {
            for (int tb = 0; tb < 2; ++tb) {
                for (float beta : {0.0f, 0.5f}) {
                    SCOPED_TRACE(::testing::Message()
                                 << "m " << s.m << " n " << s.n << " k " << s.k << " trans_a " << ta
                                 << " trans_b " << tb << " beta " << beta);
                    Both a = both(random_values(size_t(s.m * s.k), 10), {s.m * s.k});
                    Both b = both(random_values(size_t(s.k * s.n), 11), {s.k * s.n});
                    Both c = both(random_values(size_t(s.m * s.n), 12), {s.m * s.n});
                    cpu_->gemm(ta, tb, s.m, s.n, s.k, 0.7f, a.cpu.view(), b.cpu.view(), beta,
                               c.cpu.view());
                    cuda_->gemm(ta, tb, s.m, s.n, s.k, 0.7f, a.cuda.view(), b.cuda.view(), beta,
                                c.cuda.view());
                    // float32 sums of k products of values in [-1, 1]
                    EXPECT_TRUE(matches_cpu(values<float>(c.cpu), values<float>(c.cuda),
                                            2e-6 * double(s.k), 1e-5, s.n));
                }
            }
        }
    }
}

// In tf32 and bf16 the CUDA backend (cuBLAS's _FAST_TF32 and _FAST_16BF compute types) against
// the CPU reference, which rounds its operands to the format to nearest even. The tensor cores
// may round the operands otherwise, and cuBLAS may run a _FAST_16BF GEMM in TF32, so the two
// differ by the format's rounding of each product (a few units of the format), not float32's:
// with values in [-1, 1], about sqrt(k) such errors. The tolerance allows 4 units · sqrt(k).
TEST_F(CudaVsCpuTest, GemmInEachPrecisionMatchesTheCpuReference) {
    struct Case {
        int64_t m, n, k;
    };
    const Case cases[] = {{1, 1, 1}, {33, 17, 65}, {128, 256, 784}, {5, 300, 3}};
    for (Precision p : {Precision::kFp32, Precision::kTf32, Precision::kBf16}) {
        cpu_->set_precision(p);
        cuda_->set_precision(p);
        const double unit = std::ldexp(1.0, math::dropped_mantissa_bits(p) - 23);
        for (const Case& s : cases) {
            for (int ta = 0; ta < 2; ++ta) {
                for (int tb = 0; tb < 2; ++tb) {
                    SCOPED_TRACE(::testing::Message()
                                 << precision_name(p) << " m " << s.m << " n " << s.n << " k "
                                 << s.k << " trans_a " << ta << " trans_b " << tb);
                    Both a = both(random_values(size_t(s.m * s.k), 10), {s.m * s.k});
                    Both b = both(random_values(size_t(s.k * s.n), 11), {s.k * s.n});
                    Both c = both(random_values(size_t(s.m * s.n), 12), {s.m * s.n});
                    cpu_->gemm(ta, tb, s.m, s.n, s.k, 0.7f, a.cpu.view(), b.cpu.view(), 0.5f,
                               c.cpu.view());
                    cuda_->gemm(ta, tb, s.m, s.n, s.k, 0.7f, a.cuda.view(), b.cuda.view(), 0.5f,
                                c.cuda.view());
                    const double format =
                        p == Precision::kFp32 ? 0.0 : 4 * unit * std::sqrt(double(s.k));
                    EXPECT_TRUE(matches_cpu(values<float>(c.cpu), values<float>(c.cuda),
                                            2e-6 * double(s.k) + format, 1e-5, s.n));
                }
            }
        }
    }
}

// The Dense GEMMs with their cuBLASLt epilogues (bias added in the GEMM; the bias gradient
// reduced in it) against the CPU's gemm + bias_activation_forward and gemm + bias_grad, in every
// precision, with and without a bias; and the fused path must be the one that ran.
TEST_F(CudaVsCpuTest, DenseEpiloguesMatchTheCpuInEachPrecision) {
    struct Case {
        int64_t rows, k, cols;
    };
    const Case cases[] = {{1, 1, 1}, {37, 19, 23}, {256, 784, 128}, {32, 128, 10}};
    const ActivationSpec acts[] = {{Activation::kLinear, 0.0f},
                                   {Activation::kRelu, 0.0f},
                                   {Activation::kTanh, 0.0f},
                                   {Activation::kSoftmax, 0.0f}};
    const uint64_t fused_before = cuda_->fused_gemms();
    for (Precision p : {Precision::kFp32, Precision::kTf32, Precision::kBf16}) {
        cpu_->set_precision(p);
        cuda_->set_precision(p);
        const double unit = std::ldexp(1.0, math::dropped_mantissa_bits(p) - 23);
        for (const Case& c : cases) {
            const double format = p == Precision::kFp32 ? 0.0 : 4 * unit * std::sqrt(double(c.k));
            for (bool with_bias : {false, true}) {
                Both x = both(random_values(size_t(c.rows * c.k), 20), {c.rows, c.k});
                Both w = both(random_values(size_t(c.k * c.cols), 21), {c.k, c.cols});
                Both bias = both(random_values(size_t(c.cols), 22), {c.cols});
                const View no_bias_cpu{nullptr, DType::kFloat32, {}};
                for (const ActivationSpec& act : acts) {
                    SCOPED_TRACE(::testing::Message()
                                 << precision_name(p) << " rows " << c.rows << " k " << c.k
                                 << " cols " << c.cols << " bias " << with_bias << " "
                                 << activation_name(act.kind));
                    Both y =
                        both(std::vector<float>(size_t(c.rows * c.cols), 0.0f), {c.rows, c.cols});
                    cpu_->dense_forward(x.cpu.view(), w.cpu.view(),
                                        with_bias ? bias.cpu.view() : no_bias_cpu, y.cpu.view(),
                                        c.rows, c.k, c.cols, act);
                    cuda_->dense_forward(x.cuda.view(), w.cuda.view(),
                                         with_bias ? bias.cuda.view() : no_bias_cpu, y.cuda.view(),
                                         c.rows, c.k, c.cols, act);
                    EXPECT_TRUE(matches_cpu(values<float>(y.cpu), values<float>(y.cuda),
                                            2e-6 * double(c.k) + format, 1e-5, c.cols));
                }
                Both dz = both(random_values(size_t(c.rows * c.cols), 23), {c.rows, c.cols});
                Both dw = both(std::vector<float>(size_t(c.k * c.cols), 0.0f), {c.k, c.cols});
                Both db = both(std::vector<float>(size_t(c.cols), 0.0f), {c.cols});
                cpu_->dense_backward_weights(x.cpu.view(), dz.cpu.view(), dw.cpu.view(),
                                             with_bias ? db.cpu.view() : no_bias_cpu, c.rows, c.k,
                                             c.cols);
                cuda_->dense_backward_weights(x.cuda.view(), dz.cuda.view(), dw.cuda.view(),
                                              with_bias ? db.cuda.view() : no_bias_cpu, c.rows, c.k,
                                              c.cols);
                const double rows_format =
                    p == Precision::kFp32 ? 0.0 : 4 * unit * std::sqrt(double(c.rows));
                EXPECT_TRUE(matches_cpu(values<float>(dw.cpu), values<float>(dw.cuda),
                                        2e-6 * double(c.rows) + rows_format, 1e-5, c.cols));
                if (with_bias) {
                    EXPECT_TRUE(matches_cpu(values<float>(db.cpu), values<float>(db.cuda),
                                            2e-6 * double(c.rows), 1e-5));
                }
            }
        }
    }
    cpu_->set_precision(Precision::kFp32);
    cuda_->set_precision(Precision::kFp32);
    EXPECT_GT(cuda_->fused_gemms(), fused_before)
        << "no dense_* call ran as a cuBLASLt matmul with its epilogue (" << cuda_->unfused_gemms()
        << " fell back to separate ops)";
}

// ---- element-wise and row-wise ops -------------------------------------------------------------

TEST_F(CudaVsCpuTest, BiasActivationForwardMatchesForEveryActivation) {
    const int64_t rows = 37;
    for (int64_t cols : {int64_t(10), int64_t(300)}) {
        for (const ActivationSpec& act : all_activations()) {
            for (bool with_bias : {false, true}) {
                for (bool in_place : {false, true}) {
                    SCOPED_TRACE(::testing::Message()
                                 << activation_name(act.kind) << " cols " << cols << " bias "
                                 << with_bias << " in_place " << in_place);
                    Both z =
                        both(random_values(size_t(rows * cols), 20, -4.0f, 4.0f), {rows, cols});
                    Both bias = both(random_values(size_t(cols), 21), {cols});
                    Both y = both(std::vector<float>(size_t(rows * cols), 0.0f), {rows, cols});
                    const View no_bias;
                    cpu_->bias_activation_forward(
                        z.cpu.view(), with_bias ? bias.cpu.view() : no_bias,
                        in_place ? z.cpu.view() : y.cpu.view(), rows, cols, act);
                    cuda_->bias_activation_forward(
                        z.cuda.view(), with_bias ? bias.cuda.view() : no_bias,
                        in_place ? z.cuda.view() : y.cuda.view(), rows, cols, act);
                    EXPECT_TRUE(
                        matches_cpu(values<float>(z.cpu), values<float>(z.cuda), 1e-6, 1e-5, cols))
                        << "z";
                    if (!in_place) {
                        EXPECT_TRUE(matches_cpu(values<float>(y.cpu), values<float>(y.cuda), 1e-6,
                                                1e-5, cols))
                            << "y";
                    }
                }
            }
        }
    }
}

TEST_F(CudaVsCpuTest, ActivationBackwardMatchesForEveryActivation) {
    const int64_t rows = 37;
    for (int64_t cols : {int64_t(10), int64_t(300)}) {
        for (const ActivationSpec& act : all_activations()) {
            for (bool in_place : {false, true}) {
                SCOPED_TRACE(::testing::Message() << activation_name(act.kind) << " cols " << cols
                                                  << " in_place " << in_place);
                // y from the CPU's forward, so that both backends see the same (z, y) pair
                const size_t n = size_t(rows * cols);
                std::vector<float> z = random_values(n, 30, -4.0f, 4.0f), y(n);
                cpu_->bias_activation_forward(View{z.data(), DType::kFloat32, {}}, View{},
                                              View{y.data(), DType::kFloat32, {}}, rows, cols, act);
                Both zt = both(z, {rows, cols});
                Both yt = both(y, {rows, cols});
                Both dy = both(random_values(n, 31), {rows, cols});
                Both dz = both(std::vector<float>(n, 0.0f), {rows, cols});
                cpu_->activation_backward(zt.cpu.view(), yt.cpu.view(), dy.cpu.view(),
                                          in_place ? dy.cpu.view() : dz.cpu.view(), rows, cols,
                                          act);
                cuda_->activation_backward(zt.cuda.view(), yt.cuda.view(), dy.cuda.view(),
                                           in_place ? dy.cuda.view() : dz.cuda.view(), rows, cols,
                                           act);
                const Both& out = in_place ? dy : dz;
                EXPECT_TRUE(
                    matches_cpu(values<float>(out.cpu), values<float>(out.cuda), 1e-6, 1e-5, cols));
            }
        }
    }
}

TEST_F(CudaVsCpuTest, BiasGradMatchesAndIsTheSameOnEveryRun) {
    for (int64_t rows : {int64_t(0), int64_t(1), int64_t(31), int64_t(1000)}) {
        for (int64_t cols : {int64_t(1), int64_t(10), int64_t(33), int64_t(300)}) {
            SCOPED_TRACE(::testing::Message() << "rows " << rows << " cols " << cols);
            Both dz = both(random_values(size_t(rows * cols), 40), {rows * cols});
            Both db = both(random_values(size_t(cols), 41), {cols});  // overwritten, not added to
            cpu_->bias_grad(dz.cpu.view(), db.cpu.view(), rows, cols);
            cuda_->bias_grad(dz.cuda.view(), db.cuda.view(), rows, cols);
            const std::vector<float> first = values<float>(db.cuda);
            EXPECT_TRUE(
                matches_cpu(values<float>(db.cpu), first, 2e-6 * double(rows) + 1e-7, 1e-5));

            cuda_->bias_grad(dz.cuda.view(), db.cuda.view(), rows, cols);
            EXPECT_TRUE(bit_identical(first, values<float>(db.cuda))) << "second run differs";
        }
    }
}

TEST_F(CudaVsCpuTest, MultiplyIsBitIdentical) {
    const int64_t n = 100003;
    for (bool in_place : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "in_place " << in_place);
        Both a = both(random_values(size_t(n), 50), {n});
        Both b = both(random_values(size_t(n), 51, 0.0f, 2.0f), {n});
        Both out = both(std::vector<float>(size_t(n), 0.0f), {n});
        cpu_->multiply(a.cpu.view(), b.cpu.view(), in_place ? a.cpu.view() : out.cpu.view(), n);
        cuda_->multiply(a.cuda.view(), b.cuda.view(), in_place ? a.cuda.view() : out.cuda.view(),
                        n);
        const Both& result = in_place ? a : out;
        EXPECT_TRUE(bit_identical(values<float>(result.cpu), values<float>(result.cuda)));
    }
}

TEST_F(CudaVsCpuTest, DropoutForwardIsBitIdentical) {
    const int64_t n = 100003;
    for (float rate : {0.0f, 0.25f, 0.5f, 0.9f}) {
        for (bool in_place : {false, true}) {
            SCOPED_TRACE(::testing::Message() << "rate " << rate << " in_place " << in_place);
            Both x = both(random_values(size_t(n), 60), {n});
            Both y = both(std::vector<float>(size_t(n), 0.0f), {n});
            Both mask = both(std::vector<float>(size_t(n), -1.0f), {n});
            const uint64_t seed = 1234, counter = 17;
            cpu_->dropout_forward(x.cpu.view(), in_place ? x.cpu.view() : y.cpu.view(),
                                  mask.cpu.view(), n, rate, seed, counter);
            cuda_->dropout_forward(x.cuda.view(), in_place ? x.cuda.view() : y.cuda.view(),
                                   mask.cuda.view(), n, rate, seed, counter);
            const Both& out = in_place ? x : y;
            EXPECT_TRUE(bit_identical(values<float>(out.cpu), values<float>(out.cuda))) << "y";
            EXPECT_TRUE(bit_identical(values<float>(mask.cpu), values<float>(mask.cuda))) << "mask";
        }
    }
}

// ---- the loss ----------------------------------------------------------------------------------

struct LossCase {
    LossKind kind;
    MetricKind metric;
    int64_t cols;
};

std::string loss_name(LossKind kind) {
    switch (kind) {
        case LossKind::kSparseCategoricalCrossentropy:
            return "sparse_categorical_crossentropy";
        case LossKind::kCategoricalCrossentropy:
            return "categorical_crossentropy";
        case LossKind::kBinaryCrossentropy:
            return "binary_crossentropy";
        case LossKind::kMeanSquaredError:
            return "mean_squared_error";
        case LossKind::kMeanAbsoluteError:
            return "mean_absolute_error";
    }
    return "?";
}

// Model outputs for a loss: logits, or probabilities with some exact zeros (and ones, for binary
// cross-entropy) so that the clipped branches run too.
std::vector<float> loss_predictions(const LossSpec& spec, int64_t rows, int64_t cols,
                                    uint64_t seed) {
    const size_t n = size_t(rows * cols);
    const bool logits = spec.from_logits || spec.fused_output;
    switch (spec.kind) {
        case LossKind::kSparseCategoricalCrossentropy:
        case LossKind::kCategoricalCrossentropy: {
            if (logits)
                return random_values(n, seed, -5.0f, 5.0f);
            std::vector<float> p = random_values(n, seed, 0.0f, 1.0f);
            for (size_t i = 0; i < n; i += 7)
                p[i] = 0.0f;
            return p;
        }
        case LossKind::kBinaryCrossentropy: {
            if (logits)
                return random_values(n, seed, -5.0f, 5.0f);
            std::vector<float> p = random_values(n, seed, 0.0f, 1.0f);
            for (size_t i = 0; i < n; i += 11)
                p[i] = 0.0f;
            for (size_t i = 5; i < n; i += 13)
                p[i] = 1.0f;
            return p;
        }
        default:
            return random_values(n, seed, -2.0f, 2.0f);
    }
}

// Targets: class indices as floats (sparse), one-hot and soft rows (categorical), 0/1 (binary),
// any value (regression).
std::vector<float> loss_targets(LossKind kind, int64_t rows, int64_t cols, uint64_t seed) {
    switch (kind) {
        case LossKind::kSparseCategoricalCrossentropy: {
            std::vector<float> y(static_cast<size_t>(rows));
            for (int64_t r = 0; r < rows; ++r) {
                y[size_t(r)] = float(math::hash3(seed, 1, uint64_t(r)) % uint64_t(cols));
            }
            return y;
        }
        case LossKind::kCategoricalCrossentropy: {
            std::vector<float> y = random_values(size_t(rows * cols), seed, 0.0f, 1.0f);
            for (int64_t r = 0; r < rows; ++r) {
                float* row = y.data() + r * cols;
                if (r % 2 == 0) {  // one-hot
                    const int64_t label =
                        int64_t(math::hash3(seed, 2, uint64_t(r)) % uint64_t(cols));
                    for (int64_t c = 0; c < cols; ++c)
                        row[c] = c == label ? 1.0f : 0.0f;
                } else {  // soft, summing to 1
                    const float sum = std::accumulate(row, row + cols, 0.0f);
                    for (int64_t c = 0; c < cols; ++c)
                        row[c] /= sum;
                }
            }
            return y;
        }
        case LossKind::kBinaryCrossentropy: {
            std::vector<float> y = random_values(size_t(rows * cols), seed, 0.0f, 1.0f);
            for (float& v : y)
                v = v < 0.5f ? 0.0f : 1.0f;
            return y;
        }
        default:
            return random_values(size_t(rows * cols), seed, -2.0f, 2.0f);
    }
}

TEST_F(CudaVsCpuTest, LossMatchesForEveryKindAndAddsIntoTheAccumulators) {
    const LossCase cases[] = {
        {LossKind::kSparseCategoricalCrossentropy, MetricKind::kSparseCategoricalAccuracy, 10},
        {LossKind::kSparseCategoricalCrossentropy, MetricKind::kSparseCategoricalAccuracy, 100},
        {LossKind::kCategoricalCrossentropy, MetricKind::kCategoricalAccuracy, 10},
        {LossKind::kCategoricalCrossentropy, MetricKind::kNone, 40},
        {LossKind::kBinaryCrossentropy, MetricKind::kBinaryAccuracy, 1},
        {LossKind::kBinaryCrossentropy, MetricKind::kBinaryAccuracy, 5},
        {LossKind::kMeanSquaredError, MetricKind::kNone, 7},
        {LossKind::kMeanSquaredError, MetricKind::kBinaryAccuracy, 1},
        {LossKind::kMeanAbsoluteError, MetricKind::kNone, 7},
    };
    // One block (batch-sized), several blocks (the second, accumulating kernel), and a
    // validation-sized call that fills the grid cap.
    const int64_t row_counts[] = {1, 50, 3000};
    // Accumulators for two sets; the loss adds into the second (slot 3) and must leave the
    // first alone.
    const std::vector<double> acc_start = {1.5, 2.5, 3.5, 10.0, 20.0, 30.0};
    const int slot = AccumulatorSlots::kPerSet;

    for (const LossCase& lc : cases) {
        for (bool from_logits : {false, true}) {
            for (bool fused : {false, true}) {
                for (int64_t rows : row_counts) {
                    for (bool with_grad : {true, false}) {
                        LossSpec spec;
                        spec.kind = lc.kind;
                        spec.from_logits = from_logits;
                        spec.fused_output = fused;
                        spec.metric = lc.metric;
                        const int64_t cols = lc.cols;
                        const int64_t grad_rows = rows + 2;
                        SCOPED_TRACE(::testing::Message()
                                     << loss_name(lc.kind) << " cols " << cols << " from_logits "
                                     << from_logits << " fused " << fused << " rows " << rows
                                     << " grad " << with_grad);

                        const int64_t y_cols =
                            lc.kind == LossKind::kSparseCategoricalCrossentropy ? 1 : cols;
                        Both pred = both(loss_predictions(spec, rows, cols, 70), {rows, cols});
                        Both y = both(loss_targets(lc.kind, rows, cols, 71), {rows, y_cols});
                        Both grad =
                            both(std::vector<float>(size_t(rows * cols), 9.0f), {rows, cols});
                        Both acc = both(acc_start, {6});
                        const View no_grad;
                        cpu_->loss(spec, pred.cpu.view(), y.cpu.view(),
                                   with_grad ? grad.cpu.view() : no_grad, rows, cols, grad_rows,
                                   acc.cpu.view(), slot);
                        cuda_->loss(spec, pred.cuda.view(), y.cuda.view(),
                                    with_grad ? grad.cuda.view() : no_grad, rows, cols, grad_rows,
                                    acc.cuda.view(), slot);

                        const std::vector<double> acc_cpu = values<double>(acc.cpu);
                        const std::vector<double> acc_cuda = values<double>(acc.cuda);
                        // the other set untouched, the count exact
                        for (int i = 0; i < AccumulatorSlots::kPerSet; ++i) {
                            EXPECT_EQ(acc_cuda[size_t(i)], acc_start[size_t(i)]) << "slot " << i;
                        }
                        EXPECT_EQ(acc_cuda[slot + AccumulatorSlots::kCount],
                                  acc_start[slot + AccumulatorSlots::kCount] + double(rows));
                        // loss: float32 per sample; metric: the same decisions, summed in a
                        // different order
                        EXPECT_TRUE(matches_cpu(
                            std::vector<double>{acc_cpu[slot + AccumulatorSlots::kLossSum]},
                            std::vector<double>{acc_cuda[slot + AccumulatorSlots::kLossSum]},
                            1e-5 * double(rows), 1e-5))
                            << "loss sum";
                        EXPECT_TRUE(matches_cpu(
                            std::vector<double>{acc_cpu[slot + AccumulatorSlots::kMetricSum]},
                            std::vector<double>{acc_cuda[slot + AccumulatorSlots::kMetricSum]},
                            1e-9, 1e-12))
                            << "metric sum";
                        // the gradient (or, without one, the buffer left alone)
                        EXPECT_TRUE(matches_cpu(values<float>(grad.cpu), values<float>(grad.cuda),
                                                1e-6, 1e-4, cols))
                            << "grad";

                        // and the same bits when run again
                        if (with_grad && rows > 1) {
                            Both acc2 = both(acc_start, {6});
                            Both grad2 =
                                both(std::vector<float>(size_t(rows * cols), 9.0f), {rows, cols});
                            cuda_->loss(spec, pred.cuda.view(), y.cuda.view(), grad2.cuda.view(),
                                        rows, cols, grad_rows, acc2.cuda.view(), slot);
                            EXPECT_TRUE(bit_identical(acc_cuda, values<double>(acc2.cuda)))
                                << "accumulators differ between runs";
                            EXPECT_TRUE(bit_identical(values<float>(grad.cuda),
                                                      values<float>(grad2.cuda), cols))
                                << "gradient differs between runs";
                        }
                    }
                }
            }
        }
    }
}

// ---- the optimizer -----------------------------------------------------------------------------

struct OptimizerCase {
    const char* name;
    OptimizerStep step;
};

std::vector<OptimizerCase> optimizer_cases() {
    std::vector<OptimizerCase> cases;
    OptimizerStep s;

    s = OptimizerStep{};
    s.kind = OptimizerKind::kSGD;
    s.learning_rate = 0.01f;
    cases.push_back({"sgd", s});
    s.momentum = 0.9f;
    cases.push_back({"sgd momentum", s});
    s.nesterov = true;
    cases.push_back({"sgd nesterov", s});

    s = OptimizerStep{};
    s.kind = OptimizerKind::kAdam;
    cases.push_back({"adam", s});
    s.kind = OptimizerKind::kAdamW;
    s.weight_decay = 0.004f;
    cases.push_back({"adamw", s});

    s = OptimizerStep{};
    s.kind = OptimizerKind::kRMSprop;
    cases.push_back({"rmsprop", s});
    s.centered = true;
    cases.push_back({"rmsprop centered", s});
    s.centered = false;
    s.momentum = 0.5f;
    cases.push_back({"rmsprop momentum", s});
    s.centered = true;
    cases.push_back({"rmsprop centered momentum", s});
    return cases;
}

TEST_F(CudaVsCpuTest, OptimizerUpdateMatchesForEveryOptimizerAfterSeveralSteps) {
    const int64_t n = 10007;  // not a multiple of any block size
    const int steps = 5;
    for (const OptimizerCase& oc : optimizer_cases()) {
        SCOPED_TRACE(oc.name);
        const int slots = optimizer_state_slots(oc.step);
        Both params = both(random_values(size_t(n), 80), {n});
        Both state = both(std::vector<float>(size_t(std::max(slots, 1) * n), 0.0f),
                          {std::max(slots, 1) * n});
        for (int t = 1; t <= steps; ++t) {
            OptimizerStep step = oc.step;
            // Adam's bias correction, as the host computes it for step t
            step.alpha = float(double(step.learning_rate) *
                               std::sqrt(1.0 - std::pow(double(step.beta_2), t)) /
                               (1.0 - std::pow(double(step.beta_1), t)));
            Both grads = both(random_values(size_t(n), 81 + uint64_t(t)), {n});
            const View no_state;
            cpu_->optimizer_update(step, params.cpu.view(), grads.cpu.view(),
                                   slots ? state.cpu.view() : no_state, n);
            cuda_->optimizer_update(step, params.cuda.view(), grads.cuda.view(),
                                    slots ? state.cuda.view() : no_state, n);
        }
        EXPECT_TRUE(matches_cpu(values<float>(params.cpu), values<float>(params.cuda), 1e-6, 1e-5))
            << "params";
        EXPECT_TRUE(matches_cpu(values<float>(state.cpu), values<float>(state.cuda), 1e-7, 1e-5, n))
            << "state (col = element, row = slot)";
    }
}

// ---- data --------------------------------------------------------------------------------------

TEST_F(CudaVsCpuTest, PermutationIsBitIdenticalAndAPermutation) {
    struct Case {
        int64_t n;
        uint64_t seed, stream;
    };
    const Case cases[] = {{1, 1, 0},     {2, 1, 0},     {1000, 42, 3},
                          {60000, 7, 1}, {60000, 7, 2}, {100003, 99, 12345}};
    for (const Case& c : cases) {
        SCOPED_TRACE(::testing::Message()
                     << "n " << c.n << " seed " << c.seed << " stream " << c.stream);
        Tensor cpu_perm(*cpu_, {c.n}, DType::kInt32), cuda_perm(*cuda_, {c.n}, DType::kInt32);
        cpu_->permutation(cpu_perm.view(), c.n, c.seed, c.stream);
        cuda_->permutation(cuda_perm.view(), c.n, c.seed, c.stream);
        const std::vector<int32_t> expected = values<int32_t>(cpu_perm);
        const std::vector<int32_t> actual = values<int32_t>(cuda_perm);
        EXPECT_TRUE(bit_identical(expected, actual));

        std::vector<int32_t> sorted = actual;
        std::sort(sorted.begin(), sorted.end());
        std::vector<int32_t> identity(static_cast<size_t>(c.n));
        std::iota(identity.begin(), identity.end(), 0);
        EXPECT_TRUE(bit_identical(identity, sorted)) << "not a permutation";
    }
}

TEST_F(CudaVsCpuTest, GatherRowsIsBitIdenticalForEveryElementSize) {
    const int64_t src_rows = 500, offset = 64, count = 32;
    std::vector<int32_t> perm(static_cast<size_t>(src_rows));
    {
        Tensor p(*cpu_, {src_rows}, DType::kInt32);
        cpu_->permutation(p.view(), src_rows, 5, 0);
        perm = values<int32_t>(p);
    }
    Both index = both(perm, {src_rows});

    // float pixels
    {
        const int64_t cols = 784;
        Both src = both(random_values(size_t(src_rows * cols), 90), {src_rows, cols});
        Both dst = both(std::vector<float>(size_t(count * cols), 0.0f), {count, cols});
        cpu_->gather_rows(src.cpu.view(), index.cpu.view(), offset, count, cols, dst.cpu.view());
        cuda_->gather_rows(src.cuda.view(), index.cuda.view(), offset, count, cols,
                           dst.cuda.view());
        EXPECT_TRUE(bit_identical(values<float>(dst.cpu), values<float>(dst.cuda), cols))
            << "float32";
    }
    // int32 labels, one column
    {
        std::vector<int32_t> labels(static_cast<size_t>(src_rows));
        for (size_t i = 0; i < labels.size(); ++i)
            labels[i] = int32_t(i * 7 % 10);
        Both src = both(labels, {src_rows, 1});
        Both dst = both(std::vector<int32_t>(size_t(count), -1), {count, 1});
        cpu_->gather_rows(src.cpu.view(), index.cpu.view(), offset, count, 1, dst.cpu.view());
        cuda_->gather_rows(src.cuda.view(), index.cuda.view(), offset, count, 1, dst.cuda.view());
        EXPECT_TRUE(bit_identical(values<int32_t>(dst.cpu), values<int32_t>(dst.cuda))) << "int32";
    }
    // uint8 pixels, an odd row length
    {
        const int64_t cols = 29;
        std::vector<uint8_t> bytes(static_cast<size_t>(src_rows * cols));
        for (size_t i = 0; i < bytes.size(); ++i)
            bytes[i] = uint8_t(math::hash3(3, 4, i));
        Both src = both(bytes, {src_rows, cols});
        Both dst = both(std::vector<uint8_t>(size_t(count * cols), 0), {count, cols});
        cpu_->gather_rows(src.cpu.view(), index.cpu.view(), offset, count, cols, dst.cpu.view());
        cuda_->gather_rows(src.cuda.view(), index.cuda.view(), offset, count, cols,
                           dst.cuda.view());
        EXPECT_TRUE(bit_identical(values<uint8_t>(dst.cpu), values<uint8_t>(dst.cuda), cols))
            << "uint8";
    }
}

// ---- a whole epoch -----------------------------------------------------------------------------

// A model compiled as the tests train it: Adam, sparse categorical cross-entropy, accuracy.
std::unique_ptr<Sequential> compiled(std::vector<LayerPtr> layers, Shape input, DeviceChoice device,
                                     uint64_t seed = 1, StepGraphs graphs = StepGraphs::kAuto) {
    auto model = std::make_unique<Sequential>(std::move(layers), layers::Input(std::move(input)));
    CompileOptions options;
    options.device = device;
    options.seed = seed;
    options.log = nullptr;
    options.step_graphs = graphs;
    model->compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {"accuracy"},
                   options);
    return model;
}

// Every weight of b within atol + rtol·|a| of a's, layer by layer.
void expect_weights_match(const Sequential& a, const Sequential& b, double atol, double rtol) {
    const std::vector<LayerWeights> wa = a.get_weights();
    const std::vector<LayerWeights> wb = b.get_weights();
    ASSERT_EQ(wa.size(), wb.size());
    for (size_t l = 0; l < wa.size(); ++l) {
        ASSERT_EQ(wa[l].weights.size(), wb[l].weights.size());
        for (size_t w = 0; w < wa[l].weights.size(); ++w) {
            SCOPED_TRACE(wa[l].layer_name + "/" + wa[l].weights[w].name);
            EXPECT_TRUE(matches_cpu(wa[l].weights[w].values, wb[l].weights[w].values, atol, rtol));
        }
    }
}

// One epoch of fit from the same seed on each backend: the same initial weights, the same
// shuffle and dropout masks (counter-based RNG), so the histories and the trained weights agree
// within float32 rounding, and the CUDA epoch costs exactly one blocking read.
TEST_F(CudaVsCpuTest, FitOneEpochMatchesTheCpu) {
    const int64_t rows = 640, features = 24, classes = 5;
    const data::Array x =
        testing::make_array({rows, features}, random_values(size_t(rows * features), 100));
    const data::Array y = testing::random_labels(rows, classes, 101);

    auto build = [&](DeviceChoice device) {
        return compiled({layers::Dense(32, "relu"), layers::Dropout(0.2f),
                         layers::Dense(16, "tanh"), layers::Dense(classes, "softmax")},
                        {features}, device, /*seed=*/7);
    };
    std::unique_ptr<Sequential> on_cpu = build(DeviceChoice::kCpu);
    std::unique_ptr<Sequential> on_cuda = build(DeviceChoice::kCuda);
    ASSERT_EQ(on_cuda->backend().kind(), DeviceKind::kCuda);

    FitArgs args;
    args.epochs = 1;
    args.batch_size = 32;
    args.validation_split = 0.25;
    args.verbose = 0;
    const History cpu_history = on_cpu->fit(x, y, args);
    const uint64_t reads_before = on_cuda->backend().reads();
    const History cuda_history = on_cuda->fit(x, y, args);
    EXPECT_EQ(on_cuda->backend().reads() - reads_before, uint64_t(args.epochs))
        << "blocking reads during fit";

    // the history: losses within float32 rounding; accuracies may differ by a sample whose
    // argmax is a near tie
    const double n_val = double(rows) * args.validation_split;
    for (const char* key : {"loss", "accuracy", "val_loss", "val_accuracy"}) {
        SCOPED_TRACE(key);
        ASSERT_EQ(cpu_history.history.count(key), 1u);
        ASSERT_EQ(cuda_history.history.count(key), 1u);
        const bool accuracy = std::string(key).find("accuracy") != std::string::npos;
        EXPECT_TRUE(matches_cpu(cpu_history.history.at(key), cuda_history.history.at(key),
                                accuracy ? 1.01 / n_val : 1e-5, accuracy ? 0.0 : 1e-4));
    }

    // the trained weights
    expect_weights_match(*on_cpu, *on_cuda, 1e-5, 1e-4);
}

// ---- step graphs (a stream capture instantiated as a CUDA graph) ------------------------------

// fit with its steps replayed from CUDA graphs against the same fit queued op by op, on the GPU.
// The ops are the same kernels on the same memory, so only atomics' order (the loss sums) may
// move the last bits.
void expect_graphs_match_eager(const std::function<std::unique_ptr<Sequential>(StepGraphs)>& make,
                               const data::Array& x, const data::Array& y, const FitArgs& args,
                               int64_t expected_captures) {
    std::unique_ptr<Sequential> eager = make(StepGraphs::kOff);
    std::unique_ptr<Sequential> graphs = make(StepGraphs::kOn);
    const History eager_history = eager->fit(x, y, args);
    const uint64_t reads_before = graphs->backend().reads();
    const History graph_history = graphs->fit(x, y, args);
    EXPECT_EQ(graphs->backend().reads() - reads_before, uint64_t(args.epochs));
    const StepGraphStats& stats = graphs->step_graph_stats();
    ASSERT_TRUE(stats.enabled) << stats.off_reason;
    EXPECT_EQ(stats.off_reason, "");
    EXPECT_EQ(stats.captures, expected_captures);
    EXPECT_GT(stats.replays, 0);
    EXPECT_GT(stats.train_nodes, 5);
    for (const std::string& key : eager_history.keys) {
        SCOPED_TRACE(key);
        EXPECT_TRUE(
            matches_cpu(eager_history.history.at(key), graph_history.history.at(key), 1e-6, 1e-6));
    }
    expect_weights_match(*eager, *graphs, 1e-6, 1e-5);
}

TEST_F(CudaVsCpuTest, StepGraphsReplayTheEagerFit) {
    const int64_t rows = 700, features = 24, classes = 5;
    const data::Array x =
        testing::make_array({rows, features}, random_values(size_t(rows * features), 200));
    const data::Array y = testing::random_labels(rows, classes, 201);
    auto make = [&](StepGraphs graphs) {
        return compiled({layers::Dense(32, "relu"), layers::Dropout(0.3f),
                         layers::Dense(16, "gelu"), layers::Dense(classes, "softmax")},
                        {features}, DeviceChoice::kCuda, 1, graphs);
    };
    FitArgs args;
    args.epochs = 3;
    args.batch_size = 32;  // 525 training rows: 16 full batches and one of 13
    args.validation_split = 0.25;
    args.verbose = 0;
    expect_graphs_match_eager(make, x, y, args, 2);
}

TEST_F(CudaVsCpuTest, StepGraphsCaptureTheCudnnOps) {
    const int64_t rows = 96;
    const data::Array x =
        testing::make_array({rows, 10, 10, 3}, random_values(size_t(rows * 300), 300, 0.0f, 1.0f));
    const data::Array y = testing::random_labels(rows, 4, 301);
    auto make = [&](StepGraphs graphs) {
        return compiled(
            {layers::Conv2D(8, {3, 3}, "relu", {1, 1}, "same"), layers::BatchNormalization(),
             layers::MaxPooling2D({2, 2}), layers::Conv2D(8, {3, 3}, "relu"), layers::Flatten(),
             layers::Dropout(0.5f), layers::Dense(4, "softmax")},
            {10, 10, 3}, DeviceChoice::kCuda, 1, graphs);
    };
    FitArgs args;
    args.epochs = 3;
    args.batch_size = 16;  // 72 training rows: 4 full batches and one of 8; 24 to validate
    args.validation_split = 0.25;
    args.verbose = 0;
    expect_graphs_match_eager(make, x, y, args, 2);
}

TEST_F(CudaVsCpuTest, ACaptureRefusesAReadAndTheStreamWorksAfterwards) {
    Tensor t(*cuda_, {4}, DType::kFloat32);
    float host[4] = {1, 2, 3, 4};
    t.copy_from_host(host);
    EXPECT_THROW(cuda_->capture([&] { cuda_->read(host, t.data(), sizeof(host)); }), Error);
    EXPECT_FALSE(cuda_->capturing());
    std::unique_ptr<StepGraph> g = cuda_->capture([&] { cuda_->fill_zero(t.view()); });
    EXPECT_GE(g->nodes(), 1);
    g->replay();
    t.copy_to_host(host);
    EXPECT_EQ(host[0], 0.0f);
    EXPECT_EQ(host[3], 0.0f);
}

}  // namespace
}  // namespace kiln
