// CPU reference of the engine's operations (fp32, row-major); shapes and conventions are in ops.h.
//
// This file is the yardstick the CUDA kernels are tested against, so it favours being obviously
// right over being fast: sums over many values (means, column sums, softmax denominators) are
// accumulated in double, and every parallel loop gives each output element to exactly one thread,
// which sums in a fixed order. Results are therefore bitwise identical from run to run, whatever
// the thread count (the sgemm calls are deterministic for a given OpenBLAS thread count).
// Matrix products go to OpenBLAS; everything else is plain loops.
#include "ops/cpu_ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/common.h"

namespace graft::cpu {

// Below this many elements of work a thread team costs more than it saves.
static const long PARALLEL_MIN_WORK = 1 << 14;

// ----------------------------------------------------------------------------------------------
// linear

void linear_forward(float* out, const float* inp, const float* W, const float* bias, int N, int IC, int OC) {
  // Start every row from the bias (or zero), then let sgemm add inp @ W^T on top (beta = 1).
  for (int n = 0; n < N; n++) {
    float* out_row = out + (size_t)n * OC;
    if (bias) std::memcpy(out_row, bias, sizeof(float) * OC);
    else std::memset(out_row, 0, sizeof(float) * OC);
  }
  if (N == 0 || OC == 0 || IC == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, IC, 1.0f, inp, IC, W, IC, 1.0f, out, OC);
}

void linear_backward(float* dinp, float* dW, float* dbias, const float* dout, const float* inp, const float* W,
                     int N, int IC, int OC) {
  if (N == 0 || OC == 0 || IC == 0) return;
  // dinp[N,IC] += dout[N,OC] @ W[OC,IC]
  if (dinp) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC, 1.0f, dout, OC, W, IC, 1.0f, dinp, IC);
  // dW[OC,IC] += dout^T[OC,N] @ inp[N,IC]
  if (dW) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dW, IC);
  // dbias[o] += sum over rows of dout[:, o]: one thread per column, rows in order.
  if (dbias) {
#pragma omp parallel for schedule(static) if ((long)N * OC >= PARALLEL_MIN_WORK)
    for (int o = 0; o < OC; o++) {
      double sum = 0.0;
      for (int n = 0; n < N; n++) sum += dout[(size_t)n * OC + o];
      dbias[o] += (float)sum;
    }
  }
}

// Rows of a weight in another form, decoded as needed: blocks of at most this many values (16 MB in
// fp32) through one buffer per thread.
static const long DECODE_BLOCK = 1L << 22;

// Calls fn(w, o0, r) for consecutive blocks of r rows of W [OC, IC] from row o0, w those rows in fp32.
template <typename Fn>
static void for_each_row_block(const WeightRows& rows_of, int IC, int OC, Fn fn) {
  thread_local std::vector<float> buf;
  const int rows = (int)std::max(1L, std::min<long>(OC, DECODE_BLOCK / IC));
  if (buf.size() < (size_t)rows * IC) buf.resize((size_t)rows * IC);
  for (int o0 = 0; o0 < OC; o0 += rows) {
    const int r = std::min(rows, OC - o0);
    rows_of(buf.data(), o0, r);
    fn(buf.data(), o0, r);
  }
}

void linear_forward_decoded(float* out, const float* inp, const WeightRows& rows, const float* bias, int N, int IC,
                            int OC) {
  for (int n = 0; n < N; n++) {
    float* out_row = out + (size_t)n * OC;
    if (bias) std::memcpy(out_row, bias, sizeof(float) * OC);
    else std::memset(out_row, 0, sizeof(float) * OC);
  }
  if (N == 0 || OC == 0 || IC == 0) return;
  // out[:, o0 : o0 + r] += inp @ w^T
  for_each_row_block(rows, IC, OC, [&](const float* w, int o0, int r) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, r, IC, 1.0f, inp, IC, w, IC, 1.0f, out + o0, OC);
  });
}

void linear_backward_decoded(float* dinp, const float* dout, const WeightRows& rows, int N, int IC, int OC) {
  if (!dinp || N == 0 || OC == 0 || IC == 0) return;
  // dinp += dout[:, o0 : o0 + r] @ w
  for_each_row_block(rows, IC, OC, [&](const float* w, int o0, int r) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, r, 1.0f, dout + o0, OC, w, IC, 1.0f, dinp, IC);
  });
}

// ----------------------------------------------------------------------------------------------
// LoRA

void lora_forward(float* out, int out_stride, float* h, const float* inp, const float* A, const float* B,
                  int N, int IC, int OC, int rank, float scale) {
  if (N == 0 || rank == 0) return;
  // h[N,rank] = inp[N,IC] @ A[rank,IC]^T   (beta = 0: h is overwritten)
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, rank, IC, 1.0f, inp, IC, A, IC, 0.0f, h, rank);
  // out[N, 0:OC] (row stride out_stride) += scale * h[N,rank] @ B[OC,rank]^T
  if (OC == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, rank, scale, h, rank, B, rank, 1.0f, out, out_stride);
}

