// Rotary position embedding over several axes (FLUX: 3 axes, theta 10000). The table is fp32 and
// computed in double like the CPU reference; the rotation reads and writes adjacent bf16 pairs.
#include "kernels_common.cuh"
#include "ops_gpu.h"

namespace graft {
namespace gpu {

struct AxesDims { int n; int dim[8]; };

__global__ void rope_table_kernel(float* cos_sin, const float* ids, int P, AxesDims axes, int half_D, float theta) {
  long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (long)P * half_D) return;
  int p = (int)(idx / half_D), pair = (int)(idx % half_D);
  int a = 0, first = 0;  // axis owning this pair: axis 0's pairs first, then axis 1's, ...
  while (pair >= first + axes.dim[a] / 2) first += axes.dim[a++] / 2;
  int i = pair - first, d = axes.dim[a];
  double omega = 1.0 / pow((double)theta, (2.0 * i) / d);
  double angle = (double)ids[(size_t)p * axes.n + a] * omega;
  cos_sin[idx * 2 + 0] = (float)cos(angle);
  cos_sin[idx * 2 + 1] = (float)sin(angle);
}

void rope_table(float* cos_sin, const float* ids, int P, const int* axes_dim, int n_axes, float theta,
                cudaStream_t stream) {
  if (n_axes < 1 || n_axes > 8) fail("rope_table: n_axes = " + std::to_string(n_axes) + " (1 to 8 supported)");
  AxesDims axes{n_axes, {0}};
  int half_D = 0;
  for (int a = 0; a < n_axes; a++) {
    if (axes_dim[a] % 2 != 0)
      fail("rope_table: axes_dim[" + std::to_string(a) + "] = " + std::to_string(axes_dim[a]) + " must be even");
    axes.dim[a] = axes_dim[a];
    half_D += axes_dim[a] / 2;
  }
  long n = (long)P * half_D;
  if (n == 0) return;
  rope_table_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(cos_sin, ids, P, axes, half_D, theta);
  cudaCheckLaunch();
}

// One thread per rotated pair. sign = +1: forward rotation; -1: its transpose (backward), accumulated.
template <bool BACKWARD>
__global__ void rope_kernel(bf16* out, const bf16* inp, const float* cos_sin, long rows, int H, int half_D) {
  long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
  long pairs_per_row = (long)H * half_D;
  if (idx >= rows * pairs_per_row) return;
  long bl = idx / pairs_per_row;
  int i = (int)(idx % half_D);
  float2 cs = reinterpret_cast<const float2*>(cos_sin)[bl * half_D + i];
  float2 x = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(inp)[idx]);
  __nv_bfloat162* o = reinterpret_cast<__nv_bfloat162*>(out) + idx;
  if (!BACKWARD) {
    *o = __floats2bfloat162_rn(cs.x * x.x - cs.y * x.y, cs.y * x.x + cs.x * x.y);
  } else {
    float2 acc = __bfloat1622float2(*o);
    *o = __floats2bfloat162_rn(acc.x + cs.x * x.x + cs.y * x.y, acc.y - cs.y * x.x + cs.x * x.y);
  }
}

void rope_forward(bf16* out, const bf16* inp, const float* cos_sin, int B, int L, int H, int D, cudaStream_t stream) {
  if (D % 2) fail("rope_forward: head dim " + std::to_string(D) + " must be even");
  long n = (long)B * L * H * (D / 2);
  if (n == 0) return;
  rope_kernel<false><<<ceil_div(n, 256), 256, 0, stream>>>(out, inp, cos_sin, (long)B * L, H, D / 2);
  cudaCheckLaunch();
}

void rope_backward(bf16* dinp, const bf16* dout, const float* cos_sin, int B, int L, int H, int D,
                   cudaStream_t stream) {
  if (!dinp) return;
  if (D % 2) fail("rope_backward: head dim " + std::to_string(D) + " must be even");
  long n = (long)B * L * H * (D / 2);
  if (n == 0) return;
  rope_kernel<true><<<ceil_div(n, 256), 256, 0, stream>>>(dinp, dout, cos_sin, (long)B * L, H, D / 2);
  cudaCheckLaunch();
}

}  // namespace gpu
}  // namespace graft
