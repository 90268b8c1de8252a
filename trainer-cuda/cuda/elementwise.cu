// Elementwise and broadcast ops: GELU (tanh), SiLU, quick GELU, products, per-channel affine, adaLN modulation, gated residual, timestep
// embedding, (un)patchify, MSE, and dtype conversions. All memory-bound: one pass, fp32 math.
// The backward of a broadcast (shift/scale/gate shared by L tokens) fuses the elementwise input
// gradient with the column sums, so each tensor is read once.
#include <cmath>

#include "kernels_common.cuh"
#include "ops_gpu.h"

namespace graft {
namespace gpu {

static unsigned grid_for(long n, int threads = 256) {
  long blocks = (n + threads - 1) / threads;
  return (unsigned)(blocks > 65535L * 16 ? 65535L * 16 : blocks);
}

// ---- activations ----------------------------------------------------------------------------------
static const float GELU_SCALE = 0.7978845608028654f;  // sqrt(2 / pi)
static const float GELU_CUBIC = 0.044715f;

__global__ void gelu_forward_kernel(bf16* out, const bf16* inp, long n) {
  GRID_STRIDE(i, n) {
    float x = __bfloat162float(inp[i]);
    out[i] = __float2bfloat16(0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + GELU_CUBIC * x * x * x))));
  }
}
__global__ void gelu_backward_kernel(bf16* dinp, const bf16* dout, const bf16* inp, long n) {
  GRID_STRIDE(i, n) {
    float x = __bfloat162float(inp[i]);
    float t = tanhf(GELU_SCALE * (x + GELU_CUBIC * x * x * x));
    float du_dx = GELU_SCALE * (1.0f + 3.0f * GELU_CUBIC * x * x);
    float grad = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du_dx;
    dinp[i] = __float2bfloat16(__bfloat162float(dinp[i]) + grad * __bfloat162float(dout[i]));
  }
}
__global__ void silu_forward_kernel(bf16* out, const bf16* inp, long n) {
  GRID_STRIDE(i, n) {
    float x = __bfloat162float(inp[i]);
    out[i] = __float2bfloat16(x / (1.0f + expf(-x)));
  }
}
__global__ void silu_backward_kernel(bf16* dinp, const bf16* dout, const bf16* inp, long n) {
  GRID_STRIDE(i, n) {
    float x = __bfloat162float(inp[i]);
    float sig = 1.0f / (1.0f + expf(-x));
    dinp[i] = __float2bfloat16(__bfloat162float(dinp[i]) + sig * (1.0f + x * (1.0f - sig)) * __bfloat162float(dout[i]));
  }
}

void gelu_forward(bf16* out, const bf16* inp, long n, cudaStream_t stream) {
  if (n <= 0) return;
  gelu_forward_kernel<<<grid_for(n), 256, 0, stream>>>(out, inp, n);
  cudaCheckLaunch();
}
void gelu_backward(bf16* dinp, const bf16* dout, const bf16* inp, long n, cudaStream_t stream) {
  if (!dinp || n <= 0) return;
  gelu_backward_kernel<<<grid_for(n), 256, 0, stream>>>(dinp, dout, inp, n);
  cudaCheckLaunch();
}
void silu_forward(bf16* out, const bf16* inp, long n, cudaStream_t stream) {
  if (n <= 0) return;
  silu_forward_kernel<<<grid_for(n), 256, 0, stream>>>(out, inp, n);
  cudaCheckLaunch();
}
void silu_backward(bf16* dinp, const bf16* dout, const bf16* inp, long n, cudaStream_t stream) {
  if (!dinp || n <= 0) return;
  silu_backward_kernel<<<grid_for(n), 256, 0, stream>>>(dinp, dout, inp, n);
  cudaCheckLaunch();
}

__global__ void tanh_forward_kernel(bf16* out, const bf16* inp, long n) {
  GRID_STRIDE(i, n) out[i] = __float2bfloat16(tanhf(__bfloat162float(inp[i])));
}
__global__ void tanh_backward_kernel(bf16* dinp, const bf16* dout, const bf16* out, long n) {
  GRID_STRIDE(i, n) {
    float y = __bfloat162float(out[i]);
    dinp[i] = __float2bfloat16(__bfloat162float(dinp[i]) + (1.0f - y * y) * __bfloat162float(dout[i]));
  }
}

