// Flash attention forward and backward (FlashAttention-2's algorithm): online softmax over key
// tiles, memory linear in L (no L x L matrix), bf16 operands on the tensor cores with fp32
// accumulation. The first version uses WMMA (mma.sync through nvcuda::wmma, 16x16x16 bf16) with
// scores and the output accumulator staged in shared memory, which keeps the softmax bookkeeping in
// plain per-thread code. Version 2 of the forward (attention_mma.cuh, the default) keeps scores and
// the output in registers on mma.sync through inline PTX; so does version 2 of the backward
// (attention_bwd_mma.cuh, the default), whose WMMA version 1 below stages P, dS and dP in shared
// memory. wgmma/TMA (Hopper) are later versions.
//
// Layout: q, k, v, out, dq, dk, dv are [B, L, H, D] (row (b, l), head h at ((b*L + l)*H + h)*D).
// The forward keeps lse[b, h, l] = log2(sum_j exp2(s_ij)) with s = (q.k) * log2(e) / sqrt(D), which
// is all the backward needs besides out, to rebuild P tile by tile.
#include <mma.h>

#include <cmath>

#include "attention_bwd_mma.cuh"
#include "attention_mma.cuh"
#include "kernels_common.cuh"
#include "ops_gpu.h"

namespace graft {
namespace gpu {

using namespace nvcuda;

namespace {

const int BLOCK_M = 64;  // query rows per block: 4 warps x 16
const int BLOCK_N = 64;  // keys per tile
const int THREADS = 128;
const float LOG2E = 1.4426950408889634f;

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragAcc;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::col_major> FragAT;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> FragB;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> FragBT;

// Row strides in shared memory, padded against bank conflicts; every 16-row fragment start stays
// 32-byte aligned, as WMMA requires.
template <int D>
struct Lds {
  static const int QKV = D + 8;        // bf16 tiles of Q, K, V, dO
  static const int S = BLOCK_N + 4;    // fp32 score tiles
  static const int P = BLOCK_N + 8;    // bf16 probability tiles
  static const int O = D + 4;          // fp32 output accumulator
};

// rows [row0, row0 + 64) of one head of a [B, L, H, D] tensor into a [64][ld] bf16 tile; rows at or
// past L are zero-filled.
template <int D>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* head_base, int row0, int L, size_t row_stride) {
  const int chunks = D / 8;  // 16-byte pieces per row
  for (int i = threadIdx.x; i < 64 * chunks; i += THREADS) {
    int r = i / chunks, c = i % chunks;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (row0 + r < L) val = *reinterpret_cast<const uint4*>(head_base + (size_t)(row0 + r) * row_stride + c * 8);
    *reinterpret_cast<uint4*>(tile + r * Lds<D>::QKV + c * 8) = val;
  }
}

template <int D>
constexpr size_t forward_smem_bytes() {
  return sizeof(bf16) * 3 * 64 * Lds<D>::QKV + sizeof(float) * 64 * Lds<D>::S + sizeof(bf16) * 64 * Lds<D>::P +
         sizeof(float) * 64 * Lds<D>::O;
}

template <int D>
__global__ void __launch_bounds__(THREADS) flash_forward_kernel(bf16* out, float* lse, const bf16* q, const bf16* k,
                                                                const bf16* v, int L, int H, float scale_log2) {
  typedef Lds<D> ld;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Qs = reinterpret_cast<bf16*>(smem);
  bf16* Ks = Qs + 64 * ld::QKV;
  bf16* Vs = Ks + 64 * ld::QKV;
  float* Ss = reinterpret_cast<float*>(Vs + 64 * ld::QKV);
  bf16* Ps = reinterpret_cast<bf16*>(Ss + 64 * ld::S);
  float* Os = reinterpret_cast<float*>(Ps + 64 * ld::P);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.y / H, h = blockIdx.y % H;
  const int m0 = blockIdx.x * BLOCK_M;
  const size_t row_stride = (size_t)H * D;
  const size_t head_off = (size_t)b * L * row_stride + (size_t)h * D;

  float* Sw = Ss + warp * 16 * ld::S;  // this warp's 16 query rows
  bf16* Pw = Ps + warp * 16 * ld::P;
  float* Ow = Os + warp * 16 * ld::O;

  load_tile<D>(Qs, q + head_off, m0, L, row_stride);
  for (int i = lane; i < 16 * ld::O; i += 32) Ow[i] = 0.0f;
  __syncthreads();
  FragA qa[D / 16];
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) wmma::load_matrix_sync(qa[kk], Qs + warp * 16 * ld::QKV + kk * 16, ld::QKV);

