// LayerNorm (no affine: FLUX's pre-modulation norm; CLIP adds ops.h's affine) and RMSNorm (FLUX's QK-norm): one warp per row,
// fp32 statistics, bf16 in and out. Rows whose length is a multiple of 8 use 16-byte accesses.
#include "kernels_common.cuh"
#include "ops_gpu.h"

namespace graft {
namespace gpu {


// Loops `body(c, x)` over a row's elements owned by this lane, 8 at a time when VEC.
#define ROW_LOOP_BEGIN(VEC, C)                                      \
  for (int c0 = (VEC ? lane * 8 : lane); c0 < C; c0 += (VEC ? 256 : 32)) { \
    const int n_ = VEC ? 8 : 1;

template <bool VEC>
__global__ void layernorm_forward_kernel(bf16* out, float* mean, float* rstd, const bf16* inp, int N, int C,
                                         float eps) {
  int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const bf16* x = inp + (size_t)row * C;
  bf16* y = out + (size_t)row * C;
  float v[8];
  float sum = 0.0f;
  ROW_LOOP_BEGIN(VEC, C)
    if (VEC) load8(v, x + c0); else v[0] = __bfloat162float(x[c0]);
    for (int i = 0; i < n_; i++) sum += v[i];
  }
  float m = warp_sum(sum) / C;
  float var = 0.0f;
  ROW_LOOP_BEGIN(VEC, C)
    if (VEC) load8(v, x + c0); else v[0] = __bfloat162float(x[c0]);
    for (int i = 0; i < n_; i++) var += (v[i] - m) * (v[i] - m);
  }
  float r = rsqrtf(warp_sum(var) / C + eps);
  ROW_LOOP_BEGIN(VEC, C)
    if (VEC) load8(v, x + c0); else v[0] = __bfloat162float(x[c0]);
    for (int i = 0; i < n_; i++) v[i] = (v[i] - m) * r;
    if (VEC) store8(y + c0, v); else y[c0] = __float2bfloat16(v[0]);
  }
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = r;
  }
}

template <bool VEC>
__global__ void layernorm_backward_kernel(bf16* dinp, const bf16* dout, const bf16* inp, const float* mean,
                                          const float* rstd, int N, int C) {
  int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const bf16* x = inp + (size_t)row * C;
  const bf16* dy = dout + (size_t)row * C;
  bf16* dx = dinp + (size_t)row * C;
  float m = mean[row], r = rstd[row];
  float v[8], g[8], d[8];
  float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
  ROW_LOOP_BEGIN(VEC, C)
    if (VEC) { load8(v, x + c0); load8(g, dy + c0); }
    else { v[0] = __bfloat162float(x[c0]); g[0] = __bfloat162float(dy[c0]); }
    for (int i = 0; i < n_; i++) {
      sum_dy += g[i];
      sum_dy_xhat += g[i] * (v[i] - m) * r;
    }
  }
  float mean_dy = warp_sum(sum_dy) / C, mean_dy_xhat = warp_sum(sum_dy_xhat) / C;
  ROW_LOOP_BEGIN(VEC, C)
    if (VEC) { load8(v, x + c0); load8(g, dy + c0); load8(d, dx + c0); }
    else { v[0] = __bfloat162float(x[c0]); g[0] = __bfloat162float(dy[c0]); d[0] = __bfloat162float(dx[c0]); }
    for (int i = 0; i < n_; i++) d[i] += r * (g[i] - mean_dy - (v[i] - m) * r * mean_dy_xhat);
    if (VEC) store8(dx + c0, d); else dx[c0] = __float2bfloat16(d[0]);
  }
}

template <bool VEC>
__global__ void rmsnorm_forward_kernel(bf16* out, float* rrms, const bf16* inp, const bf16* scale, int N, int C, float eps) {
  int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const bf16* x = inp + (size_t)row * C;
  bf16* y = out + (size_t)row * C;
  float v[8], s[8];
  float sum_sq = 0.0f;
  ROW_LOOP_BEGIN(VEC, C)
    if (VEC) load8(v, x + c0); else v[0] = __bfloat162float(x[c0]);
    for (int i = 0; i < n_; i++) sum_sq += v[i] * v[i];
  }
  float r = rsqrtf(warp_sum(sum_sq) / C + eps);
  ROW_LOOP_BEGIN(VEC, C)
    if (VEC) { load8(v, x + c0); load8(s, scale + c0); }
    else { v[0] = __bfloat162float(x[c0]); s[0] = __bfloat162float(scale[c0]); }
    // As FLUX: (x * rrms).to(bf16) * scale
    for (int i = 0; i < n_; i++) v[i] = __bfloat162float(__float2bfloat16(v[i] * r)) * s[i];
    if (VEC) store8(y + c0, v); else y[c0] = __float2bfloat16(v[0]);
  }
  if (lane == 0) rrms[row] = r;
}

