// Quantized frozen weights on the GPU (ops/quant.h), decoded into bf16 scratch for one product: NF4
// blocks, and fp8 or int8 codes with a scale per row.
#include <cuda_fp8.h>

#include "kernels_common.cuh"
#include "ops/quant.h"
#include "ops_gpu.h"

namespace graft {
namespace gpu {

namespace {

// The 16 NF4 levels (ops/quant.h's kNf4Levels), passed by value into the kernel's parameters.
struct Levels { float v[16]; };

// One thread per code byte: its two values, both in the same block of 64.
__global__ void nf4_dequantize_kernel(bf16* out, const uint8_t* codes, const float* absmax, long n, Levels levels) {
  const long bytes = (n + 1) / 2;
  GRID_STRIDE(k, bytes) {
    const uint8_t c = codes[k];
    const float s = absmax[(2 * k) / 64];
    out[2 * k] = __float2bfloat16(levels.v[c >> 4] * s);
    if (2 * k + 1 < n) out[2 * k + 1] = __float2bfloat16(levels.v[c & 15] * s);
  }
}

// One thread per value: its code's value times the row's scale, rounded once to bf16.
template <typename Code>
__global__ void dequantize_rows_kernel(bf16* out, const Code* codes, const float* scale, long rows, long cols) {
  GRID_STRIDE(i, rows * cols) out[i] = __float2bfloat16((float)codes[i] * scale[i / cols]);
}

}  // namespace

void dequantize_rows(bf16* out, const void* codes, DType t, const float* scale, long rows, long cols, cudaStream_t stream) {
  if (rows * cols <= 0) return;
  if (t == DType::F8_E4M3)
    dequantize_rows_kernel<<<grid_1d(rows * cols), 256, 0, stream>>>(out, (const __nv_fp8_e4m3*)codes, scale, rows, cols);
  else if (t == DType::I8)
    dequantize_rows_kernel<<<grid_1d(rows * cols), 256, 0, stream>>>(out, (const signed char*)codes, scale, rows, cols);
  else
    fail(std::string("internal: dequantize_rows of ") + dtype_name(t) + " codes");
  cudaCheckLaunch();
}

void nf4_dequantize(bf16* out, const uint8_t* codes, const float* absmax, long n, cudaStream_t stream) {
  if (n <= 0) return;
  Levels levels;
  for (int i = 0; i < 16; ++i) levels.v[i] = kNf4Levels[i];
  nf4_dequantize_kernel<<<grid_1d((n + 1) / 2), 256, 0, stream>>>(out, codes, absmax, n, levels);
  cudaCheckLaunch();
}

}  // namespace gpu
}  // namespace graft
