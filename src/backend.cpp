#include "kiln/backend.h"

#include "kiln/status.h"

namespace kiln {

#if !defined(KILN_WITH_CUDA)
std::unique_ptr<Backend> make_cuda_backend(std::string* why) {
    if (why)
        *why = "kiln was built without CUDA (KILN_USE_CUDA=OFF)";
    return nullptr;
}
#endif

BackendSelection select_backend(DeviceChoice choice) {
    BackendSelection selection;
    if (choice == DeviceChoice::kCpu) {
        selection.backend = make_cpu_backend();
        selection.message = "using " + selection.backend->description() + " (--device cpu)";
        return selection;
    }
    std::string why;
    selection.backend = make_cuda_backend(&why);
    if (selection.backend) {
        selection.message = "using " + selection.backend->description();
        return selection;
    }
    if (choice == DeviceChoice::kCuda)
        throw Error("--device cuda: " + why);
    selection.backend = make_cpu_backend();
    selection.message = "using " + selection.backend->description() + ", since " + why;
    return selection;
}

}  // namespace kiln