void tanh_forward(bf16* out, const bf16* inp, long n, cudaStream_t stream) {
  if (n <= 0) return;
  tanh_forward_kernel<<<grid_for(n), 256, 0, stream>>>(out, inp, n);
  cudaCheckLaunch();
}
void tanh_backward(bf16* dinp, const bf16* dout, const bf16* out, long n, cudaStream_t stream) {
  if (!dinp || n <= 0) return;
  tanh_backward_kernel<<<grid_for(n), 256, 0, stream>>>(dinp, dout, out, n);
  cudaCheckLaunch();
}

static const float QUICK_GELU_K = 1.702f;

__global__ void quick_gelu_forward_kernel(bf16* out, const bf16* inp, long n) {
  GRID_STRIDE(i, n) {
    float x = __bfloat162float(inp[i]);
    out[i] = __float2bfloat16(x / (1.0f + expf(-QUICK_GELU_K * x)));
  }
}
__global__ void quick_gelu_backward_kernel(bf16* dinp, const bf16* dout, const bf16* inp, long n) {
  GRID_STRIDE(i, n) {
    float kx = QUICK_GELU_K * __bfloat162float(inp[i]);
    float sig = 1.0f / (1.0f + expf(-kx));
    dinp[i] = __float2bfloat16(__bfloat162float(dinp[i]) + sig * (1.0f + kx * (1.0f - sig)) * __bfloat162float(dout[i]));
  }
}
__global__ void mul_forward_kernel(bf16* out, const bf16* a, const bf16* b, long n) {
  GRID_STRIDE(i, n) out[i] = __float2bfloat16(__bfloat162float(a[i]) * __bfloat162float(b[i]));
}
__global__ void mul_backward_kernel(bf16* da, bf16* db, const bf16* dout, const bf16* a, const bf16* b, long n) {
  GRID_STRIDE(i, n) {
    const float g = __bfloat162float(dout[i]);
    if (da) da[i] = __float2bfloat16(__bfloat162float(da[i]) + g * __bfloat162float(b[i]));
    if (db) db[i] = __float2bfloat16(__bfloat162float(db[i]) + g * __bfloat162float(a[i]));
  }
}
__global__ void affine_forward_kernel(bf16* out, const bf16* x, const bf16* w, const bf16* b, long n, int C) {
  GRID_STRIDE(i, n) {
    const int c = (int)(i % C);
    out[i] = __float2bfloat16(__bfloat162float(x[i]) * __bfloat162float(w[c]) + (b ? __bfloat162float(b[c]) : 0.0f));
  }
}
__global__ void affine_dx_kernel(bf16* dx, const bf16* dout, const bf16* w, long n, int C) {
  GRID_STRIDE(i, n) dx[i] = __float2bfloat16(__bfloat162float(dx[i]) + __bfloat162float(dout[i]) * __bfloat162float(w[i % C]));
}
// One thread per channel walks the rows: parameter gradients of a norm's affine are rare (full
// fine-tuning of a text encoder) and C is thousands wide, so this is not worth a tiled reduction.
__global__ void affine_dparams_kernel(float* dw, float* db, const bf16* dout, const bf16* x, int N, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float sw = 0.0f, sb = 0.0f;
  for (int r = 0; r < N; r++) {
    const float g = __bfloat162float(dout[(long)r * C + c]);
    sw += g * __bfloat162float(x[(long)r * C + c]);
    sb += g;
  }
  if (dw) dw[c] += sw;
  if (db) db[c] += sb;
}

void quick_gelu_forward(bf16* out, const bf16* inp, long n, cudaStream_t stream) {
  if (n <= 0) return;
  quick_gelu_forward_kernel<<<grid_for(n), 256, 0, stream>>>(out, inp, n);
  cudaCheckLaunch();
}
void quick_gelu_backward(bf16* dinp, const bf16* dout, const bf16* inp, long n, cudaStream_t stream) {
  if (!dinp || n <= 0) return;
  quick_gelu_backward_kernel<<<grid_for(n), 256, 0, stream>>>(dinp, dout, inp, n);
  cudaCheckLaunch();
}
void mul_forward(bf16* out, const bf16* a, const bf16* b, long n, cudaStream_t stream) {
  if (n <= 0) return;
  mul_forward_kernel<<<grid_for(n), 256, 0, stream>>>(out, a, b, n);
  cudaCheckLaunch();
}
void mul_backward(bf16* da, bf16* db, const bf16* dout, const bf16* a, const bf16* b, long n, cudaStream_t stream) {
  if ((!da && !db) || n <= 0) return;
  mul_backward_kernel<<<grid_for(n), 256, 0, stream>>>(da, db, dout, a, b, n);
  cudaCheckLaunch();
}
void affine_forward(bf16* out, const bf16* x, const bf16* w, const bf16* b, int N, int C, cudaStream_t stream) {
  const long n = (long)N * C;
  if (n <= 0) return;
  affine_forward_kernel<<<grid_for(n), 256, 0, stream>>>(out, x, w, b, n, C);
  cudaCheckLaunch();
}
void affine_backward(bf16* dx, float* dw, float* db, const bf16* dout, const bf16* x, const bf16* w, int N, int C,
                     cudaStream_t stream) {
  const long n = (long)N * C;
  if (n <= 0) return;
  if (dx) {
    affine_dx_kernel<<<grid_for(n), 256, 0, stream>>>(dx, dout, w, n, C);
    cudaCheckLaunch();
  }
  if (dw || db) {
    affine_dparams_kernel<<<ceil_div(C, 256), 256, 0, stream>>>(dw, db, dout, x, N, C);
    cudaCheckLaunch();
  }
}