  // Softmax bookkeeping: lane owns row r of the warp's 16, columns half, half + 2, ... (interleaved
  // so the two lanes of a row hit different banks).
  const int r = lane / 2, half = lane % 2;
  float m_i = -INFINITY, l_i = 0.0f;

  for (int n0 = 0; n0 < L; n0 += BLOCK_N) {
    __syncthreads();  // every warp is done with the previous K, V tiles
    load_tile<D>(Ks, k + head_off, n0, L, row_stride);
    load_tile<D>(Vs, v + head_off, n0, L, row_stride);
    __syncthreads();

    // S[16 x 64] = Q_w K^T
#pragma unroll
    for (int j = 0; j < BLOCK_N / 16; j++) {
      FragAcc s;
      wmma::fill_fragment(s, 0.0f);
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        FragBT kb;
        wmma::load_matrix_sync(kb, Ks + j * 16 * ld::QKV + kk * 16, ld::QKV);
        wmma::mma_sync(s, qa[kk], kb, s);
      }
      wmma::store_matrix_sync(Sw + j * 16, s, ld::S, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax for row r: new max, rescale factor, P = exp2(s - m) in bf16 for the product.
    float* srow = Sw + r * ld::S;
    bf16* prow = Pw + r * ld::P;
    const int valid = L - n0;  // keys of this tile that exist
    float mx = -INFINITY;
#pragma unroll 8
    for (int cc = 0; cc < BLOCK_N / 2; cc++) {
      int c = 2 * cc + half;
      float t = c < valid ? srow[c] * scale_log2 : -INFINITY;
      srow[c] = t;
      mx = fmaxf(mx, t);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_new = fmaxf(m_i, mx);  // finite: every tile holds at least one key
    const float alpha = exp2f(m_i - m_new);
    float sum = 0.0f;
#pragma unroll 8
    for (int cc = 0; cc < BLOCK_N / 2; cc++) {
      int c = 2 * cc + half;
      float p = exp2f(srow[c] - m_new);
      sum += p;
      prow[c] = __float2bfloat16(p);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l_i = l_i * alpha + sum;
    m_i = m_new;
    float* orow = Ow + r * ld::O;
#pragma unroll 8
    for (int cc = 0; cc < D / 2; cc++) orow[2 * cc + half] *= alpha;
    __syncwarp();

    // O_w += P V
#pragma unroll
    for (int nd = 0; nd < D / 16; nd++) {
      FragAcc o;
      wmma::load_matrix_sync(o, Ow + nd * 16, ld::O, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < BLOCK_N / 16; kk++) {
        FragA pa;
        FragB vb;
        wmma::load_matrix_sync(pa, Pw + kk * 16, ld::P);
        wmma::load_matrix_sync(vb, Vs + kk * 16 * ld::QKV + nd * 16, ld::QKV);
        wmma::mma_sync(o, pa, vb, o);
      }
      wmma::store_matrix_sync(Ow + nd * 16, o, ld::O, wmma::mem_row_major);
    }
    __syncwarp();
  }

  const int row = m0 + warp * 16 + r;
  if (row < L) {
    const float inv = 1.0f / l_i;
    bf16* orow_g = out + head_off + (size_t)row * row_stride;
    const float* orow = Ow + r * ld::O;
    for (int cc = 0; cc < D / 2; cc++) {
      int c = 2 * cc + half;
      orow_g[c] = __float2bfloat16(orow[c] * inv);
    }
    if (half == 0) lse[((size_t)b * H + h) * L + row] = m_i + log2f(l_i);
  }
}

// delta[b, h, l] = sum_d dout * out (the softmax backward's row term), one warp per row.
__global__ void attention_delta_kernel(float* delta, const bf16* dout, const bf16* out, int B, int L, int H, int D) {
  long row = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  int lane = threadIdx.x % 32;
  if (row >= (long)B * L * H) return;
  const bf16* o = out + row * D;
  const bf16* g = dout + row * D;
  float sum = 0.0f;
  for (int d = lane; d < D; d += 32) sum += __bfloat162float(o[d]) * __bfloat162float(g[d]);
  sum = warp_sum(sum);
  if (lane == 0) {
    int h = (int)(row % H);
    long bl = row / H;
    int l = (int)(bl % L), b = (int)(bl / L);
    delta[((size_t)b * H + h) * L + l] = sum;
  }
}

template <int D>
constexpr size_t backward_smem_bytes() {
  return sizeof(bf16) * 4 * 64 * Lds<D>::QKV + sizeof(float) * 2 * 64 * Lds<D>::S + sizeof(bf16) * 2 * 64 * Lds<D>::P +
         sizeof(float) * 2 * 64 + sizeof(float) * 4 * 16 * 20;
}

__device__ __forceinline__ void atomic_add4(float* p, float a, float b, float c, float d) {
#if __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4*>(p), make_float4(a, b, c, d));
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
  atomicAdd(p + 2, c);
  atomicAdd(p + 3, d);
#endif
}

// One block per 64-key tile of one (b, h): loops over all query tiles, keeps dK and dV for its keys
// in registers (warp w owns keys 16w..16w+15), and adds each query tile's dQ share into the fp32
// dq_acc with atomics (FlashAttention-2's scheme).
template <int D>
__global__ void __launch_bounds__(THREADS, 1)
    flash_backward_kernel(float* dq_acc, bf16* dk, bf16* dv, const bf16* dout, const float* lse, const float* delta,
                          const bf16* q, const bf16* k, const bf16* v, int L, int H, float scale, float scale_log2) {
  typedef Lds<D> ld;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Qs = reinterpret_cast<bf16*>(smem);
  bf16* dOs = Qs + 64 * ld::QKV;
  bf16* Ks = dOs + 64 * ld::QKV;
  bf16* Vs = Ks + 64 * ld::QKV;
  float* Ss = reinterpret_cast<float*>(Vs + 64 * ld::QKV);  // S^T per warp [16 keys][64 queries]
  float* dPs = Ss + 64 * ld::S;                               // dP^T per warp
  bf16* PTs = reinterpret_cast<bf16*>(dPs + 64 * ld::S);       // P^T [64 keys][64 queries]
  bf16* dSTs = PTs + 64 * ld::P;                               // dS^T [64 keys][64 queries]
  float* lse_s = reinterpret_cast<float*>(dSTs + 64 * ld::P);
  float* delta_s = lse_s + 64;
  float* dQs = delta_s + 64;  // per warp [16][20]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.y / H, h = blockIdx.y % H;
  const int n0 = blockIdx.x * BLOCK_N;
  const size_t row_stride = (size_t)H * D;
  const size_t head_off = (size_t)b * L * row_stride + (size_t)h * D;
  const float* lse_bh = lse + ((size_t)b * H + h) * L;
  const float* delta_bh = delta + ((size_t)b * H + h) * L;

  load_tile<D>(Ks, k + head_off, n0, L, row_stride);
  load_tile<D>(Vs, v + head_off, n0, L, row_stride);

  FragAcc dk_acc[D / 16], dv_acc[D / 16];
#pragma unroll
  for (int i = 0; i < D / 16; i++) {
    wmma::fill_fragment(dk_acc[i], 0.0f);
    wmma::fill_fragment(dv_acc[i], 0.0f);
  }
  float* Sw = Ss + warp * 16 * ld::S;
  float* dPw = dPs + warp * 16 * ld::S;
  float* dQw = dQs + warp * 16 * 20;
  const int r = lane / 2, half = lane % 2;
  const bool key_valid = n0 + warp * 16 + r < L;

  for (int m0 = 0; m0 < L; m0 += BLOCK_M) {
    __syncthreads();  // every warp is done with the previous query tile
    load_tile<D>(Qs, q + head_off, m0, L, row_stride);
    load_tile<D>(dOs, dout + head_off, m0, L, row_stride);
    for (int i = threadIdx.x; i < 64; i += THREADS) {
      bool ok = m0 + i < L;
      lse_s[i] = ok ? lse_bh[m0 + i] : INFINITY;  // P = 0 for missing query rows
      delta_s[i] = ok ? delta_bh[m0 + i] : 0.0f;
    }
    __syncthreads();

    // S^T_w = K_w Q^T and dP^T_w = V_w dO^T, each [16 keys x 64 queries]
#pragma unroll
    for (int j = 0; j < BLOCK_M / 16; j++) {
      FragAcc s, dp;
      wmma::fill_fragment(s, 0.0f);
      wmma::fill_fragment(dp, 0.0f);
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        FragA ka, va;
        FragBT qb, gb;
        wmma::load_matrix_sync(ka, Ks + warp * 16 * ld::QKV + kk * 16, ld::QKV);
        wmma::load_matrix_sync(qb, Qs + j * 16 * ld::QKV + kk * 16, ld::QKV);
        wmma::mma_sync(s, ka, qb, s);
        wmma::load_matrix_sync(va, Vs + warp * 16 * ld::QKV + kk * 16, ld::QKV);
        wmma::load_matrix_sync(gb, dOs + j * 16 * ld::QKV + kk * 16, ld::QKV);
        wmma::mma_sync(dp, va, gb, dp);
      }
      wmma::store_matrix_sync(Sw + j * 16, s, ld::S, wmma::mem_row_major);
      wmma::store_matrix_sync(dPw + j * 16, dp, ld::S, wmma::mem_row_major);
    }
    __syncwarp();

    // P^T = exp2(s * scale_log2 - lse); dS^T = P^T * (dP^T - delta)
    {
      const float* srow = Sw + r * ld::S;
      const float* dprow = dPw + r * ld::S;
      bf16* ptrow = PTs + (warp * 16 + r) * ld::P;
      bf16* dsrow = dSTs + (warp * 16 + r) * ld::P;
#pragma unroll 8
      for (int cc = 0; cc < BLOCK_M / 2; cc++) {
        int c = 2 * cc + half;
        float p = key_valid ? exp2f(srow[c] * scale_log2 - lse_s[c]) : 0.0f;
        float ds = p * (dprow[c] - delta_s[c]);
        ptrow[c] = __float2bfloat16(p);
        dsrow[c] = __float2bfloat16(ds);
      }
    }
    __syncwarp();

    // dV_w += P^T_w dO ; dK_w += dS^T_w Q (scale applied at the end)
#pragma unroll
    for (int nd = 0; nd < D / 16; nd++) {
#pragma unroll
      for (int kq = 0; kq < BLOCK_M / 16; kq++) {
        FragA pa, sa;
        FragB gb, qb;
        wmma::load_matrix_sync(pa, PTs + warp * 16 * ld::P + kq * 16, ld::P);
        wmma::load_matrix_sync(gb, dOs + kq * 16 * ld::QKV + nd * 16, ld::QKV);
        wmma::mma_sync(dv_acc[nd], pa, gb, dv_acc[nd]);
        wmma::load_matrix_sync(sa, dSTs + warp * 16 * ld::P + kq * 16, ld::P);
        wmma::load_matrix_sync(qb, Qs + kq * 16 * ld::QKV + nd * 16, ld::QKV);
        wmma::mma_sync(dk_acc[nd], sa, qb, dk_acc[nd]);
      }
    }
    if (dq_acc == nullptr) continue;
    __syncthreads();  // every warp's rows of dS^T are written

    // dQ rows 16w..16w+15 of this query tile: dS K = (dS^T)^T K, added to dq_acc with atomics.
    const int qrow = m0 + warp * 16 + lane / 2;
    for (int nd = 0; nd < D / 16; nd++) {
      FragAcc acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int kk = 0; kk < BLOCK_N / 16; kk++) {
        FragAT sa;
        FragB kb;
        wmma::load_matrix_sync(sa, dSTs + kk * 16 * ld::P + warp * 16, ld::P);
        wmma::load_matrix_sync(kb, Ks + kk * 16 * ld::QKV + nd * 16, ld::QKV);
        wmma::mma_sync(acc, sa, kb, acc);
      }
      wmma::store_matrix_sync(dQw, acc, 20, wmma::mem_row_major);
      __syncwarp();
      if (qrow < L) {
        const float* src = dQw + (lane / 2) * 20 + (lane % 2) * 8;
        float* dst = dq_acc + head_off + (size_t)qrow * row_stride + nd * 16 + (lane % 2) * 8;
        atomic_add4(dst, scale * src[0], scale * src[1], scale * src[2], scale * src[3]);
        atomic_add4(dst + 4, scale * src[4], scale * src[5], scale * src[6], scale * src[7]);
      }
      __syncwarp();
    }
  }

  // dK (times the softmax scale) and dV of this warp's 16 keys, accumulated into bf16 global.
  const int krow = n0 + warp * 16 + r;
#pragma unroll
  for (int nd = 0; nd < D / 16; nd++) {
#pragma unroll
    for (int which = 0; which < 2; which++) {
      bf16* dst = which == 0 ? dk : dv;
      if (dst == nullptr) continue;
      wmma::store_matrix_sync(Sw, which == 0 ? dk_acc[nd] : dv_acc[nd], ld::S, wmma::mem_row_major);
      __syncwarp();
      if (krow < L) {
        const float mult = which == 0 ? scale : 1.0f;
        bf16* g = dst + head_off + (size_t)krow * row_stride + nd * 16;
        for (int cc = 0; cc < 8; cc++) {
          int c = 2 * cc + half;
          g[c] = __float2bfloat16(__bfloat162float(g[c]) + mult * Sw[r * ld::S + c]);
        }
      }
      __syncwarp();
    }
  }
}

int g_forward_version = 2;
int g_backward_version = 2;

template <int D>
void launch_forward_v2(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int L, int H,
                       cudaStream_t stream) {
  const size_t smem = fa2::forward_smem_bytes<D>();
  static bool configured = false;
  if (!configured) {
    cudaCheck(cudaFuncSetAttribute(fa2::forward_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    configured = true;
  }
  dim3 grid(ceil_div(L, fa2::BM), B * H);
  fa2::forward_kernel<D><<<grid, fa2::THREADS, smem, stream>>>(out, lse, q, k, v, L, H, LOG2E / sqrtf((float)D));
  cudaCheckLaunch();
}

template <int D>
void launch_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int L, int H,
                    cudaStream_t stream) {
  const size_t smem = forward_smem_bytes<D>();
  static bool configured = false;
  if (!configured) {
    cudaCheck(cudaFuncSetAttribute(flash_forward_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    configured = true;
  }
  dim3 grid(ceil_div(L, BLOCK_M), B * H);
  flash_forward_kernel<D><<<grid, THREADS, smem, stream>>>(out, lse, q, k, v, L, H, LOG2E / sqrtf((float)D));
  cudaCheckLaunch();
}

template <int D>
void launch_backward(float* dq_acc, bf16* dk, bf16* dv, const bf16* dout, const float* lse, const float* delta,
                     const bf16* q, const bf16* k, const bf16* v, int B, int L, int H, cudaStream_t stream) {
  const size_t smem = backward_smem_bytes<D>();
  static bool configured = false;
  if (!configured) {
    cudaCheck(cudaFuncSetAttribute(flash_backward_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    configured = true;
  }
  dim3 grid(ceil_div(L, BLOCK_N), B * H);
  const float scale = 1.0f / sqrtf((float)D);
  flash_backward_kernel<D><<<grid, THREADS, smem, stream>>>(dq_acc, dk, dv, dout, lse, delta, q, k, v, L, H, scale,
                                                            scale * LOG2E);
  cudaCheckLaunch();
}

// Version 2 of the backward needs more shared memory than a block gets on some GPUs (155 KB at
// D = 128); there the WMMA version runs instead.
template <int D>
bool backward_v2_fits() {
  static int optin = -1;
  if (optin < 0) {
    int dev = 0;
    cudaCheck(cudaGetDevice(&dev));
    cudaCheck(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  }
  return fa2::backward_smem_bytes<D>() <= (size_t)optin;
}

template <int D>
void launch_backward_v2(float* dq_acc, bf16* dk, bf16* dv, const bf16* dout, const float* lse, const float* delta,
                        const bf16* q, const bf16* k, const bf16* v, int B, int L, int H, cudaStream_t stream) {
  if (!backward_v2_fits<D>()) {
    launch_backward<D>(dq_acc, dk, dv, dout, lse, delta, q, k, v, B, L, H, stream);
    return;
  }
  const size_t smem = fa2::backward_smem_bytes<D>();
  static bool configured = false;
  if (!configured) {
    cudaCheck(cudaFuncSetAttribute(fa2::backward_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    configured = true;
  }
  dim3 grid(ceil_div(L, fa2::BWD_BN), B * H);
  const float scale = 1.0f / sqrtf((float)D);
  fa2::backward_kernel<D><<<grid, fa2::BWD_THREADS, smem, stream>>>(dq_acc, dk, dv, dout, lse, delta, q, k, v, L, H,
                                                                     scale, scale * LOG2E);
  cudaCheckLaunch();
}

void check_attention_args(const char* op, int D, const void* q, const void* k, const void* v) {
  if (D != 32 && D != 64 && D != 128)
    fail(std::string(op) + ": head dim " + std::to_string(D) + " is not supported (32, 64 or 128)");
  if (!aligned16(q) || !aligned16(k) || !aligned16(v))
    fail(std::string(op) + ": q, k, v must be 16-byte aligned");
}

}  // namespace

void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int L, int H, int D,
                       cudaStream_t stream) {
  check_attention_args("attention_forward", D, q, k, v);
  if ((long)B * L * H == 0) return;
  if (g_forward_version == 2) {
    switch (D) {
      case 32: launch_forward_v2<32>(out, lse, q, k, v, B, L, H, stream); break;
      case 64: launch_forward_v2<64>(out, lse, q, k, v, B, L, H, stream); break;
      default: launch_forward_v2<128>(out, lse, q, k, v, B, L, H, stream); break;
    }
    return;
  }
  switch (D) {
    case 32: launch_forward<32>(out, lse, q, k, v, B, L, H, stream); break;
    case 64: launch_forward<64>(out, lse, q, k, v, B, L, H, stream); break;
    default: launch_forward<128>(out, lse, q, k, v, B, L, H, stream); break;
  }
}

void attention_set_forward_version(int version) {
  if (version != 1 && version != 2) fail("attention forward version " + std::to_string(version) + " (1 or 2)");
  g_forward_version = version;
}

void attention_set_backward_version(int version) {
  if (version != 1 && version != 2) fail("attention backward version " + std::to_string(version) + " (1 or 2)");
  g_backward_version = version;
}

void attention_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* out, const float* lse,
                        const bf16* q, const bf16* k, const bf16* v, int B, int L, int H, int D, cudaStream_t stream) {
  if (!dq && !dk && !dv) return;
  check_attention_args("attention_backward", D, q, k, v);
  if ((long)B * L * H == 0) return;
  const size_t n = (size_t)B * L * H * D, rows = (size_t)B * H * L;
  // One scratch area: delta [B, H, L] then (when dq is wanted) the fp32 dq accumulator.
  size_t delta_bytes = (rows * sizeof(float) + 255) & ~(size_t)255;
  char* base = (char*)scratch(SCRATCH_ATTN, delta_bytes + (dq ? n * sizeof(float) : 0));
  float* delta = (float*)base;
  float* dq_acc = dq ? (float*)(base + delta_bytes) : nullptr;
  if (dq_acc) cudaCheck(cudaMemsetAsync(dq_acc, 0, n * sizeof(float), stream));
  attention_delta_kernel<<<ceil_div((long)rows, 8), 256, 0, stream>>>(delta, dout, out, B, L, H, D);
  cudaCheckLaunch();
  if (g_backward_version == 2) {
    switch (D) {
      case 32: launch_backward_v2<32>(dq_acc, dk, dv, dout, lse, delta, q, k, v, B, L, H, stream); break;
      case 64: launch_backward_v2<64>(dq_acc, dk, dv, dout, lse, delta, q, k, v, B, L, H, stream); break;
      default: launch_backward_v2<128>(dq_acc, dk, dv, dout, lse, delta, q, k, v, B, L, H, stream); break;
    }
  } else {
    switch (D) {
      case 32: launch_backward<32>(dq_acc, dk, dv, dout, lse, delta, q, k, v, B, L, H, stream); break;
      case 64: launch_backward<64>(dq_acc, dk, dv, dout, lse, delta, q, k, v, B, L, H, stream); break;
      default: launch_backward<128>(dq_acc, dk, dv, dout, lse, delta, q, k, v, B, L, H, stream); break;
    }
  }
  if (dq) add_f32_into_bf16(dq, dq_acc, (long)n, stream);
}

}  // namespace gpu
}  // namespace graft
