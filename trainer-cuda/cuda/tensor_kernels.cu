// The small kernels the tape's ops need besides the FLUX ones: sums, column blocks (narrow / cat and
// their gradients), embeddings, token means, channel/token transposes, the autoencoder's Gaussian,
// and the scaled MSE gradient. All memory-bound: one pass, fp32 arithmetic, bf16 storage.
#include "core/common.h"
#include "kernels_common.cuh"
#include "ops_gpu.h"

namespace graft {
namespace gpu {

namespace {

__global__ void accumulate_kernel(bf16* acc, const bf16* x, long n) {
  GRID_STRIDE(i, n) acc[i] = __float2bfloat16(__bfloat162float(acc[i]) + __bfloat162float(x[i]));
}
__global__ void accumulate_f32_kernel(float* acc, const float* x, long n) {
  GRID_STRIDE(i, n) acc[i] += x[i];
}
__global__ void add_kernel(bf16* out, const bf16* a, const bf16* b, long n) {
  GRID_STRIDE(i, n) out[i] = __float2bfloat16(__bfloat162float(a[i]) + __bfloat162float(b[i]));
}

template <typename T>
__global__ void add_block_kernel(T* dst, long dst_ld, const T* src, long src_ld, long rows, long cols) {
  GRID_STRIDE(i, rows * cols) {
    long r = i / cols, c = i % cols;
    T* d = dst + r * dst_ld + c;
    *d = (T)((float)*d + (float)src[r * src_ld + c]);
  }
}

__global__ void embedding_forward_kernel(bf16* out, const int* ids, const bf16* table, int N, int V, int C) {
  GRID_STRIDE(i, (long)N * C) {
    long n = i / C;
    int c = (int)(i % C), id = ids[n];
    out[i] = (id >= 0 && id < V) ? table[(long)id * C + c] : __float2bfloat16(0.0f);
  }
}
__global__ void embedding_backward_kernel(float* dtable, const bf16* dout, const int* ids, int N, int V, int C) {
  GRID_STRIDE(i, (long)N * C) {
    long n = i / C;
    int c = (int)(i % C), id = ids[n];
    if (id >= 0 && id < V) atomicAdd(dtable + (long)id * C + c, __bfloat162float(dout[i]));
  }
}

// One thread per (b, c): the tokens summed in order, each divided by L first (as the CPU does).
__global__ void mean_tokens_forward_kernel(bf16* out, const bf16* x, int B, int L, int C) {
  GRID_STRIDE(i, (long)B * C) {
    long b = i / C;
    int c = (int)(i % C);
    float s = 0.0f;
    for (int l = 0; l < L; l++) s += __bfloat162float(x[((long)b * L + l) * C + c]) / L;
    out[i] = __float2bfloat16(s);
  }
}
__global__ void mean_tokens_backward_kernel(bf16* dx, const bf16* dout, int B, int L, int C) {
  GRID_STRIDE(i, (long)B * L * C) {
    long b = i / ((long)L * C);
    int c = (int)(i % C);
    dx[i] = __float2bfloat16(__bfloat162float(dx[i]) + __bfloat162float(dout[b * C + c]) / L);
  }
}

// out[b, s, r] (+)= in[b, r, s] through a 32x32 shared tile, so reads and writes are both coalesced.
template <bool ACC>
__global__ void transpose_kernel(bf16* out, const bf16* in, int R, int S) {
  __shared__ float tile[32][33];
  const long b = blockIdx.z;
  const int r0 = blockIdx.y * 32, s0 = blockIdx.x * 32;
  const bf16* src = in + b * (long)R * S;
  bf16* dst = out + b * (long)R * S;
  for (int k = threadIdx.y; k < 32; k += blockDim.y) {
    int r = r0 + k, s = s0 + threadIdx.x;
    if (r < R && s < S) tile[k][threadIdx.x] = __bfloat162float(src[(long)r * S + s]);
  }
  __syncthreads();
  for (int k = threadIdx.y; k < 32; k += blockDim.y) {
    int s = s0 + k, r = r0 + threadIdx.x;
    if (r < R && s < S) {
      bf16* d = dst + (long)s * R + r;
      float v = tile[threadIdx.x][k];
      *d = __float2bfloat16(ACC ? __bfloat162float(*d) + v : v);
    }
  }
}

__global__ void gaussian_sample_forward_kernel(bf16* z, const bf16* mean, const bf16* logvar, const bf16* noise, long n) {
  GRID_STRIDE(i, n) {
    float m = __bfloat162float(mean[i]), lv = __bfloat162float(logvar[i]);
    z[i] = __float2bfloat16(m + expf(0.5f * lv) * __bfloat162float(noise[i]));
  }
}
__global__ void gaussian_sample_backward_kernel(bf16* dmean, bf16* dlogvar, const bf16* dz, const bf16* logvar,
                                                const bf16* noise, long n) {
  GRID_STRIDE(i, n) {
    float g = __bfloat162float(dz[i]);
    if (dmean) dmean[i] = __float2bfloat16(__bfloat162float(dmean[i]) + g);
    if (dlogvar) {
      float add = g * 0.5f * expf(0.5f * __bfloat162float(logvar[i])) * __bfloat162float(noise[i]);
      dlogvar[i] = __float2bfloat16(__bfloat162float(dlogvar[i]) + add);
    }
  }
}
// The KL's sum, one partial per block (fp32, in a fixed order within the block).
__global__ void gaussian_kl_partial_kernel(float* partial, const bf16* mean, const bf16* logvar, long n) {
  float s = 0.0f;
  GRID_STRIDE(i, n) {
    float m = __bfloat162float(mean[i]), lv = __bfloat162float(logvar[i]);
    s += 0.5f * (m * m + expf(lv) - 1.0f - lv);
  }
  s = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
__global__ void sum_partials_kernel(float* out, const float* partial, int blocks, float scale) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    float s = 0.0f;
    for (int i = 0; i < blocks; i++) s += partial[i];
    *out = s * scale;
  }
}
__global__ void gaussian_kl_backward_kernel(bf16* dmean, bf16* dlogvar, const bf16* mean, const bf16* logvar, long n,
                                            float coef) {
  GRID_STRIDE(i, n) {
    if (dmean) dmean[i] = __float2bfloat16(__bfloat162float(dmean[i]) + coef * __bfloat162float(mean[i]));
    if (dlogvar) {
      float add = coef * 0.5f * (expf(__bfloat162float(logvar[i])) - 1.0f);
      dlogvar[i] = __float2bfloat16(__bfloat162float(dlogvar[i]) + add);
    }
  }
}

__global__ void mse_backward_scaled_kernel(bf16* dpred, const bf16* pred, const bf16* target, long n, float coef) {
  GRID_STRIDE(i, n) {
    float d = __bfloat162float(pred[i]) - __bfloat162float(target[i]);
    dpred[i] = __float2bfloat16(__bfloat162float(dpred[i]) + coef * d);
  }
}

}  // namespace

void accumulate(bf16* acc, const bf16* x, long n) {
  if (n <= 0) return;
  accumulate_kernel<<<grid_1d(n), 256>>>(acc, x, n);
  cudaCheckLaunch();
}
void accumulate_f32(float* acc, const float* x, long n) {
  if (n <= 0) return;
  accumulate_f32_kernel<<<grid_1d(n), 256>>>(acc, x, n);
  cudaCheckLaunch();
}
void add(bf16* out, const bf16* a, const bf16* b, long n) {
  if (n <= 0) return;
  add_kernel<<<grid_1d(n), 256>>>(out, a, b, n);
  cudaCheckLaunch();
}

void copy_block(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width_bytes, size_t rows) {
  if (!rows || !width_bytes) return;
  cudaCheck(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width_bytes, rows, cudaMemcpyDeviceToDevice));
}
void add_block(bf16* dst, long dst_ld, const bf16* src, long src_ld, long rows, long cols) {
  if (rows * cols <= 0) return;
  add_block_kernel<bf16><<<grid_1d(rows * cols), 256>>>(dst, dst_ld, src, src_ld, rows, cols);
  cudaCheckLaunch();
}
void add_block_f32(float* dst, long dst_ld, const float* src, long src_ld, long rows, long cols) {
  if (rows * cols <= 0) return;
  add_block_kernel<float><<<grid_1d(rows * cols), 256>>>(dst, dst_ld, src, src_ld, rows, cols);
  cudaCheckLaunch();
}