void lora_backward(float* dinp, float* dA, float* dB, const float* dout, int dout_stride, const float* h,
                   const float* inp, const float* A, const float* B, int N, int IC, int OC, int rank, float scale) {
  if (N == 0 || rank == 0 || OC == 0) return;
  // dB[OC,rank] += scale * dout^T[OC,N] @ h[N,rank]
  if (dB)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, rank, N, scale, dout, dout_stride, h, rank, 1.0f, dB,
                rank);
  if (!dA && !dinp) return;
  if (IC == 0) return;
  // dh[N,rank] = scale * dout[N,OC] @ B[OC,rank]: small (rank columns), so a scratch buffer is fine here.
  std::vector<float> dh((size_t)N * rank);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, rank, OC, scale, dout, dout_stride, B, rank, 0.0f,
              dh.data(), rank);
  // dA[rank,IC] += dh^T[rank,N] @ inp[N,IC]
  if (dA) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rank, IC, N, 1.0f, dh.data(), rank, inp, IC, 1.0f, dA, IC);
  // dinp[N,IC] += dh[N,rank] @ A[rank,IC]
  if (dinp)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, rank, 1.0f, dh.data(), rank, A, IC, 1.0f, dinp, IC);
}

// ----------------------------------------------------------------------------------------------
// LoKr: the Kronecker product is formed once per call ([a*b, c*d], as big as the layer's slice) and
// multiplied as a dense weight; LyCORIS does the same (it merges it into the weight).

static std::vector<float> kron(const float* w1, const float* w2, int a, int b, int c, int d, float scale) {
  std::vector<float> D((size_t)a * b * c * d);
  const int in = c * d;
  for (int i = 0; i < a; ++i)
    for (int j = 0; j < b; ++j)
      for (int k = 0; k < c; ++k) {
        const float s = scale * w1[i * c + k];
        float* row = D.data() + (size_t)(i * b + j) * in + k * d;
        for (int l = 0; l < d; ++l) row[l] = s * w2[j * d + l];
      }
  return D;
}

void lokr_forward(float* out, int out_stride, const float* inp, const float* w1, const float* w2, int N, int a, int b,
                  int c, int d, float scale) {
  const int OC = a * b, IC = c * d;
  if (N == 0 || OC == 0 || IC == 0) return;
  const std::vector<float> D = kron(w1, w2, a, b, c, d, scale);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, IC, 1.0f, inp, IC, D.data(), IC, 1.0f, out, out_stride);
}

void lokr_backward(float* dinp, float* dw1, float* dw2, const float* dout, int dout_stride, const float* inp,
                   const float* w1, const float* w2, int N, int a, int b, int c, int d, float scale) {
  const int OC = a * b, IC = c * d;
  if (N == 0 || OC == 0 || IC == 0) return;
  if (dinp) {
    const std::vector<float> D = kron(w1, w2, a, b, c, d, scale);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC, 1.0f, dout, dout_stride, D.data(), IC, 1.0f, dinp,
                IC);
  }
  if (!dw1 && !dw2) return;
  std::vector<float> dD((size_t)OC * IC);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N, 1.0f, dout, dout_stride, inp, IC, 0.0f, dD.data(), IC);
  for (int i = 0; i < a; ++i)
    for (int k = 0; k < c; ++k) {
      double s1 = 0.0;
      for (int j = 0; j < b; ++j) {
        const float* row = dD.data() + (size_t)(i * b + j) * IC + k * d;
        for (int l = 0; l < d; ++l) {
          s1 += (double)row[l] * w2[j * d + l];
          if (dw2) dw2[j * d + l] += scale * row[l] * w1[i * c + k];
        }
      }
      if (dw1) dw1[i * c + k] += (float)(scale * s1);
    }
}

void matmul_f32(float* C, const float* A, bool transA, const float* B, bool transB, int M, int N, int K, float beta) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A,
              transA ? M : K, B, transB ? K : N, beta, C, N);
}

// ----------------------------------------------------------------------------------------------
// LayerNorm (no affine) and RMSNorm; RMSNorm's eps is 1e-6 as FLUX and T5.

static const double NORM_EPS = 1e-6;

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, int N, int C, float eps) {
#pragma omp parallel for schedule(static) if ((long)N * C >= PARALLEL_MIN_WORK)
  for (int n = 0; n < N; n++) {
    const float* x = inp + (size_t)n * C;
    float* y = out + (size_t)n * C;
    double sum = 0.0;
    for (int c = 0; c < C; c++) sum += x[c];
    double m = sum / C;
    double var = 0.0;  // biased variance (divide by C), as torch's LayerNorm
    for (int c = 0; c < C; c++) var += (x[c] - m) * (x[c] - m);
    var /= C;
    double r = 1.0 / std::sqrt(var + (double)eps);
    for (int c = 0; c < C; c++) y[c] = (float)((x[c] - m) * r);
    mean[n] = (float)m;
    rstd[n] = (float)r;
  }
}

