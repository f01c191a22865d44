// The CPU backend's image ops (cpu_conv.h says how they thread and why their sums are
// reproducible).
//
// Convolution is im2col + GEMM in NHWC. A chunk of samples is unrolled into a patch matrix
// col(rows, KH·KW·C), one row per output pixel, its columns in (kh, kw, c) order: exactly the
// rows of Keras's kernel seen as a (KH·KW·C, F) matrix. Then
//   forward          y(rows, F)      = col · kernel
//   backward data    dcol(rows, K)   = dy · kernelᵀ, scattered back into dx (col2im)
//   backward filter  dkernel(K, F)   = Σ_chunks colᵀ · dy
// A 1×1 convolution with stride 1 and no padding uses x itself as col. A patch of at most
// kDirectPatch values (a first layer: 3×3 over 1 or 3 channels) is too thin a matrix for a GEMM
// to pay for the im2col, so its forward and filter-gradient passes gather each patch into a
// small array and multiply-add it straight into the output row (vectorised over the filters).
#include "cpu/cpu_conv.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <type_traits>

#include "cpu/blas.h"
#include "cpu/parallel.h"
#include "kernels/math.h"
#include "kiln/status.h"

namespace kiln {
namespace cpu {

// ---- scratch ------------------------------------------------------------------------------------

ScratchBlock::~ScratchBlock() {
    std::free(ptr_);
}

ScratchBlock::ScratchBlock(ScratchBlock&& other) noexcept : ptr_(other.ptr_), bytes_(other.bytes_) {
    other.ptr_ = nullptr;
    other.bytes_ = 0;
}

ScratchBlock& ScratchBlock::operator=(ScratchBlock&& other) noexcept {
    if (this != &other) {
        std::free(ptr_);
        ptr_ = other.ptr_;
        bytes_ = other.bytes_;
        other.ptr_ = nullptr;
        other.bytes_ = 0;
    }
    return *this;
}

void* ScratchBlock::get(size_t bytes) {
    if (bytes <= bytes_ && ptr_ != nullptr)
        return ptr_;
    std::free(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    const size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
    ptr_ = std::aligned_alloc(64, rounded);
    if (ptr_ == nullptr) {
        throw Error("cpu backend: out of memory allocating " + std::to_string(rounded) +
                    " bytes of scratch for an image op");
    }
    bytes_ = rounded;
    return ptr_;
}

ImageScratch::ImageScratch(int max_concurrent)
    : blocks_(static_cast<size_t>(std::max(max_concurrent, 1))),
      busy_(new std::atomic<bool>[blocks_.size()]) {
    for (size_t i = 0; i < blocks_.size(); ++i)
        busy_[i].store(false);
}

ImageScratch::Lease ImageScratch::lease() {
    for (size_t i = 0; i < blocks_.size(); ++i) {
        bool expected = false;
        if (busy_[i].compare_exchange_strong(expected, true))
            return Lease(*this, int(i));
    }
    throw Error("cpu backend: more image-op chunks running at once than scratch blocks (" +
                std::to_string(blocks_.size()) + ")");
}

namespace {

// About this many output pixels per chunk: the patch matrix of the Fashion-MNIST convnet's
// second layer is then 2,048 × 288 floats (2.3 MB), which stays in one core's L2 between im2col
// and the GEMM that reads it, and a batch of 128 still gives several chunks per thread.
constexpr int64_t kChunkRows = 2048;
// Patches of at most this many values take the direct path (see the top of the file).
constexpr int64_t kDirectPatch = 32;
// Filters per block of the direct path: 16 floats, one AVX-512 register (two AVX2 ones), so a
// block's sums stay in registers across the taps instead of going through memory for each.
constexpr int64_t kFilterBlock = 16;
// Pixels whose filter gradients are added to the gradient row at once (fewer loads and stores
// of the row per multiply-add).
constexpr int64_t kPixelGroup = 4;
// Rows per block of the batch-normalisation sums (their partial sums are added in block order).
constexpr int64_t kNormBlockRows = 1024;
// Below this many elements a loop stays on the calling thread (as in cpu_backend.cpp).
constexpr int64_t kParallelThreshold = 1 << 15;
// Pool jobs per thread: more than one, so that a thread the OS has paused holds up only a
// small piece of the loop (the pool's own advice).
constexpr int kJobsPerThread = 4;

// Runs body(i) for i in [0, n) on the backend's pool, consecutive i in one job, or inline when
// `parallel` is false. Which thread runs which i never changes a result: every caller writes
// disjoint memory per i, or partial sums per i that it adds in order afterwards.
template <typename Body>
void for_each_index(int64_t n, bool parallel, Body&& body) {
    ThreadPool& pool = ThreadPool::shared();
    const int64_t jobs = std::min<int64_t>(n, int64_t(pool.threads()) * kJobsPerThread);
    if (!parallel || pool.threads() < 2 || jobs < 2) {
        for (int64_t i = 0; i < n; ++i)
            body(i);
        return;
    }
    pool.parallel_for(static_cast<int>(jobs), [&](int job) {
        const int64_t begin = n * job / jobs, end = n * (job + 1) / jobs;
        for (int64_t i = begin; i < end; ++i)
            body(i);
    });
}

// Row-major C(m×n) = op(A)·op(B) (beta 0), one OpenBLAS call on the calling thread.
template <typename T>
void gemm(const blas::Library& lib, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
          const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc) {
    const int ta = trans_a ? blas::kTrans : blas::kNoTrans;
    const int tb = trans_b ? blas::kTrans : blas::kNoTrans;
    if constexpr (std::is_same_v<T, float>) {
        lib.sgemm(blas::kRowMajor, ta, tb, int(m), int(n), int(k), 1.0f, a, int(lda), b, int(ldb),
                  0.0f, c, int(ldc));
    } else {
        lib.dgemm(blas::kRowMajor, ta, tb, int(m), int(n), int(k), 1.0, a, int(lda), b, int(ldb),
                  0.0, c, int(ldc));
    }
}

// OpenBLAS takes 32-bit sizes.
void check_gemm_sizes(const Conv2DGeometry& g, int64_t chunk_rows) {
    const int64_t limit = std::numeric_limits<int>::max();
    if (chunk_rows * g.patch_size() > limit || g.patch_size() * g.out_c > limit ||
        chunk_rows * g.out_c > limit) {
        throw Error("cpu backend: conv2d: a chunk of " + std::to_string(chunk_rows) + " pixels × " +
                    std::to_string(g.patch_size()) +
                    " patch values is too large for OpenBLAS's 32-bit sizes");
    }
}

struct Chunking {
    int64_t samples;  // per chunk (the last may have fewer)
    int64_t count;    // chunks
};

// Depends on the geometry only, so that sums over chunks do not depend on the thread count.
Chunking chunk_batch(int64_t batch, int64_t pixels_per_sample) {
    Chunking c;
    c.samples = std::clamp<int64_t>(kChunkRows / std::max<int64_t>(pixels_per_sample, 1), 1,
                                    std::max<int64_t>(batch, 1));
    c.count = (batch + c.samples - 1) / c.samples;
    return c;
}

bool is_pointwise(const Conv2DGeometry& g) {
    return g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.stride_w == 1 &&
           g.pad_top == 0 && g.pad_left == 0 && g.out_h == g.in_h && g.out_w == g.in_w;
}

bool is_direct(const Conv2DGeometry& g) {
    return g.patch_size() <= kDirectPatch;
}

// 16 floats in GCC's vector types: one AVX-512 register (two AVX2 ones). The direct path's tiles
// use them where GCC 12 left the plain loops scalar (it interchanged them and kept the
// accumulators in memory, five times slower); the same operations in the same order.
using Float16 = float __attribute__((vector_size(64)));

inline Float16 load16(const float* p) {
    Float16 v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

inline void store16(float* p, Float16 v) {
    std::memcpy(p, &v, sizeof(v));
}

// C channel values from src to dst: inline vector moves for whole vectors of floats, where
// copy_n would call memmove for each cell of each patch (128 bytes at a time for 32 channels).
template <typename T>
void copy_channels(const T* src, int64_t C, T* dst) {
    if constexpr (std::is_same_v<T, float>) {
        if (C % kFilterBlock == 0) {
            for (int64_t c = 0; c < C; c += kFilterBlock)
                store16(dst + c, load16(src + c));
            return;
        }
    }
    std::copy_n(src, C, dst);
}

// The patch of output pixel (n, oh, ow): KH·KW·C values in (kh, kw, c) order, zero in the padding.
template <typename T>
void gather_patch(const Conv2DGeometry& g, const T* x, int64_t n, int64_t oh, int64_t ow,
                  T* patch) {
    const int64_t C = g.in_c;
    const T* image = x + n * g.in_h * g.in_w * C;
    const int64_t h0 = oh * g.stride_h - g.pad_top, w0 = ow * g.stride_w - g.pad_left;
    if (C == 1 && h0 >= 0 && w0 >= 0 && h0 + (g.kernel_h - 1) * g.dilation_h < g.in_h &&
        w0 + (g.kernel_w - 1) * g.dilation_w < g.in_w) {
        // A window wholly inside a one-channel image (every window of a 'valid' first layer):
        // no bounds to check.
        for (int64_t r = 0; r < g.kernel_h; ++r) {
            const T* line = image + (h0 + r * g.dilation_h) * g.in_w + w0;
            for (int64_t s = 0; s < g.kernel_w; ++s)
                *patch++ = line[s * g.dilation_w];
        }
        return;
    }
    for (int64_t r = 0; r < g.kernel_h; ++r) {
        const int64_t ih = oh * g.stride_h - g.pad_top + r * g.dilation_h;
        for (int64_t s = 0; s < g.kernel_w; ++s) {
            const int64_t iw = ow * g.stride_w - g.pad_left + s * g.dilation_w;
            const bool inside = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
            if (C == 1) {
                // One value: an assignment, not a call to memmove (what copy_n becomes).
                *patch = inside ? image[ih * g.in_w + iw] : T(0);
            } else if (inside) {
                copy_channels(image + (ih * g.in_w + iw) * C, C, patch);
            } else {
                std::fill_n(patch, C, T(0));
            }
            patch += C;
        }
    }
}

// col(samples·OH·OW, KH·KW·C) for samples [n0, n0 + count) of x.
template <typename T>
void im2col(const Conv2DGeometry& g, const T* x, int64_t n0, int64_t count, T* col) {
    const int64_t K = g.patch_size();
    for (int64_t n = n0; n < n0 + count; ++n) {
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
            for (int64_t ow = 0; ow < g.out_w; ++ow) {
                gather_patch(g, x, n, oh, ow, col);
                col += K;
            }
        }
    }
}

// dx[n0 .. n0 + count) = the patches of dcol added back where they came from (=).
template <typename T>
void col2im(const Conv2DGeometry& g, const T* dcol, int64_t n0, int64_t count, T* dx) {
    const int64_t C = g.in_c;
    std::fill_n(dx + n0 * g.in_h * g.in_w * C, count * g.in_h * g.in_w * C, T(0));
    const T* src = dcol;
    for (int64_t n = n0; n < n0 + count; ++n) {
        T* image = dx + n * g.in_h * g.in_w * C;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
            for (int64_t ow = 0; ow < g.out_w; ++ow) {
                for (int64_t r = 0; r < g.kernel_h; ++r) {
                    const int64_t ih = oh * g.stride_h - g.pad_top + r * g.dilation_h;
                    for (int64_t s = 0; s < g.kernel_w; ++s) {
                        const int64_t iw = ow * g.stride_w - g.pad_left + s * g.dilation_w;
                        if (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w) {
                            T* cell = image + (ih * g.in_w + iw) * C;
                            for (int64_t c = 0; c < C; ++c)
                                cell[c] += src[c];
                        }
                        src += C;
                    }
                }
            }
        }
    }
}

// The patches of pixels [p0, p0 + group) (pixels counted over the whole batch), zero beyond.
template <typename T>
void gather_group(const Conv2DGeometry& g, const T* x, int64_t p0, int64_t group,
                  T (*patches)[kDirectPatch]) {
    const int64_t pixels = g.out_h * g.out_w;
    for (int64_t q = 0; q < kPixelGroup; ++q) {
        const int64_t p = p0 + q;
        if (q < group) {
            gather_patch(g, x, p / pixels, p % pixels / g.out_w, p % g.out_w, patches[q]);
        } else {
            std::fill_n(patches[q], g.patch_size(), T(0));
        }
    }
}

// Where the taps of a group of pixels can be read straight from a one-channel image: the group
// lies in one sample and every window is wholly inside it (every window of a 'valid' first
// layer). Then tap t of pixel q is base[q][offset[t]]; no patch is copied.
template <typename T>
struct DirectTaps {
    int64_t offset[kDirectPatch];  // of each tap from its window's first cell

    explicit DirectTaps(const Conv2DGeometry& g) {
        int64_t t = 0;
        for (int64_t r = 0; r < g.kernel_h; ++r) {
            for (int64_t s = 0; s < g.kernel_w; ++s) {
                offset[t++] = r * g.dilation_h * g.in_w + s * g.dilation_w;
            }
        }
    }

    // The window starts of pixels [p0, p0 + kPixelGroup), or false when the group does not
    // qualify.
    static bool interior(const Conv2DGeometry& g, const T* x, int64_t p0, const T** base) {
        if (g.in_c != 1)
            return false;
        const int64_t pixels = g.out_h * g.out_w;
        const int64_t n = p0 / pixels;
        if ((p0 + kPixelGroup - 1) / pixels != n)
            return false;
        const T* image = x + n * g.in_h * g.in_w;
        for (int64_t q = 0; q < kPixelGroup; ++q) {
            const int64_t p = (p0 + q) % pixels;
            const int64_t h0 = p / g.out_w * g.stride_h - g.pad_top;
            const int64_t w0 = p % g.out_w * g.stride_w - g.pad_left;
            if (h0 < 0 || w0 < 0 || h0 + (g.kernel_h - 1) * g.dilation_h >= g.in_h ||
                w0 + (g.kernel_w - 1) * g.dilation_w >= g.in_w) {
                return false;
            }
            base[q] = image + h0 * g.in_w + w0;
        }
        return true;
    }
};

// out rows q = 0..3 (F apart), filters 0..15 = Σ_t b_q[offset[t]] · kernel[t·F + j]: one tile of
// the direct forward pass with the taps read in place, the taps added in order.
template <typename T>
void direct_tile(const T* b0, const T* b1, const T* b2, const T* b3, const int64_t* offset,
                 const T* kernel, int64_t K, int64_t F, T* out) {
    T a0[kFilterBlock] = {}, a1[kFilterBlock] = {}, a2[kFilterBlock] = {}, a3[kFilterBlock] = {};
    for (int64_t t = 0; t < K; ++t) {
        const T* w = kernel + t * F;
        const int64_t o = offset[t];
        const T v0 = b0[o], v1 = b1[o], v2 = b2[o], v3 = b3[o];
        for (int64_t j = 0; j < kFilterBlock; ++j) {
            a0[j] += v0 * w[j];
            a1[j] += v1 * w[j];
            a2[j] += v2 * w[j];
            a3[j] += v3 * w[j];
        }
    }
    for (int64_t j = 0; j < kFilterBlock; ++j) {
        out[j] = a0[j];
        out[F + j] = a1[j];
        out[2 * F + j] = a2[j];
        out[3 * F + j] = a3[j];
    }
}

template <>
void direct_tile<float>(const float* b0, const float* b1, const float* b2, const float* b3,
                        const int64_t* offset, const float* kernel, int64_t K, int64_t F,
                        float* out) {
    static_assert(kFilterBlock == 16, "Float16 holds one filter block");
    Float16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t t = 0; t < K; ++t) {
        const Float16 w = load16(kernel + t * F);
        const int64_t o = offset[t];
        a0 += b0[o] * w;
        a1 += b1[o] * w;
        a2 += b2[o] * w;
        a3 += b3[o] * w;
    }
    store16(out, a0);
    store16(out + F, a1);
    store16(out + 2 * F, a2);
    store16(out + 3 * F, a3);
}

// dkernel rows t += (v0·d0 + v1·d1) + (v2·d2 + v3·d3) for the four pixels' taps read in place
// (d_q = dy row of pixel q, F apart): one group of the direct filter gradient.
template <typename T>
void direct_filter_group(const T* b0, const T* b1, const T* b2, const T* b3, const int64_t* offset,
                         const T* d, int64_t K, int64_t F, T* dkernel) {
    for (int64_t t = 0; t < K; ++t) {
        const int64_t o = offset[t];
        const T v0 = b0[o], v1 = b1[o], v2 = b2[o], v3 = b3[o];
        T* __restrict row = dkernel + t * F;
        for (int64_t f = 0; f < F; ++f) {
            row[f] += (v0 * d[f] + v1 * d[F + f]) + (v2 * d[2 * F + f] + v3 * d[3 * F + f]);
        }
    }
}

// The float group in vector types when F is a multiple of 16, as direct_tile<float>.
template <>
void direct_filter_group<float>(const float* b0, const float* b1, const float* b2, const float* b3,
                                const int64_t* offset, const float* d, int64_t K, int64_t F,
                                float* dkernel) {
    if (F % kFilterBlock != 0) {
        for (int64_t t = 0; t < K; ++t) {
            const int64_t o = offset[t];
            const float v0 = b0[o], v1 = b1[o], v2 = b2[o], v3 = b3[o];
            float* __restrict row = dkernel + t * F;
            for (int64_t f = 0; f < F; ++f) {
                row[f] += (v0 * d[f] + v1 * d[F + f]) + (v2 * d[2 * F + f] + v3 * d[3 * F + f]);
            }
        }
        return;
    }
    for (int64_t f0 = 0; f0 < F; f0 += kFilterBlock) {
        const Float16 d0 = load16(d + f0), d1 = load16(d + F + f0);
        const Float16 d2 = load16(d + 2 * F + f0), d3 = load16(d + 3 * F + f0);
        for (int64_t t = 0; t < K; ++t) {
            const int64_t o = offset[t];
            float* row = dkernel + t * F + f0;
            store16(row, load16(row) + ((b0[o] * d0 + b1[o] * d1) + (b2[o] * d2 + b3[o] * d3)));
        }
    }
}

// The direct forward pass of samples [n0, n0 + count): y row = Σ_t patch[t] · kernel row t, the
// taps added in order. A tile of kPixelGroup pixels × kFilterBlock filters is summed in
// registers: four independent chains of multiply-adds, so the adder's latency is hidden.
template <typename T>
void direct_forward(const Conv2DGeometry& g, const T* x, const T* kernel, int64_t n0, int64_t count,
                    T* y) {
    const int64_t K = g.patch_size(), F = g.out_c, pixels = g.out_h * g.out_w;
    T patches[kPixelGroup][kDirectPatch];
    const DirectTaps<T> taps(g);
    const int64_t first = n0 * pixels, end = (n0 + count) * pixels;
    for (int64_t p0 = first; p0 < end; p0 += kPixelGroup) {
        const int64_t group = std::min(kPixelGroup, end - p0);
        const T* base[kPixelGroup];
        if (group == kPixelGroup && F % kFilterBlock == 0 &&
            DirectTaps<T>::interior(g, x, p0, base)) {
            // The same sums as below, the taps read in place.
            for (int64_t f0 = 0; f0 < F; f0 += kFilterBlock) {
                direct_tile(base[0], base[1], base[2], base[3], taps.offset, kernel + f0, K, F,
                            y + p0 * F + f0);
            }
            continue;
        }
        gather_group(g, x, p0, group, patches);
        for (int64_t f0 = 0; f0 < F; f0 += kFilterBlock) {
            const int64_t width = std::min(kFilterBlock, F - f0);
            // Four accumulators of a constant width, which the compiler keeps in registers.
            T a0[kFilterBlock] = {}, a1[kFilterBlock] = {}, a2[kFilterBlock] = {},
              a3[kFilterBlock] = {};
            if (width == kFilterBlock && group == kPixelGroup) {
                for (int64_t t = 0; t < K; ++t) {
                    const T* w = kernel + t * F + f0;
                    const T v0 = patches[0][t], v1 = patches[1][t];
                    const T v2 = patches[2][t], v3 = patches[3][t];
                    for (int64_t j = 0; j < kFilterBlock; ++j) {
                        a0[j] += v0 * w[j];
                        a1[j] += v1 * w[j];
                        a2[j] += v2 * w[j];
                        a3[j] += v3 * w[j];
                    }
                }
                // Constant-length stores (a copy of a runtime length becomes `rep movs`, whose
                // start-up costs more than these four vector stores).
                T* out = y + p0 * F + f0;
                for (int64_t j = 0; j < kFilterBlock; ++j) {
                    out[j] = a0[j];
                    out[F + j] = a1[j];
                    out[2 * F + j] = a2[j];
                    out[3 * F + j] = a3[j];
                }
                continue;
            } else {
                for (int64_t t = 0; t < K; ++t) {
                    const T* w = kernel + t * F + f0;
                    const T v0 = patches[0][t], v1 = patches[1][t];
                    const T v2 = patches[2][t], v3 = patches[3][t];
                    for (int64_t j = 0; j < width; ++j) {
                        a0[j] += v0 * w[j];
                        a1[j] += v1 * w[j];
                        a2[j] += v2 * w[j];
                        a3[j] += v3 * w[j];
                    }
                }
            }
            const T* acc[kPixelGroup] = {a0, a1, a2, a3};
            for (int64_t q = 0; q < group; ++q)
                std::copy_n(acc[q], width, y + (p0 + q) * F + f0);
        }
    }
}

// dkernel(K, F) of samples [n0, n0 + count) (=): Σ_pixels patchᵀ · dy row, the pixels in order,
// kPixelGroup of them summed before they are added to the row.
template <typename T>
void direct_backward_filter(const Conv2DGeometry& g, const T* x, const T* dy, int64_t n0,
                            int64_t count, T* dkernel) {
    const int64_t K = g.patch_size(), F = g.out_c, pixels = g.out_h * g.out_w;
    T patches[kPixelGroup][kDirectPatch];
    const DirectTaps<T> taps(g);
    std::fill_n(dkernel, K * F, T(0));
    const int64_t first = n0 * pixels, end = (n0 + count) * pixels;
    for (int64_t p0 = first; p0 < end; p0 += kPixelGroup) {
        const int64_t group = std::min(kPixelGroup, end - p0);
        const T* d = dy + p0 * F;
        const T* base[kPixelGroup];
        if (group == kPixelGroup && DirectTaps<T>::interior(g, x, p0, base)) {
            // The same sums as below, the taps read in place.
            direct_filter_group(base[0], base[1], base[2], base[3], taps.offset, d, K, F, dkernel);
            continue;
        }
        gather_group(g, x, p0, group, patches);
        if (group == kPixelGroup) {
            for (int64_t t = 0; t < K; ++t) {
                const T v0 = patches[0][t], v1 = patches[1][t];
                const T v2 = patches[2][t], v3 = patches[3][t];
                T* __restrict row = dkernel + t * F;
                for (int64_t f = 0; f < F; ++f) {
                    row[f] += (v0 * d[f] + v1 * d[F + f]) + (v2 * d[2 * F + f] + v3 * d[3 * F + f]);
                }
            }
        } else {
            for (int64_t q = 0; q < group; ++q) {
                for (int64_t t = 0; t < K; ++t) {
                    const T v = patches[q][t];
                    T* __restrict row = dkernel + t * F;
                    for (int64_t f = 0; f < F; ++f)
                        row[f] += v * d[q * F + f];
                }
            }
        }
    }
}

// rows(rows × F) = act(rows + bias), the activation a compile-time constant so that the loop
// has no switch inside and vectorises.
template <Activation kKind, typename T>
void bias_activation_rows(T* rows_ptr, int64_t rows, int64_t F, const T* bias, T alpha) {
    for (int64_t r = 0; r < rows; ++r) {
        T* __restrict row = rows_ptr + r * F;
        if (bias != nullptr) {
            for (int64_t f = 0; f < F; ++f)
                row[f] += bias[f];
        }
        if constexpr (kKind != Activation::kLinear) {
            for (int64_t f = 0; f < F; ++f)
                row[f] = math::activation_forward(kKind, alpha, row[f]);
        }
    }
}

// The convolution's epilogue on a chunk's rows, while they are still in cache.
template <typename T>
void bias_activation(T* rows_ptr, int64_t rows, int64_t F, const T* bias, ActivationSpec act) {
    const T alpha = T(act.alpha);
    switch (act.kind) {
        case Activation::kLinear:
            if (bias != nullptr) {
                bias_activation_rows<Activation::kLinear>(rows_ptr, rows, F, bias, alpha);
            }
            return;
        case Activation::kRelu:
            return bias_activation_rows<Activation::kRelu>(rows_ptr, rows, F, bias, alpha);
        case Activation::kSigmoid:
            return bias_activation_rows<Activation::kSigmoid>(rows_ptr, rows, F, bias, alpha);
        case Activation::kTanh:
            return bias_activation_rows<Activation::kTanh>(rows_ptr, rows, F, bias, alpha);
        case Activation::kGelu:
            return bias_activation_rows<Activation::kGelu>(rows_ptr, rows, F, bias, alpha);
        case Activation::kElu:
            return bias_activation_rows<Activation::kElu>(rows_ptr, rows, F, bias, alpha);
        case Activation::kLeakyRelu:
            return bias_activation_rows<Activation::kLeakyRelu>(rows_ptr, rows, F, bias, alpha);
        case Activation::kSoftmax:
            break;
    }
    throw Error(
        "cpu backend: conv2d_forward takes element-wise activations only (a softmax "
        "goes through bias_activation_forward)");
}

}  // namespace

// ---- convolution --------------------------------------------------------------------------------

template <typename T>
void conv2d_forward(const blas::Library& blas, ImageScratch& scratch, const Conv2DGeometry& g,
                    const T* x, const T* kernel, const T* bias, ActivationSpec act, T* y) {
    if (g.batch == 0)
        return;
    if (act.kind == Activation::kSoftmax)
        bias_activation<T>(y, 0, 0, bias, act);  // throws
    const int64_t pixels = g.out_h * g.out_w, K = g.patch_size(), F = g.out_c;
    const Chunking chunks = chunk_batch(g.batch, pixels);
    check_gemm_sizes(g, chunks.samples * pixels);
    const bool pointwise = is_pointwise(g), direct = is_direct(g);
    for_each_index(chunks.count, chunks.count > 1, [&](int64_t ci) {
        const int64_t n0 = ci * chunks.samples;
        const int64_t count = std::min(chunks.samples, g.batch - n0);
        const int64_t rows = count * pixels;
        T* out = y + n0 * pixels * F;
        if (direct) {
            direct_forward(g, x, kernel, n0, count, y);
        } else {
            const T* col = x + n0 * g.in_h * g.in_w * g.in_c;
            ImageScratch::Lease patches = scratch.lease();
            if (!pointwise) {
                T* p = static_cast<T*>(patches.get(static_cast<size_t>(rows * K) * sizeof(T)));
                im2col(g, x, n0, count, p);
                col = p;
            }
            gemm<T>(blas, false, false, rows, F, K, col, K, kernel, F, out, F);
        }
        bias_activation(out, rows, F, bias, act);
    });
}

template <typename T>
void conv2d_backward_data(const blas::Library& blas, ImageScratch& scratch, const Conv2DGeometry& g,
                          const T* dy, const T* kernel, T* dx) {
    if (g.batch == 0)
        return;
    const int64_t pixels = g.out_h * g.out_w, K = g.patch_size(), F = g.out_c;
    const Chunking chunks = chunk_batch(g.batch, pixels);
    check_gemm_sizes(g, chunks.samples * pixels);
    const bool pointwise = is_pointwise(g);
    for_each_index(chunks.count, chunks.count > 1, [&](int64_t ci) {
        const int64_t n0 = ci * chunks.samples;
        const int64_t count = std::min(chunks.samples, g.batch - n0);
        const int64_t rows = count * pixels;
        const T* dy_chunk = dy + n0 * pixels * F;
        if (pointwise) {
            // dx is dcol itself.
            gemm<T>(blas, false, true, rows, K, F, dy_chunk, F, kernel, F,
                    dx + n0 * g.in_h * g.in_w * g.in_c, K);
            return;
        }
        ImageScratch::Lease lease = scratch.lease();
        T* dcol = static_cast<T*>(lease.get(static_cast<size_t>(rows * K) * sizeof(T)));
        gemm<T>(blas, false, true, rows, K, F, dy_chunk, F, kernel, F, dcol, K);
        col2im(g, dcol, n0, count, dx);
    });
}

template <typename T>
void conv2d_backward_filter(const blas::Library& blas, ImageScratch& scratch,
                            const Conv2DGeometry& g, const T* x, const T* dy, T* dkernel) {
    const int64_t pixels = g.out_h * g.out_w, K = g.patch_size(), F = g.out_c;
    if (g.batch == 0) {
        std::fill_n(dkernel, K * F, T(0));
        return;
    }
    const Chunking chunks = chunk_batch(g.batch, pixels);
    check_gemm_sizes(g, chunks.samples * pixels);
    const bool pointwise = is_pointwise(g), direct = is_direct(g);
    // One partial dkernel per chunk, added in chunk order below; a single chunk writes dkernel.
    T* partials = chunks.count == 1 ? dkernel
                                    : static_cast<T*>(scratch.shared().get(
                                          static_cast<size_t>(chunks.count * K * F) * sizeof(T)));
    for_each_index(chunks.count, chunks.count > 1, [&](int64_t ci) {
        const int64_t n0 = ci * chunks.samples;
        const int64_t count = std::min(chunks.samples, g.batch - n0);
        const int64_t rows = count * pixels;
        if (direct) {
            direct_backward_filter(g, x, dy, n0, count, partials + ci * K * F);
            return;
        }
        const T* col = x + n0 * g.in_h * g.in_w * g.in_c;
        ImageScratch::Lease patches = scratch.lease();
        if (!pointwise) {
            T* p = static_cast<T*>(patches.get(static_cast<size_t>(rows * K) * sizeof(T)));
            im2col(g, x, n0, count, p);
            col = p;
        }
        gemm<T>(blas, true, false, K, F, rows, col, K, dy + n0 * pixels * F, F,
                partials + ci * K * F, F);
    });
    if (chunks.count == 1)
        return;
    const int64_t n = K * F;
    for (int64_t i = 0; i < n; ++i)
        dkernel[i] = partials[i];
    for (int64_t ci = 1; ci < chunks.count; ++ci) {
        const T* p = partials + ci * n;
        for (int64_t i = 0; i < n; ++i)
            dkernel[i] += p[i];
    }
}

// ---- pooling ------------------------------------------------------------------------------------

template <typename T>
void pool2d_forward(const Pool2DGeometry& g, const T* x, T* y) {
    const int64_t C = g.channels;
    const int64_t lines = g.batch * g.out_h;
    for_each_index(lines, g.x_elements() > kParallelThreshold, [&](int64_t line) {
        const int64_t n = line / g.out_h, oh = line % g.out_h;
        const T* image = x + n * g.in_h * g.in_w * C;
        int64_t h0, h1;
        math::pool_window(oh, g.stride_h, g.pad_top, g.pool_h, g.in_h, &h0, &h1);
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
            int64_t w0, w1;
            math::pool_window(ow, g.stride_w, g.pad_left, g.pool_w, g.in_w, &w0, &w1);
            T* __restrict out = y + ((n * g.out_h + oh) * g.out_w + ow) * C;
            if (g.kind == PoolKind::kMax) {
                // The first cell, then every later one that is strictly larger.
                std::copy_n(image + (h0 * g.in_w + w0) * C, C, out);
                for (int64_t h = h0; h < h1; ++h) {
                    for (int64_t w = w0; w < w1; ++w) {
                        const T* __restrict cell = image + (h * g.in_w + w) * C;
                        for (int64_t c = 0; c < C; ++c) {
                            out[c] = cell[c] > out[c] ? cell[c] : out[c];
                        }
                    }
                }
            } else {
                std::fill_n(out, C, T(0));
                for (int64_t h = h0; h < h1; ++h) {
                    for (int64_t w = w0; w < w1; ++w) {
                        const T* __restrict cell = image + (h * g.in_w + w) * C;
                        for (int64_t c = 0; c < C; ++c)
                            out[c] += cell[c];
                    }
                }
                const T count = T((h1 - h0) * (w1 - w0));
                for (int64_t c = 0; c < C; ++c)
                    out[c] = out[c] / count;
            }
        }
    });
}

