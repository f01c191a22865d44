// Data ops: the per-epoch permutation, the gather of a batch's rows, and dropout's forward pass.
//
//   permutation      perm(n) = 0..n-1 sorted by (hash3(seed, stream, i), i)            (=)
//   gather_rows      dst(count×cols) = src[index[offset + r]] for r in [0, count)     (=)
//   dropout_forward  mask_i = keep_i / (1 - rate), y_i = x_i · mask_i with
//                    keep_i = uniform01(hash3(seed, counter, i)) >= rate                (=)
//
// Precision: the permutation and the gather move bits exactly, so both are bit-identical to the
// CPU backend. Dropout draws the same keep decisions as the CPU (the same counter-based hash) and
// computes 1 / (1 - rate) and x · mask in float32 as it does, so it is bit-identical as well.
//
// The permutation sorts (key, index) pairs with CUB's LSD radix sort, which is stable: the
// indices enter in increasing order, so equal keys keep index order, which is exactly the CPU's
// sort by (key, index). The 64-bit keys make ties improbable in any case.
#include "kernels/kernels.h"

#include <cstdint>

#include <cub/device/device_radix_sort.cuh>

#include "kernels/math.h"

namespace kiln {
namespace kernels {
namespace {

// Each scratch array starts on a 256-byte boundary, the alignment cudaMalloc gives and CUB's
// temporary storage expects.
constexpr size_t kScratchAlign = 256;
// Gather: one thread per element of the batch; rows are short (784 pixels), so a 2-D launch buys
// nothing over the flat grid-stride loop.
constexpr int kGatherBlock = kElementwiseBlock;

size_t align_up(size_t bytes) {
    return (bytes + kScratchAlign - 1) / kScratchAlign * kScratchAlign;
}

// The scratch layout for n elements: input keys, sorted keys, input indices, then CUB's
// temporary storage from byte offset `temp` to the end of the scratch.
struct PermutationScratch {
    size_t keys_in = 0, keys_out = 0, index_in = 0, temp = 0;  // byte offsets
};

PermutationScratch permutation_layout(int64_t n) {
    const size_t count = static_cast<size_t>(n);
    PermutationScratch layout;
    layout.keys_in = 0;
    layout.keys_out = layout.keys_in + align_up(count * sizeof(uint64_t));
    layout.index_in = layout.keys_out + align_up(count * sizeof(uint64_t));
    layout.temp = layout.index_in + align_up(count * sizeof(int32_t));
    return layout;
}

// ---- kernels --------------------------------------------------------------------------------

// keys(n) = hash3(seed, stream_id, i), index(n) = i.
__global__ void permutation_keys_kernel(uint64_t* keys, int32_t* index, size_t n, uint64_t seed,
                                        uint64_t stream_id) {
    const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        keys[i] = math::hash3(seed, stream_id, static_cast<uint64_t>(i));
        index[i] = static_cast<int32_t>(i);
    }
}

// src: (src_rows×cols), dst: (count×cols), index: the permutation, read from `offset`.
// Element type T only moves bits. A row index outside [0, src_rows) gives a zero row.
// With `scalars`, index moves on by s.batch · batch_size rows, read here on the device.
template <typename T>
__global__ void gather_rows_kernel(const T* src, int64_t src_rows, const int32_t* index,
                                   size_t count, size_t cols, T* dst, const StepScalars* scalars,
                                   int64_t batch_size) {
    if (scalars != nullptr)
        index += scalars->batch * batch_size;
    const size_t n = count * cols;
    const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        const size_t r = i / cols;
        const size_t c = i - r * cols;
        const int64_t s = index[r];
        dst[i] = (s >= 0 && s < src_rows) ? src[static_cast<size_t>(s) * cols + c] : T{};
    }
}

// x, y, mask: (n); y may alias x. mask may be null.
__global__ void dropout_forward_kernel(const float* x, float* y, float* mask, size_t n, float rate,
                                       float keep_scale, uint64_t seed, uint64_t counter,
                                       const StepScalars* scalars) {
    if (scalars != nullptr)
        counter = static_cast<uint64_t>(scalars->iteration);
    const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        const float u = math::uniform01(math::hash3(seed, counter, static_cast<uint64_t>(i)));
        const float m = u >= rate ? keep_scale : 0.0f;
        if (mask != nullptr)
            mask[i] = m;
        y[i] = x[i] * m;
    }
}

// A kernel whose attributes tell whether this build can run on the current device.
__global__ void kernel_image_probe_kernel() {}

template <typename T>
void launch_gather(cudaStream_t stream, const void* src, int64_t src_rows, const int32_t* index,
                   int64_t count, int64_t cols, void* dst, const StepScalars* scalars,
                   int64_t batch_size) {
    const size_t n = static_cast<size_t>(count) * static_cast<size_t>(cols);
    launch_1d(gather_rows_kernel<T>, stream, static_cast<int64_t>(n), kGatherBlock,
              static_cast<const T*>(src), src_rows, index, static_cast<size_t>(count),
              static_cast<size_t>(cols), static_cast<T*>(dst), scalars, batch_size);
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------------

size_t permutation_scratch_bytes(int64_t n) {
    KILN_REQUIRE(n >= 0 && n <= INT32_MAX, "n", n);
    // With null storage CUB only reports the size it needs; it launches nothing.
    size_t temp_bytes = 0;
    KILN_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
        nullptr, temp_bytes, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
        static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), static_cast<int>(n),
        0, 64));
    return permutation_layout(n).temp + align_up(temp_bytes);
}