// ---- modulation and gated residual ------------------------------------------------------------------
__global__ void modulate_forward_kernel(bf16* out, const bf16* x, const bf16* shift, const bf16* scale,
                                        int mod_stride, long LC, int C, long n) {
  GRID_STRIDE(i, n) {
    long b = i / LC;
    int c = (int)(i % C);
    float sc = __bfloat162float(scale[b * mod_stride + c]), sh = shift ? __bfloat162float(shift[b * mod_stride + c]) : 0.0f;
    out[i] = __float2bfloat16((1.0f + sc) * __bfloat162float(x[i]) + sh);
  }
}

__global__ void gate_residual_forward_kernel(bf16* res, const bf16* y, const bf16* gate, int mod_stride, long LC,
                                             int C, long n) {
  GRID_STRIDE(i, n) {
    long b = i / LC;
    int c = (int)(i % C);
    float g = __bfloat162float(gate[b * mod_stride + c]);
    res[i] = __float2bfloat16(__bfloat162float(res[i]) + g * __bfloat162float(y[i]));
  }
}

// Broadcast backward over tokens. Block (32 columns x 8 token lanes) for sample b = blockIdx.y and a
// band of tokens blockIdx.z. For every element visited:
//   MODULATE: dx += (1 + scale) * dout; sums dout -> sum1 (dshift) and dout * x -> sum2 (dscale)
//   GATE:     dy += gate * dres;        sums dres * y -> sum2 (dgate)
// Partial sums go to fp32 acc1/acc2 [B, C] with one atomic per column per block.
template <bool MODULATE>
__global__ void broadcast_backward_kernel(bf16* dx, float* acc1, float* acc2, const bf16* dout, const bf16* x,
                                          const bf16* vec, int mod_stride, int L, int C, int tokens_per_band) {
  __shared__ float part1[8][33], part2[8][33];
  int c = blockIdx.x * 32 + threadIdx.x, b = blockIdx.y;
  int l0 = blockIdx.z * tokens_per_band, l1 = min(L, l0 + tokens_per_band);
  float s1 = 0.0f, s2 = 0.0f;
  if (c < C) {
    float v = __bfloat162float(vec[(size_t)b * mod_stride + c]);
    float mult = MODULATE ? 1.0f + v : v;
    for (int l = l0 + threadIdx.y; l < l1; l += 8) {
      size_t i = ((size_t)b * L + l) * C + c;
      float g = __bfloat162float(dout[i]);
      if (dx) dx[i] = __float2bfloat16(__bfloat162float(dx[i]) + mult * g);
      if (acc1) s1 += g;
      if (acc2) s2 += g * __bfloat162float(x[i]);
    }
  }
  part1[threadIdx.y][threadIdx.x] = s1;
  part2[threadIdx.y][threadIdx.x] = s2;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float t1 = 0.0f, t2 = 0.0f;
    for (int k = 0; k < 8; k++) {
      t1 += part1[k][threadIdx.x];
      t2 += part2[k][threadIdx.x];
    }
    if (acc1) atomicAdd(acc1 + (size_t)b * C + c, t1);
    if (acc2) atomicAdd(acc2 + (size_t)b * C + c, t2);
  }
}

// out[b*mod_stride + c] (bf16) += acc[b*C + c]
__global__ void add_rows_kernel(bf16* out, const float* acc, int mod_stride, int B, int C) {
  GRID_STRIDE(i, (long)B * C) {
    long b = i / C;
    int c = (int)(i % C);
    bf16* o = out + b * mod_stride + c;
    *o = __float2bfloat16(__bfloat162float(*o) + acc[i]);
  }
}

