// The GEMM precisions (kiln/ops.h, Precision) on the CPU reference: the rounding rule of
// math::round_to_precision at exact values, the CPU backend's GEMM in each mode against a direct
// sum of operands rounded here, Conv2D's operand rounding, and a short fit in bf16 that learns
// and is not the fp32 run. The CUDA backend's GEMMs in each mode are held to these in
// cuda_test.cpp.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/math.h"
#include "kiln/kiln.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::make_array;
using testing::random_values;

uint32_t bits(float x) {
    return math::float_bits(x);
}

float from_bits(uint32_t u) {
    return math::bits_float(u);
}

const Precision kAllPrecisions[] = {Precision::kFp32, Precision::kTf32, Precision::kBf16};

// ---- the rounding rule --------------------------------------------------------------------------

TEST(RoundToPrecisionTest, Bfloat16RoundsToNearestTiesToEven) {
    const float u = std::ldexp(1.0f, -7);  // bfloat16's unit in the last place at 1
    const auto bf16 = [](float x) { return math::round_to_precision(x, Precision::kBf16); };
    EXPECT_EQ(bf16(1.0f), 1.0f);
    EXPECT_EQ(bf16(1.0f + u), 1.0f + u);                              // representable: kept
    EXPECT_EQ(bf16(1.0f + u / 2), 1.0f);                              // tie, 1 is even: down
    EXPECT_EQ(bf16(1.0f + 3 * u / 2), 1.0f + 2 * u);                  // tie, 1 + u is odd: up
    EXPECT_EQ(bf16(1.0f + u / 2 + std::ldexp(1.0f, -20)), 1.0f + u);  // above the tie: up
    EXPECT_EQ(bf16(1.0f + u / 2 - std::ldexp(1.0f, -20)), 1.0f);      // below the tie: down
    EXPECT_EQ(bf16(-(1.0f + u / 2)), -1.0f);                          // the sign is kept
    EXPECT_EQ(bf16(-(1.0f + 3 * u / 2)), -(1.0f + 2 * u));
    EXPECT_EQ(bf16(3.14159265f), 3.140625f);  // 0x40490fdb -> 0x40490000
}

TEST(RoundToPrecisionTest, Tf32RoundsToNearestTiesToEven) {
    const float u = std::ldexp(1.0f, -10);  // TF32's unit in the last place at 1
    const auto tf32 = [](float x) { return math::round_to_precision(x, Precision::kTf32); };
    EXPECT_EQ(tf32(1.0f + u), 1.0f + u);
    EXPECT_EQ(tf32(1.0f + u / 2), 1.0f);
    EXPECT_EQ(tf32(1.0f + 3 * u / 2), 1.0f + 2 * u);
    EXPECT_EQ(tf32(1.0f + u / 2 + std::ldexp(1.0f, -23)), 1.0f + u);
    EXPECT_EQ(tf32(-(1.0f + 3 * u / 2)), -(1.0f + 2 * u));
    // 1 + 2^-8, a bfloat16 tie, is exact in TF32.
    EXPECT_EQ(tf32(1.0f + std::ldexp(1.0f, -8)), 1.0f + std::ldexp(1.0f, -8));
}

TEST(RoundToPrecisionTest, InfinitiesAndNanPassThroughAndOverflowRoundsToInfinity) {
    const float inf = std::numeric_limits<float>::infinity();
    const float nan = from_bits(0x7fc01234u);   // a quiet NaN with a payload in the low bits
    const float snan = from_bits(0xff800001u);  // a signalling NaN the rounding must not zero
    for (Precision p : kAllPrecisions) {
        SCOPED_TRACE(precision_name(p));
        EXPECT_EQ(math::round_to_precision(inf, p), inf);
        EXPECT_EQ(math::round_to_precision(-inf, p), -inf);
        EXPECT_EQ(bits(math::round_to_precision(nan, p)), bits(nan));
        EXPECT_EQ(bits(math::round_to_precision(snan, p)), bits(snan));
        EXPECT_EQ(bits(math::round_to_precision(0.0f, p)), bits(0.0f));
        EXPECT_EQ(bits(math::round_to_precision(-0.0f, p)), bits(-0.0f));
    }
    // FLT_MAX is past the midpoint between the largest bfloat16 (and TF32) and 2^128.
    EXPECT_EQ(math::round_to_precision(FLT_MAX, Precision::kBf16), inf);
    EXPECT_EQ(math::round_to_precision(-FLT_MAX, Precision::kTf32), -inf);
    EXPECT_EQ(bits(math::round_to_precision(from_bits(0x7f7f7fffu), Precision::kBf16)),
              0x7f7f0000u);
    EXPECT_EQ(math::round_to_precision(FLT_MAX, Precision::kFp32), FLT_MAX);
}