namespace {

// pool2d_backward for tiling max windows: each window's cells get dy at its first largest cell
// and zero elsewhere, the same values the general path adds up. As there, the first largest cell
// is found for all channels at once (a running maximum and its cell per channel).
template <typename T>
void pool2d_backward_tiling_max(ImageScratch& scratch, const Pool2DGeometry& g, const T* x,
                                const T* dy, T* dx) {
    const int64_t C = g.channels;
    const int64_t lines = g.batch * g.out_h;
    for_each_index(lines, g.x_elements() > kParallelThreshold, [&](int64_t line) {
        const int64_t n = line / g.out_h, oh = line % g.out_h;
        const T* image = x + n * g.in_h * g.in_w * C;
        T* grad = dx + n * g.in_h * g.in_w * C;
        ImageScratch::Lease lease = scratch.lease();
        char* block =
            static_cast<char*>(lease.get(static_cast<size_t>(C) * (sizeof(T) + sizeof(int32_t))));
        T* best = reinterpret_cast<T*>(block);
        int32_t* best_cell = reinterpret_cast<int32_t*>(block + C * sizeof(T));
        const int64_t h0 = oh * g.pool_h;
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
            const int64_t w0 = ow * g.pool_w;
            const T* d = dy + ((n * g.out_h + oh) * g.out_w + ow) * C;
            const int32_t first = int32_t(h0 * g.in_w + w0);
            std::copy_n(image + first * C, C, best);
            std::fill_n(best_cell, C, first);
            for (int64_t h = h0; h < h0 + g.pool_h; ++h) {
                for (int64_t w = w0; w < w0 + g.pool_w; ++w) {
                    const int32_t cell = int32_t(h * g.in_w + w);
                    const T* __restrict v = image + cell * C;
                    for (int64_t c = 0; c < C; ++c) {
                        const bool larger = v[c] > best[c];
                        best[c] = larger ? v[c] : best[c];
                        best_cell[c] = larger ? cell : best_cell[c];
                    }
                }
            }
            for (int64_t h = h0; h < h0 + g.pool_h; ++h) {
                for (int64_t w = w0; w < w0 + g.pool_w; ++w) {
                    const int32_t cell = int32_t(h * g.in_w + w);
                    T* __restrict out = grad + cell * C;
                    for (int64_t c = 0; c < C; ++c)
                        out[c] = best_cell[c] == cell ? d[c] : T(0);
                }
            }
        }
        // the columns after the last window, on this line's rows; the rows after the last
        // window line, once per sample
        for (int64_t h = h0; h < h0 + g.pool_h; ++h) {
            T* row = grad + h * g.in_w * C;
            std::fill(row + g.out_w * g.pool_w * C, row + g.in_w * C, T(0));
        }
        if (oh == g.out_h - 1) {
            std::fill(grad + g.out_h * g.pool_h * g.in_w * C, grad + g.in_h * g.in_w * C, T(0));
        }
    });
}

}  // namespace

