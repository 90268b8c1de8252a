// Parameter updates on the device (ops/update_ops.h): the fused AdamW step, the gradient norm,
// scaling, weight averages and random fills. fp32 parameters, states and gradients.
#include <vector>

#include "kernels_common.cuh"
#include "ops_gpu.h"

namespace graft {
namespace gpu {

namespace {

// The sum of v over a block of 256 threads, in a fixed tree order (the same total every run); every
// thread gets it. Two calls in a row are safe: the last barrier precedes the next write.
__device__ double block_sum_fixed(double v) {
  __shared__ double part[256];
  part[threadIdx.x] = v;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if ((int)threadIdx.x < stride) part[threadIdx.x] += part[threadIdx.x + stride];
    __syncthreads();
  }
  const double total = part[0];
  __syncthreads();
  return total;
}

// The same arithmetic, in the same order, as ops/update_ops.cpp's CPU loop.
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, long n, Betas b, float eps,
                             float decay, float step_size, float bc2_sqrt) {
  GRID_STRIDE(i, n) {
    const float gi = g[i];
    const float mi = b.b1 * m[i] + b.c1 * gi;
    const float vi = b.b2 * v[i] + b.c2 * gi * gi;
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
  const double total = block_sum_fixed(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void lion_kernel(float* p, const float* g, float* m, long n, float lr, Betas b, float decay) {
  GRID_STRIDE(i, n) {
    const float c = b.b1 * m[i] + b.c1 * g[i];
    float pi = p[i] * decay;
    pi -= lr * (float)((c > 0.0f) - (c < 0.0f));
    p[i] = pi;
    m[i] = b.b2 * m[i] + b.c2 * g[i];
  }
}

// Nearest of 256 sorted values (ties to the lower), as ops/update_ops.cpp's nearest_code.
__device__ int nearest_code_dev(const float* map, float x) {
  if (x <= map[0]) return 0;
  if (x >= map[255]) return 255;
  int lo = 0, hi = 255;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (map[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return (x - map[lo - 1] <= map[lo] - x) ? lo - 1 : lo;
}

// One thread block per quantization block (at most 256 elements, one per thread).
__global__ void adamw8bit_kernel(float* p, const float* g, uint8_t* m_q, uint8_t* v_q, float* m_absmax, float* v_absmax,
                                 const int64_t* block_start, const float* m_map, const float* v_map, Betas bt,
                                 float eps, float decay, float step_size, float bc2_sqrt) {
  __shared__ float mmap[256], vmap[256], red_m[256], red_v[256];
  const long b = blockIdx.x;
  const int j = threadIdx.x;
  mmap[j] = m_map[j], vmap[j] = v_map[j];
  __syncthreads();
  const int64_t i0 = block_start[b], len = block_start[b + 1] - i0;
  float mi = 0.0f, vi = 0.0f;
  if (j < len) {
    const int64_t i = i0 + j;
    const float gi = g[i];
    mi = bt.b1 * (mmap[m_q[i]] * m_absmax[b]) + bt.c1 * gi;
    vi = bt.b2 * (vmap[v_q[i]] * v_absmax[b]) + bt.c2 * gi * gi;
    const float pi = p[i] - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    p[i] = pi * decay;
  }
  red_m[j] = fabsf(mi), red_v[j] = vi;
  __syncthreads();
  for (int stride = 128; stride > 0; stride /= 2) {
    if (j < stride) red_m[j] = fmaxf(red_m[j], red_m[j + stride]), red_v[j] = fmaxf(red_v[j], red_v[j + stride]);
    __syncthreads();
  }
  const float mmax = red_m[0], vmax = red_v[0];
  if (j < len) {
    m_q[i0 + j] = (uint8_t)nearest_code_dev(mmap, mmax > 0.0f ? mi / mmax : 0.0f);
    v_q[i0 + j] = (uint8_t)nearest_code_dev(vmap, vmax > 0.0f ? vi / vmax : 0.0f);
  }
  if (j == 0) m_absmax[b] = mmax, v_absmax[b] = vmax;
}

// A block's two double sums into partial[2 b], partial[2 b + 1] (fixed order for a given n).
__device__ void block_sums_2(double* partial, double a, double c) {
  const double sa = block_sum_fixed(a), sc = block_sum_fixed(c);
  if (threadIdx.x == 0) partial[2 * blockIdx.x] = sa, partial[2 * blockIdx.x + 1] = sc;
}

__global__ void prodigy_accumulate_kernel(double* partial, const float* p, const float* g, const float* p0, float* m,
                                          float* v, float* s, long n, long per_block, float beta1, float am,
                                          float beta2, float av, float beta3, float s_scale) {
  const long begin = (long)blockIdx.x * per_block, end = min(n, begin + per_block);
  double dot = 0.0, sabs = 0.0;
  for (long i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float gi = g[i];
    dot += (double)gi * (double)(p0[i] - p[i]);
    m[i] = m[i] * beta1 + am * gi;
    v[i] = v[i] * beta2 + av * gi * gi;
    const float si = s[i] * beta3 + s_scale * gi;
    s[i] = si;
    sabs += fabs((double)si);
  }
  block_sums_2(partial, dot, sabs);
}

__global__ void prodigy_apply_kernel(float* p, const float* m, const float* v, long n, float dlr, float d_eps,
                                     float decay) {
  GRID_STRIDE(i, n) {
    float pi = p[i];
    if (decay != 0.0f) pi += -decay * pi;
    p[i] = pi - dlr * (m[i] / (sqrtf(v[i]) + d_eps));
  }
}

// row[i] = b row[i] + (1 - b) mean_j (g^2 + eps1): one block per row.
__global__ void adafactor_row_kernel(const float* g, float* row, int cols, float b, float c, float eps1) {
  const long i = blockIdx.x;
  double sum = 0.0;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    const float x = g[i * cols + j];
    sum += x * x + eps1;
  }
  const double total = block_sum_fixed(sum);
  if (threadIdx.x == 0) row[i] = row[i] * b + c * (float)(total / cols);
}

// col[j] likewise over the rows: one thread per column (coalesced across a warp), rows in order.
__global__ void adafactor_col_kernel(const float* g, float* col, int rows, int cols, float b, float c, float eps1) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  double sum = 0.0;
  for (int i = 0; i < rows; ++i) {
    const float x = g[(long)i * cols + j];
    sum += x * x + eps1;
  }
  col[j] = col[j] * b + c * (float)(sum / rows);
}

// mean(row) into *out, one block, in order per thread then a fixed tree.
__global__ void mean_kernel(float* out, const float* x, int n) {
  double sum = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) sum += x[i];
  const double total = block_sum_fixed(sum);
  if (threadIdx.x == 0) *out = (float)(total / n);
}

__global__ void adafactor_u_kernel(double* partial, const float* g, const float* row, const float* col,
                                   const float* rmean, float* u, int cols, long n, long per_block) {
  const long begin = (long)blockIdx.x * per_block, end = min(n, begin + per_block);
  double ss = 0.0;
  for (long k = begin + threadIdx.x; k < end; k += blockDim.x) {
    const long i = k / cols, j = k % cols;
    const float r = 1.0f / sqrtf(row[i] / *rmean);
    const float x = r * (1.0f / sqrtf(col[j])) * g[k];
    u[k] = x;
    ss += (double)x * x;
  }
  block_sums_2(partial, ss, 0.0);
}

__global__ void adafactor_unfactored_kernel(double* partial, const float* g, float* v, float* u, long n, long per_block,
                                            float b, float c, float eps1) {
  const long begin = (long)blockIdx.x * per_block, end = min(n, begin + per_block);
  double ss = 0.0;
  for (long i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float vi = v[i] * b + c * (g[i] * g[i] + eps1);
    v[i] = vi;
    const float x = (1.0f / sqrtf(vi)) * g[i];
    u[i] = x;
    ss += (double)x * x;
  }
  block_sums_2(partial, ss, 0.0);
}

__global__ void adafactor_apply_kernel(float* p, float* u, float* m, long n, float u_scale, float b1, float c1,
                                       float decay) {
  GRID_STRIDE(i, n) {
    float ui = u[i] * u_scale;
    if (m) ui = m[i] = m[i] * b1 + c1 * ui;
    float pi = p[i];
    if (decay != 0.0f) pi += -decay * pi;
    p[i] = pi - ui;
  }
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

void adamw_update(float* p, const float* g, float* m, float* v, long n, Betas b, float eps, float decay,
                  float step_size, float bc2_sqrt) {
  if (n <= 0) return;
  adamw_kernel<<<grid_1d(n), 256>>>(p, g, m, v, n, b, eps, decay, step_size, bc2_sqrt);
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

void lion_update(float* p, const float* g, float* m, long n, float lr, Betas b, float decay) {
  if (n <= 0) return;
  lion_kernel<<<grid_1d(n), 256>>>(p, g, m, n, lr, b, decay);
  cudaCheckLaunch();
}

void adamw8bit_update(float* p, const float* g, uint8_t* m_q, uint8_t* v_q, float* m_absmax, float* v_absmax,
                      const int64_t* block_start, const float* m_map, const float* v_map, long blocks, Betas b,
                      float eps, float decay, float step_size, float bc2_sqrt) {
  if (blocks <= 0) return;
  adamw8bit_kernel<<<(unsigned)blocks, 256>>>(p, g, m_q, v_q, m_absmax, v_absmax, block_start, m_map, v_map, b, eps,
                                              decay, step_size, bc2_sqrt);
  cudaCheckLaunch();
}

// Fixed-size spans per block, so the partial sums (and their host total) are the same every run.
static const long kSpan = 1L << 14;
static int span_blocks(long n) { return (int)((n + kSpan - 1) / kSpan); }
static std::vector<double> partial_sums(const double* partial, int blocks) {
  std::vector<double> host(2 * (size_t)blocks);
  cudaCheck(cudaMemcpy(host.data(), partial, sizeof(double) * host.size(), cudaMemcpyDeviceToHost));
  return host;
}

void prodigy_accumulate(double* dot, double* s_abs, const float* p, const float* g, const float* p0, float* m, float* v,
                        float* s, long n, float beta1, float am, float beta2, float av, float beta3, float s_scale) {
  *dot = 0.0, *s_abs = 0.0;
  if (n <= 0) return;
  const int blocks = span_blocks(n);
  double* partial = (double*)scratch(SCRATCH_REDUCE, sizeof(double) * 2 * blocks);
  prodigy_accumulate_kernel<<<blocks, 256>>>(partial, p, g, p0, m, v, s, n, kSpan, beta1, am, beta2, av, beta3,
                                             s_scale);
  cudaCheckLaunch();
  const std::vector<double> host = partial_sums(partial, blocks);
  for (int b = 0; b < blocks; ++b) *dot += host[2 * b], *s_abs += host[2 * b + 1];
}

void prodigy_apply(float* p, const float* m, const float* v, long n, float dlr, float d_eps, float decay) {
  if (n <= 0) return;
  prodigy_apply_kernel<<<grid_1d(n), 256>>>(p, m, v, n, dlr, d_eps, decay);
  cudaCheckLaunch();
}

double adafactor_factored(const float* g, float* row, float* col, float* u, int rows, int cols, float b, float c,
                          float eps1) {
  const long n = (long)rows * cols;
  if (n <= 0) return 0.0;
  adafactor_row_kernel<<<rows, 256>>>(g, row, cols, b, c, eps1);
  cudaCheckLaunch();
  adafactor_col_kernel<<<(cols + 255) / 256, 256>>>(g, col, rows, cols, b, c, eps1);
  cudaCheckLaunch();
  const int blocks = span_blocks(n);
  char* base = (char*)scratch(SCRATCH_REDUCE, sizeof(double) * 2 * blocks + 16);
  double* partial = (double*)(base + 16);
  float* rmean = (float*)base;
  mean_kernel<<<1, 256>>>(rmean, row, rows);
  cudaCheckLaunch();
  adafactor_u_kernel<<<blocks, 256>>>(partial, g, row, col, rmean, u, cols, n, kSpan);
  cudaCheckLaunch();
  const std::vector<double> host = partial_sums(partial, blocks);
  double ss = 0.0;
  for (int b = 0; b < blocks; ++b) ss += host[2 * b];
  return ss;
}

double adafactor_unfactored(const float* g, float* v, float* u, long n, float b, float c, float eps1) {
  if (n <= 0) return 0.0;
  const int blocks = span_blocks(n);
  double* partial = (double*)scratch(SCRATCH_REDUCE, sizeof(double) * 2 * blocks);
  adafactor_unfactored_kernel<<<blocks, 256>>>(partial, g, v, u, n, kSpan, b, c, eps1);
  cudaCheckLaunch();
  const std::vector<double> host = partial_sums(partial, blocks);
  double ss = 0.0;
  for (int b = 0; b < blocks; ++b) ss += host[2 * b];
  return ss;
}

void adafactor_apply(float* p, float* u, float* m, long n, float u_scale, float b1, float c1, float decay) {
  if (n <= 0) return;
  adafactor_apply_kernel<<<grid_1d(n), 256>>>(p, u, m, n, u_scale, b1, c1, decay);
  cudaCheckLaunch();
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
