// Matrix products through cuBLASLt, loaded at run time with dlopen: no cuBLAS headers or
// libraries are needed to build, only at run time (libcublasLt.so.13 or .12, found through
// LD_LIBRARY_PATH, GRAFT_CUBLASLT=/path/to/lib, or PyTorch's nvidia-cublas pip package).
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "cuda_common.h"

namespace graft {
namespace gpu {

enum class GemmOut { BF16, F32 };

// Row-major: C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C  (+ bias[N] added to every row).
// A is bf16 [M,K] (lda) or, with transA, stored [K,M]; B is bf16 [K,N] (ldb) or, with transB,
// stored [N,K]. C is bf16 or fp32 with leading dimension ldc. bias (bf16, or nullptr) goes
// through cuBLASLt's epilogue, saving a pass over C. fp32 accumulation throughout.
void gemm(void* C, GemmOut ctype, int ldc, const bf16* A, int lda, bool transA, const bf16* B, int ldb,
          bool transB, int M, int N, int K, float alpha, float beta, const bf16* bias = nullptr,
          cudaStream_t stream = 0);

// Loads the library (once) and returns where it came from; throws graft::Error naming every
// place it looked when it cannot be found.
std::string cublaslt_init();

}  // namespace gpu
}  // namespace graft
