// LoKr adapters on the GPU (ops.h's LokrRef): the Kronecker product kron(w1, w2) formed in bf16 scratch
// and multiplied through cuBLASLt as a dense weight, its weight gradient reduced onto the two factors.
#include "cublaslt.h"
#include "kernels_common.cuh"
#include "ops_gpu.h"

namespace graft {
namespace gpu {

namespace {

// D[i*b+j, k*d+l] = scale w1[i,k] w2[j,l], D [a*b, c*d] bf16.
__global__ void kron_kernel(bf16* D, const float* w1, const float* w2, int a, int b, int c, int d, float scale) {
  const long n = (long)a * b * c * d, in = (long)c * d;
  GRID_STRIDE(e, n) {
    const long row = e / in, col = e % in;
    const int i = (int)(row / b), j = (int)(row % b), k = (int)(col / d), l = (int)(col % d);
    D[e] = __float2bfloat16(scale * w1[i * c + k] * w2[j * d + l]);
  }
}

// dw1[i,k] += scale sum_jl dD[i*b+j, k*d+l] w2[j,l]: one thread per (i, k).
__global__ void kron_grad_w1_kernel(float* dw1, const float* dD, const float* w2, int a, int b, int c, int d, float scale) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= a * c) return;
  const int i = e / c, k = e % c;
  const long in = (long)c * d;
  float s = 0.0f;
  for (int j = 0; j < b; ++j)
    for (int l = 0; l < d; ++l) s += dD[(long)(i * b + j) * in + k * d + l] * w2[j * d + l];
  dw1[e] += scale * s;
}

// dw2[j,l] += scale sum_ik dD[i*b+j, k*d+l] w1[i,k]: one thread per (j, l).
__global__ void kron_grad_w2_kernel(float* dw2, const float* dD, const float* w1, int a, int b, int c, int d, float scale) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= b * d) return;
  const int j = e / d, l = e % d;
  const long in = (long)c * d;
  float s = 0.0f;
  for (int i = 0; i < a; ++i)
    for (int k = 0; k < c; ++k) s += dD[(long)(i * b + j) * in + k * d + l] * w1[i * c + k];
  dw2[e] += scale * s;
}

// C[M,N] = op(A) @ op(B) + beta C in fp32, one thread per output (the factors are small).
__global__ void matmul_f32_kernel(float* C, const float* A, bool tA, const float* B, bool tB, int M, int N, int K,
                                  float beta) {
  const long e = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (long)M * N) return;
  const int m = (int)(e / N), n = (int)(e % N);
  float s = 0.0f;
  for (int k = 0; k < K; ++k) s += (tA ? A[(long)k * M + m] : A[(long)m * K + k]) * (tB ? B[(long)n * K + k] : B[(long)k * N + n]);
  C[e] = beta == 0.0f ? s : beta * C[e] + s;
}

size_t round256(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

bf16* kron_scratch(const float* w1, const float* w2, int a, int b, int c, int d, float scale, size_t extra, void** rest) {
  const size_t n = (size_t)a * b * c * d, db = round256(n * sizeof(bf16));
  char* base = (char*)scratch(SCRATCH_LOKR, db + extra);
  kron_kernel<<<grid_1d((long)n), 256>>>((bf16*)base, w1, w2, a, b, c, d, scale);
  cudaCheckLaunch();
  if (rest) *rest = base + db;
  return (bf16*)base;
}

}  // namespace

void lokr_forward(bf16* out, int out_stride, const bf16* inp, const float* w1, const float* w2, int N, int a, int b,
                  int c, int d, float scale) {
  const int OC = a * b, IC = c * d;
  if (N == 0 || OC == 0 || IC == 0) return;
  const bf16* D = kron_scratch(w1, w2, a, b, c, d, scale, 0, nullptr);
  // out[:, slice] += inp @ D^T
  gemm(out, GemmOut::BF16, out_stride, inp, IC, false, D, IC, true, N, OC, IC, 1.0f, 1.0f);
}

void lokr_backward(bf16* dinp, float* dw1, float* dw2, const bf16* dout, int dout_stride, const bf16* inp,
                   const float* w1, const float* w2, int N, int a, int b, int c, int d, float scale) {
  const int OC = a * b, IC = c * d;
  if (N == 0 || OC == 0 || IC == 0) return;
  void* rest = nullptr;
  const bool weights = dw1 || dw2;
  const bf16* D = kron_scratch(w1, w2, a, b, c, d, scale, weights ? (size_t)OC * IC * sizeof(float) : 0, &rest);
  // dinp += dout_slice @ D
  if (dinp) gemm(dinp, GemmOut::BF16, IC, dout, dout_stride, false, D, IC, false, N, IC, OC, 1.0f, 1.0f);
  if (!weights) return;
  // dD[OC, IC] = dout_slice^T @ inp, then onto the factors
  float* dD = (float*)rest;
  gemm(dD, GemmOut::F32, IC, dout, dout_stride, true, inp, IC, false, OC, IC, N, 1.0f, 0.0f);
  if (dw1) kron_grad_w1_kernel<<<(unsigned)ceil_div(a * c, 256), 256>>>(dw1, dD, w2, a, b, c, d, scale);
  if (dw2) kron_grad_w2_kernel<<<(unsigned)ceil_div(b * d, 256), 256>>>(dw2, dD, w1, a, b, c, d, scale);
  cudaCheckLaunch();
}

void matmul_f32(float* C, const float* A, bool transA, const float* B, bool transB, int M, int N, int K, float beta) {
  const long n = (long)M * N;
  if (n == 0) return;
  matmul_f32_kernel<<<(unsigned)ceil_div(n, 256), 256>>>(C, A, transA, B, transB, M, N, K, beta);
  cudaCheckLaunch();
}

}  // namespace gpu
}  // namespace graft
