#include "kiln/tensor.h"

#include <sstream>
#include <utility>

#include "kiln/backend.h"
#include "kiln/status.h"

namespace kiln {

size_t dtype_size(DType dtype) {
    switch (dtype) {
        case DType::kFloat32:
            return 4;
        case DType::kFloat64:
            return 8;
        case DType::kBFloat16:
            return 2;
        case DType::kInt32:
            return 4;
        case DType::kUInt8:
            return 1;
    }
    return 0;
}

const char* dtype_name(DType dtype) {
    switch (dtype) {
        case DType::kFloat32:
            return "float32";
        case DType::kFloat64:
            return "float64";
        case DType::kBFloat16:
            return "bfloat16";
        case DType::kInt32:
            return "int32";
        case DType::kUInt8:
            return "uint8";
    }
    return "unknown";
}

int64_t shape_elements(const Shape& shape) {
    int64_t n = 1;
    for (int64_t d : shape)
        n *= d;
    return n;
}

std::string shape_string(const Shape& shape) {
    std::ostringstream out;
    out << "(";
    for (size_t i = 0; i < shape.size(); ++i) {
        out << (i ? ", " : "") << shape[i];
    }
    out << (shape.size() == 1 ? ",)" : ")");
    return out.str();
}

View View::first_rows(int64_t n) const {
    View v = *this;
    if (!v.shape.empty())
        v.shape[0] = n;
    return v;
}

View View::slice(int64_t offset, Shape new_shape) const {
    View v;
    v.data = static_cast<char*>(data) + static_cast<size_t>(offset) * dtype_size(dtype);
    v.dtype = dtype;
    v.shape = std::move(new_shape);
    return v;
}

Tensor::Tensor(Backend& backend, Shape shape, DType dtype)
    : backend_(&backend), dtype_(dtype), shape_(std::move(shape)) {
    for (int64_t d : shape_) {
        if (d < 0)
            throw Error("Tensor: negative dimension in shape " + shape_string(shape_));
    }
    bytes_ = static_cast<size_t>(shape_elements(shape_)) * dtype_size(dtype_);
    data_ = bytes_ ? backend.allocate(bytes_) : nullptr;
}

Tensor::~Tensor() {
    release();
}

Tensor::Tensor(Tensor&& other) noexcept
    : backend_(std::exchange(other.backend_, nullptr)),
      data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      dtype_(other.dtype_),
      shape_(std::move(other.shape_)) {}

Tensor& Tensor::operator=(Tensor&& other) noexcept {
    if (this != &other) {
        release();
        backend_ = std::exchange(other.backend_, nullptr);
        data_ = std::exchange(other.data_, nullptr);
        bytes_ = std::exchange(other.bytes_, 0);
        dtype_ = other.dtype_;
        shape_ = std::move(other.shape_);
    }
    return *this;
}

Tensor Tensor::clone() const {
    if (!backend_)
        return Tensor();
    Tensor copy(*backend_, shape_, dtype_);
    if (bytes_)
        backend_->copy(copy.data_, data_, bytes_);
    return copy;
}

void Tensor::copy_from_host(const void* src) {
    if (bytes_)
        backend_->upload(data_, src, bytes_);
}

void Tensor::copy_to_host(void* dst) const {
    if (bytes_)
        backend_->read(dst, data_, bytes_);
}

void Tensor::release() noexcept {
    if (backend_ && data_)
        backend_->deallocate(data_, bytes_);
    data_ = nullptr;
    bytes_ = 0;
}

}  // namespace kiln
