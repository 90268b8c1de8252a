// Quantized frozen weights on the GPU (ops/quant.h), decoded into bf16 scratch for one product: NF4
// blocks, and fp8 or int8 codes with a scale per row.
#include <cuda_fp8.h>

#include "kernels_common.cuh"
#include "ops_gpu.h"

namespace graft {
namespace gpu {

namespace {

__constant__ float kLevels[16] = {-1.0f,
                                  -0.6961928009986877f,
                                  -0.5250730514526367f,
                                  -0.39491748809814453f,
                                  -0.28444138169288635f,
                                  -0.18477343022823334f,
                                  -0.09105003625154495f,
                                  0.0f,
                                  0.07958029955625534f,
                                  0.16093020141124725f,
                                  0.24611230194568634f,
                                  0.33791524171829224f,
                                  0.44070982933044434f,
                                  0.5626170039176941f,
                                  0.7229568362236023f,
                                  1.0f};

// One thread per code byte: its two values, both in the same block of 64.
__global__ void nf4_dequantize_kernel(bf16* out, const uint8_t* codes, const float* absmax, long n) {
  const long bytes = (n + 1) / 2;
  GRID_STRIDE(k, bytes) {
    const uint8_t c = codes[k];
    const float s = absmax[(2 * k) / 64];
    out[2 * k] = __float2bfloat16(kLevels[c >> 4] * s);
    if (2 * k + 1 < n) out[2 * k + 1] = __float2bfloat16(kLevels[c & 15] * s);
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
  nf4_dequantize_kernel<<<grid_1d((n + 1) / 2), 256, 0, stream>>>(out, codes, absmax, n);
  cudaCheckLaunch();
}

}  // namespace gpu
}  // namespace graft