void layernorm_backward(float* dinp, const float* dout, const float* inp, const float* mean, const float* rstd,
                        int N, int C) {
  if (!dinp) return;
  // With xhat = (x - mean) * rstd and y = xhat:
  //   dx = rstd * (dy - mean(dy) - xhat * mean(dy * xhat))
#pragma omp parallel for schedule(static) if ((long)N * C >= PARALLEL_MIN_WORK)
  for (int n = 0; n < N; n++) {
    const float* x = inp + (size_t)n * C;
    const float* dy = dout + (size_t)n * C;
    float* dx = dinp + (size_t)n * C;
    double m = mean[n], r = rstd[n];
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (int c = 0; c < C; c++) {
      double xhat = (x[c] - m) * r;
      sum_dy += dy[c];
      sum_dy_xhat += dy[c] * xhat;
    }
    double mean_dy = sum_dy / C, mean_dy_xhat = sum_dy_xhat / C;
    for (int c = 0; c < C; c++) {
      double xhat = (x[c] - m) * r;
      dx[c] += (float)(r * (dy[c] - mean_dy - xhat * mean_dy_xhat));
    }
  }
}

void rmsnorm_forward(float* out, float* rrms, const float* inp, const float* scale, int N, int C, float eps) {
#pragma omp parallel for schedule(static) if ((long)N * C >= PARALLEL_MIN_WORK)
  for (int n = 0; n < N; n++) {
    const float* x = inp + (size_t)n * C;
    float* y = out + (size_t)n * C;
    double sum_sq = 0.0;
    for (int c = 0; c < C; c++) sum_sq += (double)x[c] * x[c];
    float r = (float)(1.0 / std::sqrt(sum_sq / C + (double)eps));
    // FLUX rounds x * rrms before applying the scale: (x * rrms).to(dtype) * scale.
    for (int c = 0; c < C; c++) y[c] = (x[c] * r) * scale[c];
    rrms[n] = r;
  }
}

void rmsnorm_backward(float* dinp, float* dscale, const float* dout, const float* inp, const float* scale,
                      const float* rrms, int N, int C) {
  // y_c = x_c * r * s_c with r = (mean(x^2) + eps)^(-1/2), dr/dx_j = -r^3 x_j / C, so
  //   dx_j = r * s_j * dy_j - r^3 * x_j / C * sum_c dy_c * s_c * x_c
  if (dinp) {
#pragma omp parallel for schedule(static) if ((long)N * C >= PARALLEL_MIN_WORK)
    for (int n = 0; n < N; n++) {
      const float* x = inp + (size_t)n * C;
      const float* dy = dout + (size_t)n * C;
      float* dx = dinp + (size_t)n * C;
      double r = rrms[n];
      double dot = 0.0;
      for (int c = 0; c < C; c++) dot += (double)dy[c] * scale[c] * x[c];
      double k = r * r * r * dot / C;
      for (int c = 0; c < C; c++) dx[c] += (float)(r * scale[c] * dy[c] - k * x[c]);
    }
  }
  // dscale_c += sum over rows of dy * x * r: one thread per column, rows in order.
  if (dscale) {
#pragma omp parallel for schedule(static) if ((long)N * C >= PARALLEL_MIN_WORK)
    for (int c = 0; c < C; c++) {
      double sum = 0.0;
      for (int n = 0; n < N; n++) sum += (double)dout[(size_t)n * C + c] * inp[(size_t)n * C + c] * rrms[n];
      dscale[c] += (float)sum;
    }
  }
}

// ----------------------------------------------------------------------------------------------
// RoPE

void rope_table(float* cos_sin, const float* ids, int P, const int* axes_dim, int n_axes, float theta) {
  int half_D = 0;
  for (int a = 0; a < n_axes; a++) {
    if (axes_dim[a] % 2 != 0)
      fail("rope_table: axes_dim[" + std::to_string(a) + "] = " + std::to_string(axes_dim[a]) + " must be even");
    half_D += axes_dim[a] / 2;
  }
  // As FLUX's rope(): frequencies and angles in double, only the cos/sin stored as float.
#pragma omp parallel for schedule(static) if ((long)P * half_D >= PARALLEL_MIN_WORK)
  for (int p = 0; p < P; p++) {
    float* row = cos_sin + (size_t)p * half_D * 2;
    int pair = 0;  // axis 0's pairs first, then axis 1's, ... (EmbedND concatenates axes in order)
    for (int a = 0; a < n_axes; a++) {
      int d = axes_dim[a];
      double pos = ids[(size_t)p * n_axes + a];
      for (int i = 0; i < d / 2; i++, pair++) {
        double omega = 1.0 / std::pow((double)theta, (2.0 * i) / d);
        double angle = pos * omega;
        row[2 * pair + 0] = (float)std::cos(angle);
        row[2 * pair + 1] = (float)std::sin(angle);
      }
    }
  }
}