void embedding_forward(bf16* out, const int* ids, const bf16* table, int N, int V, int C) {
  if ((long)N * C <= 0) return;
  embedding_forward_kernel<<<grid_1d((long)N * C), 256>>>(out, ids, table, N, V, C);
  cudaCheckLaunch();
}
void embedding_backward(float* dtable, const bf16* dout, const int* ids, int N, int V, int C) {
  if (!dtable || (long)N * C <= 0) return;
  embedding_backward_kernel<<<grid_1d((long)N * C), 256>>>(dtable, dout, ids, N, V, C);
  cudaCheckLaunch();
}

void mean_tokens_forward(bf16* out, const bf16* x, int B, int L, int C) {
  if ((long)B * C <= 0) return;
  mean_tokens_forward_kernel<<<grid_1d((long)B * C), 256>>>(out, x, B, L, C);
  cudaCheckLaunch();
}
void mean_tokens_backward(bf16* dx, const bf16* dout, int B, int L, int C) {
  if (!dx || (long)B * L * C <= 0) return;
  mean_tokens_backward_kernel<<<grid_1d((long)B * L * C), 256>>>(dx, dout, B, L, C);
  cudaCheckLaunch();
}

void transpose_inner(bf16* out, const bf16* in, int B, int R, int S, bool accumulate) {
  if ((long)B * R * S <= 0) return;
  dim3 g(ceil_div(S, 32), ceil_div(R, 32), B), blk(32, 8);
  if (accumulate) transpose_kernel<true><<<g, blk>>>(out, in, R, S);
  else transpose_kernel<false><<<g, blk>>>(out, in, R, S);
  cudaCheckLaunch();
}

