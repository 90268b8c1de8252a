// CPU reference of the image operations (fp32, NCHW); shapes and conventions are in ops_image.h.
//
// As in ops.cpp: sums over many values are accumulated in double, and every parallel loop gives
// each output element to one thread that sums in a fixed order, so results do not depend on the
// thread count (sgemm is deterministic for a given OpenBLAS thread count). Convolutions are
// im2col + sgemm over as many whole images as fit the column buffer; the loops around sgemm stay
// serial because OpenBLAS threads itself.
#include "ops/cpu_image_ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/common.h"

namespace graft {

Conv2dShape conv2d_shape(int B, int IC, int H, int W, int OC, int K, int pad, int stride) {
  Conv2dShape s;
  s.B = B, s.IC = IC, s.H = H, s.W = W, s.OC = OC, s.KH = K, s.KW = K, s.stride = stride;
  s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = pad;
  return s;
}

namespace cpu {

static const long PARALLEL_MIN_WORK = 1 << 14;

// The column buffer holds at most this many floats (64 MB); larger images are done in slices of
// output positions, so a real 1024 px FLUX VAE layer does not need gigabytes of im2col scratch.
static const long IM2COL_MAX_FLOATS = 1L << 24;

static const float GROUPNORM_EPS = 1e-6f;

// ----------------------------------------------------------------------------------------------
// conv2d


static void check_conv(const char* op, const Conv2dShape& s) {
  if (s.B < 0 || s.IC <= 0 || s.OC <= 0 || s.KH <= 0 || s.KW <= 0 || s.stride <= 0 || s.pad_top < 0 ||
      s.pad_left < 0 || s.pad_bottom < 0 || s.pad_right < 0)
    fail(std::string(op) + ": invalid geometry (channels, kernel and stride must be positive, padding not negative)");
  if (s.H + s.pad_top + s.pad_bottom < s.KH || s.W + s.pad_left + s.pad_right < s.KW)
    fail(std::string(op) + ": input " + std::to_string(s.H) + "x" + std::to_string(s.W) +
         " (padded) is smaller than the kernel " + std::to_string(s.KH) + "x" + std::to_string(s.KW));
}

// A 1x1 stride-1 unpadded conv reads its input as the column matrix directly: no im2col.
static bool is_pointwise(const Conv2dShape& s) {
  return s.KH == 1 && s.KW == 1 && s.stride == 1 && s.pad_top == 0 && s.pad_left == 0 && s.pad_bottom == 0 &&
         s.pad_right == 0;
}

// How one sgemm covers the batch: `images` whole images side by side in the column matrix when they
// fit the column buffer (small layers, such as the demo autoencoder's, then make one large sgemm
// instead of B small ones, which OpenBLAS threads badly), else one image at a time in slices of
// `positions` output positions.
struct ConvTiling {
  int images, positions;
};
static ConvTiling conv_tiling(const Conv2dShape& s) {
  const long K = (long)s.IC * s.KH * s.KW, P = (long)s.out_h() * s.out_w();
  if (K * P <= IM2COL_MAX_FLOATS) {
    long nb = IM2COL_MAX_FLOATS / (K * P);
    return {(int)(nb < s.B ? nb : (s.B > 0 ? s.B : 1)), (int)P};
  }
  long n = IM2COL_MAX_FLOATS / K;
  return {1, (int)(n < 1 ? 1 : n)};
}

// The output columns [ox0, ox1) of one output row whose input column ix = ox*stride - pad_left + kw
// lies inside the image; the others read padding.
static void valid_columns(const Conv2dShape& s, int kw, int* ox0, int* ox1) {
  const int lo = s.pad_left - kw, hi = s.W - 1 + s.pad_left - kw;  // ox*stride must lie in [lo, hi]
  const int a = lo <= 0 ? 0 : (lo + s.stride - 1) / s.stride, b = hi < 0 ? -1 : hi / s.stride;
  *ox0 = a, *ox1 = b + 1 > a ? b + 1 : a;
}

// col[k, j*n + p - p0] for k = (ic*KH + kh)*KW + kw, image j of the nb images at img (each
// IC*H*W floats) and output positions p in [p0, p1), n = p1 - p0; zero where the kernel reads
// padding. One thread per (image, input channel): its KH*KW rows, filled an output row at a time.
static void im2col(float* col, const float* img, int nb, const Conv2dShape& s, int p0, int p1) {
  const int OW = s.out_w(), n = p1 - p0;
  const long ld = (long)nb * n;
#pragma omp parallel for collapse(2) schedule(static) if ((long)nb * s.IC * s.KH * s.KW * n >= PARALLEL_MIN_WORK)
  for (int j = 0; j < nb; j++)
    for (int ic = 0; ic < s.IC; ic++) {
      const float* plane = img + ((size_t)j * s.IC + ic) * s.H * s.W;
      for (int kh = 0; kh < s.KH; kh++)
        for (int kw = 0; kw < s.KW; kw++) {
          float* row = col + ((size_t)(ic * s.KH + kh) * s.KW + kw) * ld + (size_t)j * n - p0;
          int v0, v1;
          valid_columns(s, kw, &v0, &v1);
          for (int oy = p0 / OW; oy * OW < p1; oy++) {
            const int a = std::max(p0 - oy * OW, 0), b = std::min(p1 - oy * OW, OW);  // this row's slice
            float* dst = row + (size_t)oy * OW;
            const int iy = oy * s.stride - s.pad_top + kh;
            const int c0 = iy >= 0 && iy < s.H ? std::clamp(v0, a, b) : b, c1 = std::clamp(v1, c0, b);
            const float* src = plane + (size_t)iy * s.W - s.pad_left + kw;
            for (int ox = a; ox < c0; ox++) dst[ox] = 0.0f;
            for (int ox = c0; ox < c1; ox++) dst[ox] = src[ox * s.stride];
            for (int ox = c1; ox < b; ox++) dst[ox] = 0.0f;
          }
        }
    }
}

// The adjoint of im2col: img[j, ic, iy, ix] += col[k, j*n + p - p0] over every (k, p) that read
// it. One thread per (image, input channel), so every image element has one writer.
static void col2im_add(float* img, const float* col, int nb, const Conv2dShape& s, int p0, int p1) {
  const int OW = s.out_w(), n = p1 - p0;
  const long ld = (long)nb * n;
#pragma omp parallel for collapse(2) schedule(static) if ((long)nb * s.IC * s.KH * s.KW * n >= PARALLEL_MIN_WORK)
  for (int j = 0; j < nb; j++)
    for (int ic = 0; ic < s.IC; ic++) {
      float* plane = img + ((size_t)j * s.IC + ic) * s.H * s.W;
      for (int kh = 0; kh < s.KH; kh++)
        for (int kw = 0; kw < s.KW; kw++) {
          const float* row = col + ((size_t)(ic * s.KH + kh) * s.KW + kw) * ld + (size_t)j * n - p0;
          int v0, v1;
          valid_columns(s, kw, &v0, &v1);
          for (int oy = p0 / OW; oy * OW < p1; oy++) {
            const int iy = oy * s.stride - s.pad_top + kh;
            if (iy < 0 || iy >= s.H) continue;
            const int a = std::max(p0 - oy * OW, 0), b = std::min(p1 - oy * OW, OW);
            const int c0 = std::clamp(v0, a, b), c1 = std::clamp(v1, c0, b);
            const float* from = row + (size_t)oy * OW;
            float* dst = plane + (size_t)iy * s.W - s.pad_left + kw;
            for (int ox = c0; ox < c1; ox++) dst[ox * s.stride] += from[ox];
          }
        }
    }
}

// Scratch for column matrices, kept between calls: allocating (and zeroing) tens of MB per conv
// costs more than the conv itself at the demo autoencoder's size. Every user overwrites what it reads.
static float* scratch(int which, size_t n) {
  thread_local std::vector<float> buf[3];
  if (buf[which].size() < n) buf[which].resize(n);
  return buf[which].data();
}

// Between [nb, C, P] (nb images) and the [C, nb*P] matrix of their columns side by side.
static void images_to_columns(float* cols, const float* imgs, int nb, int C, int P) {
#pragma omp parallel for collapse(2) schedule(static) if ((long)nb * C * P >= PARALLEL_MIN_WORK)
  for (int c = 0; c < C; c++)
    for (int j = 0; j < nb; j++)
      std::memcpy(cols + ((size_t)c * nb + j) * P, imgs + ((size_t)j * C + c) * P, sizeof(float) * P);
}
static void columns_to_images(float* imgs, const float* cols, int nb, int C, int P) {
#pragma omp parallel for collapse(2) schedule(static) if ((long)nb * C * P >= PARALLEL_MIN_WORK)
  for (int j = 0; j < nb; j++)
    for (int c = 0; c < C; c++)
      std::memcpy(imgs + ((size_t)j * C + c) * P, cols + ((size_t)c * nb + j) * P, sizeof(float) * P);
}

void conv2d_forward(float* out, const float* inp, const float* W, const float* bias, const Conv2dShape& s) {
  check_conv("conv2d_forward", s);
  const int P = s.out_h() * s.out_w(), K = s.IC * s.KH * s.KW;
  const ConvTiling t = conv_tiling(s);
  const bool direct = t.images == 1 && is_pointwise(s);
  float* col = direct ? nullptr : scratch(0, (size_t)K * t.images * t.positions);
  float* res = t.images > 1 ? scratch(1, (size_t)s.OC * t.images * P) : nullptr;
  for (int b0 = 0; b0 < s.B; b0 += t.images) {
    const int nb = b0 + t.images <= s.B ? t.images : s.B - b0;
    const float* img = inp + (size_t)b0 * s.IC * s.H * s.W;
    float* o = out + (size_t)b0 * s.OC * P;
    if (nb > 1) {
      // res[OC, nb*P] = W[OC, K] @ col[K, nb*P], then into the images with the bias.
      im2col(col, img, nb, s, 0, P);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s.OC, nb * P, K, 1.0f, W, K, col, nb * P, 0.0f, res,
                  nb * P);
      columns_to_images(o, res, nb, s.OC, P);
      if (bias)
        for (int j = 0; j < nb; j++)
          for (int oc = 0; oc < s.OC; oc++) {
            float* r = o + ((size_t)j * s.OC + oc) * P;
            for (int p = 0; p < P; p++) r[p] += bias[oc];
          }
      continue;
    }
    for (int oc = 0; oc < s.OC; oc++) {
      float v = bias ? bias[oc] : 0.0f;
      for (int p = 0; p < P; p++) o[(size_t)oc * P + p] = v;
    }
    for (int p0 = 0; p0 < P; p0 += t.positions) {
      int p1 = p0 + t.positions < P ? p0 + t.positions : P, n = p1 - p0;
      const float* c = img + p0;
      int ldc = P;
      if (!direct) {
        im2col(col, img, 1, s, p0, p1);
        c = col, ldc = n;
      }
      // out[:, p0:p1] += W[OC, K] @ col[K, n]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s.OC, n, K, 1.0f, W, K, c, ldc, 1.0f, o + p0, P);
    }
  }
}

void conv2d_backward(float* dinp, float* dW, float* dbias, const float* dout, const float* inp, const float* W,
                     const Conv2dShape& s) {
  check_conv("conv2d_backward", s);
  const int P = s.out_h() * s.out_w(), K = s.IC * s.KH * s.KW;
  if (dbias) {
    // One thread per output channel, images then positions in order.
#pragma omp parallel for schedule(static) if ((long)s.B * s.OC * P >= PARALLEL_MIN_WORK)
    for (int oc = 0; oc < s.OC; oc++) {
      double sum = 0.0;
      for (int b = 0; b < s.B; b++) {
        const float* d = dout + ((size_t)b * s.OC + oc) * P;
        for (int p = 0; p < P; p++) sum += d[p];
      }
      dbias[oc] += (float)sum;
    }
  }
  if (!dinp && !dW) return;
  const ConvTiling t = conv_tiling(s);
  const bool direct = t.images == 1 && is_pointwise(s);
  const size_t cols = (size_t)K * t.images * t.positions;
  float* col = direct || !dW ? nullptr : scratch(0, cols);
  float* dcol = direct || !dinp ? nullptr : scratch(2, cols);
  float* dres = t.images > 1 ? scratch(1, (size_t)s.OC * t.images * P) : nullptr;
  for (int b0 = 0; b0 < s.B; b0 += t.images) {
    const int nb = b0 + t.images <= s.B ? t.images : s.B - b0;
    const float* img = inp + (size_t)b0 * s.IC * s.H * s.W;
    const float* d = dout + (size_t)b0 * s.OC * P;
    float* di = dinp ? dinp + (size_t)b0 * s.IC * s.H * s.W : nullptr;
    int ldd = P;
    if (nb > 1) {  // dout of the nb images as one [OC, nb*P] matrix
      images_to_columns(dres, d, nb, s.OC, P);
      d = dres, ldd = nb * P;
    }
    const int slice = nb > 1 ? P : t.positions;
    for (int p0 = 0; p0 < P; p0 += slice) {
      int p1 = p0 + slice < P ? p0 + slice : P, n = nb * (p1 - p0);
      if (dW) {
        const float* c = img + p0;
        int ldc = P;
        if (!direct) {
          im2col(col, img, nb, s, p0, p1);
          c = col, ldc = n;
        }
        // dW[OC, K] += dout[:, cols] @ col[K, cols]^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.OC, K, n, 1.0f, d + p0, ldd, c, ldc, 1.0f, dW, K);
      }
      if (di) {
        // dcol[K, cols] = W[OC, K]^T @ dout[:, cols]; for a direct pointwise conv dcol is dinp's own slice.
        if (direct) {
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, n, s.OC, 1.0f, W, K, d + p0, ldd, 1.0f, di + p0, P);
        } else {
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, n, s.OC, 1.0f, W, K, d + p0, ldd, 0.0f, dcol, n);
          col2im_add(di, dcol, nb, s, p0, p1);
        }
      }
    }
  }
}

