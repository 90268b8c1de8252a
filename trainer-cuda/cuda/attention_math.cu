// Attention for head sizes and masks the flash kernels do not take (the autoencoder's single head of
// 128-512 channels; T5's relative-position bias; CLIP's causal mask): the score matrix materialised
// per (image, head) with cuBLASLt products, as the CPU reference does. The probabilities are kept
// (fp32) for the backward.
#include <cmath>

#include "core/cuda_runtime.h"
#include "cublaslt.h"
#include "kernels_common.cuh"
#include "ops_gpu.h"

namespace graft {
namespace gpu {

namespace {

// Softmax of each row of p [rows, L] in place (fp32) after adding bias [rows, L] (may be null) and
// the causal mask, and a bf16 copy for the next product. One warp per row.
__global__ void softmax_rows_kernel(float* p, bf16* p16, long rows, int L, const float* bias, bool causal) {
  const long row = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  float* r = p + row * L;
  const int i = (int)(row % L);
  for (int j = lane; j < L; j += 32) {
    float s = r[j] + (bias ? bias[row * L + j] : 0.0f);
    r[j] = causal && j > i ? -INFINITY : s;
  }
  __syncwarp();
  float m = -INFINITY;
  for (int j = lane; j < L; j += 32) m = fmaxf(m, r[j]);
  m = warp_max(m);
  float s = 0.0f;
  for (int j = lane; j < L; j += 32) s += expf(r[j] - m);
  s = warp_sum(s);
  const float inv = 1.0f / s;
  for (int j = lane; j < L; j += 32) {
    const float v = expf(r[j] - m) * inv;
    r[j] = v;
    p16[row * L + j] = __float2bfloat16(v);
  }
}

// dS = P * (dP - rowsum(P * dP)), in bf16 for the products that follow; P bf16 copy too.
__global__ void softmax_backward_rows_kernel(bf16* ds16, bf16* p16, const float* p, const float* dp, int L) {
  const long row = blockIdx.x;
  const float* pr = p + row * L;
  const float* dr = dp + row * L;
  float s = 0.0f;
  for (int j = threadIdx.x; j < L; j += blockDim.x) s += pr[j] * dr[j];
  const float delta = block_sum(s);
  for (int j = threadIdx.x; j < L; j += blockDim.x) {
    ds16[row * L + j] = __float2bfloat16(pr[j] * (dr[j] - delta));
    p16[row * L + j] = __float2bfloat16(pr[j]);
  }
}

}  // namespace

void attention_math_forward(bf16* out, float* probs, const bf16* q, const bf16* k, const bf16* v, int B, int L, int H,
                            int D, const AttentionMask& mask) {
  const float scale = mask.scale_for(D);
  const int HD = H * D;
  DeviceTemp p16((size_t)L * L * sizeof(bf16), "attention probabilities (bf16)");
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const long off = (long)b * L * HD + (long)h * D;
      float* p = probs + ((long)b * H + h) * L * L;
      // S [L, L] = scale * Q K^T
      gemm(p, GemmOut::F32, L, q + off, HD, false, k + off, HD, true, L, L, D, scale, 0.0f);
      const float* bias = mask.bias ? mask.bias + (long)h * L * L : nullptr;
      softmax_rows_kernel<<<ceil_div(L, 8), 256>>>(p, (bf16*)p16.p, L, L, bias, mask.causal);
      cudaCheckLaunch();
      // O [L, D] = P V
      gemm(out + off, GemmOut::BF16, HD, (const bf16*)p16.p, L, false, v + off, HD, false, L, D, L, 1.0f, 0.0f);
    }
}

void attention_math_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const float* probs, const bf16* q,
                             const bf16* k, const bf16* v, int B, int L, int H, int D, const AttentionMask& mask) {
  if (!dq && !dk && !dv) return;
  const float scale = mask.scale_for(D);  // bias and mask are constants: masked P = 0 gives dS = 0
  const int HD = H * D;
  DeviceTemp p16((size_t)L * L * sizeof(bf16), "attention probabilities (bf16)");
  DeviceTemp ds16((size_t)L * L * sizeof(bf16), "attention score gradients (bf16)");
  DeviceTemp dp((size_t)L * L * sizeof(float), "attention probability gradients");
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const long off = (long)b * L * HD + (long)h * D;
      const float* p = probs + ((long)b * H + h) * L * L;
      // dP [L, L] = dO V^T
      gemm(dp.p, GemmOut::F32, L, dout + off, HD, false, v + off, HD, true, L, L, D, 1.0f, 0.0f);
      softmax_backward_rows_kernel<<<L, 256>>>((bf16*)ds16.p, (bf16*)p16.p, p, (const float*)dp.p, L);
      cudaCheckLaunch();
      // dV += P^T dO; dQ += scale dS K; dK += scale dS^T Q
      if (dv) gemm(dv + off, GemmOut::BF16, HD, (const bf16*)p16.p, L, true, dout + off, HD, false, L, D, L, 1.0f, 1.0f);
      if (dq) gemm(dq + off, GemmOut::BF16, HD, (const bf16*)ds16.p, L, false, k + off, HD, false, L, D, L, scale, 1.0f);
      if (dk) gemm(dk + off, GemmOut::BF16, HD, (const bf16*)ds16.p, L, true, q + off, HD, false, L, D, L, scale, 1.0f);
    }
}

}  // namespace gpu
}  // namespace graft
