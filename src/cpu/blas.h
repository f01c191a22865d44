// OpenBLAS, loaded at first use rather than at program start.
//
// Why: OpenBLAS picks its kernels once, when the library initialises, from the CPU model it
// recognises. OpenBLAS 0.3.21 (Debian 12) does not recognise recent Xeons (Sapphire and Emerald
// Rapids) and falls back to its SSE3 "Prescott" kernels, which run the GEMMs of a training
// step about 2.5 times slower than its AVX2 ones. Loading it ourselves lets kiln set
// OPENBLAS_CORETYPE from the CPU's features first, when the user has not set it.
#pragma once

#include <string>

namespace kiln {
namespace blas {

enum Order { kRowMajor = 101 };
enum Transpose { kNoTrans = 111, kTrans = 112 };

// The functions kiln calls, with OpenBLAS's CBLAS signatures (blasint is 32-bit in Debian's
// build). Loading throws kiln::Error naming the library and dlerror() when it is missing.
struct Library {
    void (*sgemm)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                  const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc);
    void (*dgemm)(int order, int trans_a, int trans_b, int m, int n, int k, double alpha,
                  const double* a, int lda, const double* b, int ldb, double beta, double* c,
                  int ldc);
    int (*get_num_threads)();
    void (*set_num_threads)(int);
    char* (*get_config)();
    char* (*get_corename)();
    // What kiln did about OPENBLAS_CORETYPE, for the backend's description.
    std::string coretype_note;
};

const Library& library();

}  // namespace blas
}  // namespace kiln