TEST(RoundToPrecisionTest, SubnormalsRoundLikeOtherValues) {
    const auto bf16 = [](uint32_t u) {
        return bits(math::round_to_precision(from_bits(u), Precision::kBf16));
    };
    EXPECT_EQ(bf16(0x00000001u), 0x00000000u);  // below half a unit
    EXPECT_EQ(bf16(0x00008000u), 0x00000000u);  // tie, even: down
    EXPECT_EQ(bf16(0x00018000u), 0x00020000u);  // tie, odd: up
    EXPECT_EQ(bf16(0x007fffffu), 0x00800000u);  // the largest subnormal carries into FLT_MIN
    EXPECT_EQ(bf16(0x80018000u), 0x80020000u);
}

// On many values: fp32 is the identity; the others clear the dropped bits, are idempotent and
// pick the nearer of the two neighbours (at most half a unit away).
TEST(RoundToPrecisionTest, RandomValuesRoundToANeighbourWithinHalfAUnit) {
    const std::vector<float> v = random_values(100000, 5, -1000.0f, 1000.0f);
    for (Precision p : {Precision::kTf32, Precision::kBf16}) {
        SCOPED_TRACE(precision_name(p));
        const int dropped = math::dropped_mantissa_bits(p);
        const uint32_t low = (1u << dropped) - 1u;
        int64_t bad = 0;
        for (float x : v) {
            const float r = math::round_to_precision(x, p);
            const uint32_t down = bits(x) & ~low;  // toward zero
            const double unit = std::fabs(double(from_bits(down + low + 1u)) - from_bits(down));
            const bool ok = (bits(r) & low) == 0 && math::round_to_precision(r, p) == r &&
                            std::fabs(double(r) - x) <= unit / 2 &&
                            (bits(r) == down || bits(r) == down + low + 1u);
            bad += ok ? 0 : 1;
        }
        EXPECT_EQ(bad, 0);
    }
    int64_t changed = 0;
    for (float x : v)
        changed += bits(math::round_to_precision(x, Precision::kFp32)) != bits(x) ? 1 : 0;
    EXPECT_EQ(changed, 0);
}

TEST(RoundToPrecisionTest, NamesParseAndPrint) {
    for (Precision p : kAllPrecisions) {
        Precision back = Precision::kFp32;
        ASSERT_TRUE(parse_precision(precision_name(p), &back)) << precision_name(p);
        EXPECT_EQ(back, p);
    }
    Precision unused;
    EXPECT_FALSE(parse_precision("fp16", &unused));
    EXPECT_EQ(conv_precision(Precision::kBf16), Precision::kTf32);
    EXPECT_EQ(conv_precision(Precision::kTf32), Precision::kTf32);
    EXPECT_EQ(conv_precision(Precision::kFp32), Precision::kFp32);
}

// ---- the CPU backend's GEMM in each mode
// ---------------------------------------------------------

class CpuPrecisionTest : public ::testing::Test {
  protected:
    std::unique_ptr<Backend> b_ = make_cpu_backend();

    static View view(std::vector<float>& v) { return View{v.data(), DType::kFloat32, {}}; }
};

