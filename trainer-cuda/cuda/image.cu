// The autoencoder's image ops on the GPU (NCHW, bf16 storage, fp32 arithmetic): convolution as
// im2col + a cuBLASLt product per image (in slices of output positions, so the column buffer stays
// bounded at full resolution), GroupNorm, nearest 2x upsampling. Same shapes and conventions as
// ops/cpu_image_ops.h, which they are checked against.
#include <algorithm>

#include "core/cuda_runtime.h"
#include "cublaslt.h"
#include "kernels_common.cuh"
#include "ops_gpu.h"

namespace graft {
namespace gpu {

namespace {

const long kColumnBudget = 64L << 20;  // elements of the column buffer (128 MB in bf16)
const float kGroupNormEps = 1e-6f;

// col[k, j] for k = (ic*KH + kh)*KW + kw and output positions p0 + j, j < n, of one image; zero
// where the kernel reads padding.
__global__ void im2col_kernel(bf16* col, const bf16* img, Conv2dShape s, int OW, int p0, int n) {
  const int K = s.IC * s.KH * s.KW;
  GRID_STRIDE(i, (long)K * n) {
    const int k = (int)(i / n), j = (int)(i % n), p = p0 + j;
    const int kw = k % s.KW, kh = (k / s.KW) % s.KH, ic = k / (s.KW * s.KH);
    const int oy = p / OW, ox = p % OW;
    const int iy = oy * s.stride - s.pad_top + kh, ix = ox * s.stride - s.pad_left + kw;
    col[i] = (iy >= 0 && iy < s.H && ix >= 0 && ix < s.W) ? img[((long)ic * s.H + iy) * s.W + ix] : __float2bfloat16(0.0f);
  }
}

// img[ic, iy, ix] += sum of dcol[k, p] over the (kernel offset, output position) pairs that read it,
// for positions in [p0, p0 + n): one thread per input element gathers, so no atomics.
__global__ void col2im_kernel(bf16* img, const float* dcol, Conv2dShape s, int OH, int OW, int p0, int n) {
  GRID_STRIDE(i, (long)s.IC * s.H * s.W) {
    const int ix = (int)(i % s.W), iy = (int)((i / s.W) % s.H), ic = (int)(i / ((long)s.W * s.H));
    float sum = 0.0f;
    for (int kh = 0; kh < s.KH; kh++) {
      const int ty = iy + s.pad_top - kh;
      if (ty < 0 || ty % s.stride) continue;
      const int oy = ty / s.stride;
      if (oy >= OH) continue;
      for (int kw = 0; kw < s.KW; kw++) {
        const int tx = ix + s.pad_left - kw;
        if (tx < 0 || tx % s.stride) continue;
        const int ox = tx / s.stride;
        if (ox >= OW) continue;
        const int p = oy * OW + ox;
        if (p < p0 || p >= p0 + n) continue;
        sum += dcol[(long)((ic * s.KH + kh) * s.KW + kw) * n + (p - p0)];
      }
    }
    img[i] = __float2bfloat16(__bfloat162float(img[i]) + sum);
  }
}

__global__ void add_channel_bias_kernel(bf16* out, const bf16* bias, int OC, long P, long n) {
  GRID_STRIDE(i, n) {
    const int oc = (int)((i / P) % OC);
    out[i] = __float2bfloat16(__bfloat162float(out[i]) + __bfloat162float(bias[oc]));
  }
}

// dbias[oc] += sum over images and positions of dout[b, oc, p]: one block per channel.
__global__ void channel_sum_kernel(float* dbias, const bf16* dout, int B, int OC, long P) {
  const int oc = blockIdx.x;
  float s = 0.0f;
  for (int b = 0; b < B; b++)
    for (long p = threadIdx.x; p < P; p += blockDim.x) s += __bfloat162float(dout[((long)b * OC + oc) * P + p]);
  s = block_sum(s);
  if (threadIdx.x == 0) dbias[oc] += s;
}

// How many output positions one product covers: all of them when the column buffer allows.
int position_slice(const Conv2dShape& s) {
  const long K = (long)s.IC * s.KH * s.KW, P = (long)s.out_h() * s.out_w();
  return (int)std::max(1L, std::min(P, kColumnBudget / K));
}

// ---- GroupNorm: statistics per (image, group) in one block each --------------------------------

__global__ void groupnorm_stats_kernel(float* mean, float* rstd, const bf16* x, int C, int HW, int G) {
  const long bg = blockIdx.x;  // b * G + g
  const long n = (long)(C / G) * HW;
  const bf16* p = x + bg * n;  // a group's channels are consecutive: one contiguous run
  float s = 0.0f;
  for (long i = threadIdx.x; i < n; i += blockDim.x) s += __bfloat162float(p[i]);
  const float m = block_sum(s) / n;
  float v = 0.0f;
  for (long i = threadIdx.x; i < n; i += blockDim.x) {
    const float d = __bfloat162float(p[i]) - m;
    v += d * d;
  }
  v = block_sum(v);
  if (threadIdx.x == 0) {
    mean[bg] = m;
    rstd[bg] = rsqrtf(v / n + kGroupNormEps);
  }
}

__global__ void groupnorm_apply_kernel(bf16* out, const bf16* x, const float* mean, const float* rstd,
                                       const bf16* gamma, const bf16* beta, int C, int HW, int G, long total) {
  GRID_STRIDE(i, total) {
    const int c = (int)((i / HW) % C);
    const long b = i / ((long)C * HW);
    const long bg = b * G + c / (C / G);
    const float xhat = (__bfloat162float(x[i]) - mean[bg]) * rstd[bg];
    out[i] = __float2bfloat16(xhat * __bfloat162float(gamma[c]) + __bfloat162float(beta[c]));
  }
}

// Per (image, group): sums of dy*gamma and dy*gamma*xhat, the two means dx needs.
__global__ void groupnorm_backward_sums_kernel(float* sums, const bf16* dout, const bf16* x, const float* mean,
                                               const float* rstd, const bf16* gamma, int C, int HW, int G) {
  const long bg = blockIdx.x;
  const int cg = C / G, g = (int)(bg % G);
  const long n = (long)cg * HW, base = bg * n;
  float s1 = 0.0f, s2 = 0.0f;
  for (long i = threadIdx.x; i < n; i += blockDim.x) {
    const int c = g * cg + (int)(i / HW);
    const float dyg = __bfloat162float(dout[base + i]) * __bfloat162float(gamma[c]);
    const float xhat = (__bfloat162float(x[base + i]) - mean[bg]) * rstd[bg];
    s1 += dyg;
    s2 += dyg * xhat;
  }
  s1 = block_sum(s1);
  s2 = block_sum(s2);
  if (threadIdx.x == 0) {
    sums[2 * bg] = s1 / n;
    sums[2 * bg + 1] = s2 / n;
  }
}

__global__ void groupnorm_backward_dx_kernel(bf16* dx, const bf16* dout, const bf16* x, const float* mean,
                                             const float* rstd, const bf16* gamma, const float* sums, int C, int HW,
                                             int G, long total) {
  GRID_STRIDE(i, total) {
    const int c = (int)((i / HW) % C);
    const long b = i / ((long)C * HW);
    const long bg = b * G + c / (C / G);
    const float r = rstd[bg], xhat = (__bfloat162float(x[i]) - mean[bg]) * r;
    const float dyg = __bfloat162float(dout[i]) * __bfloat162float(gamma[c]);
    const float add = r * (dyg - sums[2 * bg] - xhat * sums[2 * bg + 1]);
    dx[i] = __float2bfloat16(__bfloat162float(dx[i]) + add);
  }
}

// dgamma[c] += sum dy*xhat and dbeta[c] += sum dy over images and positions: one block per channel.
__global__ void groupnorm_backward_affine_kernel(float* dgamma, float* dbeta, const bf16* dout, const bf16* x,
                                                 const float* mean, const float* rstd, int B, int C, int HW, int G) {
  const int c = blockIdx.x;
  float sg = 0.0f, sb = 0.0f;
  for (int b = 0; b < B; b++) {
    const long bg = (long)b * G + c / (C / G), base = ((long)b * C + c) * HW;
    for (long p = threadIdx.x; p < HW; p += blockDim.x) {
      const float dy = __bfloat162float(dout[base + p]);
      sg += dy * (__bfloat162float(x[base + p]) - mean[bg]) * rstd[bg];
      sb += dy;
    }
  }
  sg = block_sum(sg);
  sb = block_sum(sb);
  if (threadIdx.x == 0) {
    if (dgamma) dgamma[c] += sg;
    if (dbeta) dbeta[c] += sb;
  }
}

__global__ void upsample_forward_kernel(bf16* out, const bf16* in, int H, int W, long total) {
  GRID_STRIDE(i, total) {  // over out [B*C, 2H, 2W]
    const int x = (int)(i % (2 * W)), y = (int)((i / (2 * W)) % (2 * H));
    const long bc = i / (4L * H * W);
    out[i] = in[(bc * H + y / 2) * W + x / 2];
  }
}
__global__ void upsample_backward_kernel(bf16* dx, const bf16* dout, int H, int W, long total) {
  GRID_STRIDE(i, total) {  // over dx [B*C, H, W]
    const int x = (int)(i % W), y = (int)((i / W) % H);
    const long bc = i / ((long)H * W);
    const bf16* d = dout + (bc * 2 * H + 2 * y) * 2 * W + 2 * x;
    const float s = __bfloat162float(d[0]) + __bfloat162float(d[1]) + __bfloat162float(d[2 * W]) + __bfloat162float(d[2 * W + 1]);
    dx[i] = __float2bfloat16(__bfloat162float(dx[i]) + s);
  }
}

}  // namespace

void conv2d_forward(bf16* out, const bf16* inp, const bf16* W, const bf16* bias, const Conv2dShape& s) {
  const int K = s.IC * s.KH * s.KW;
  const long P = (long)s.out_h() * s.out_w();
  const int slice = position_slice(s);
  DeviceTemp col((size_t)K * slice * sizeof(bf16), "a convolution's column buffer");
  for (int b = 0; b < s.B; b++) {
    const bf16* img = inp + (long)b * s.IC * s.H * s.W;
    bf16* o = out + (long)b * s.OC * P;
    for (long p0 = 0; p0 < P; p0 += slice) {
      const int n = (int)std::min<long>(slice, P - p0);
      im2col_kernel<<<grid_1d((long)K * n), 256>>>((bf16*)col.p, img, s, s.out_w(), (int)p0, n);
      cudaCheckLaunch();
      // o[:, p0 : p0 + n] = W [OC, K] @ col [K, n]
      gemm(o + p0, GemmOut::BF16, (int)P, W, K, false, (const bf16*)col.p, n, false, s.OC, n, K, 1.0f, 0.0f);
    }
  }
  if (bias) {
    const long total = (long)s.B * s.OC * P;
    add_channel_bias_kernel<<<grid_1d(total), 256>>>(out, bias, s.OC, P, total);
    cudaCheckLaunch();
  }
}

void conv2d_backward(bf16* dinp, float* dW, float* dbias, const bf16* dout, const bf16* inp, const bf16* W,
                     const Conv2dShape& s) {
  const int K = s.IC * s.KH * s.KW;
  const long P = (long)s.out_h() * s.out_w();
  if (dbias) {
    channel_sum_kernel<<<s.OC, 256>>>(dbias, dout, s.B, s.OC, P);
    cudaCheckLaunch();
  }
  if (!dinp && !dW) return;
  const int slice = position_slice(s);
  DeviceTemp col((size_t)K * slice * sizeof(bf16), "a convolution's column buffer");
  DeviceTemp dcol(dinp ? (size_t)K * slice * sizeof(float) : 1, "a convolution's column gradient");
  for (int b = 0; b < s.B; b++) {
    const bf16* img = inp + (long)b * s.IC * s.H * s.W;
    const bf16* d = dout + (long)b * s.OC * P;
    for (long p0 = 0; p0 < P; p0 += slice) {
      const int n = (int)std::min<long>(slice, P - p0);
      if (dW) {
        im2col_kernel<<<grid_1d((long)K * n), 256>>>((bf16*)col.p, img, s, s.out_w(), (int)p0, n);
        cudaCheckLaunch();
        // dW [OC, K] += dout[:, slice] [OC, n] @ col^T [n, K]
        gemm(dW, GemmOut::F32, K, d + p0, (int)P, false, (const bf16*)col.p, n, true, s.OC, K, n, 1.0f, 1.0f);
      }
      if (dinp) {
        // dcol [K, n] = W^T [K, OC] @ dout[:, slice] [OC, n]
        gemm(dcol.p, GemmOut::F32, n, W, K, true, d + p0, (int)P, false, K, n, s.OC, 1.0f, 0.0f);
        col2im_kernel<<<grid_1d((long)s.IC * s.H * s.W), 256>>>(dinp + (long)b * s.IC * s.H * s.W, (const float*)dcol.p, s,
                                                              s.out_h(), s.out_w(), (int)p0, n);
        cudaCheckLaunch();
      }
    }
  }
}

void groupnorm_forward(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* gamma, const bf16* beta, int B,
                       int C, int HW, int G) {
  if (G <= 0 || C % G) fail("groupnorm: " + std::to_string(G) + " groups do not divide " + std::to_string(C) + " channels");
  const long total = (long)B * C * HW;
  if (total == 0) return;
  groupnorm_stats_kernel<<<B * G, 256>>>(mean, rstd, inp, C, HW, G);
  cudaCheckLaunch();
  groupnorm_apply_kernel<<<grid_1d(total), 256>>>(out, inp, mean, rstd, gamma, beta, C, HW, G, total);
  cudaCheckLaunch();
}

void groupnorm_backward(bf16* dinp, float* dgamma, float* dbeta, const bf16* dout, const bf16* inp, const float* mean,
                        const float* rstd, const bf16* gamma, int B, int C, int HW, int G) {
  const long total = (long)B * C * HW;
  if (total == 0) return;
  if (dinp) {
    DeviceTemp sums((size_t)2 * B * G * sizeof(float), "GroupNorm's backward sums");
    groupnorm_backward_sums_kernel<<<B * G, 256>>>((float*)sums.p, dout, inp, mean, rstd, gamma, C, HW, G);
    cudaCheckLaunch();
    groupnorm_backward_dx_kernel<<<grid_1d(total), 256>>>(dinp, dout, inp, mean, rstd, gamma, (const float*)sums.p, C, HW,
                                                       G, total);
    cudaCheckLaunch();
  }
  if (dgamma || dbeta) {
    groupnorm_backward_affine_kernel<<<C, 256>>>(dgamma, dbeta, dout, inp, mean, rstd, B, C, HW, G);
    cudaCheckLaunch();
  }
}

void upsample_nearest2x_forward(bf16* out, const bf16* inp, int B, int C, int H, int W) {
  const long total = 4L * B * C * H * W;
  if (total == 0) return;
  upsample_forward_kernel<<<grid_1d(total), 256>>>(out, inp, H, W, total);
  cudaCheckLaunch();
}

void upsample_nearest2x_backward(bf16* dinp, const bf16* dout, int B, int C, int H, int W) {
  const long total = (long)B * C * H * W;
  if (!dinp || total == 0) return;
  upsample_backward_kernel<<<grid_1d(total), 256>>>(dinp, dout, H, W, total);
  cudaCheckLaunch();
}

}  // namespace gpu
}  // namespace graft
