// Tensors: shape, dtype and the backend that owns the memory.
//
// A Tensor owns its memory (RAII) and is movable but not copyable; an explicit `clone` copies.
// A View is a non-owning typed pointer with a shape, used to hand memory to backend ops and to
// let layers address slices of the model's flat parameter and gradient buffers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

class Backend;

enum class DType { kFloat32, kFloat64, kBFloat16, kInt32, kUInt8 };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);

// Dimensions, outermost first (row-major). A batch of MLP inputs is {batch, features}.
using Shape = std::vector<int64_t>;

int64_t shape_elements(const Shape& shape);
std::string shape_string(const Shape& shape);  // "(32, 784)"

struct View {
    void* data = nullptr;
    DType dtype = DType::kFloat32;
    Shape shape;

    int64_t elements() const { return shape_elements(shape); }
    size_t bytes() const { return static_cast<size_t>(elements()) * dtype_size(dtype); }
    int64_t rows() const { return shape.empty() ? 1 : shape[0]; }
    // Elements per row: the product of every dimension but the first.
    int64_t cols() const { return shape.empty() ? 1 : elements() / (shape[0] ? shape[0] : 1); }

    template <typename T>
    T* as() const {
        return static_cast<T*>(data);
    }

    // The first `n` rows of this view (same row length).
    View first_rows(int64_t n) const;
    // A flat slice of `count` elements starting at element `offset`, reshaped to `new_shape`.
    View slice(int64_t offset, Shape new_shape) const;
};

class Tensor {
  public:
    Tensor() = default;
    Tensor(Backend& backend, Shape shape, DType dtype = DType::kFloat32);
    ~Tensor();

    Tensor(const Tensor&) = delete;
    Tensor& operator=(const Tensor&) = delete;
    Tensor(Tensor&& other) noexcept;
    Tensor& operator=(Tensor&& other) noexcept;

    // An explicit deep copy on the same backend.
    Tensor clone() const;

    bool defined() const { return backend_ != nullptr; }
    Backend* backend() const { return backend_; }
    void* data() const { return data_; }
    DType dtype() const { return dtype_; }
    const Shape& shape() const { return shape_; }
    int64_t elements() const { return shape_elements(shape_); }
    size_t bytes() const { return bytes_; }
    View view() const { return View{data_, dtype_, shape_}; }

    // Copies host memory of exactly `bytes()` bytes into the tensor.
    void copy_from_host(const void* src);
    // Copies the tensor into host memory; on a device backend this is a counted device read.
    void copy_to_host(void* dst) const;

  private:
    void release() noexcept;

    Backend* backend_ = nullptr;
    void* data_ = nullptr;
    size_t bytes_ = 0;
    DType dtype_ = DType::kFloat32;
    Shape shape_;
};

}  // namespace kiln