// C = 0.5 op(A) op(B) + 2 C against double sums of the operands rounded here, for every mode
// and transposition; the larger shapes split C across threads by rows and by columns. The
// rounded operands make the sums differ from fp32's by far more than float32 rounding, and
// the inputs are left as they were.
TEST_F(CpuPrecisionTest, GemmMatchesADirectSumOfRoundedOperands) {
    const int64_t shapes[][3] = {{5, 4, 3}, {200, 64, 96}, {16, 300, 128}};
    for (Precision p : kAllPrecisions) {
        b_->set_precision(p);
        for (const auto& shape : shapes) {
            const int64_t m = shape[0], n = shape[1], k = shape[2];
            for (int ta = 0; ta < 2; ++ta) {
                for (int tb = 0; tb < 2; ++tb) {
                    SCOPED_TRACE(::testing::Message()
                                 << precision_name(p) << " m " << m << " n " << n << " k " << k
                                 << " ta " << ta << " tb " << tb);
                    std::vector<float> a = random_values(m * k, 1), bm = random_values(k * n, 2);
                    std::vector<float> c = random_values(m * n, 3);
                    const std::vector<float> a0 = a, b0 = bm;
                    std::vector<float> expected = c, unrounded = c;
                    for (int64_t i = 0; i < m; ++i) {
                        for (int64_t j = 0; j < n; ++j) {
                            double s = 0, s32 = 0;
                            for (int64_t q = 0; q < k; ++q) {
                                const float av = ta ? a[q * m + i] : a[i * k + q];
                                const float bv = tb ? bm[j * k + q] : bm[q * n + j];
                                s += double(math::round_to_precision(av, p)) *
                                     math::round_to_precision(bv, p);
                                s32 += double(av) * bv;
                            }
                            expected[i * n + j] = float(0.5 * s + 2.0 * c[i * n + j]);
                            unrounded[i * n + j] = float(0.5 * s32 + 2.0 * c[i * n + j]);
                        }
                    }
                    b_->gemm(ta, tb, m, n, k, 0.5f, view(a), view(bm), 2.0f, view(c));
                    EXPECT_TRUE(testing::all_close(c, expected, 1e-4, 1e-4));
                    EXPECT_EQ(a, a0);
                    EXPECT_EQ(bm, b0);
                    if (p != Precision::kFp32 && k > 3) {
                        EXPECT_FALSE(testing::all_close(c, unrounded, 1e-4, 1e-4))
                            << "the operands were not rounded";
                    }
                }
            }
        }
    }
}

// A convolution in tf32 is the fp32 convolution of operands rounded to TF32, bit for bit, in
// each direction; in bf16 it is the tf32 one (conv_precision).
TEST_F(CpuPrecisionTest, Conv2DRoundsItsOperandsToTf32InTf32AndBf16) {
    const AxisWindow ah = keras_axis_window(9, 3, 1, 1, Padding::kSame);
    Conv2DGeometry g;
    g.batch = 4;
    g.in_h = g.in_w = 9;
    g.in_c = 5;
    g.out_h = g.out_w = ah.out;
    g.out_c = 7;
    g.kernel_h = g.kernel_w = 3;
    g.pad_top = g.pad_left = ah.pad_before;
    g.pad_bottom = g.pad_right = ah.pad_after;
    std::vector<float> x = random_values(size_t(g.x_elements()), 21);
    std::vector<float> kernel = random_values(size_t(g.kernel_elements()), 22);
    std::vector<float> dy = random_values(size_t(g.y_elements()), 23);
    auto rounded = [](std::vector<float> v) {
        for (float& e : v)
            e = math::round_to_precision(e, Precision::kTf32);
        return v;
    };
    std::vector<float> xr = rounded(x), kr = rounded(kernel), dyr = rounded(dy);

    struct Out {
        std::vector<float> y, dx, dk;
    };
    auto run = [&](Precision p, std::vector<float>& xv, std::vector<float>& kv,
                   std::vector<float>& dyv) {
        b_->set_precision(p);
        Out o{std::vector<float>(size_t(g.y_elements())),
              std::vector<float>(size_t(g.x_elements())),
              std::vector<float>(size_t(g.kernel_elements()))};
        b_->conv2d_forward(g, view(xv), view(kv), View{}, {Activation::kLinear, 0}, view(o.y));
        b_->conv2d_backward_data(g, view(dyv), view(kv), view(o.dx));
        b_->conv2d_backward_filter(g, view(xv), view(dyv), view(o.dk));
        return o;
    };
    const Out reference = run(Precision::kFp32, xr, kr, dyr);
    const Out plain = run(Precision::kFp32, x, kernel, dy);
    for (Precision p : {Precision::kTf32, Precision::kBf16}) {
        SCOPED_TRACE(precision_name(p));
        const Out o = run(p, x, kernel, dy);
        EXPECT_EQ(o.y, reference.y);
        EXPECT_EQ(o.dx, reference.dx);
        EXPECT_EQ(o.dk, reference.dk);
        EXPECT_NE(o.y, plain.y);
    }
}