// Scatters each output's gradient into its window, outputs in row-major order, so that every
// input cell receives its contributions in the order the CUDA kernel (which gathers them) adds
// them. A max window's first largest cell is found for all channels at once: per channel the
// running largest value and its cell, updated cell by cell (a vectorised select).
template <typename T>
void pool2d_backward(ImageScratch& scratch, const Pool2DGeometry& g, const T* x, const T* dy,
                     T* dx) {
    const int64_t C = g.channels;
    // Windows that tile the image without overlap or padding (MaxPooling2D's defaults) touch
    // each cell at most once: their cells are written, not added to, and only the cells no
    // window covers (a last odd row or column) need zeroing first.
    const bool tiling = g.stride_h == g.pool_h && g.stride_w == g.pool_w && g.pad_top == 0 &&
                        g.pad_left == 0 && g.out_h * g.pool_h <= g.in_h &&
                        g.out_w * g.pool_w <= g.in_w;
    if (tiling && g.kind == PoolKind::kMax) {
        pool2d_backward_tiling_max(scratch, g, x, dy, dx);
        return;
    }
    for_each_index(g.batch, g.x_elements() > kParallelThreshold, [&](int64_t n) {
        const T* image = x + n * g.in_h * g.in_w * C;
        T* grad = dx + n * g.in_h * g.in_w * C;
        std::fill_n(grad, g.in_h * g.in_w * C, T(0));
        ImageScratch::Lease lease = scratch.lease();
        T* best = nullptr;
        int32_t* best_cell = nullptr;
        if (g.kind == PoolKind::kMax) {
            char* block = static_cast<char*>(
                lease.get(static_cast<size_t>(C) * (sizeof(T) + sizeof(int32_t))));
            best = reinterpret_cast<T*>(block);
            best_cell = reinterpret_cast<int32_t*>(block + C * sizeof(T));
        }
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
            int64_t h0, h1;
            math::pool_window(oh, g.stride_h, g.pad_top, g.pool_h, g.in_h, &h0, &h1);
            for (int64_t ow = 0; ow < g.out_w; ++ow) {
                int64_t w0, w1;
                math::pool_window(ow, g.stride_w, g.pad_left, g.pool_w, g.in_w, &w0, &w1);
                const T* d = dy + ((n * g.out_h + oh) * g.out_w + ow) * C;
                if (g.kind == PoolKind::kMax) {
                    const int32_t first = int32_t(h0 * g.in_w + w0);
                    std::copy_n(image + first * C, C, best);
                    std::fill_n(best_cell, C, first);
                    for (int64_t h = h0; h < h1; ++h) {
                        for (int64_t w = w0; w < w1; ++w) {
                            const int32_t cell = int32_t(h * g.in_w + w);
                            const T* __restrict v = image + cell * C;
                            for (int64_t c = 0; c < C; ++c) {
                                const bool larger = v[c] > best[c];
                                best[c] = larger ? v[c] : best[c];
                                best_cell[c] = larger ? cell : best_cell[c];
                            }
                        }
                    }
                    for (int64_t c = 0; c < C; ++c)
                        grad[int64_t(best_cell[c]) * C + c] += d[c];
                } else {
                    const T count = T((h1 - h0) * (w1 - w0));
                    for (int64_t h = h0; h < h1; ++h) {
                        for (int64_t w = w0; w < w1; ++w) {
                            T* __restrict cell = grad + (h * g.in_w + w) * C;
                            for (int64_t c = 0; c < C; ++c)
                                cell[c] += d[c] / count;
                        }
                    }
                }
            }
        }
    });
}

