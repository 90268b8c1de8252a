// Basics of the CUDA backend: error checks that name file and line, bf16 helpers, device setup
// with plain-language failures, allocations that say how much they asked for, a scratch area.
//
// Storage convention of the CUDA ops (see ops_gpu.h): activations, frozen weights and activation
// gradients in bf16; arithmetic in fp32; LoRA master weights, their gradients and the small
// per-row statistics (mean, rstd, rrms, logsumexp) in fp32.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/common.h"

namespace graft {
namespace gpu {

typedef __nv_bfloat16 bf16;

// Throws graft::Error "<file>:<line>: CUDA error <name>: <text> (in <call>)".
[[noreturn]] void cuda_fail(cudaError_t err, const char* call, const char* file, int line);

}  // namespace gpu
}  // namespace graft

#define cudaCheck(call)                                                                     \
  do {                                                                                      \
    cudaError_t err_ = (call);                                                              \
    if (err_ != cudaSuccess) graft::gpu::cuda_fail(err_, #call, __FILE__, __LINE__);        \
  } while (0)

// After every kernel launch: catches bad launch configurations at once (asynchronous faults
// surface at the next synchronising call, which is checked too).
#define cudaCheckLaunch() cudaCheck(cudaGetLastError())

namespace graft {
namespace gpu {

// Picks device `index` (-1: device 0) and checks that it can run our kernels. Throws graft::Error
// with the cause in words: no NVIDIA driver, driver too old for this build, no device, index out
// of range, compute capability below 8.0 (bf16 tensor cores). Returns a one-line description.
std::string device_init(int index = -1);

// cudaMalloc that throws "out of GPU memory: asked for X MiB for <what>, Y MiB free of Z MiB".
void* device_alloc(size_t bytes, const char* what);
void device_free(void* p);
template <typename T>
T* device_alloc_n(size_t n, const char* what) { return (T*)device_alloc(n * sizeof(T), what); }

// A grow-only scratch buffer shared by ops that need temporaries (LoRA bf16 weight copies, the
// attention dq accumulator). Valid until the next scratch() call from the same slot.
enum ScratchSlot { SCRATCH_LORA = 0, SCRATCH_ATTN = 1, SCRATCH_REDUCE = 2, SCRATCH_LOKR = 3, SCRATCH_SLOTS = 4 };
void* scratch(ScratchSlot slot, size_t bytes);
void scratch_release_all();

// Device memory in use now (total - free), in bytes, as nvidia-smi would count it.
size_t mem_used_now();

// Host-side bf16 conversion (round to nearest even), same bits as the device's __float2bfloat16.
inline uint16_t f32_to_bf16_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
inline float bf16_bits_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

inline unsigned ceil_div(long a, long b) { return (unsigned)((a + b - 1) / b); }

}  // namespace gpu
}  // namespace graft
