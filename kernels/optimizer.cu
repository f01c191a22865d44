// One optimizer step over the model's whole flat parameter buffer: SGD (momentum, Nesterov),
// Adam, AdamW and RMSprop (plain, centered, momentum), Keras 3's update rules.
//
//   params(n) updated in place from grads(n); state(slots × n) updated in place, where
//   slots = optimizer_state_slots(step) and slot k of element i is state[k * n + i].
//
// Precision: float32 parameters, gradients and state; the update is math::optimizer_update, the
// function the CPU backend calls, so both backends apply the same formula to each element. They
// can still differ in the last bits: nvcc contracts a·b + c into fused multiply-adds, which the
// host compiler (baseline x86-64) does not. sqrt and division are IEEE-rounded on both. The
// step-dependent scalars (Adam's bias correction) come precomputed, from the host or, in a
// captured step, from the StepScalars that advance_step keeps on the device.
#include "kernels/kernels.h"

#include <cstdint>

#include "kernels/math.h"

namespace kiln {
namespace kernels {
namespace {

// One grid-stride kernel; each element is independent, so any block size works. The update is
// bound by memory traffic (up to 5 floats read and 4 written per parameter for centered RMSprop
// with momentum); 256 threads per block as for the other element-wise kernels.
constexpr int kOptimizerBlock = kElementwiseBlock;

// params, grads: (n); state: (SLOTS × n), null when SLOTS is 0. Slots the optimizer does not
// keep point at a per-thread dummy, as in the CPU backend, so the shared update never touches
// memory outside the state buffer. SLOTS is a template parameter so that those pointer choices
// are made at compile time and the dummies stay in registers.
template <int SLOTS>
__global__ void optimizer_update_kernel(OptimizerStep step, float* params, const float* grads,
                                        float* state, size_t n, const StepScalars* scalars) {
    if (scalars != nullptr)
        step = math::with_scalars(step, *scalars);
    const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
    float dummy[3] = {0.0f, 0.0f, 0.0f};
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        float* s0 = SLOTS > 0 ? state + i : &dummy[0];
        float* s1 = SLOTS > 1 ? state + n + i : &dummy[1];
        float* s2 = SLOTS > 2 ? state + 2 * n + i : &dummy[2];
        math::optimizer_update(step, params + i, grads[i], s0, s1, s2);
    }
}

__global__ void advance_step_kernel(OptimizerStep step, StepScalars* scalars) {
    math::advance_step(step, scalars);
}

}  // namespace

void optimizer_update(cudaStream_t stream, const OptimizerStep& step, float* params,
                      const float* grads, float* state, int64_t n, const StepScalars* scalars) {
    KILN_NVTX_RANGE_FN();
    const int slots = optimizer_state_slots(step);
    KILN_REQUIRE(n >= 0, "n", n);
    KILN_REQUIRE(slots >= 0 && slots <= 3, "slots", slots);
    if (n == 0)
        return;
    KILN_REQUIRE(params != nullptr && grads != nullptr, "params", params, "grads", grads);
    KILN_REQUIRE(slots == 0 || state != nullptr, "slots", slots, "state", state);
    const size_t count = static_cast<size_t>(n);
    switch (slots) {
        case 0:
            launch_1d(optimizer_update_kernel<0>, stream, n, kOptimizerBlock, step, params, grads,
                      state, count, scalars);
            break;
        case 1:
            launch_1d(optimizer_update_kernel<1>, stream, n, kOptimizerBlock, step, params, grads,
                      state, count, scalars);
            break;
        case 2:
            launch_1d(optimizer_update_kernel<2>, stream, n, kOptimizerBlock, step, params, grads,
                      state, count, scalars);
            break;
        default:
            launch_1d(optimizer_update_kernel<3>, stream, n, kOptimizerBlock, step, params, grads,
                      state, count, scalars);
            break;
    }
}

void advance_step(cudaStream_t stream, const OptimizerStep& step, StepScalars* scalars) {
    KILN_NVTX_RANGE_FN();
    KILN_REQUIRE(scalars != nullptr, "scalars", scalars);
    advance_step_kernel<<<1, 1, 0, stream>>>(step, scalars);
    KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kernels
}  // namespace kiln