// ---- batch normalisation ------------------------------------------------------------------------

namespace {

// Per-channel sums over rows in double, block by block, the blocks added in order:
// out[c] = Σ_rows f(row, c).
template <typename T, typename F>
void channel_sums(ImageScratch& scratch, int64_t rows, int64_t channels, F&& f, double* out) {
    const int64_t blocks = std::max<int64_t>((rows + kNormBlockRows - 1) / kNormBlockRows, 1);
    double* partial = static_cast<double*>(
        scratch.shared().get(static_cast<size_t>(blocks * channels) * sizeof(double)));
    for_each_index(blocks, rows * channels > kParallelThreshold, [&](int64_t b) {
        double* sums = partial + b * channels;
        std::fill_n(sums, channels, 0.0);
        const int64_t end = std::min(rows, (b + 1) * kNormBlockRows);
        for (int64_t r = b * kNormBlockRows; r < end; ++r) {
            for (int64_t c = 0; c < channels; ++c)
                sums[c] += f(r, c);
        }
    });
    for (int64_t c = 0; c < channels; ++c) {
        double total = 0;
        for (int64_t b = 0; b < blocks; ++b)
            total += partial[b * channels + c];
        out[c] = total;
    }
}

// Rows in blocks of kNormBlockRows on the pool: body(begin, end).
template <typename Body>
void for_row_blocks(int64_t rows, int64_t channels, Body&& body) {
    const int64_t blocks = std::max<int64_t>((rows + kNormBlockRows - 1) / kNormBlockRows, 1);
    for_each_index(blocks, rows * channels > kParallelThreshold, [&](int64_t b) {
        body(b * kNormBlockRows, std::min(rows, (b + 1) * kNormBlockRows));
    });
}

}  // namespace