// ----------------------------------------------------------------------------------------------
// GroupNorm. Group g of image b is the contiguous run of (C/G)*HW values starting at
// (b*C + g*C/G)*HW, so its statistics are one pass over a contiguous slice.

static void check_groups(const char* op, int C, int G) {
  if (G <= 0 || C % G != 0)
    fail(std::string(op) + ": " + std::to_string(G) + " groups do not divide " + std::to_string(C) + " channels");
}

void groupnorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* gamma,
                       const float* beta, int B, int C, int HW, int G) {
  check_groups("groupnorm_forward", C, G);
  const int Cg = C / G;
  const long n = (long)Cg * HW;
#pragma omp parallel for collapse(2) schedule(static) if ((long)B * C * HW >= PARALLEL_MIN_WORK)
  for (int b = 0; b < B; b++)
    for (int g = 0; g < G; g++) {
      size_t base = ((size_t)b * C + (size_t)g * Cg) * HW;
      const float* x = inp + base;
      double sum = 0.0;
      for (long i = 0; i < n; i++) sum += x[i];
      double mu = sum / n;
      double var = 0.0;  // two passes: no cancellation when the mean is large
      for (long i = 0; i < n; i++) var += (x[i] - mu) * (x[i] - mu);
      var /= n;
      float m = (float)mu, r = (float)(1.0 / std::sqrt(var + GROUPNORM_EPS));
      mean[(size_t)b * G + g] = m;
      rstd[(size_t)b * G + g] = r;
      for (int c = 0; c < Cg; c++) {
        int ch = g * Cg + c;
        const float* xc = x + (size_t)c * HW;
        float* oc = out + base + (size_t)c * HW;
        for (int i = 0; i < HW; i++) oc[i] = (xc[i] - m) * r * gamma[ch] + beta[ch];
      }
    }
}

