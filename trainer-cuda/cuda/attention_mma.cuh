// Flash attention forward, version 2: register-resident FlashAttention-2 forward on mma.sync
// (m16n8k16 bf16, fp32 accumulate) through inline PTX, operands fetched with ldmatrix, K/V tiles
// double-buffered with cp.async. Scores, probabilities and the output accumulator never leave
// registers (version 1 in attention.cu stages them in shared memory through WMMA).
// Fragment layouts are PTX's (documented), so the softmax can work on them directly:
//   A 16x16: a0 (row g, k 2t..2t+1), a1 (row g+8, same k), a2 (row g, k 2t+8..), a3 (row g+8, k 2t+8..)
//   B 16x8 : b0 (k 2t..2t+1, col g), b1 (k 2t+8.., col g)
//   C 16x8 : c0,c1 (row g, cols 2t, 2t+1), c2,c3 (row g+8, cols 2t, 2t+1)      g = lane/4, t = lane%4
#pragma once
#include <cstdint>

#include "kernels_common.cuh"

namespace graft {
namespace gpu {
namespace fa2 {

const int BM = 64, BN = 64, THREADS = 128;  // 4 warps x 16 query rows; 64 keys per tile

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  // src-size 0 fills the 16 bytes with zeros (rows past L)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                                  const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void mma_bf16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// rows [row0, row0 + 64) of one head into a [64][D + 8] tile, asynchronously (zero past L).
template <int D>
__device__ __forceinline__ void load_tile_async(bf16* tile, const bf16* head_base, int row0, int L,
                                                size_t row_stride) {
  const int chunks = D / 8;
  for (int i = threadIdx.x; i < 64 * chunks; i += THREADS) {
    int r = i / chunks, c = i % chunks;
    bool ok = row0 + r < L;
    const bf16* src = head_base + (size_t)(ok ? row0 + r : 0) * row_stride + c * 8;
    cp_async16(tile + r * (D + 8) + c * 8, src, ok);
  }
}

template <int D>
constexpr size_t forward_smem_bytes() { return sizeof(bf16) * 5 * 64 * (D + 8); }  // Q, 2 x K, 2 x V

template <int D>
__global__ void __launch_bounds__(THREADS) forward_kernel(bf16* out, float* lse, const bf16* q, const bf16* k,
                                                          const bf16* v, int L, int H, float scale_log2) {
  const int LD = D + 8;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Qs = reinterpret_cast<bf16*>(smem);
  bf16* Ks = Qs + 64 * LD;       // two buffers
  bf16* Vs = Ks + 2 * 64 * LD;   // two buffers

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int b = blockIdx.y / H, h = blockIdx.y % H, m0 = blockIdx.x * BM;
  const size_t row_stride = (size_t)H * D;
  const size_t head_off = (size_t)b * L * row_stride + (size_t)h * D;
  const int n_tiles = (L + BN - 1) / BN;

  load_tile_async<D>(Qs, q + head_off, m0, L, row_stride);
  load_tile_async<D>(Ks, k + head_off, 0, L, row_stride);
  load_tile_async<D>(Vs, v + head_off, 0, L, row_stride);
  cp_async_commit();

  uint32_t qa[D / 16][4];
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;  // rows g and g + 8

  for (int tile = 0; tile < n_tiles; tile++) {
    const int buf = tile & 1, n0 = tile * BN;
    if (tile + 1 < n_tiles) {  // prefetch the next K, V tiles into the other buffer
      load_tile_async<D>(Ks + (buf ^ 1) * 64 * LD, k + head_off, n0 + BN, L, row_stride);
      load_tile_async<D>(Vs + (buf ^ 1) * 64 * LD, v + head_off, n0 + BN, L, row_stride);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (tile == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++)
        ldmatrix_x4(qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3],
                    Qs + (warp * 16 + (lane % 16)) * LD + kk * 16 + (lane / 16) * 8);
    }
    const bf16* Kt = Ks + buf * 64 * LD;
    const bf16* Vt = Vs + buf * 64 * LD;

    // S[16 x 64] = Q_w K^T: 8 n8 tiles, two per ldmatrix.x4
    float s[BN / 8][4];
#pragma unroll
    for (int j = 0; j < BN / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
      for (int j = 0; j < BN / 8; j += 2) {
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4(b0, b1, b2, b3, Kt + (j * 8 + (lane % 8) + (lane / 16) * 8) * LD + kk * 16 + ((lane / 8) % 2) * 8);
        mma_bf16(s[j], qa[kk], b0, b1);
        mma_bf16(s[j + 1], qa[kk], b2, b3);
      }
    }

    // online softmax on rows g (c0, c1) and g + 8 (c2, c3); a row's 64 columns live in 4 lanes
    float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int key = n0 + j * 8 + 2 * t + (e & 1);
        s[j][e] = key < L ? s[j][e] * scale_log2 : -INFINITY;
      }
      mx_lo = fmaxf(mx_lo, fmaxf(s[j][0], s[j][1]));
      mx_hi = fmaxf(mx_hi, fmaxf(s[j][2], s[j][3]));
    }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, off));
      mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, off));
    }
    const float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
    const float alpha_lo = exp2f(m_lo - mn_lo), alpha_hi = exp2f(m_hi - mn_hi);
    m_lo = mn_lo;
    m_hi = mn_hi;
    float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
      s[j][0] = exp2f(s[j][0] - mn_lo);
      s[j][1] = exp2f(s[j][1] - mn_lo);
      s[j][2] = exp2f(s[j][2] - mn_hi);
      s[j][3] = exp2f(s[j][3] - mn_hi);
      sum_lo += s[j][0] + s[j][1];
      sum_hi += s[j][2] + s[j][3];
    }
    l_lo = l_lo * alpha_lo + sum_lo;  // partial (this lane's columns); summed over the quad at the end
    l_hi = l_hi * alpha_hi + sum_hi;