static void broadcast_backward(bool modulate, bf16* dx, bf16* dvec1, bf16* dvec2, const bf16* dout, const bf16* x,
                               const bf16* vec, int mod_stride, int B, int L, int C, cudaStream_t stream) {
  if (!dx && !dvec1 && !dvec2) return;
  if ((long)B * L * C == 0) return;
  float* acc = nullptr;
  if (dvec1 || dvec2) {
    acc = (float*)scratch(SCRATCH_REDUCE, sizeof(float) * 2 * (size_t)B * C);
    cudaCheck(cudaMemsetAsync(acc, 0, sizeof(float) * 2 * (size_t)B * C, stream));
  }
  float* acc1 = dvec1 ? acc : nullptr;
  float* acc2 = dvec2 ? acc + (size_t)B * C : nullptr;
  // Enough bands that the grid covers the GPU several times over, each band at least 64 tokens.
  int col_blocks = (int)ceil_div(C, 32);
  int bands = (int)ceil_div(1024, (long)col_blocks * B);
  int max_bands = (int)ceil_div(L, 64);
  if (bands > max_bands) bands = max_bands;
  if (bands < 1) bands = 1;
  int tokens_per_band = (int)ceil_div(L, bands);
  dim3 grid(col_blocks, B, bands), block(32, 8);
  if (modulate)
    broadcast_backward_kernel<true><<<grid, block, 0, stream>>>(dx, acc1, acc2, dout, x, vec, mod_stride, L, C,
                                                                tokens_per_band);
  else
    broadcast_backward_kernel<false><<<grid, block, 0, stream>>>(dx, acc1, acc2, dout, x, vec, mod_stride, L, C,
                                                                 tokens_per_band);
  cudaCheckLaunch();
  if (dvec1) {
    add_rows_kernel<<<grid_for((long)B * C), 256, 0, stream>>>(dvec1, acc1, mod_stride, B, C);
    cudaCheckLaunch();
  }
  if (dvec2) {
    add_rows_kernel<<<grid_for((long)B * C), 256, 0, stream>>>(dvec2, acc2, mod_stride, B, C);
    cudaCheckLaunch();
  }
}

void modulate_forward(bf16* out, const bf16* x, const bf16* shift, const bf16* scale, int mod_stride, int B, int L,
                      int C, cudaStream_t stream) {
  long n = (long)B * L * C;
  if (n == 0) return;
  modulate_forward_kernel<<<grid_for(n), 256, 0, stream>>>(out, x, shift, scale, mod_stride, (long)L * C, C, n);
  cudaCheckLaunch();
}

void modulate_backward(bf16* dx, bf16* dshift, bf16* dscale, const bf16* dout, const bf16* x, const bf16* scale,
                       int mod_stride, int B, int L, int C, cudaStream_t stream) {
  broadcast_backward(true, dx, dshift, dscale, dout, x, scale, mod_stride, B, L, C, stream);
}

void gate_residual_forward(bf16* res, const bf16* y, const bf16* gate, int mod_stride, int B, int L, int C,
                           cudaStream_t stream) {
  long n = (long)B * L * C;
  if (n == 0) return;
  gate_residual_forward_kernel<<<grid_for(n), 256, 0, stream>>>(res, y, gate, mod_stride, (long)L * C, C, n);
  cudaCheckLaunch();
}

void gate_residual_backward(bf16* dy, bf16* dgate, const bf16* dres, const bf16* y, const bf16* gate, int mod_stride,
                            int B, int L, int C, cudaStream_t stream) {
  broadcast_backward(false, dy, nullptr, dgate, dres, y, gate, mod_stride, B, L, C, stream);
}

// ---- timestep embedding --------------------------------------------------------------------------------
__device__ __forceinline__ float timestep_freq(int i, int half, float neg_log) {
  return expf(neg_log * (float)i / (float)half);
}

__global__ void timestep_embedding_forward_kernel(bf16* emb, const float* t, int B, int dim, float time_factor,
                                                  float neg_log) {
  int half = dim / 2;
  GRID_STRIDE(idx, (long)B * dim) {
    int b = (int)(idx / dim), j = (int)(idx % dim);
    float v = 0.0f;
    if (j < 2 * half) {
      int i = j < half ? j : j - half;
      float arg = time_factor * t[b] * timestep_freq(i, half, neg_log);
      v = j < half ? cosf(arg) : sinf(arg);
    }
    emb[idx] = __float2bfloat16(v);
  }
}