void rope_forward(float* out, const float* inp, const float* cos_sin, int B, int L, int H, int D) {
  int half_D = D / 2;
  long rows = (long)B * L;
#pragma omp parallel for schedule(static) if (rows * H * D >= PARALLEL_MIN_WORK)
  for (long bl = 0; bl < rows; bl++) {
    const float* cs = cos_sin + (size_t)bl * half_D * 2;
    for (int h = 0; h < H; h++) {
      size_t off = ((size_t)bl * H + h) * D;
      const float* x = inp + off;
      float* y = out + off;
      for (int i = 0; i < half_D; i++) {
        float c = cs[2 * i], s = cs[2 * i + 1];
        float x0 = x[2 * i], x1 = x[2 * i + 1];  // read both before writing: works in place too
        y[2 * i] = c * x0 - s * x1;
        y[2 * i + 1] = s * x0 + c * x1;
      }
    }
  }
}

void rope_backward(float* dinp, const float* dout, const float* cos_sin, int B, int L, int H, int D) {
  if (!dinp) return;
  // The rotation's transpose: rotate dout by -angle.
  int half_D = D / 2;
  long rows = (long)B * L;
#pragma omp parallel for schedule(static) if (rows * H * D >= PARALLEL_MIN_WORK)
  for (long bl = 0; bl < rows; bl++) {
    const float* cs = cos_sin + (size_t)bl * half_D * 2;
    for (int h = 0; h < H; h++) {
      size_t off = ((size_t)bl * H + h) * D;
      const float* dy = dout + off;
      float* dx = dinp + off;
      for (int i = 0; i < half_D; i++) {
        float c = cs[2 * i], s = cs[2 * i + 1];
        float d0 = dy[2 * i], d1 = dy[2 * i + 1];
        dx[2 * i] += c * d0 + s * d1;
        dx[2 * i + 1] += -s * d0 + c * d1;
      }
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Attention. Element (b, l, h, :) of q, k, v, out (and dq, dk, dv, dout) starts at ((b*L + l)*H + h)*D;
// row (b, h, i) of probs starts at ((b*H + h)*L + i)*L.

static inline size_t bthd(int b, int l, int h, int L, int H, int D) { return (((size_t)b * L + l) * H + h) * D; }

// Attention runs as sgemm calls per (batch, head): q, k and v of one head are strided row blocks of
// [B, L, H, D] (leading dimension H*D). The plain loops this replaced, with double accumulators, took
// 45% of a demo LoRA step at 112 tokens; with sgemm the step is 1.7x faster. The sgemm calls go one
// after another, each free to use OpenBLAS's own threads; the row-wise softmax work runs on OpenMP's.

// Row-wise softmax of n rows of length L, in place, made stable by subtracting the row max.
static void softmax_rows(float* p, long n, int L) {
#pragma omp parallel for schedule(static) if (n * L >= PARALLEL_MIN_WORK)
  for (long r = 0; r < n; r++) {
    float* row = p + r * L;
    float maxval = -INFINITY;
    for (int j = 0; j < L; j++) maxval = std::max(maxval, row[j]);
    double sum = 0.0;
    for (int j = 0; j < L; j++) {
      row[j] = std::exp(row[j] - maxval);
      sum += row[j];
    }
    const float inv_sum = (float)(1.0 / sum);
    for (int j = 0; j < L; j++) row[j] *= inv_sum;
  }
}

// Adds the mask's bias and causal -inf to the scores of one (b, h) block before the softmax.
static void mask_scores(float* p, int L, int h, const AttentionMask& mask) {
  if (mask.bias) {
    const float* bias = mask.bias + (size_t)h * L * L;
    for (size_t i = 0; i < (size_t)L * L; i++) p[i] += bias[i];
  }
  if (mask.causal)
    for (int i = 0; i < L; i++)
      for (int j = i + 1; j < L; j++) p[(size_t)i * L + j] = -INFINITY;
}

void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v,
                       int B, int L, int H, int D, const AttentionMask& mask) {
  const float scale = mask.scale_for(D);
  const int HD = H * D;
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const size_t off = bthd(b, 0, h, L, H, D);
      float* p = probs + ((size_t)b * H + h) * L * L;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, D, scale, q + off, HD, k + off, HD, 0.0f, p, L);
      mask_scores(p, L, h, mask);
    }
  softmax_rows(probs, (long)B * H * L, L);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const size_t off = bthd(b, 0, h, L, H, D);
      const float* p = probs + ((size_t)b * H + h) * L * L;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, D, L, 1.0f, p, L, v + off, HD, 0.0f, out + off, HD);
    }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs,
                        const float* q, const float* k, const float* v, int B, int L, int H, int D,
                        const AttentionMask& mask) {
  if (!dq && !dk && !dv) return;
  // The bias and the mask are constants: masked positions have P = 0, so their dS is 0 too.
  const float scale = mask.scale_for(D);
  const int HD = H * D;
  // With dP = dO V^T, the softmax backward gives dS_ij = P_ij (dP_ij - delta_i), delta_i = sum_j P_ij dP_ij.
  // Then dQ += scale dS K, dK += scale dS^T Q, dV += P^T dO.
  std::vector<float> ds((size_t)L * L);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const size_t off = bthd(b, 0, h, L, H, D);
      const float* p = probs + ((size_t)b * H + h) * L * L;
      if (dv) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, D, L, 1.0f, p, L, dout + off, HD, 1.0f, dv + off, HD);
      if (!dq && !dk) continue;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, D, 1.0f, dout + off, HD, v + off, HD, 0.0f, ds.data(), L);
