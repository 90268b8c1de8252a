// Flash attention backward, version 2: register-resident FlashAttention-2 backward on mma.sync
// (m16n8k16 bf16, fp32 accumulate) through the same PTX helpers as the forward (attention_mma.cuh).
// One block per 128-key tile of one (b, h), 8 warps; warp w owns keys 16w..16w+15 and keeps their
// dK and dV accumulators in registers for the whole kernel. Per 64-query tile (Q, dO double-buffered
// with cp.async):
//   S^T  = K_w Q^T,  dP^T = V_w dO^T               [16 keys x 64 queries], registers
//   P^T  = exp2(S^T * scale_log2 - lse),  dS^T = P^T * (dP^T - delta)   (delta = rowsum(dO * O))
//   dV_w += P^T dO,  dK_w += dS^T Q                 (P^T, dS^T accumulators reused as A operands)
//   dQ   += dS K  through fp32 atomics: dS^T goes to shared memory once (bf16), then the 8 warps
//          split the 64 x D product (16 queries x D/2 columns each).
// The transposed products come out of ldmatrix.trans: no tile is ever transposed by hand.
// Masked tails: keys past L are zero in shared memory and get P = 0; queries past L get lse = +inf
// (P = 0) and delta = 0, so they add nothing anywhere, and their dQ rows are never written.
#pragma once
#include "attention_mma.cuh"

