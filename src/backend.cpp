#include "kiln/backend.h"

#include "kiln/status.h"

namespace kiln {

void Backend::refuse_while_capturing(const char* op) const {
    if (capturing_) {
        throw Error(std::string(op) +
                    " while a step graph is being captured: a graph replays device work only "
                    "(no host transfers, waits or allocations)");
    }
}

void Backend::dense_forward(const View& x, const View& w, const View& bias, const View& y,
                            int64_t rows, int64_t k, int64_t cols, ActivationSpec act) {
    gemm(false, false, rows, cols, k, 1.0f, x, w, 0.0f, y);
    bias_activation_forward(y, bias, y, rows, cols, act);
    ++unfused_gemms_;
}

void Backend::dense_backward_weights(const View& x, const View& dz, const View& dw, const View& db,
                                     int64_t rows, int64_t k, int64_t cols) {
    gemm(true, false, k, cols, rows, 1.0f, x, dz, 0.0f, dw);
    if (db.data != nullptr)
        bias_grad(dz, db, rows, cols);
    ++unfused_gemms_;
}

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