#pragma omp parallel for schedule(static) if ((long)L * L >= PARALLEL_MIN_WORK)
      for (int i = 0; i < L; i++) {
        const float* pi = p + (size_t)i * L;
        float* dsi = ds.data() + (size_t)i * L;
        double delta = 0.0;
        for (int j = 0; j < L; j++) delta += (double)pi[j] * dsi[j];
        for (int j = 0; j < L; j++) dsi[j] = pi[j] * (dsi[j] - (float)delta);
      }
      if (dq) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, D, L, scale, ds.data(), L, k + off, HD, 1.0f, dq + off, HD);
      if (dk) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, D, L, scale, ds.data(), L, q + off, HD, 1.0f, dk + off, HD);
    }
}

// ----------------------------------------------------------------------------------------------
// Elementwise activations

static const float GELU_SCALE = 0.7978845608028654f;  // sqrt(2 / pi)
static const float GELU_CUBIC = 0.044715f;

// tanh through one expf: glibc's tanhf (by way of expm1f) took 15% of a demo LoRA step. Near u = 0 the
// subtraction loses relative precision, but GELU uses 1 + tanh, whose absolute error stays ~1e-7.
static inline float gelu_tanh(float u) { return 1.0f - 2.0f / (std::exp(2.0f * u) + 1.0f); }

void gelu_forward(float* out, const float* inp, int n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN_WORK)
  for (int i = 0; i < n; i++) {
    float x = inp[i];
    out[i] = 0.5f * x * (1.0f + gelu_tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x)));
  }
}

void gelu_backward(float* dinp, const float* dout, const float* inp, int n) {
  if (!dinp) return;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN_WORK)
  for (int i = 0; i < n; i++) {
    float x = inp[i];
    float t = gelu_tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x));
    float du_dx = GELU_SCALE * (1.0f + 3.0f * GELU_CUBIC * x * x);
    float grad = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du_dx;
    dinp[i] += grad * dout[i];
  }
}

void silu_forward(float* out, const float* inp, int n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN_WORK)
  for (int i = 0; i < n; i++) {
    float x = inp[i];
    out[i] = x / (1.0f + std::exp(-x));
  }
}

void silu_backward(float* dinp, const float* dout, const float* inp, int n) {
  if (!dinp) return;
  // d/dx [x * sigmoid(x)] = sigmoid(x) * (1 + x * (1 - sigmoid(x)))
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN_WORK)
  for (int i = 0; i < n; i++) {
    float x = inp[i];
    float sig = 1.0f / (1.0f + std::exp(-x));
    dinp[i] += sig * (1.0f + x * (1.0f - sig)) * dout[i];
  }
}

void tanh_forward(float* out, const float* inp, int n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN_WORK)
  for (int i = 0; i < n; i++) out[i] = std::tanh(inp[i]);
}

void tanh_backward(float* dinp, const float* dout, const float* out, int n) {
  if (!dinp) return;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN_WORK)
  for (int i = 0; i < n; i++) dinp[i] += (1.0f - out[i] * out[i]) * dout[i];
}

static const float QUICK_GELU_K = 1.702f;

void quick_gelu_forward(float* out, const float* inp, long n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN_WORK)
  for (long i = 0; i < n; i++) out[i] = inp[i] / (1.0f + std::exp(-QUICK_GELU_K * inp[i]));
}

void quick_gelu_backward(float* dinp, const float* dout, const float* inp, long n) {
  if (!dinp) return;
  // d/dx [x * sigmoid(k x)] = sigmoid(k x) * (1 + k x * (1 - sigmoid(k x)))
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN_WORK)
  for (long i = 0; i < n; i++) {
    const float kx = QUICK_GELU_K * inp[i], sig = 1.0f / (1.0f + std::exp(-kx));
    dinp[i] += sig * (1.0f + kx * (1.0f - sig)) * dout[i];
  }
}

