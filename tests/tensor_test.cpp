#include <gtest/gtest.h>

#include <type_traits>
#include <vector>

#include "kiln/backend.h"
#include "kiln/status.h"
#include "kiln/tensor.h"

namespace kiln {
namespace {

TEST(TensorTest, OwnsMemoryAndMovesWithoutCopying) {
    static_assert(!std::is_copy_constructible_v<Tensor>, "a copy must be explicit");
    static_assert(std::is_nothrow_move_constructible_v<Tensor>);
    auto b = make_cpu_backend();
    Tensor t(*b, {3, 4});
    EXPECT_EQ(t.elements(), 12);
    EXPECT_EQ(t.bytes(), 48u);
    void* data = t.data();
    Tensor moved = std::move(t);
    EXPECT_EQ(moved.data(), data);
    EXPECT_EQ(t.data(), nullptr);  // NOLINT: the moved-from tensor is empty
    EXPECT_FALSE(t.defined());
}

TEST(TensorTest, CloneIsADeepCopy) {
    auto b = make_cpu_backend();
    Tensor t(*b, {4});
    const std::vector<float> v = {1, 2, 3, 4};
    t.copy_from_host(v.data());
    Tensor c = t.clone();
    EXPECT_NE(c.data(), t.data());
    std::vector<float> out(4);
    c.copy_to_host(out.data());
    EXPECT_EQ(out, v);
}

TEST(TensorTest, ViewsSliceFlatBuffers) {
    auto b = make_cpu_backend();
    Tensor t(*b, {10});
    View s = t.view().slice(4, {2, 3});
    EXPECT_EQ(static_cast<char*>(s.data) - static_cast<char*>(t.data()), 16);
    EXPECT_EQ(s.rows(), 2);
    EXPECT_EQ(s.cols(), 3);
    EXPECT_EQ(s.first_rows(1).elements(), 3);
}

TEST(TensorTest, ShapesPrintAsKerasDoes) {
    EXPECT_EQ(shape_string({32, 784}), "(32, 784)");
    EXPECT_EQ(shape_string({10}), "(10,)");
}

TEST(TensorTest, NegativeDimensionsAreRejected) {
    auto b = make_cpu_backend();
    EXPECT_THROW(Tensor(*b, {3, -1}), Error);
}

}  // namespace
}  // namespace kiln
