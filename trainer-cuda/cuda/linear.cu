// Linear layers and LoRA adapters on the GPU: every product through cuBLASLt (bf16 operands, fp32
// accumulation), the bias folded into the forward product's epilogue.
#include "cublaslt.h"
#include "ops_gpu.h"

namespace graft {
namespace gpu {

// out[c] += sum over rows of in[r*ld + c] (fp32 accumulate). Block: 32 columns x 8 row lanes;
// each block sums a band of rows and adds its partial with one atomic per column.
__global__ void column_sum_kernel(float* out, const bf16* in, int rows, int cols, int ld, int rows_per_block) {
  __shared__ float part[8][33];
  int c = blockIdx.x * 32 + threadIdx.x;
  int r0 = blockIdx.y * rows_per_block;
  int r1 = min(rows, r0 + rows_per_block);
  float sum = 0.0f;
  if (c < cols)
    for (int r = r0 + threadIdx.y; r < r1; r += 8) sum += __bfloat162float(in[(size_t)r * ld + c]);
  part[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float s = 0.0f;
    for (int i = 0; i < 8; i++) s += part[i][threadIdx.x];
    atomicAdd(out + c, s);
  }
}

static void column_sum(float* out, const bf16* in, int rows, int cols, int ld, cudaStream_t stream) {
  int bands = (int)ceil_div(rows, 256);
  if (bands > 64) bands = 64;
  int rows_per_block = (int)ceil_div(rows, bands);
  dim3 grid(ceil_div(cols, 32), bands), block(32, 8);
  column_sum_kernel<<<grid, block, 0, stream>>>(out, in, rows, cols, ld, rows_per_block);
  cudaCheckLaunch();
}

void linear_forward(bf16* out, const bf16* inp, const bf16* W, const bf16* bias, int N, int IC, int OC,
                    cudaStream_t stream) {
  gemm(out, GemmOut::BF16, OC, inp, IC, false, W, IC, true, N, OC, IC, 1.0f, 0.0f, bias, stream);
}

void linear_backward(bf16* dinp, float* dW, float* dbias, const bf16* dout, const bf16* inp, const bf16* W,
                     int N, int IC, int OC, cudaStream_t stream) {
  // dinp[N,IC] += dout[N,OC] @ W[OC,IC]
  if (dinp) gemm(dinp, GemmOut::BF16, IC, dout, OC, false, W, IC, false, N, IC, OC, 1.0f, 1.0f, nullptr, stream);
  // dW[OC,IC] += dout^T @ inp
  if (dW) gemm(dW, GemmOut::F32, IC, dout, OC, true, inp, IC, false, OC, IC, N, 1.0f, 1.0f, nullptr, stream);
  if (dbias) column_sum(dbias, dout, N, OC, OC, stream);
}

// bf16 copies of the adapter's A and B (and room for dh) in the LoRA scratch slot.
struct LoraScratch { bf16 *A, *B, *dh; };
static size_t round256(size_t bytes) { return (bytes + 255) & ~(size_t)255; }
static LoraScratch lora_scratch(const float* A, const float* B, int N, int IC, int OC, int rank, bool with_dh,
                                cudaStream_t stream) {
  size_t a_b = round256((size_t)rank * IC * 2), b_b = round256((size_t)OC * rank * 2);
  size_t dh_b = with_dh ? round256((size_t)N * rank * 2) : 0;
  char* base = (char*)scratch(SCRATCH_LORA, a_b + b_b + dh_b);
  LoraScratch s{(bf16*)base, (bf16*)(base + a_b), with_dh ? (bf16*)(base + a_b + b_b) : nullptr};
  f32_to_bf16(s.A, A, (long)rank * IC, stream);
  f32_to_bf16(s.B, B, (long)OC * rank, stream);
  return s;
}

void lora_forward(bf16* out, int out_stride, bf16* h, const bf16* inp, const float* A, const float* B, int N,
                  int IC, int OC, int rank, float scale, cudaStream_t stream) {
  LoraScratch s = lora_scratch(A, B, N, IC, OC, rank, false, stream);
  // h[N,rank] = inp @ A^T ; out[:, slice] += scale * h @ B^T
  gemm(h, GemmOut::BF16, rank, inp, IC, false, s.A, IC, true, N, rank, IC, 1.0f, 0.0f, nullptr, stream);
  gemm(out, GemmOut::BF16, out_stride, h, rank, false, s.B, rank, true, N, OC, rank, scale, 1.0f, nullptr, stream);
}

void lora_backward(bf16* dinp, float* dA, float* dB, const bf16* dout, int dout_stride, const bf16* h,
                   const bf16* inp, const float* A, const float* B, int N, int IC, int OC, int rank, float scale,
                   cudaStream_t stream) {
  LoraScratch s = lora_scratch(A, B, N, IC, OC, rank, true, stream);
  // dB[OC,rank] += scale * dout^T @ h
  if (dB)
    gemm(dB, GemmOut::F32, rank, dout, dout_stride, true, h, rank, false, OC, rank, N, scale, 1.0f, nullptr, stream);
  if (!dA && !dinp) return;
  // dh[N,rank] = scale * dout @ B
  gemm(s.dh, GemmOut::BF16, rank, dout, dout_stride, false, s.B, rank, false, N, rank, OC, scale, 0.0f, nullptr,
       stream);
  // dA[rank,IC] += dh^T @ inp ; dinp[N,IC] += dh @ A
  if (dA) gemm(dA, GemmOut::F32, IC, s.dh, rank, true, inp, IC, false, rank, IC, N, 1.0f, 1.0f, nullptr, stream);
  if (dinp) gemm(dinp, GemmOut::BF16, IC, s.dh, rank, false, s.A, IC, false, N, IC, rank, 1.0f, 1.0f, nullptr, stream);
}

}  // namespace gpu
}  // namespace graft