void mul_forward(float* out, const float* a, const float* b, long n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN_WORK)
  for (long i = 0; i < n; i++) out[i] = a[i] * b[i];
}

void mul_backward(float* da, float* db, const float* dout, const float* a, const float* b, long n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN_WORK)
  for (long i = 0; i < n; i++) {
    if (da) da[i] += dout[i] * b[i];
    if (db) db[i] += dout[i] * a[i];
  }
}

void affine_forward(float* out, const float* x, const float* w, const float* b, int N, int C) {
#pragma omp parallel for schedule(static) if ((long)N * C >= PARALLEL_MIN_WORK)
  for (int n = 0; n < N; n++)
    for (int c = 0; c < C; c++) out[(size_t)n * C + c] = x[(size_t)n * C + c] * w[c] + (b ? b[c] : 0.0f);
}

void affine_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w, int N, int C) {
  if (dx) {
#pragma omp parallel for schedule(static) if ((long)N * C >= PARALLEL_MIN_WORK)
    for (int n = 0; n < N; n++)
      for (int c = 0; c < C; c++) dx[(size_t)n * C + c] += dout[(size_t)n * C + c] * w[c];
  }
  if (!dw && !db) return;
#pragma omp parallel for schedule(static) if ((long)N * C >= PARALLEL_MIN_WORK)
  for (int c = 0; c < C; c++) {
    double sw = 0.0, sb = 0.0;
    for (int n = 0; n < N; n++) {
      sw += (double)dout[(size_t)n * C + c] * x[(size_t)n * C + c];
      sb += dout[(size_t)n * C + c];
    }
    if (dw) dw[c] += (float)sw;
    if (db) db[c] += (float)sb;
  }
}

// ----------------------------------------------------------------------------------------------
// adaLN modulation and gated residual. Per-sample vectors (shift, scale, gate) live in rows of the
// modulation output: element (b, c) at ptr[b*mod_stride + c].

void modulate_forward(float* out, const float* x, const float* shift, const float* scale, int mod_stride,
                      int B, int L, int C) {
#pragma omp parallel for collapse(2) schedule(static) if ((long)B * L * C >= PARALLEL_MIN_WORK)
  for (int b = 0; b < B; b++)
    for (int l = 0; l < L; l++) {
      const float* sh = shift ? shift + (size_t)b * mod_stride : nullptr;
      const float* sc = scale + (size_t)b * mod_stride;
      size_t off = ((size_t)b * L + l) * C;
      if (sh)
        for (int c = 0; c < C; c++) out[off + c] = (1.0f + sc[c]) * x[off + c] + sh[c];
      else
        for (int c = 0; c < C; c++) out[off + c] = (1.0f + sc[c]) * x[off + c];
    }
}

void modulate_backward(float* dx, float* dshift, float* dscale, const float* dout, const float* x,
                       const float* scale, int mod_stride, int B, int L, int C) {
  long work = (long)B * L * C;
  if (dx) {
#pragma omp parallel for collapse(2) schedule(static) if (work >= PARALLEL_MIN_WORK)
    for (int b = 0; b < B; b++)
      for (int l = 0; l < L; l++) {
        const float* sc = scale + (size_t)b * mod_stride;
        size_t off = ((size_t)b * L + l) * C;
        for (int c = 0; c < C; c++) dx[off + c] += (1.0f + sc[c]) * dout[off + c];
      }
  }
  // shift and scale are shared by all L tokens of a sample: sum over l, one thread per (b, c).
  if (dshift || dscale) {
#pragma omp parallel for collapse(2) schedule(static) if (work >= PARALLEL_MIN_WORK)
    for (int b = 0; b < B; b++)
      for (int c = 0; c < C; c++) {
        double sum_dy = 0.0, sum_dy_x = 0.0;
        for (int l = 0; l < L; l++) {
          size_t i = ((size_t)b * L + l) * C + c;
          sum_dy += dout[i];
          sum_dy_x += (double)dout[i] * x[i];
        }
        if (dshift) dshift[(size_t)b * mod_stride + c] += (float)sum_dy;
        if (dscale) dscale[(size_t)b * mod_stride + c] += (float)sum_dy_x;
      }
  }
}

void gate_residual_forward(float* res, const float* y, const float* gate, int mod_stride, int B, int L, int C) {
#pragma omp parallel for collapse(2) schedule(static) if ((long)B * L * C >= PARALLEL_MIN_WORK)
  for (int b = 0; b < B; b++)
    for (int l = 0; l < L; l++) {
      const float* g = gate + (size_t)b * mod_stride;
      size_t off = ((size_t)b * L + l) * C;
      for (int c = 0; c < C; c++) res[off + c] += g[c] * y[off + c];
    }
}