namespace graft {
namespace gpu {
namespace fa2 {

const int BWD_BN = 128, BWD_BM = 64, BWD_THREADS = 256;  // 8 warps x 16 keys; 64 queries per tile

template <int D>
constexpr size_t backward_smem_bytes() {
  // K, V [128][D+8]; Q, dO two buffers each [64][D+8]; dS^T [128][64+8]; lse, delta two buffers of 64
  return sizeof(bf16) * (2 * BWD_BN + 4 * BWD_BM) * (D + 8) + sizeof(bf16) * BWD_BN * (BWD_BM + 8) +
         sizeof(float) * 4 * BWD_BM;
}

// rows [row0, row0 + ROWS) of one head into a [ROWS][D + 8] tile, asynchronously (zero past L).
template <int ROWS, int D>
__device__ __forceinline__ void load_rows_async(bf16* tile, const bf16* head_base, int row0, int L,
                                                size_t row_stride) {
  const int chunks = D / 8;
  for (int i = threadIdx.x; i < ROWS * chunks; i += BWD_THREADS) {
    int r = i / chunks, c = i % chunks;
    bool ok = row0 + r < L;
    const bf16* src = head_base + (size_t)(ok ? row0 + r : 0) * row_stride + c * 8;
    cp_async16(tile + r * (D + 8) + c * 8, src, ok);
  }
}

// The per-query statistics of query tile m0: threads 0..63 fetch lse, 64..127 delta (past L:
// lse = +inf so P = 0, delta = 0). Fetched into a register early, stored to shared memory late.
__device__ __forceinline__ float load_row_stat(const float* lse_bh, const float* delta_bh, int m0, int L) {
  const int i = threadIdx.x % BWD_BM, row = m0 + i;
  if (threadIdx.x < BWD_BM) return row < L ? lse_bh[row] : INFINITY;
  if (threadIdx.x < 2 * BWD_BM) return row < L ? delta_bh[row] : 0.0f;
  return 0.0f;
}
__device__ __forceinline__ void store_row_stat(float* lse_s, float* delta_s, float value) {
  if (threadIdx.x < BWD_BM) lse_s[threadIdx.x] = value;
  else if (threadIdx.x < 2 * BWD_BM) delta_s[threadIdx.x - BWD_BM] = value;
}

__device__ __forceinline__ void atomic_add2(float* p, float a, float b) {
#if __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}
// p[0], p[1] (bf16) += a, b
__device__ __forceinline__ void add_into_bf16x2(bf16* p, float a, float b) {
  __nv_bfloat162* q = reinterpret_cast<__nv_bfloat162*>(p);
  float2 old = __bfloat1622float2(*q);
  *q = __floats2bfloat162_rn(old.x + a, old.y + b);
}

template <int D>
__global__ void __launch_bounds__(BWD_THREADS, 1)
    backward_kernel(float* dq_acc, bf16* dk, bf16* dv, const bf16* dout, const float* lse, const float* delta,
                    const bf16* q, const bf16* k, const bf16* v, int L, int H, float scale, float scale_log2) {
  const int LD = D + 8, LDS = BWD_BM + 8;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Ks = reinterpret_cast<bf16*>(smem);
  bf16* Vs = Ks + BWD_BN * LD;
  bf16* Qs = Vs + BWD_BN * LD;        // two buffers
  bf16* dOs = Qs + 2 * BWD_BM * LD;   // two buffers
  bf16* dSt = dOs + 2 * BWD_BM * LD;  // dS^T [128 keys][64 queries]
  float* lse_s = reinterpret_cast<float*>(dSt + BWD_BN * LDS);  // two buffers
  float* delta_s = lse_s + 2 * BWD_BM;                          // two buffers

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int b = blockIdx.y / H, h = blockIdx.y % H, n0 = blockIdx.x * BWD_BN;
  const size_t row_stride = (size_t)H * D;
  const size_t head_off = (size_t)b * L * row_stride + (size_t)h * D;
  const float* lse_bh = lse + ((size_t)b * H + h) * L;
  const float* delta_bh = delta + ((size_t)b * H + h) * L;
  const int n_tiles = (L + BWD_BM - 1) / BWD_BM;

  load_rows_async<BWD_BN, D>(Ks, k + head_off, n0, L, row_stride);
  load_rows_async<BWD_BN, D>(Vs, v + head_off, n0, L, row_stride);
  load_rows_async<BWD_BM, D>(Qs, q + head_off, 0, L, row_stride);
  load_rows_async<BWD_BM, D>(dOs, dout + head_off, 0, L, row_stride);
  cp_async_commit();
  store_row_stat(lse_s, delta_s, load_row_stat(lse_bh, delta_bh, 0, L));

  float dk_acc[D / 8][4], dv_acc[D / 8][4];  // keys (row g, g + 8) x D, C layout
#pragma unroll
  for (int i = 0; i < D / 8; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) dk_acc[i][e] = dv_acc[i][e] = 0.0f;
  const int key_lo = n0 + warp * 16 + g;  // this lane's keys: key_lo and key_lo + 8
  const bool valid_lo = key_lo < L, valid_hi = key_lo + 8 < L;
  const bf16* Kw = Ks + warp * 16 * LD;
  const bf16* Vw = Vs + warp * 16 * LD;

  for (int tile = 0; tile < n_tiles; tile++) {
    const int buf = tile & 1, m0 = tile * BWD_BM;
    float stat_next = 0.0f;
    if (tile + 1 < n_tiles) {  // prefetch the next Q, dO tiles into the other buffers
      load_rows_async<BWD_BM, D>(Qs + (buf ^ 1) * BWD_BM * LD, q + head_off, m0 + BWD_BM, L, row_stride);
      load_rows_async<BWD_BM, D>(dOs + (buf ^ 1) * BWD_BM * LD, dout + head_off, m0 + BWD_BM, L, row_stride);
      cp_async_commit();
      stat_next = load_row_stat(lse_bh, delta_bh, m0 + BWD_BM, L);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // this tile's Q, dO, lse, delta are in; every warp is done with the last dS^T
    const bf16* Qt = Qs + buf * BWD_BM * LD;
    const bf16* dOt = dOs + buf * BWD_BM * LD;
    const float* lse_t = lse_s + buf * BWD_BM;
    const float* delta_t = delta_s + buf * BWD_BM;

    // S^T = K_w Q^T and dP^T = V_w dO^T: 8 n8 tiles over the 64 queries, two per ldmatrix.x4
    float s[BWD_BM / 8][4], dp[BWD_BM / 8][4];
#pragma unroll
    for (int j = 0; j < BWD_BM / 8; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) s[j][e] = dp[j][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      uint32_t ka[4], va[4];
      ldmatrix_x4(ka[0], ka[1], ka[2], ka[3], Kw + (lane % 16) * LD + kk * 16 + (lane / 16) * 8);
      ldmatrix_x4(va[0], va[1], va[2], va[3], Vw + (lane % 16) * LD + kk * 16 + (lane / 16) * 8);
#pragma unroll
      for (int j = 0; j < BWD_BM / 8; j += 2) {
        const int off = (j * 8 + (lane % 8) + (lane / 16) * 8) * LD + kk * 16 + ((lane / 8) % 2) * 8;
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4(b0, b1, b2, b3, Qt + off);
        mma_bf16(s[j], ka, b0, b1);
        mma_bf16(s[j + 1], ka, b2, b3);
        ldmatrix_x4(b0, b1, b2, b3, dOt + off);
        mma_bf16(dp[j], va, b0, b1);
        mma_bf16(dp[j + 1], va, b2, b3);
      }
    }

    // P^T and dS^T in place (rows: keys g / g + 8; columns: queries j*8 + 2t + {0, 1})
#pragma unroll
    for (int j = 0; j < BWD_BM / 8; j++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int col = j * 8 + 2 * t + (e & 1);
        const bool key_ok = e < 2 ? valid_lo : valid_hi;
        const float p = key_ok ? exp2f(s[j][e] * scale_log2 - lse_t[col]) : 0.0f;
        s[j][e] = p;
        dp[j][e] = p * (dp[j][e] - delta_t[col]);
      }
    }

    // dV_w += P^T dO, dK_w += dS^T Q: the accumulators' layout is the A operand's, 16 queries a step
#pragma unroll
    for (int kq = 0; kq < BWD_BM / 16; kq++) {
      const uint32_t pa[4] = {pack_bf16(s[2 * kq][0], s[2 * kq][1]), pack_bf16(s[2 * kq][2], s[2 * kq][3]),
                              pack_bf16(s[2 * kq + 1][0], s[2 * kq + 1][1]),
                              pack_bf16(s[2 * kq + 1][2], s[2 * kq + 1][3])};
      const uint32_t da[4] = {pack_bf16(dp[2 * kq][0], dp[2 * kq][1]), pack_bf16(dp[2 * kq][2], dp[2 * kq][3]),
                              pack_bf16(dp[2 * kq + 1][0], dp[2 * kq + 1][1]),
                              pack_bf16(dp[2 * kq + 1][2], dp[2 * kq + 1][3])};
      if (dq_acc != nullptr) {  // dS^T rows g, g + 8 of this warp, queries kq*16 + 2t (+ 8)
        bf16* dst = dSt + (warp * 16 + g) * LDS + kq * 16 + 2 * t;
        *reinterpret_cast<uint32_t*>(dst) = da[0];
        *reinterpret_cast<uint32_t*>(dst + 8 * LDS) = da[1];
        *reinterpret_cast<uint32_t*>(dst + 8) = da[2];
        *reinterpret_cast<uint32_t*>(dst + 8 * LDS + 8) = da[3];
      }
#pragma unroll
      for (int nd = 0; nd < D / 8; nd += 2) {
        const int off = (kq * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + nd * 8 + (lane / 16) * 8;
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4_trans(b0, b1, b2, b3, dOt + off);
        mma_bf16(dv_acc[nd], pa, b0, b1);
        mma_bf16(dv_acc[nd + 1], pa, b2, b3);
        ldmatrix_x4_trans(b0, b1, b2, b3, Qt + off);
        mma_bf16(dk_acc[nd], da, b0, b1);
        mma_bf16(dk_acc[nd + 1], da, b2, b3);
      }
    }
    if (tile + 1 < n_tiles)
      store_row_stat(lse_s + (buf ^ 1) * BWD_BM, delta_s + (buf ^ 1) * BWD_BM, stat_next);
    __syncthreads();  // dS^T is complete; every warp is done with this tile's Q and dO buffers

    if (dq_acc != nullptr) {
      // dQ[64 x D] += scale * dS K: warp w takes queries 16 (w % 4).. and columns (w / 4) D/2..
      const int qm = (warp % 4) * 16, c0 = (warp / 4) * (D / 2);
      float acc[D / 16][4];
#pragma unroll
      for (int i = 0; i < D / 16; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < BWD_BN / 16; kk++) {
        uint32_t a[4];  // dS [16 queries x 16 keys] from dS^T through ldmatrix.trans
        ldmatrix_x4_trans(a[0], a[1], a[2], a[3],
                          dSt + (kk * 16 + (lane / 16) * 8 + (lane % 8)) * LDS + qm + ((lane / 8) % 2) * 8);
#pragma unroll
        for (int nd = 0; nd < D / 16; nd += 2) {
          uint32_t b0, b1, b2, b3;
          ldmatrix_x4_trans(b0, b1, b2, b3,
                            Ks + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + c0 + nd * 8 + (lane / 16) * 8);
          mma_bf16(acc[nd], a, b0, b1);
          mma_bf16(acc[nd + 1], a, b2, b3);
        }
      }
      const int row_lo = m0 + qm + g, row_hi = row_lo + 8;
      float* dq_lo = dq_acc + head_off + (size_t)row_lo * row_stride + c0 + 2 * t;
      float* dq_hi = dq_lo + 8 * row_stride;
#pragma unroll
      for (int nd = 0; nd < D / 16; nd++) {
        if (row_lo < L) atomic_add2(dq_lo + nd * 8, scale * acc[nd][0], scale * acc[nd][1]);
        if (row_hi < L) atomic_add2(dq_hi + nd * 8, scale * acc[nd][2], scale * acc[nd][3]);
      }
    }
  }

  // dK (times the softmax scale) and dV of this lane's two keys, accumulated into bf16 global
  bf16* dk_lo = dk ? dk + head_off + (size_t)key_lo * row_stride + 2 * t : nullptr;
  bf16* dv_lo = dv ? dv + head_off + (size_t)key_lo * row_stride + 2 * t : nullptr;
#pragma unroll
  for (int nd = 0; nd < D / 8; nd++) {
    if (dk_lo && valid_lo) add_into_bf16x2(dk_lo + nd * 8, scale * dk_acc[nd][0], scale * dk_acc[nd][1]);
    if (dk_lo && valid_hi) add_into_bf16x2(dk_lo + 8 * row_stride + nd * 8, scale * dk_acc[nd][2], scale * dk_acc[nd][3]);
    if (dv_lo && valid_lo) add_into_bf16x2(dv_lo + nd * 8, dv_acc[nd][0], dv_acc[nd][1]);
    if (dv_lo && valid_hi) add_into_bf16x2(dv_lo + 8 * row_stride + nd * 8, dv_acc[nd][2], dv_acc[nd][3]);
  }
}

}  // namespace fa2
}  // namespace gpu
}  // namespace graft