// dscale partials go to shared memory (C floats), then one global atomic per column per block.
template <bool VEC>
__global__ void rmsnorm_backward_kernel(bf16* dinp, float* dscale, const bf16* dout, const bf16* inp,
                                        const bf16* scale, const float* rrms, int N, int C) {
  extern __shared__ float ds_shared[];
  int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (dscale)
    for (int c = threadIdx.x; c < C; c += blockDim.x) ds_shared[c] = 0.0f;
  __syncthreads();
  for (int row = blockIdx.x * warps + threadIdx.x / 32; row < N; row += gridDim.x * warps) {
    const bf16* x = inp + (size_t)row * C;
    const bf16* dy = dout + (size_t)row * C;
    float r = rrms[row];
    float v[8], g[8], s[8], d[8];
    if (dinp) {
      bf16* dx = dinp + (size_t)row * C;
      float dot = 0.0f;
      ROW_LOOP_BEGIN(VEC, C)
        if (VEC) { load8(v, x + c0); load8(g, dy + c0); load8(s, scale + c0); }
        else { v[0] = __bfloat162float(x[c0]); g[0] = __bfloat162float(dy[c0]); s[0] = __bfloat162float(scale[c0]); }
        for (int i = 0; i < n_; i++) dot += g[i] * s[i] * v[i];
      }
      float k = r * r * r * warp_sum(dot) / C;
      ROW_LOOP_BEGIN(VEC, C)
        if (VEC) { load8(v, x + c0); load8(g, dy + c0); load8(s, scale + c0); load8(d, dx + c0); }
        else {
          v[0] = __bfloat162float(x[c0]); g[0] = __bfloat162float(dy[c0]);
          s[0] = __bfloat162float(scale[c0]); d[0] = __bfloat162float(dx[c0]);
        }
        for (int i = 0; i < n_; i++) d[i] += r * s[i] * g[i] - k * v[i];
        if (VEC) store8(dx + c0, d); else dx[c0] = __float2bfloat16(d[0]);
      }
    }
    if (dscale) {
      ROW_LOOP_BEGIN(VEC, C)
        if (VEC) { load8(v, x + c0); load8(g, dy + c0); }
        else { v[0] = __bfloat162float(x[c0]); g[0] = __bfloat162float(dy[c0]); }
        for (int i = 0; i < n_; i++) atomicAdd(&ds_shared[c0 + i], g[i] * v[i] * r);
      }
    }
  }
  if (dscale) {
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) atomicAdd(dscale + c, ds_shared[c]);
  }
}

static const int ROWS_PER_BLOCK = 8;  // 8 warps of 32

void layernorm_forward(bf16* out, float* mean, float* rstd, const bf16* inp, int N, int C, float eps,
                       cudaStream_t stream) {
  unsigned grid = ceil_div(N, ROWS_PER_BLOCK);
  if (C % 8 == 0 && aligned16(inp) && aligned16(out))
    layernorm_forward_kernel<true><<<grid, 256, 0, stream>>>(out, mean, rstd, inp, N, C, eps);
  else
    layernorm_forward_kernel<false><<<grid, 256, 0, stream>>>(out, mean, rstd, inp, N, C, eps);
  cudaCheckLaunch();
}

void layernorm_backward(bf16* dinp, const bf16* dout, const bf16* inp, const float* mean, const float* rstd, int N,
                        int C, cudaStream_t stream) {
  if (!dinp) return;
  unsigned grid = ceil_div(N, ROWS_PER_BLOCK);
  if (C % 8 == 0 && aligned16(inp) && aligned16(dout) && aligned16(dinp))
    layernorm_backward_kernel<true><<<grid, 256, 0, stream>>>(dinp, dout, inp, mean, rstd, N, C);
  else
    layernorm_backward_kernel<false><<<grid, 256, 0, stream>>>(dinp, dout, inp, mean, rstd, N, C);
  cudaCheckLaunch();
}

void rmsnorm_forward(bf16* out, float* rrms, const bf16* inp, const bf16* scale, int N, int C, float eps, cudaStream_t stream) {
  unsigned grid = ceil_div(N, ROWS_PER_BLOCK);
  if (C % 8 == 0 && aligned16(inp) && aligned16(out) && aligned16(scale))
    rmsnorm_forward_kernel<true><<<grid, 256, 0, stream>>>(out, rrms, inp, scale, N, C, eps);
  else
    rmsnorm_forward_kernel<false><<<grid, 256, 0, stream>>>(out, rrms, inp, scale, N, C, eps);
  cudaCheckLaunch();
}

void rmsnorm_backward(bf16* dinp, float* dscale, const bf16* dout, const bf16* inp, const bf16* scale,
                      const float* rrms, int N, int C, cudaStream_t stream) {
  if (!dinp && !dscale) return;
  unsigned grid = ceil_div(N, ROWS_PER_BLOCK);
  if (grid > 1024) grid = 1024;  // rows are grid-strided; fewer blocks, fewer dscale atomics
  size_t smem = dscale ? (size_t)C * sizeof(float) : 0;
  if (smem > 48 * 1024) fail("rmsnorm_backward: C = " + std::to_string(C) + " is too wide (at most 12288)");
  bool vec = C % 8 == 0 && aligned16(inp) && aligned16(dout) && aligned16(scale) && (!dinp || aligned16(dinp));
  if (vec)
    rmsnorm_backward_kernel<true><<<grid, 256, smem, stream>>>(dinp, dscale, dout, inp, scale, rrms, N, C);
  else
    rmsnorm_backward_kernel<false><<<grid, 256, smem, stream>>>(dinp, dscale, dout, inp, scale, rrms, N, C);
  cudaCheckLaunch();
}

}  // namespace gpu
}  // namespace graft
