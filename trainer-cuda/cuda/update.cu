// Parameter updates on the device (ops/update_ops.h): the fused AdamW step, the gradient norm,
// scaling, weight averages and random fills. fp32 parameters, states and gradients.
#include <vector>

#include "kernels_common.cuh"
#include "ops_gpu.h"

namespace graft {
namespace gpu {

namespace {

// The same arithmetic, in the same order, as ops/update_ops.cpp's CPU loop.
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, long n, float beta1, float beta2, float eps,
                             float decay, float step_size, float bc2_sqrt) {
  GRID_STRIDE(i, n) {
    const float gi = g[i];
    const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float pi = p[i] * decay;
    pi -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    p[i] = pi;
  }
}

// Sum of squares in fixed blocks, each in double: partial[b] for block b (deterministic: the grid
// and each block's order depend only on n).
__global__ void sum_squares_partial_kernel(double* partial, const float* x, long n, long per_block) {
  const long begin = (long)blockIdx.x * per_block, end = min(n, begin + per_block);
  double s = 0.0;
  for (long i = begin + threadIdx.x; i < end; i += blockDim.x) s += (double)x[i] * x[i];
  __shared__ double part[256];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if ((int)threadIdx.x < stride) part[threadIdx.x] += part[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = part[0];
}

__global__ void scale_kernel(float* x, long n, float s) {
  GRID_STRIDE(i, n) x[i] *= s;
}

__global__ void lerp_kernel(float* avg, const float* x, long n, float d) {
  GRID_STRIDE(i, n) avg[i] = d * avg[i] + (1.0f - d) * x[i];
}

__device__ float hash_uniform(uint32_t seed, long i) {
  uint32_t h = (uint32_t)i * 2654435761u ^ seed;
  h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
  return (h & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}
__global__ void fill_uniform_kernel(bf16* p, long n, uint32_t seed, float bound, float offset) {
  GRID_STRIDE(i, n) p[i] = __float2bfloat16(offset + bound * hash_uniform(seed, i));
}
__global__ void fill_uniform_f32_kernel(float* p, long n, uint32_t seed, float bound, float offset) {
  GRID_STRIDE(i, n) p[i] = offset + bound * hash_uniform(seed, i);
}

}  // namespace

void adamw_update(float* p, const float* g, float* m, float* v, long n, float beta1, float beta2, float eps, float decay,
                  float step_size, float bc2_sqrt) {
  if (n <= 0) return;
  adamw_kernel<<<grid_1d(n), 256>>>(p, g, m, v, n, beta1, beta2, eps, decay, step_size, bc2_sqrt);
  cudaCheckLaunch();
}

double sum_squares(const float* x, long n) {
  if (n <= 0) return 0.0;
  const long per_block = 1L << 16;
  const int blocks = (int)((n + per_block - 1) / per_block);
  double* partial = (double*)scratch(SCRATCH_REDUCE, sizeof(double) * blocks);
  sum_squares_partial_kernel<<<blocks, 256>>>(partial, x, n, per_block);
  cudaCheckLaunch();
  std::vector<double> host(blocks);
  cudaCheck(cudaMemcpy(host.data(), partial, sizeof(double) * blocks, cudaMemcpyDeviceToHost));
  double s = 0.0;
  for (double v : host) s += v;
  return s;
}

void scale(float* x, long n, float s) {
  if (n <= 0) return;
  scale_kernel<<<grid_1d(n), 256>>>(x, n, s);
  cudaCheckLaunch();
}

void lerp(float* avg, const float* x, long n, float d) {
  if (n <= 0) return;
  lerp_kernel<<<grid_1d(n), 256>>>(avg, x, n, d);
  cudaCheckLaunch();
}

void fill_uniform(bf16* p, long n, uint32_t seed, float bound, float offset) {
  if (n <= 0) return;
  fill_uniform_kernel<<<grid_1d(n), 256>>>(p, n, seed, bound, offset);
  cudaCheckLaunch();
}
void fill_uniform_f32(float* p, long n, uint32_t seed, float bound, float offset) {
  if (n <= 0) return;
  fill_uniform_f32_kernel<<<grid_1d(n), 256>>>(p, n, seed, bound, offset);
  cudaCheckLaunch();
}

}  // namespace gpu
}  // namespace graft