template <typename T>
void batch_norm_forward_training(ImageScratch& scratch, const BatchNormGeometry& g, const T* x,
                                 const T* gamma, const T* beta, T* y, T* moving_mean,
                                 T* moving_variance, T* saved_mean, T* saved_inv_std) {
    const int64_t R = g.rows, C = g.channels;
    if (R == 0)
        return;
    std::vector<double> mean(static_cast<size_t>(C)), var(static_cast<size_t>(C));

    // the mean, then the biased variance about it (two passes: no cancellation)
    channel_sums<T>(
        scratch, R, C, [&](int64_t r, int64_t c) { return double(x[r * C + c]); }, mean.data());
    for (double& m : mean)
        m /= double(R);
    channel_sums<T>(
        scratch, R, C,
        [&](int64_t r, int64_t c) {
            const double d = double(x[r * C + c]) - mean[size_t(c)];
            return d * d;
        },
        var.data());
    for (double& v : var)
        v /= double(R);

    // the saved statistics and the moving ones
    const T momentum = T(g.momentum), epsilon = T(g.epsilon);
    for (int64_t c = 0; c < C; ++c) {
        saved_mean[c] = T(mean[size_t(c)]);
        saved_inv_std[c] = math::batch_norm_inv_std(T(var[size_t(c)]), epsilon);
        moving_mean[c] = math::moving_average(moving_mean[c], T(mean[size_t(c)]), momentum);
        moving_variance[c] = math::moving_average(moving_variance[c], T(var[size_t(c)]), momentum);
    }

    // normalise
    for_row_blocks(R, C, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            for (int64_t c = 0; c < C; ++c) {
                y[r * C + c] = math::batch_norm_apply(x[r * C + c], saved_mean[c], saved_inv_std[c],
                                                      gamma[c], beta[c]);
            }
        }
    });
}