void permutation(cudaStream_t stream, int32_t* perm, int64_t n, uint64_t seed, uint64_t stream_id,
                 void* scratch, size_t scratch_bytes) {
    KILN_NVTX_RANGE_FN();
    // perm holds int32 indices, and CUB's item count here is an int.
    KILN_REQUIRE(n >= 0 && n <= INT32_MAX, "n", n);
    if (n == 0)
        return;
    const PermutationScratch layout = permutation_layout(n);
    KILN_REQUIRE(perm != nullptr, "perm", perm);
    // The full size is checked by CUB itself (it fails when its part is too small); querying
    // it again here would cost a host round of CUB's tuning lookup on every epoch.
    KILN_REQUIRE(scratch != nullptr && scratch_bytes > layout.temp, "scratch", scratch,
                 "scratch_bytes", scratch_bytes, "keys_and_indices_bytes", layout.temp, "n", n);

    // the keys and the identity
    char* base = static_cast<char*>(scratch);
    uint64_t* keys_in = reinterpret_cast<uint64_t*>(base + layout.keys_in);
    uint64_t* keys_out = reinterpret_cast<uint64_t*>(base + layout.keys_out);
    int32_t* index_in = reinterpret_cast<int32_t*>(base + layout.index_in);
    launch_1d(permutation_keys_kernel, stream, n, kElementwiseBlock, keys_in, index_in,
              static_cast<size_t>(n), seed, stream_id);

    // the stable sort of (key, index) over all 64 key bits; the sorted indices land in perm
    size_t temp_bytes = scratch_bytes - layout.temp;
    KILN_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(base + layout.temp, temp_bytes, keys_in,
                                                    keys_out, index_in, perm, static_cast<int>(n),
                                                    0, 64, stream));
    KILN_CUDA_CHECK_LAUNCH();
}

void gather_rows(cudaStream_t stream, const void* src, int64_t src_rows, const int32_t* index,
                 int64_t offset, int64_t count, int64_t cols, size_t element_bytes, void* dst,
                 const StepScalars* scalars, int64_t batch_size) {
    KILN_NVTX_RANGE_FN();
    KILN_REQUIRE(offset >= 0 && count >= 0 && cols >= 0, "offset", offset, "count", count, "cols",
                 cols);
    KILN_REQUIRE(scalars == nullptr || batch_size > 0, "scalars", scalars, "batch_size",
                 batch_size);
    if (count == 0 || cols == 0)
        return;
    KILN_REQUIRE(src != nullptr && index != nullptr && dst != nullptr, "src", src, "index", index,
                 "dst", dst);

    const int32_t* rows = index + offset;
    switch (element_bytes) {
        case 1:
            launch_gather<uint8_t>(stream, src, src_rows, rows, count, cols, dst, scalars,
                                   batch_size);
            break;
        case 2:
            launch_gather<uint16_t>(stream, src, src_rows, rows, count, cols, dst, scalars,
                                    batch_size);
            break;
        case 4:
            launch_gather<uint32_t>(stream, src, src_rows, rows, count, cols, dst, scalars,
                                    batch_size);
            break;
        case 8:
            launch_gather<uint64_t>(stream, src, src_rows, rows, count, cols, dst, scalars,
                                    batch_size);
            break;
        default:
            KILN_REQUIRE(false, "element_bytes", element_bytes);
    }
}

void dropout_forward(cudaStream_t stream, const float* x, float* y, float* mask, int64_t n,
                     float rate, uint64_t seed, uint64_t counter, const StepScalars* scalars) {
    KILN_NVTX_RANGE_FN();
    KILN_REQUIRE(n >= 0, "n", n);
    // rate == 1 would divide by zero; Keras rejects it too.
    KILN_REQUIRE(rate >= 0.0f && rate < 1.0f, "rate", rate);
    if (n == 0)
        return;
    KILN_REQUIRE(x != nullptr && y != nullptr, "x", x, "y", y);
    // As the CPU backend computes it: the reciprocal in float32, then x · mask.
    const float keep_scale = 1.0f / (1.0f - rate);
    launch_1d(dropout_forward_kernel, stream, n, kElementwiseBlock, x, y, mask,
              static_cast<size_t>(n), rate, keep_scale, seed, counter, scalars);
}

cudaError_t kernel_image_status() {
    cudaFuncAttributes attributes;
    const cudaError_t status = cudaFuncGetAttributes(&attributes, kernel_image_probe_kernel);
    if (status != cudaSuccess)
        cudaGetLastError();  // not sticky; leave no error behind
    return status;
}

}  // namespace kernels
}  // namespace kiln