void gate_residual_backward(float* dy, float* dgate, const float* dres, const float* y, const float* gate,
                            int mod_stride, int B, int L, int C) {
  long work = (long)B * L * C;
  if (dy) {
#pragma omp parallel for collapse(2) schedule(static) if (work >= PARALLEL_MIN_WORK)
    for (int b = 0; b < B; b++)
      for (int l = 0; l < L; l++) {
        const float* g = gate + (size_t)b * mod_stride;
        size_t off = ((size_t)b * L + l) * C;
        for (int c = 0; c < C; c++) dy[off + c] += g[c] * dres[off + c];
      }
  }
  if (dgate) {
#pragma omp parallel for collapse(2) schedule(static) if (work >= PARALLEL_MIN_WORK)
    for (int b = 0; b < B; b++)
      for (int c = 0; c < C; c++) {
        double sum = 0.0;
        for (int l = 0; l < L; l++) {
          size_t i = ((size_t)b * L + l) * C + c;
          sum += (double)dres[i] * y[i];
        }
        dgate[(size_t)b * mod_stride + c] += (float)sum;
      }
  }
}

// ----------------------------------------------------------------------------------------------
// Timestep embedding, in float32 step by step as FLUX's timestep_embedding():
//   freqs = exp(-ln(max_period) * arange(half) / half); args = (time_factor * t) * freqs

static inline float timestep_freq(int i, int half, float max_period) {
  float neg_log = (float)(-std::log((double)max_period));
  return std::exp(neg_log * (float)i / (float)half);
}

void timestep_embedding_forward(float* emb, const float* t, int B, int dim, float time_factor, float max_period) {
  int half = dim / 2;
  for (int b = 0; b < B; b++) {
    float* e = emb + (size_t)b * dim;
    float tb = time_factor * t[b];
    for (int i = 0; i < half; i++) {
      float arg = tb * timestep_freq(i, half, max_period);
      e[i] = std::cos(arg);
      e[half + i] = std::sin(arg);
    }
    if (dim % 2) e[dim - 1] = 0.0f;
  }
}

void timestep_embedding_backward(float* dt, const float* demb, const float* t, int B, int dim, float time_factor,
                                 float max_period) {
  if (!dt) return;
  // d cos(tf t f)/dt = -tf f sin(.), d sin(tf t f)/dt = tf f cos(.); the zero pad has no gradient.
  int half = dim / 2;
  for (int b = 0; b < B; b++) {
    const float* de = demb + (size_t)b * dim;
    float tb = time_factor * t[b];
    double sum = 0.0;
    for (int i = 0; i < half; i++) {
      float f = timestep_freq(i, half, max_period);
      float arg = tb * f;
      sum += (double)f * (-std::sin(arg) * (double)de[i] + std::cos(arg) * (double)de[half + i]);
    }
    dt[b] += (float)(time_factor * sum);
  }
}

// ----------------------------------------------------------------------------------------------
// Patchify: latent element (b, c, y, x) <-> token (b, (y/p)*(W/p) + x/p), channel (c, y%p, x%p).
// The map is a bijection, so every direction writes each element once (no races when parallel).

static inline size_t token_offset(int b, int c, int y, int x, int C, int H, int W, int p) {
  int Wp = W / p;
  size_t token = (size_t)b * (H / p) * Wp + (size_t)(y / p) * Wp + x / p;
  int channel = (c * p + y % p) * p + x % p;
  return token * ((size_t)C * p * p) + channel;
}

static void check_patch_shape(const char* op, int H, int W, int p) {
  if (p <= 0 || H % p != 0 || W % p != 0)
    fail(std::string(op) + ": latent " + std::to_string(H) + "x" + std::to_string(W) +
         " is not divisible by the patch size " + std::to_string(p));
}

void patchify_forward(float* out, const float* inp, int B, int C, int H, int W, int p) {
  check_patch_shape("patchify_forward", H, W, p);
#pragma omp parallel for collapse(2) schedule(static) if ((long)B * C * H * W >= PARALLEL_MIN_WORK)
  for (int b = 0; b < B; b++)
    for (int c = 0; c < C; c++)
      for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
          out[token_offset(b, c, y, x, C, H, W, p)] = inp[(((size_t)b * C + c) * H + y) * W + x];
}

void patchify_backward(float* dinp, const float* dout, int B, int C, int H, int W, int p) {
  if (!dinp) return;
  check_patch_shape("patchify_backward", H, W, p);
#pragma omp parallel for collapse(2) schedule(static) if ((long)B * C * H * W >= PARALLEL_MIN_WORK)
  for (int b = 0; b < B; b++)
    for (int c = 0; c < C; c++)
      for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
          dinp[(((size_t)b * C + c) * H + y) * W + x] += dout[token_offset(b, c, y, x, C, H, W, p)];
}

void unpatchify_forward(float* out, const float* inp, int B, int C, int H, int W, int p) {
  check_patch_shape("unpatchify_forward", H, W, p);
#pragma omp parallel for collapse(2) schedule(static) if ((long)B * C * H * W >= PARALLEL_MIN_WORK)
  for (int b = 0; b < B; b++)
    for (int c = 0; c < C; c++)
      for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
          out[(((size_t)b * C + c) * H + y) * W + x] = inp[token_offset(b, c, y, x, C, H, W, p)];
}