template <typename T>
void batch_norm_forward_inference(const BatchNormGeometry& g, const T* x, const T* gamma,
                                  const T* beta, const T* moving_mean, const T* moving_variance,
                                  T* y) {
    const int64_t R = g.rows, C = g.channels;
    std::vector<T> inv_std(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c) {
        inv_std[size_t(c)] = math::batch_norm_inv_std(moving_variance[c], T(g.epsilon));
    }
    for_row_blocks(R, C, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            for (int64_t c = 0; c < C; ++c) {
                y[r * C + c] = math::batch_norm_apply(x[r * C + c], moving_mean[c],
                                                      inv_std[size_t(c)], gamma[c], beta[c]);
            }
        }
    });
}

template <typename T>
void batch_norm_backward(ImageScratch& scratch, const BatchNormGeometry& g, const T* x, const T* dy,
                         const T* gamma, const T* saved_mean, const T* saved_inv_std, T* dx,
                         T* dgamma, T* dbeta) {
    const int64_t R = g.rows, C = g.channels;
    std::vector<double> sum_dy(static_cast<size_t>(C)), sum_dy_xhat(static_cast<size_t>(C));
    channel_sums<T>(
        scratch, R, C, [&](int64_t r, int64_t c) { return double(dy[r * C + c]); }, sum_dy.data());
    channel_sums<T>(
        scratch, R, C,
        [&](int64_t r, int64_t c) {
            const T xhat = (x[r * C + c] - saved_mean[c]) * saved_inv_std[c];
            return double(dy[r * C + c]) * double(xhat);
        },
        sum_dy_xhat.data());
    std::vector<T> mean_dy(static_cast<size_t>(C)), mean_dy_xhat(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c) {
        dbeta[c] = T(sum_dy[size_t(c)]);
        dgamma[c] = T(sum_dy_xhat[size_t(c)]);
        mean_dy[size_t(c)] = R > 0 ? T(sum_dy[size_t(c)] / double(R)) : T(0);
        mean_dy_xhat[size_t(c)] = R > 0 ? T(sum_dy_xhat[size_t(c)] / double(R)) : T(0);
    }
    for_row_blocks(R, C, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            for (int64_t c = 0; c < C; ++c) {
                dx[r * C + c] = math::batch_norm_backward_data(
                    x[r * C + c], dy[r * C + c], saved_mean[c], saved_inv_std[c], gamma[c],
                    mean_dy[size_t(c)], mean_dy_xhat[size_t(c)]);
            }
        }
    });
}