void groupnorm_backward(float* dinp, float* dgamma, float* dbeta, const float* dout, const float* inp,
                        const float* mean, const float* rstd, const float* gamma, int B, int C, int HW, int G) {
  check_groups("groupnorm_backward", C, G);
  const int Cg = C / G;
  const long n = (long)Cg * HW;
  const long work = (long)B * C * HW;
  if (dgamma || dbeta) {
    // dgamma[c] = sum dout * xhat, dbeta[c] = sum dout over images and positions: one thread per channel.
#pragma omp parallel for schedule(static) if (work >= PARALLEL_MIN_WORK)
    for (int c = 0; c < C; c++) {
      int g = c / Cg;
      double sg = 0.0, sb = 0.0;
      for (int b = 0; b < B; b++) {
        const float* x = inp + ((size_t)b * C + c) * HW;
        const float* d = dout + ((size_t)b * C + c) * HW;
        float m = mean[(size_t)b * G + g], r = rstd[(size_t)b * G + g];
        for (int i = 0; i < HW; i++) {
          sg += (double)d[i] * ((x[i] - m) * r);
          sb += d[i];
        }
      }
      if (dgamma) dgamma[c] += (float)sg;
      if (dbeta) dbeta[c] += (float)sb;
    }
  }
  if (!dinp) return;
  // With dxhat = dout * gamma: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
  // the means taken over the group.
#pragma omp parallel for collapse(2) schedule(static) if (work >= PARALLEL_MIN_WORK)
  for (int b = 0; b < B; b++)
    for (int g = 0; g < G; g++) {
      size_t base = ((size_t)b * C + (size_t)g * Cg) * HW;
      float m = mean[(size_t)b * G + g], r = rstd[(size_t)b * G + g];
      double s1 = 0.0, s2 = 0.0;
      for (int c = 0; c < Cg; c++) {
        float gm = gamma[g * Cg + c];
        for (int i = 0; i < HW; i++) {
          size_t k = base + (size_t)c * HW + i;
          double dxh = (double)dout[k] * gm;
          s1 += dxh;
          s2 += dxh * ((inp[k] - m) * r);
        }
      }
      float mean_dxh = (float)(s1 / n), mean_dxh_xh = (float)(s2 / n);
      for (int c = 0; c < Cg; c++) {
        float gm = gamma[g * Cg + c];
        for (int i = 0; i < HW; i++) {
          size_t k = base + (size_t)c * HW + i;
          float xh = (inp[k] - m) * r;
          dinp[k] += r * (dout[k] * gm - mean_dxh - xh * mean_dxh_xh);
        }
      }
    }
}

