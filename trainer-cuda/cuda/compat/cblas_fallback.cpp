// Plain-loop cblas_sgemm for the GPU parity tests' CPU reference (see cblas.h beside this file).
// Rows of C are split across OpenMP threads; each dot product accumulates in double.
#include "cblas.h"

#include <vector>

extern "C" void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE transA, enum CBLAS_TRANSPOSE transB, int M,
                            int N, int K, float alpha, const float* A, int lda, const float* B, int ldb, float beta,
                            float* C, int ldc) {
  // Column-major C = op(A) op(B) is row-major C^T = op(B)^T op(A)^T.
  if (order == CblasColMajor) {
    cblas_sgemm(CblasRowMajor, transB, transA, N, M, K, alpha, B, ldb, A, lda, beta, C, ldc);
    return;
  }
  const bool ta = transA != CblasNoTrans, tb = transB != CblasNoTrans;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < M; i++) {
    std::vector<double> acc(N, 0.0);
    for (int k = 0; k < K; k++) {
      double a = ta ? A[(long)k * lda + i] : A[(long)i * lda + k];
      if (a == 0.0) continue;
      if (tb)
        for (int j = 0; j < N; j++) acc[j] += a * B[(long)j * ldb + k];
      else
        for (int j = 0; j < N; j++) acc[j] += a * B[(long)k * ldb + j];
    }
    float* c = C + (long)i * ldc;
    for (int j = 0; j < N; j++) c[j] = (float)(alpha * acc[j] + (beta == 0.0f ? 0.0 : (double)beta * c[j]));
  }
}