void gaussian_sample_forward(bf16* z, const bf16* mean, const bf16* logvar, const bf16* noise, long n) {
  if (n <= 0) return;
  gaussian_sample_forward_kernel<<<grid_1d(n), 256>>>(z, mean, logvar, noise, n);
  cudaCheckLaunch();
}
void gaussian_sample_backward(bf16* dmean, bf16* dlogvar, const bf16* dz, const bf16* logvar, const bf16* noise, long n) {
  if ((!dmean && !dlogvar) || n <= 0) return;
  gaussian_sample_backward_kernel<<<grid_1d(n), 256>>>(dmean, dlogvar, dz, logvar, noise, n);
  cudaCheckLaunch();
}
void gaussian_kl_forward(float* out, const bf16* mean, const bf16* logvar, long n) {
  if (n <= 0) {
    cudaCheck(cudaMemsetAsync(out, 0, sizeof(float)));
    return;
  }
  const int blocks = (int)std::min<long>(1024, (n + 255) / 256);
  float* partial = (float*)scratch(SCRATCH_REDUCE, sizeof(float) * blocks);
  gaussian_kl_partial_kernel<<<blocks, 256>>>(partial, mean, logvar, n);
  cudaCheckLaunch();
  sum_partials_kernel<<<1, 32>>>(out, partial, blocks, 1.0f / (float)n);
  cudaCheckLaunch();
}
void gaussian_kl_backward(bf16* dmean, bf16* dlogvar, const bf16* mean, const bf16* logvar, long n, float dkl) {
  if ((!dmean && !dlogvar) || n <= 0) return;
  gaussian_kl_backward_kernel<<<grid_1d(n), 256>>>(dmean, dlogvar, mean, logvar, n, dkl / (float)n);
  cudaCheckLaunch();
}

void mse_backward_scaled(bf16* dpred, const bf16* pred, const bf16* target, long count, long n_total, float scale) {
  if (!dpred || count <= 0) return;
  mse_backward_scaled_kernel<<<grid_1d(count), 256>>>(dpred, pred, target, count, 2.0f * scale / (float)n_total);
  cudaCheckLaunch();
}

}  // namespace gpu
}  // namespace graft
