// Quantized frozen weights on the GPU (ops/quant.h): NF4 blocks decoded into bf16 scratch for one
// product. fp8 and int8 codes need no kernel of their own: the dtype conversion reads them.
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

}  // namespace

void nf4_dequantize(bf16* out, const uint8_t* codes, const float* absmax, long n, cudaStream_t stream) {
  if (n <= 0) return;
  nf4_dequantize_kernel<<<grid_1d((n + 1) / 2), 256, 0, stream>>>(out, codes, absmax, n);
  cudaCheckLaunch();
}

}  // namespace gpu
}  // namespace graft