// ----------------------------------------------------------------------------------------------
// Nearest 2x upsampling

void upsample_nearest2x_forward(float* out, const float* inp, int B, int C, int H, int W) {
  const int OW = 2 * W;
#pragma omp parallel for schedule(static) if ((long)B * C * H * W * 4 >= PARALLEL_MIN_WORK)
  for (long bc = 0; bc < (long)B * C; bc++) {
    const float* x = inp + (size_t)bc * H * W;
    float* o = out + (size_t)bc * 4 * H * W;
    for (int y = 0; y < 2 * H; y++)
      for (int xo = 0; xo < OW; xo++) o[(size_t)y * OW + xo] = x[(size_t)(y / 2) * W + xo / 2];
  }
}

void upsample_nearest2x_backward(float* dinp, const float* dout, int B, int C, int H, int W) {
  if (!dinp) return;
  const int OW = 2 * W;
#pragma omp parallel for schedule(static) if ((long)B * C * H * W * 4 >= PARALLEL_MIN_WORK)
  for (long bc = 0; bc < (long)B * C; bc++) {
    float* dx = dinp + (size_t)bc * H * W;
    const float* d = dout + (size_t)bc * 4 * H * W;
    for (int y = 0; y < H; y++)
      for (int x = 0; x < W; x++) {
        const float* d0 = d + (size_t)(2 * y) * OW + 2 * x;
        dx[(size_t)y * W + x] += (d0[0] + d0[1]) + (d0[OW] + d0[OW + 1]);
      }
  }
}

