// The CPU backend's image ops: convolution by im2col and OpenBLAS GEMMs, pooling and batch
// normalisation by loops (the shapes and math are in kiln/conv_ops.h and kernels/math.h).
//
// The backend's thread pool (cpu/parallel.h) splits the batch into chunks whose size depends on
// the geometry only, never on the thread count, and every sum over samples adds the chunks'
// partial sums in chunk order: the same inputs give the same bits whatever the number of
// threads. Each chunk's GEMM runs on one thread (OpenBLAS is single-threaded inside kiln's
// threads; see cpu_backend.cpp).
//
// T is float or double (the gradient checks run in double).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "kiln/conv_ops.h"
#include "kiln/ops.h"

namespace kiln {
namespace blas {
struct Library;
}  // namespace blas

namespace cpu {

// A growable, 64-byte aligned block of host memory, kept between calls so that a training step
// allocates nothing once the first step has sized it.
class ScratchBlock {
  public:
    ScratchBlock() = default;
    ~ScratchBlock();
    ScratchBlock(const ScratchBlock&) = delete;
    ScratchBlock& operator=(const ScratchBlock&) = delete;
    ScratchBlock(ScratchBlock&& other) noexcept;
    ScratchBlock& operator=(ScratchBlock&& other) noexcept;

    // At least `bytes` bytes; the contents are not kept when it grows.
    void* get(size_t bytes);

  private:
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

// The scratch of the image ops: blocks lent to the chunks of a parallel loop (im2col patches),
// one at a time per running chunk, and one shared block (per-chunk partial sums). The pool runs
// at most threads() chunks at once, so that many blocks always suffice.
class ImageScratch {
  public:
    explicit ImageScratch(int max_concurrent);
    ImageScratch(const ImageScratch&) = delete;
    ImageScratch& operator=(const ImageScratch&) = delete;

    // A block no running chunk holds, returned to the set when the lease goes.
    class Lease {
      public:
        Lease(ImageScratch& owner, int index) : owner_(owner), index_(index) {}
        ~Lease() { owner_.busy_[static_cast<size_t>(index_)].store(false); }
        Lease(const Lease&) = delete;
        Lease& operator=(const Lease&) = delete;
        void* get(size_t bytes) { return owner_.blocks_[static_cast<size_t>(index_)].get(bytes); }

      private:
        ImageScratch& owner_;
        int index_;
    };
    Lease lease();
    ScratchBlock& shared() { return shared_; }

  private:
    std::vector<ScratchBlock> blocks_;
    std::unique_ptr<std::atomic<bool>[]> busy_;
    ScratchBlock shared_;
};

// y = act(x ⋆ kernel + bias), bias may be null; act element-wise (not softmax).
template <typename T>
void conv2d_forward(const blas::Library& blas, ImageScratch& scratch, const Conv2DGeometry& g,
                    const T* x, const T* kernel, const T* bias, ActivationSpec act, T* y);
template <typename T>
void conv2d_backward_data(const blas::Library& blas, ImageScratch& scratch, const Conv2DGeometry& g,
                          const T* dy, const T* kernel, T* dx);
template <typename T>
void conv2d_backward_filter(const blas::Library& blas, ImageScratch& scratch,
                            const Conv2DGeometry& g, const T* x, const T* dy, T* dkernel);

template <typename T>
void pool2d_forward(const Pool2DGeometry& g, const T* x, T* y);
template <typename T>
void pool2d_backward(ImageScratch& scratch, const Pool2DGeometry& g, const T* x, const T* dy,
                     T* dx);

template <typename T>
void batch_norm_forward_training(ImageScratch& scratch, const BatchNormGeometry& g, const T* x,
                                 const T* gamma, const T* beta, T* y, T* moving_mean,
                                 T* moving_variance, T* saved_mean, T* saved_inv_std);
template <typename T>
void batch_norm_forward_inference(const BatchNormGeometry& g, const T* x, const T* gamma,
                                  const T* beta, const T* moving_mean, const T* moving_variance,
                                  T* y);
template <typename T>
void batch_norm_backward(ImageScratch& scratch, const BatchNormGeometry& g, const T* x, const T* dy,
                         const T* gamma, const T* saved_mean, const T* saved_inv_std, T* dx,
                         T* dgamma, T* dbeta);

}  // namespace cpu
}  // namespace kiln