void unpatchify_backward(float* dinp, const float* dout, int B, int C, int H, int W, int p) {
  if (!dinp) return;
  check_patch_shape("unpatchify_backward", H, W, p);
#pragma omp parallel for collapse(2) schedule(static) if ((long)B * C * H * W >= PARALLEL_MIN_WORK)
  for (int b = 0; b < B; b++)
    for (int c = 0; c < C; c++)
      for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
          dinp[token_offset(b, c, y, x, C, H, W, p)] += dout[(((size_t)b * C + c) * H + y) * W + x];
}

// ----------------------------------------------------------------------------------------------
// Mean squared error

float mse_forward(const float* pred, const float* target, long n) {
  if (n <= 0) return 0.0f;
  // Partial sums over fixed-size chunks, added in chunk order: the result does not depend on the
  // thread count (an OpenMP reduction's combining order is unspecified).
  const long CHUNK = 1 << 14;
  long n_chunks = (n + CHUNK - 1) / CHUNK;
  std::vector<double> partial(n_chunks);
#pragma omp parallel for schedule(static) if (n >= 4 * PARALLEL_MIN_WORK)
  for (long k = 0; k < n_chunks; k++) {
    long end = (k + 1) * CHUNK < n ? (k + 1) * CHUNK : n;
    double sum = 0.0;
    for (long i = k * CHUNK; i < end; i++) {
      double d = (double)pred[i] - target[i];
      sum += d * d;
    }
    partial[k] = sum;
  }
  double total = 0.0;
  for (long k = 0; k < n_chunks; k++) total += partial[k];
  return (float)(total / n);
}

void mse_backward(float* dpred, const float* pred, const float* target, long n, float dloss) {
  if (!dpred || n <= 0) return;
  const float coef = 2.0f * dloss / (float)n;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN_WORK)
  for (long i = 0; i < n; i++) dpred[i] += coef * (pred[i] - target[i]);
}

// ---------------------------------------------------------------- embedding

void embedding_forward(float* out, const int* ids, const float* table, int N, int V, int C) {
  for (int n = 0; n < N; ++n) {
    if (ids[n] < 0 || ids[n] >= V) fail("token id " + std::to_string(ids[n]) + " is outside the vocabulary of " + std::to_string(V));
    std::memcpy(out + (size_t)n * C, table + (size_t)ids[n] * C, (size_t)C * sizeof(float));
  }
}

void embedding_backward(float* dtable, const float* dout, const int* ids, int N, int V, int C) {
  if (!dtable) return;
  // Serial over tokens: two tokens with the same id add into the same row, in a fixed order.
  for (int n = 0; n < N; ++n) {
    float* row = dtable + (size_t)ids[n] * C;
    const float* d = dout + (size_t)n * C;
    for (int c = 0; c < C; ++c) row[c] += d[c];
  }
  (void)V;
}

// ----------------------------------------------------------------------------------------------
// Elementwise sums, token means, column blocks

void add_forward(float* out, const float* a, const float* b, long n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN_WORK)
  for (long i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void accumulate(float* acc, const float* x, long n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN_WORK)
  for (long i = 0; i < n; i++) acc[i] += x[i];
}

void mean_tokens_forward(float* out, const float* x, int B, int L, int C) {
  for (int b = 0; b < B; b++)
    for (int c = 0; c < C; c++) {
      float s = 0.0f;  // in token order, as the per-token division below: (x / L) summed
      for (int l = 0; l < L; l++) s += x[((size_t)b * L + l) * C + c] / L;
      out[(size_t)b * C + c] = s;
    }
}

void mean_tokens_backward(float* dx, const float* dout, int B, int L, int C) {
  if (!dx) return;
  for (int b = 0; b < B; b++)
    for (int l = 0; l < L; l++)
      for (int c = 0; c < C; c++) dx[((size_t)b * L + l) * C + c] += dout[(size_t)b * C + c] / L;
}

void copy_cols(void* dst, long dst_ld, const void* src, long src_ld, long rows, long cols, int elem) {
  char* d = (char*)dst;
  const char* s = (const char*)src;
#pragma omp parallel for schedule(static) if (rows * cols >= PARALLEL_MIN_WORK)
  for (long r = 0; r < rows; r++) std::memcpy(d + r * dst_ld * elem, s + r * src_ld * elem, (size_t)cols * elem);
}

void add_cols(float* dst, long dst_ld, const float* src, long src_ld, long rows, long cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= PARALLEL_MIN_WORK)
  for (long r = 0; r < rows; r++)
    for (long c = 0; c < cols; c++) dst[r * dst_ld + c] += src[r * src_ld + c];
}

}  // namespace graft::cpu
