// L1: what launching a kernel costs, one by one and from a captured CUDA graph. CUDA builds only.
#pragma once

#include <vector>

namespace kiln {
namespace bench {

struct LaunchCost {
    int kernels = 0;            // in each chain
    std::vector<double> eager;  // seconds per kernel, one figure per repetition
    std::vector<double> graph;
};

// A chain of `kernels` tiny kernels (each adds 1 to 1,024 floats, in order on one stream),
// launched one by one then waited for, against the same chain captured once as a graph and
// replayed; `repetitions` timed chains of each after an untimed one. Throws kiln::Error when
// a CUDA call fails (no GPU among them).
LaunchCost measure_launch_cost(int kernels, int repetitions);

}  // namespace bench
}  // namespace kiln
