// Device helpers shared by the kernels: warp reductions and 8-wide bf16 loads/stores.
#pragma once
#include <cuda_bf16.h>

#include "cuda_common.h"

namespace graft {
namespace gpu {

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// 8 consecutive bf16 (16 bytes, the pointer 16-byte aligned) to/from floats.
__device__ __forceinline__ void load8(float* f, const bf16* p) {
  uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 v = __bfloat1622float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
__device__ __forceinline__ void store8(bf16* p, const float* f) {
  uint4 u;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; i++) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = u;
}

inline bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

// Blocks of 256 threads for an elementwise pass over n values, capped (the kernels grid-stride).
inline unsigned grid_1d(long n) {
  long b = (n + 255) / 256;
  return (unsigned)(b > 65535L * 16 ? 65535L * 16 : (b < 1 ? 1 : b));
}
#define GRID_STRIDE(i, n) \
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long)gridDim.x * blockDim.x)

// The sum of v over the block (at most 1024 threads, a multiple of 32), in every thread.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float part[32];
  __shared__ float total;
  v = warp_sum(v);
  __syncthreads();  // part may still be read by a previous call
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.0f;
    for (int w = 0; w < (int)blockDim.x / 32; w++) t += part[w];
    total = t;
  }
  __syncthreads();
  return total;
}

// Device memory for one op's temporaries, from the engine's caching allocator (core/cuda_runtime.h).
struct DeviceTemp {
  void* p = nullptr;
  DeviceTemp(size_t bytes, const char* what);
  ~DeviceTemp();
  DeviceTemp(const DeviceTemp&) = delete;
  DeviceTemp& operator=(const DeviceTemp&) = delete;
};

}  // namespace gpu
}  // namespace graft
