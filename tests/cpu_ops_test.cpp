// The CPU backend's ops against direct computations: the reference the CUDA ops are tested
// against must itself be right.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kiln/backend.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::random_values;

class CpuOpsTest : public ::testing::Test {
  protected:
    std::unique_ptr<Backend> b_ = make_cpu_backend();

    View view(std::vector<float>& v, Shape shape) { return View{v.data(), DType::kFloat32, shape}; }
};

// C = 0.5 op(A) op(B) + 2 C against double loops, for every transposition; the larger shapes
// take the path that splits C across threads, by rows (m ≥ n) and by columns (n > m).
TEST_F(CpuOpsTest, GemmMatchesLoopsForEveryTranspositionAndShape) {
    const int64_t shapes[][3] = {{5, 4, 3}, {200, 64, 96}, {16, 300, 128}};
    for (const auto& shape : shapes) {
        const int64_t m = shape[0], n = shape[1], k = shape[2];
        for (int ta = 0; ta < 2; ++ta) {
            for (int tb = 0; tb < 2; ++tb) {
                std::vector<float> a = random_values(m * k, 1), bm = random_values(k * n, 2);
                std::vector<float> c = random_values(m * n, 3), expected = c;
                for (int64_t i = 0; i < m; ++i) {
                    for (int64_t j = 0; j < n; ++j) {
                        double s = 0;
                        for (int64_t p = 0; p < k; ++p) {
                            const float av = ta ? a[p * m + i] : a[i * k + p];
                            const float bv = tb ? bm[j * k + p] : bm[p * n + j];
                            s += double(av) * bv;
                        }
                        expected[i * n + j] = float(0.5 * s + 2.0 * expected[i * n + j]);
                    }
                }
                b_->gemm(ta, tb, m, n, k, 0.5f, view(a, {}), view(bm, {}), 2.0f, view(c, {}));
                EXPECT_TRUE(testing::all_close(c, expected, 1e-4, 1e-4))
                    << "m " << m << " n " << n << " k " << k << " ta " << ta << " tb " << tb;
            }
        }
    }
}

TEST_F(CpuOpsTest, SoftmaxRowsSumToOneAndBackwardIsTheJacobianProduct) {
    const int64_t rows = 3, cols = 5;
    std::vector<float> z = random_values(rows * cols, 4, -5, 5), y(rows * cols);
    b_->bias_activation_forward(view(z, {}), View{}, view(y, {}), rows, cols,
                                {Activation::kSoftmax, 0});
    for (int64_t r = 0; r < rows; ++r) {
        EXPECT_NEAR(std::accumulate(y.begin() + r * cols, y.begin() + (r + 1) * cols, 0.0), 1.0,
                    1e-6);
    }
    std::vector<float> dy = random_values(rows * cols, 5), dz(rows * cols);
    b_->activation_backward(view(z, {}), view(y, {}), view(dy, {}), view(dz, {}), rows, cols,
                            {Activation::kSoftmax, 0});
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < cols; ++i) {
            double s = 0;  // Σ_j dy_j ∂y_j/∂z_i, ∂y_j/∂z_i = y_j (δ_ij - y_i)
            for (int64_t j = 0; j < cols; ++j) {
                s += dy[r * cols + j] * y[r * cols + j] * ((i == j) - y[r * cols + i]);
            }
            EXPECT_NEAR(dz[r * cols + i], s, 1e-6);
        }
    }
}

TEST_F(CpuOpsTest, BiasGradIsColumnSums) {
    std::vector<float> dz = random_values(7 * 3, 6), db(3);
    b_->bias_grad(view(dz, {}), view(db, {}), 7, 3);
    for (int c = 0; c < 3; ++c) {
        double s = 0;
        for (int r = 0; r < 7; ++r)
            s += dz[r * 3 + c];
        EXPECT_NEAR(db[c], s, 1e-6);
    }
}

TEST_F(CpuOpsTest, PermutationIsAPermutationAndChangesWithTheStream) {
    const int64_t n = 1000;
    std::vector<int32_t> p0(n), p1(n), again(n);
    b_->permutation(View{p0.data(), DType::kInt32, {n}}, n, 42, 0);
    b_->permutation(View{p1.data(), DType::kInt32, {n}}, n, 42, 1);
    b_->permutation(View{again.data(), DType::kInt32, {n}}, n, 42, 0);
    std::vector<int32_t> sorted = p0;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(sorted[i], i);
    EXPECT_NE(p0, p1);
    EXPECT_EQ(p0, again);
    int fixed_points = 0;
    for (int64_t i = 0; i < n; ++i)
        fixed_points += p0[i] == i;
    EXPECT_LT(fixed_points, 10);  // about 1 expected for a random permutation
}

TEST_F(CpuOpsTest, GatherRowsFollowsTheIndex) {
    std::vector<float> src = random_values(10 * 3, 7), dst(4 * 3);
    std::vector<int32_t> index = {9, 0, 4, 4, 2, 7};
    b_->gather_rows(view(src, {10, 3}), View{index.data(), DType::kInt32, {6}}, 2, 4, 3,
                    view(dst, {4, 3}));
    for (int r = 0; r < 4; ++r) {
        for (int c = 0; c < 3; ++c)
            EXPECT_EQ(dst[r * 3 + c], src[index[2 + r] * 3 + c]);
    }
}

TEST_F(CpuOpsTest, DropoutKeepsAboutOneMinusRateAndScalesKeptUnits) {
    const int64_t n = 100000;
    std::vector<float> x(n, 1.0f), y(n), mask(n);
    b_->dropout_forward(view(x, {}), view(y, {}), view(mask, {}), n, 0.25f, 3, 17);
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (y[i] != 0) {
            ++kept;
            EXPECT_FLOAT_EQ(y[i], 1.0f / 0.75f);
        }
        EXPECT_EQ(y[i], mask[i]);
    }
    EXPECT_NEAR(double(kept) / n, 0.75, 0.01);
}