#pragma unroll
    for (int i = 0; i < D / 8; i++) {
      o[i][0] *= alpha_lo;
      o[i][1] *= alpha_lo;
      o[i][2] *= alpha_hi;
      o[i][3] *= alpha_hi;
    }

    // O += P V: P's accumulator layout is the A operand's layout, two n8 tiles per k16 step
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
      uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                        pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int nd = 0; nd < D / 8; nd += 2) {
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4_trans(b0, b1, b2, b3,
                          Vt + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + nd * 8 + (lane / 16) * 8);
        mma_bf16(o[nd], pa, b0, b1);
        mma_bf16(o[nd + 1], pa, b2, b3);
      }
    }
    __syncthreads();  // every warp is done with this buffer before it is refilled
  }

#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, off);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, off);
  }
  const int row_lo = m0 + warp * 16 + g, row_hi = row_lo + 8;
  const float inv_lo = 1.0f / l_lo, inv_hi = 1.0f / l_hi;
#pragma unroll
  for (int nd = 0; nd < D / 8; nd++) {
    const int col = nd * 8 + 2 * t;
    if (row_lo < L)
      *reinterpret_cast<uint32_t*>(out + head_off + (size_t)row_lo * row_stride + col) =
          pack_bf16(o[nd][0] * inv_lo, o[nd][1] * inv_lo);
    if (row_hi < L)
      *reinterpret_cast<uint32_t*>(out + head_off + (size_t)row_hi * row_stride + col) =
          pack_bf16(o[nd][2] * inv_hi, o[nd][3] * inv_hi);
  }
  if (t == 0) {
    float* lse_bh = lse + ((size_t)b * H + h) * L;
    if (row_lo < L) lse_bh[row_lo] = m_lo + log2f(l_lo);
    if (row_hi < L) lse_bh[row_hi] = m_hi + log2f(l_hi);
  }
}

}  // namespace fa2
}  // namespace gpu
}  // namespace graft
