// A stand-in for <cblas.h>, used only when building the GPU test and bench binaries, so that the CPU
// reference (ops/cpu_ops.cpp) links on machines without OpenBLAS (the GPU machine has no apt). It
// declares the one routine ops.cpp calls; cblas_fallback.cpp implements it with plain loops, which
// is fast enough for the small shapes of the parity tests.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112, CblasConjTrans = 113 };

void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE transA, enum CBLAS_TRANSPOSE transB, int M, int N, int K,
                 float alpha, const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc);

#ifdef __cplusplus
}
#endif
