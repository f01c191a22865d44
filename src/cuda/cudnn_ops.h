// The CUDA backend's convolutions and batch normalisation, through cuDNN (cudnn_ops.cpp). The
// header keeps cudnn.h out of the files that include it.
//
// All pointers are device pointers of float32 NHWC tensors; Conv2D kernels are in Keras's
// (KH, KW, C, F) layout. Every call enqueues on the stream given at construction and returns
// without waiting, except the first call of each convolution shape, which times cuDNN's
// algorithms once (blocking) before it runs. Nothing is allocated after those first calls.
#pragma once

#include <memory>

#include <cuda_runtime_api.h>

#include "kiln/conv_ops.h"
#include "kiln/ops.h"

namespace kiln {

class Backend;

namespace cuda {

class CudnnOps {
  public:
    // `memory` provides the scratch (from the backend's stream-ordered pool) and must outlive
    // this object; the cuDNN handle is created at the first call.
    CudnnOps(cudaStream_t stream, Backend& memory);
    ~CudnnOps();
    CudnnOps(const CudnnOps&) = delete;
    CudnnOps& operator=(const CudnnOps&) = delete;

    // The math of the convolutions that follow: kFp32 is FMA only (CUDNN_FMA_MATH, no TF32),
    // kTf32 lets cuDNN choose TF32 tensor-core algorithms (CUDNN_DEFAULT_MATH on sm_80 and
    // later). kBf16 is taken as kTf32: float32 tensors have no bfloat16 math in cuDNN
    // (kiln/ops.h, conv_precision). Each shape keeps a plan per math.
    void set_precision(Precision precision);

    void conv2d_forward(const Conv2DGeometry& g, const float* x, const float* kernel, float* y);
    void conv2d_backward_data(const Conv2DGeometry& g, const float* dy, const float* kernel,
                              float* dx);
    void conv2d_backward_filter(const Conv2DGeometry& g, const float* x, const float* dy,
                                float* dkernel);

    void batch_norm_forward_training(const BatchNormGeometry& g, const float* x, const float* gamma,
                                     const float* beta, float* y, float* moving_mean,
                                     float* moving_variance, float* saved_mean,
                                     float* saved_inv_std);
    void batch_norm_forward_inference(const BatchNormGeometry& g, const float* x,
                                      const float* gamma, const float* beta,
                                      const float* moving_mean, const float* moving_variance,
                                      float* y);
    void batch_norm_backward(const BatchNormGeometry& g, const float* x, const float* dy,
                             const float* gamma, const float* saved_mean,
                             const float* saved_inv_std, float* dx, float* dgamma, float* dbeta);

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace cuda
}  // namespace kiln