// ----------------------------------------------------------------------------------------------
// Channels <-> tokens (a transpose of the last two axes per image)

static void transpose_add(float* dst, const float* src, int B, int R, int Cc, bool accumulate) {
  // src [B, R, Cc] -> dst [B, Cc, R]
#pragma omp parallel for collapse(2) schedule(static) if ((long)B * R * Cc >= PARALLEL_MIN_WORK)
  for (int b = 0; b < B; b++)
    for (int c = 0; c < Cc; c++) {
      const float* s = src + (size_t)b * R * Cc + c;
      float* d = dst + ((size_t)b * Cc + c) * R;
      if (accumulate)
        for (int r = 0; r < R; r++) d[r] += s[(size_t)r * Cc];
      else
        for (int r = 0; r < R; r++) d[r] = s[(size_t)r * Cc];
    }
}

void channels_to_tokens_forward(float* out, const float* inp, int B, int C, int HW) {
  transpose_add(out, inp, B, C, HW, false);
}
void channels_to_tokens_backward(float* dinp, const float* dout, int B, int C, int HW) {
  if (dinp) transpose_add(dinp, dout, B, HW, C, true);
}
void tokens_to_channels_forward(float* out, const float* inp, int B, int C, int HW) {
  transpose_add(out, inp, B, HW, C, false);
}
void tokens_to_channels_backward(float* dinp, const float* dout, int B, int C, int HW) {
  if (dinp) transpose_add(dinp, dout, B, C, HW, true);
}