// Adam as Keras 3 writes it, in double, for three steps.
TEST_F(CpuOpsTest, AdamFollowsKerasForSeveralSteps) {
    const int64_t n = 4;
    std::vector<float> p = {0.5f, -0.25f, 1.0f, 0.0f}, state(2 * n, 0.0f);
    std::vector<double> ep(p.begin(), p.end()), em(n, 0), ev(n, 0);
    OptimizerStep step;
    step.kind = OptimizerKind::kAdam;
    for (int t = 1; t <= 3; ++t) {
        std::vector<float> g = random_values(n, 10 + t);
        step.alpha = float(1e-3 * std::sqrt(1 - std::pow(0.999, t)) / (1 - std::pow(0.9, t)));
        b_->optimizer_update(step, view(p, {}), view(g, {}), view(state, {}), n);
        for (int64_t i = 0; i < n; ++i) {
            em[i] += (g[i] - em[i]) * (1 - 0.9);
            ev[i] += (double(g[i]) * g[i] - ev[i]) * (1 - 0.999);
            ep[i] -= em[i] * step.alpha / (std::sqrt(ev[i]) + 1e-7);
        }
    }
    EXPECT_TRUE(testing::all_close(p, ep, 1e-7, 1e-5));
}

TEST_F(CpuOpsTest, SgdMomentumAndNesterovFollowKeras) {
    for (bool nesterov : {false, true}) {
        std::vector<float> p = {1.0f, 2.0f}, state(2, 0.0f);
        double ep[2] = {1, 2}, em[2] = {0, 0};
        OptimizerStep step;
        step.kind = OptimizerKind::kSGD;
        step.learning_rate = 0.1f;
        step.momentum = 0.9f;
        step.nesterov = nesterov;
        for (int t = 0; t < 3; ++t) {
            std::vector<float> g = {0.5f, -1.0f};
            b_->optimizer_update(step, view(p, {}), view(g, {}), view(state, {}), 2);
            for (int i = 0; i < 2; ++i) {
                em[i] = 0.9 * em[i] - 0.1 * g[i];
                ep[i] += nesterov ? 0.9 * em[i] - 0.1 * g[i] : em[i];
            }
        }
        EXPECT_NEAR(p[0], ep[0], 1e-5) << "nesterov " << nesterov;
        EXPECT_NEAR(p[1], ep[1], 1e-5) << "nesterov " << nesterov;
    }
}

TEST_F(CpuOpsTest, RmspropCenteredWithMomentumFollowsKeras) {
    std::vector<float> p = {1.0f}, state(3, 0.0f);
    double ep = 1, vel = 0, avg = 0, mom = 0;
    OptimizerStep step;
    step.kind = OptimizerKind::kRMSprop;
    step.centered = true;
    step.momentum = 0.5f;
    for (int t = 0; t < 3; ++t) {
        std::vector<float> g = {0.3f};
        b_->optimizer_update(step, view(p, {}), view(g, {}), view(state, {}), 1);
        vel = 0.9 * vel + 0.1 * 0.09;
        avg = 0.9 * avg + 0.1 * 0.3;
        const double inc = 1e-3 * 0.3 / std::sqrt(vel - avg * avg + 1e-7);
        mom = 0.5 * mom + inc;
        ep -= mom;
    }
    EXPECT_NEAR(p[0], ep, 1e-6);
}

TEST_F(CpuOpsTest, AdamwDecaysBeforeTheAdamStep) {
    std::vector<float> p = {2.0f}, g = {0.0f}, state(2, 0.0f);
    OptimizerStep step;
    step.kind = OptimizerKind::kAdamW;
    step.weight_decay = 0.004f;
    step.alpha = 1e-3f;
    b_->optimizer_update(step, view(p, {}), view(g, {}), view(state, {}), 1);
    EXPECT_NEAR(p[0], 2.0 - 2.0 * 0.004 * 1e-3, 1e-7);  // zero gradient: only the decay
}

TEST_F(CpuOpsTest, LossAccumulatesSumsAndSparseAccuracy) {
    // Two samples of three classes, probabilities given directly.
    std::vector<float> pred = {0.7f, 0.2f, 0.1f, 0.3f, 0.3f, 0.4f};
    std::vector<float> labels = {0, 1};
    std::vector<double> acc(3, 0.0);
    LossSpec spec;
    spec.kind = LossKind::kSparseCategoricalCrossentropy;
    spec.metric = MetricKind::kSparseCategoricalAccuracy;
    b_->loss(spec, view(pred, {}), view(labels, {}), View{}, 2, 3, 2,
             View{acc.data(), DType::kFloat64, {3}}, 0);
    EXPECT_NEAR(acc[AccumulatorSlots::kLossSum], -std::log(0.7) - std::log(0.3), 1e-6);
    EXPECT_EQ(acc[AccumulatorSlots::kMetricSum], 1.0);  // the first is right, the second not
    EXPECT_EQ(acc[AccumulatorSlots::kCount], 2.0);
}

TEST_F(CpuOpsTest, ReadsAreCounted) {
    std::vector<float> a(4), c(4);
    const uint64_t before = b_->reads();
    b_->read(c.data(), a.data(), sizeof(float) * 4);
    b_->copy(c.data(), a.data(), sizeof(float) * 4);
    EXPECT_EQ(b_->reads(), before + 1);
}

}  // namespace
}  // namespace kiln