TEST_F(CpuPrecisionTest, Float64TakesFp32Only) {
    std::vector<double> a(16, 1.0), c(16, 0.0);
    const View av{a.data(), DType::kFloat64, {}}, cv{c.data(), DType::kFloat64, {}};
    b_->set_precision(Precision::kBf16);
    try {
        b_->gemm(false, false, 4, 4, 4, 1.0f, av, av, 0.0f, cv);
        FAIL() << "a float64 gemm in bf16 did not throw";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("bf16"), std::string::npos) << e.what();
    }

    Sequential model({layers::Dense(3, "softmax")}, layers::Input({4}));
    CompileOptions o;
    o.device = DeviceChoice::kCpu;
    o.log = nullptr;
    o.dtype = DType::kFloat64;
    o.precision = Precision::kTf32;
    EXPECT_THROW(model.compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {}, o),
                 Error);
}

// ---- training in bf16
// ----------------------------------------------------------------------------

// The class is the argmax of the first three of 16 features.
History fit_toy(Precision precision, std::vector<double>* weights) {
    const int64_t n = 512, d = 16;
    const data::Array x = make_array({n, d}, random_values(size_t(n * d), 31));
    std::vector<float> y(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        const float* r = &x.values[size_t(i * d)];
        y[size_t(i)] = float(r[0] > r[1] ? (r[0] > r[2] ? 0 : 2) : (r[1] > r[2] ? 1 : 2));
    }
    Sequential model({layers::Dense(32, "relu"), layers::Dense(3, "softmax")}, layers::Input({d}));
    CompileOptions o;
    o.device = DeviceChoice::kCpu;
    o.log = nullptr;
    o.precision = precision;
    model.compile(optimizers::Adam(), losses::SparseCategoricalCrossentropy(), {"accuracy"}, o);
    EXPECT_EQ(model.backend().precision(), precision);
    FitArgs args;
    args.epochs = 30;
    args.batch_size = 32;
    args.verbose = 0;
    History h = model.fit(x, make_array({n, 1}, y), args);
    *weights = model.flat_parameters();
    return h;
}

TEST(PrecisionFitTest, Bf16LearnsAndIsNotTheFp32Run) {
    std::vector<double> w32, w16, w16_again;
    const History fp32 = fit_toy(Precision::kFp32, &w32);
    const History bf16 = fit_toy(Precision::kBf16, &w16);
    const std::vector<double>& loss = bf16.history.at("loss");
    ASSERT_EQ(loss.size(), 30u);
    EXPECT_LT(loss.back(), 0.5 * loss.front()) << "bf16 did not learn";
    EXPECT_GT(bf16.history.at("accuracy").back(), 0.9);
    EXPECT_NE(w16, w32) << "bf16 trained the same weights as fp32";
    // Still deterministic: the same run again gives the same bits.
    fit_toy(Precision::kBf16, &w16_again);
    EXPECT_EQ(w16, w16_again);
    // Close to fp32's loss, not equal to it.
    EXPECT_NEAR(loss.back(), fp32.history.at("loss").back(), 0.05);
}

}  // namespace
}  // namespace kiln