// ----------------------------------------------------------------------------------------------
// The diagonal Gaussian of the autoencoder

void gaussian_sample_forward(float* z, const float* mean, const float* logvar, const float* noise, long n) {
  for (long i = 0; i < n; ++i) z[i] = mean[i] + std::exp(0.5f * logvar[i]) * noise[i];
}

void gaussian_sample_backward(float* dmean, float* dlogvar, const float* dz, const float* logvar, const float* noise,
                              long n) {
  for (long i = 0; i < n; ++i) {
    if (dmean) dmean[i] += dz[i];
    if (dlogvar) dlogvar[i] += dz[i] * 0.5f * std::exp(0.5f * logvar[i]) * noise[i];
  }
}

float gaussian_kl_forward(const float* mean, const float* logvar, long n) {
  if (n <= 0) return 0.0f;
  double sum = 0.0;
  for (long i = 0; i < n; ++i) sum += 0.5 * ((double)mean[i] * mean[i] + std::exp((double)logvar[i]) - 1.0 - logvar[i]);
  return (float)(sum / n);
}

void gaussian_kl_backward(float* dmean, float* dlogvar, const float* mean, const float* logvar, long n, float dkl) {
  if (n <= 0) return;
  const float coef = dkl / (float)n;
  for (long i = 0; i < n; ++i) {
    if (dmean) dmean[i] += coef * mean[i];
    if (dlogvar) dlogvar[i] += coef * 0.5f * (std::exp(logvar[i]) - 1.0f);
  }
}

}  // namespace cpu
}  // namespace graft