__global__ void timestep_embedding_backward_kernel(float* dt, const bf16* demb, const float* t, int dim,
                                                   float time_factor, float neg_log) {
  int b = blockIdx.x, half = dim / 2;
  const bf16* de = demb + (size_t)b * dim;
  float tb = time_factor * t[b];
  float sum = 0.0f;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float f = timestep_freq(i, half, neg_log), arg = tb * f;
    sum += f * (-sinf(arg) * __bfloat162float(de[i]) + cosf(arg) * __bfloat162float(de[half + i]));
  }
  __shared__ float part[32];
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (int w = 0; w < (int)blockDim.x / 32; w++) s += part[w];
    dt[b] += time_factor * s;
  }
}

void timestep_embedding_forward(bf16* emb, const float* t, int B, int dim, float time_factor, float max_period,
                                cudaStream_t stream) {
  if ((long)B * dim == 0) return;
  float neg_log = (float)(-std::log((double)max_period));
  timestep_embedding_forward_kernel<<<grid_for((long)B * dim), 256, 0, stream>>>(emb, t, B, dim, time_factor, neg_log);
  cudaCheckLaunch();
}

void timestep_embedding_backward(float* dt, const bf16* demb, const float* t, int B, int dim, float time_factor,
                                 float max_period, cudaStream_t stream) {
  if (!dt || B == 0) return;
  float neg_log = (float)(-std::log((double)max_period));
  timestep_embedding_backward_kernel<<<B, 256, 0, stream>>>(dt, demb, t, dim, time_factor, neg_log);
  cudaCheckLaunch();
}

// ---- (un)patchify: latent (b, c, y, x) <-> token (b, (y/p)*(W/p) + x/p), channel (c, y%p, x%p) -------
__device__ __forceinline__ size_t token_offset(long latent_idx, int C, int H, int W, int p) {
  int x = (int)(latent_idx % W);
  int y = (int)(latent_idx / W % H);
  int c = (int)(latent_idx / ((long)W * H) % C);
  long b = latent_idx / ((long)W * H * C);
  int Wp = W / p;
  size_t token = (size_t)b * (H / p) * Wp + (size_t)(y / p) * Wp + x / p;
  int channel = (c * p + y % p) * p + x % p;
  return token * ((size_t)C * p * p) + channel;
}

// TO_TOKENS: tokens[token_offset(i)] (+)= latent[i]; else latent[i] (+)= tokens[token_offset(i)].
template <bool TO_TOKENS, bool ACCUMULATE>
__global__ void patch_kernel(bf16* dst, const bf16* src, long n, int C, int H, int W, int p) {
  GRID_STRIDE(i, n) {
    size_t t = token_offset(i, C, H, W, p);
    size_t di = TO_TOKENS ? t : (size_t)i, si = TO_TOKENS ? (size_t)i : t;
    float v = __bfloat162float(src[si]);
    if (ACCUMULATE) v += __bfloat162float(dst[di]);
    dst[di] = __float2bfloat16(v);
  }
}

static void check_patch_shape(const char* op, int H, int W, int p) {
  if (p <= 0 || H % p != 0 || W % p != 0)
    fail(std::string(op) + ": latent " + std::to_string(H) + "x" + std::to_string(W) +
         " is not divisible by the patch size " + std::to_string(p));
}

void patchify_forward(bf16* out, const bf16* inp, int B, int C, int H, int W, int p, cudaStream_t stream) {
  check_patch_shape("patchify_forward", H, W, p);
  long n = (long)B * C * H * W;
  if (n == 0) return;
  patch_kernel<true, false><<<grid_for(n), 256, 0, stream>>>(out, inp, n, C, H, W, p);
  cudaCheckLaunch();
}
void patchify_backward(bf16* dinp, const bf16* dout, int B, int C, int H, int W, int p, cudaStream_t stream) {
  if (!dinp) return;
  check_patch_shape("patchify_backward", H, W, p);
  long n = (long)B * C * H * W;
  if (n == 0) return;
  patch_kernel<false, true><<<grid_for(n), 256, 0, stream>>>(dinp, dout, n, C, H, W, p);
  cudaCheckLaunch();
}
void unpatchify_forward(bf16* out, const bf16* inp, int B, int C, int H, int W, int p, cudaStream_t stream) {
  check_patch_shape("unpatchify_forward", H, W, p);
  long n = (long)B * C * H * W;
  if (n == 0) return;
  patch_kernel<false, false><<<grid_for(n), 256, 0, stream>>>(out, inp, n, C, H, W, p);
  cudaCheckLaunch();
}
void unpatchify_backward(bf16* dinp, const bf16* dout, int B, int C, int H, int W, int p, cudaStream_t stream) {
  if (!dinp) return;
  check_patch_shape("unpatchify_backward", H, W, p);
  long n = (long)B * C * H * W;
  if (n == 0) return;
  patch_kernel<true, true><<<grid_for(n), 256, 0, stream>>>(dinp, dout, n, C, H, W, p);
  cudaCheckLaunch();
}