// ---- instantiations -----------------------------------------------------------------------------

template void conv2d_forward<float>(const blas::Library&, ImageScratch&, const Conv2DGeometry&,
                                    const float*, const float*, const float*, ActivationSpec,
                                    float*);
template void conv2d_backward_data<float>(const blas::Library&, ImageScratch&,
                                          const Conv2DGeometry&, const float*, const float*,
                                          float*);
template void conv2d_backward_filter<float>(const blas::Library&, ImageScratch&,
                                            const Conv2DGeometry&, const float*, const float*,
                                            float*);
template void pool2d_forward<float>(const Pool2DGeometry&, const float*, float*);
template void pool2d_backward<float>(ImageScratch&, const Pool2DGeometry&, const float*,
                                     const float*, float*);
template void batch_norm_forward_training<float>(ImageScratch&, const BatchNormGeometry&,
                                                 const float*, const float*, const float*, float*,
                                                 float*, float*, float*, float*);
template void batch_norm_forward_inference<float>(const BatchNormGeometry&, const float*,
                                                  const float*, const float*, const float*,
                                                  const float*, float*);
template void batch_norm_backward<float>(ImageScratch&, const BatchNormGeometry&, const float*,
                                         const float*, const float*, const float*, const float*,
                                         float*, float*, float*);

template void conv2d_forward<double>(const blas::Library&, ImageScratch&, const Conv2DGeometry&,
                                     const double*, const double*, const double*, ActivationSpec,
                                     double*);
template void conv2d_backward_data<double>(const blas::Library&, ImageScratch&,
                                           const Conv2DGeometry&, const double*, const double*,
                                           double*);
template void conv2d_backward_filter<double>(const blas::Library&, ImageScratch&,
                                             const Conv2DGeometry&, const double*, const double*,
                                             double*);
template void pool2d_forward<double>(const Pool2DGeometry&, const double*, double*);
template void pool2d_backward<double>(ImageScratch&, const Pool2DGeometry&, const double*,
                                      const double*, double*);
template void batch_norm_forward_training<double>(ImageScratch&, const BatchNormGeometry&,
                                                  const double*, const double*, const double*,
                                                  double*, double*, double*, double*, double*);
template void batch_norm_forward_inference<double>(const BatchNormGeometry&, const double*,
                                                   const double*, const double*, const double*,
                                                   const double*, double*);
template void batch_norm_backward<double>(ImageScratch&, const BatchNormGeometry&, const double*,
                                          const double*, const double*, const double*,
                                          const double*, double*, double*, double*);

}  // namespace cpu
}  // namespace kiln