// ---- mean squared error -----------------------------------------------------------------------------------
__global__ void mse_forward_kernel(float* loss, const bf16* pred, const bf16* target, long n) {
  float sum = 0.0f;
  GRID_STRIDE(i, n) {
    float d = __bfloat162float(pred[i]) - __bfloat162float(target[i]);
    sum += d * d;
  }
  __shared__ float part[32];
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (int w = 0; w < (int)blockDim.x / 32; w++) s += part[w];
    atomicAdd(loss, s / (float)n);
  }
}

__global__ void mse_backward_kernel(bf16* dpred, const bf16* pred, const bf16* target, long n, float coef) {
  GRID_STRIDE(i, n) {
    float d = __bfloat162float(pred[i]) - __bfloat162float(target[i]);
    dpred[i] = __float2bfloat16(__bfloat162float(dpred[i]) + coef * d);
  }
}

void mse_forward(float* loss, const bf16* pred, const bf16* target, long n, cudaStream_t stream) {
  cudaCheck(cudaMemsetAsync(loss, 0, sizeof(float), stream));
  if (n <= 0) return;
  unsigned blocks = grid_for(n);
  if (blocks > 1024) blocks = 1024;
  mse_forward_kernel<<<blocks, 256, 0, stream>>>(loss, pred, target, n);
  cudaCheckLaunch();
}

float mse_forward_host(const bf16* pred, const bf16* target, long n, cudaStream_t stream) {
  float* d_loss = (float*)scratch(SCRATCH_REDUCE, sizeof(float));
  mse_forward(d_loss, pred, target, n, stream);
  float loss = 0.0f;
  cudaCheck(cudaMemcpyAsync(&loss, d_loss, sizeof(float), cudaMemcpyDeviceToHost, stream));
  cudaCheck(cudaStreamSynchronize(stream));
  return loss;
}

void mse_backward(bf16* dpred, const bf16* pred, const bf16* target, long n, float dloss, cudaStream_t stream) {
  if (!dpred || n <= 0) return;
  mse_backward_kernel<<<grid_for(n), 256, 0, stream>>>(dpred, pred, target, n, 2.0f * dloss / (float)n);
  cudaCheckLaunch();
}

// ---- conversions --------------------------------------------------------------------------------------------
__global__ void f32_to_bf16_kernel(bf16* out, const float* inp, long n) {
  GRID_STRIDE(i, n) out[i] = __float2bfloat16(inp[i]);
}
__global__ void bf16_to_f32_kernel(float* out, const bf16* inp, long n) {
  GRID_STRIDE(i, n) out[i] = __bfloat162float(inp[i]);
}
__global__ void add_f32_into_bf16_kernel(bf16* acc, const float* add, long n) {
  GRID_STRIDE(i, n) acc[i] = __float2bfloat16(__bfloat162float(acc[i]) + add[i]);
}

void f32_to_bf16(bf16* out, const float* inp, long n, cudaStream_t stream) {
  if (n <= 0) return;
  f32_to_bf16_kernel<<<grid_for(n), 256, 0, stream>>>(out, inp, n);
  cudaCheckLaunch();
}
void bf16_to_f32(float* out, const bf16* inp, long n, cudaStream_t stream) {
  if (n <= 0) return;
  bf16_to_f32_kernel<<<grid_for(n), 256, 0, stream>>>(out, inp, n);
  cudaCheckLaunch();
}
void add_f32_into_bf16(bf16* acc, const float* add, long n, cudaStream_t stream) {
  if (n <= 0) return;
  add_f32_into_bf16_kernel<<<grid_for(n), 256, 0, stream>>>(acc, add, n);
  cudaCheckLaunch();
}

}  // namespace gpu
}  // namespace graft
