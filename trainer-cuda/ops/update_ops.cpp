// update_ops.h on both devices; compiled twice (ops/dispatch.h).
#include "ops/update_ops.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "core/common.h"

#include "ops/dispatch.h"

namespace graft {

namespace {

float* f32(const Tensor& t, const char* op) {
  if (t.dtype != DType::F32) fail(std::string("internal: ") + op + ": expected an F32 tensor, got " + t.str());
  return t.data<float>();
}

void same(const char* op, const Tensor& a, const Tensor& b) {
  if (a.numel() != b.numel() || a.device() != b.device())
    fail(std::string("internal: ") + op + ": " + a.str() + " and " + b.str());
}
}  // namespace

void adamw_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, float lr, double beta1,
                  double beta2, float eps, float weight_decay, long t) {
  same("adamw_update", p, g), same("adamw_update", p, m), same("adamw_update", p, v);
  const double bc1 = 1.0 - std::pow(beta1, (double)t);
  const double bc2 = 1.0 - std::pow(beta2, (double)t);
  const float step_size = (float)(lr / bc1);
  const float bc2_sqrt = (float)std::sqrt(bc2);
  const float decay = 1.0f - lr * weight_decay;
  const Betas b{(float)beta1, (float)(1.0 - beta1), (float)beta2, (float)(1.0 - beta2)};
  const long n = (long)p.numel();
  float *pp = f32(p, "adamw"), *gp = f32(g, "adamw"), *mp = f32(m, "adamw"), *vp = f32(v, "adamw");
  if (p.is_cuda()) {
    ON_CUDA(gpu::adamw_update(pp, gp, mp, vp, n, b, eps, decay, step_size, bc2_sqrt));
    return;
  }
#pragma omp parallel for schedule(static)
  for (long i = 0; i < n; ++i) {
    mp[i] = b.b1 * mp[i] + b.c1 * gp[i];
    vp[i] = b.b2 * vp[i] + b.c2 * gp[i] * gp[i];
    pp[i] *= decay;
    pp[i] -= step_size * mp[i] / (std::sqrt(vp[i]) / bc2_sqrt + eps);
  }
}

void lion_update(const Tensor& p, const Tensor& g, const Tensor& m, float lr, double beta1, double beta2,
                 float weight_decay) {
  same("lion_update", p, g), same("lion_update", p, m);
  const float decay = 1.0f - lr * weight_decay;
  const long n = (long)p.numel();
  const Betas b{(float)beta1, (float)(1.0 - beta1), (float)beta2, (float)(1.0 - beta2)};
  float *pp = f32(p, "lion"), *gp = f32(g, "lion"), *mp = f32(m, "lion");
  if (p.is_cuda()) {
    ON_CUDA(gpu::lion_update(pp, gp, mp, n, lr, b, decay));
    return;
  }
#pragma omp parallel for schedule(static)
  for (long i = 0; i < n; ++i) {
    const float c = b.b1 * mp[i] + b.c1 * gp[i];
    pp[i] *= decay;
    pp[i] -= lr * (float)((c > 0.0f) - (c < 0.0f));
    mp[i] = b.b2 * mp[i] + b.c2 * gp[i];
  }
}

std::vector<float> dynamic_map(bool is_signed) {
  // bitsandbytes: for exponent i = 0..6, the midpoints of linspace(0.1, 1, k + 1) (k = 2^i signed,
  // 2^(i+1) unsigned) times 10^(i-6), mirrored when signed; then 0 and 1. torch.linspace's float
  // formula (from the start below the middle, from the end above it) keeps the values bit-equal.
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int k = is_signed ? (1 << i) : (1 << (i + 1));
    const int steps = k + 1;
    const float step = (1.0f - 0.1f) / (float)(steps - 1);
    std::vector<float> b(steps);
    for (int j = 0; j < steps; ++j) b[j] = j < steps / 2 ? 0.1f + step * (float)j : 1.0f - step * (float)(steps - 1 - j);
    const float e = (float)std::pow(10.0, (double)(i - 6));
    for (int j = 0; j < k; ++j) {
      const float mean = (b[j] + b[j + 1]) / 2.0f;
      data.push_back(e * mean);
      if (is_signed) data.push_back(-e * mean);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  if (data.size() != 256) fail("internal: dynamic map of " + std::to_string(data.size()) + " values");
  std::sort(data.begin(), data.end());
  return data;
}

int nearest_code(const float* map, float x) {
  int lo = 0, hi = 255;  // the first index whose value is >= x, by bisection
  if (x <= map[0]) return 0;
  if (x >= map[255]) return 255;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (map[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return (x - map[lo - 1] <= map[lo] - x) ? lo - 1 : lo;
}

void adamw8bit_update(const Tensor& p, const Tensor& g, const Blockwise8bit& s, float lr, double beta1, double beta2,
                      float eps, float weight_decay, long t) {
  same("adamw8bit_update", p, g);
  if (s.m_q.numel() != p.numel() || s.v_q.numel() != p.numel() || s.m_q.dtype != DType::U8 || s.v_q.dtype != DType::U8 ||
      s.block_start.dtype != DType::I64 || s.block_start.numel() != s.m_absmax.numel() + 1 || s.m_map.numel() != 256 ||
      s.v_map.numel() != 256 || s.m_q.device() != p.device() || s.block_start.device() != p.device())
    fail("internal: adamw8bit_update: state does not fit " + p.str());
  const double bc1 = 1.0 - std::pow(beta1, (double)t);
  const double bc2 = 1.0 - std::pow(beta2, (double)t);
  const float step_size = (float)(lr / bc1), bc2_sqrt = (float)std::sqrt(bc2), decay = 1.0f - lr * weight_decay;
  // bitsandbytes' kernel forms 1 - beta in float and decays the weights after the Adam step.
  const Betas bt{(float)beta1, 1.0f - (float)beta1, (float)beta2, 1.0f - (float)beta2};
  const long blocks = (long)s.m_absmax.numel();
  float *pp = f32(p, "adamw8bit"), *gp = f32(g, "adamw8bit");
  float *ma = f32(s.m_absmax, "adamw8bit"), *va = f32(s.v_absmax, "adamw8bit");
  const float *mmap = f32(s.m_map, "adamw8bit"), *vmap = f32(s.v_map, "adamw8bit");
  uint8_t *mq = s.m_q.data<uint8_t>(), *vq = s.v_q.data<uint8_t>();
  const int64_t* start = s.block_start.data<int64_t>();
  if (p.is_cuda()) {
    ON_CUDA(gpu::adamw8bit_update(pp, gp, mq, vq, ma, va, start, mmap, vmap, blocks, bt, eps, decay, step_size,
                                  bc2_sqrt));
    return;
  }
#pragma omp parallel for schedule(static)
  for (long b = 0; b < blocks; ++b) {
    const int64_t i0 = start[b], len = start[b + 1] - start[b];
    float mv[kBlock8bit], vv[kBlock8bit];
    float mmax = 0.0f, vmax = 0.0f;
    for (int64_t j = 0; j < len; ++j) {
      const int64_t i = i0 + j;
      const float gi = gp[i];
      const float mi = bt.b1 * (mmap[mq[i]] * ma[b]) + bt.c1 * gi;
      const float vi = bt.b2 * (vmap[vq[i]] * va[b]) + bt.c2 * gi * gi;
      const float pi = pp[i] - step_size * mi / (std::sqrt(vi) / bc2_sqrt + eps);
      pp[i] = pi * decay;
      mv[j] = mi, vv[j] = vi;
      mmax = std::max(mmax, std::fabs(mi)), vmax = std::max(vmax, vi);
    }
    ma[b] = mmax, va[b] = vmax;
    for (int64_t j = 0; j < len; ++j) {
      mq[i0 + j] = (uint8_t)nearest_code(mmap, mmax > 0.0f ? mv[j] / mmax : 0.0f);
      vq[i0 + j] = (uint8_t)nearest_code(vmap, vmax > 0.0f ? vv[j] / vmax : 0.0f);
    }
  }
}

ProdigySums prodigy_accumulate(const Tensor& p, const Tensor& g, const Tensor& p0, const Tensor& m, const Tensor& v,
                               const Tensor& s, double d, double beta1, double beta2, double beta3, float s_scale) {
  for (const Tensor* t : {&g, &p0, &m, &v, &s}) same("prodigy_accumulate", p, *t);
  const long n = (long)p.numel();
  // torch: exp_avg.mul_(beta1).add_(grad, alpha=d * (1 - beta1)), its scalars formed in double.
  const float am = (float)(d * (1.0 - beta1)), av = (float)(d * d * (1.0 - beta2));
  const float b1 = (float)beta1, b2 = (float)beta2, b3 = (float)beta3;
  float *pp = f32(p, "prodigy"), *gp = f32(g, "prodigy"), *p0p = f32(p0, "prodigy");
  float *mp = f32(m, "prodigy"), *vp = f32(v, "prodigy"), *sp = f32(s, "prodigy");
  ProdigySums r;
  if (p.is_cuda()) {
    ON_CUDA(gpu::prodigy_accumulate(&r.dot, &r.s_abs, pp, gp, p0p, mp, vp, sp, n, b1, am, b2, av, b3, s_scale));
    return r;
  }
  for (long i = 0; i < n; ++i) {  // serial: the sums in the same order every run
    const float gi = gp[i];
    r.dot += (double)gi * (double)(p0p[i] - pp[i]);
    mp[i] = mp[i] * b1 + am * gi;
    vp[i] = vp[i] * b2 + av * gi * gi;
    sp[i] = sp[i] * b3 + s_scale * gi;
    r.s_abs += std::fabs((double)sp[i]);
  }
  return r;
}

void prodigy_apply(const Tensor& p, const Tensor& m, const Tensor& v, float dlr, float d_eps, float decay) {
  same("prodigy_apply", p, m), same("prodigy_apply", p, v);
  const long n = (long)p.numel();
  float *pp = f32(p, "prodigy"), *mp = f32(m, "prodigy"), *vp = f32(v, "prodigy");
  if (p.is_cuda()) {
    ON_CUDA(gpu::prodigy_apply(pp, mp, vp, n, dlr, d_eps, decay));
    return;
  }
#pragma omp parallel for schedule(static)
  for (long i = 0; i < n; ++i) {
    float pi = pp[i];
    if (decay != 0.0f) pi += -decay * pi;
    pp[i] = pi - dlr * (mp[i] / (std::sqrt(vp[i]) + d_eps));
  }
}

double adafactor_factored(const Tensor& g, const Tensor& row, const Tensor& col, const Tensor& u, int rows, int cols,
                          double beta2t, float eps1) {
  same("adafactor_factored", g, u);
  if ((long)rows * cols != g.numel() || row.numel() != rows || col.numel() != cols || row.device() != g.device() ||
      col.device() != g.device())
    fail("internal: adafactor_factored: " + g.str() + " as [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
  float *gp = f32(g, "adafactor"), *rp = f32(row, "adafactor"), *cp = f32(col, "adafactor"), *up = f32(u, "adafactor");
  const float b = (float)beta2t, c = (float)(1.0 - beta2t);
  if (g.is_cuda()) {
    double ss = 0.0;
    ON_CUDA(ss = gpu::adafactor_factored(gp, rp, cp, up, rows, cols, b, c, eps1));
    return ss;
  }
  for (int i = 0; i < rows; ++i) {
    double sum = 0.0;
    for (int j = 0; j < cols; ++j) sum += gp[(long)i * cols + j] * gp[(long)i * cols + j] + eps1;
    rp[i] = rp[i] * b + c * (float)(sum / cols);
  }
  for (int j = 0; j < cols; ++j) {
    double sum = 0.0;
    for (int i = 0; i < rows; ++i) sum += gp[(long)i * cols + j] * gp[(long)i * cols + j] + eps1;
    cp[j] = cp[j] * b + c * (float)(sum / rows);
  }
  double rsum = 0.0;
  for (int i = 0; i < rows; ++i) rsum += rp[i];
  const float rmean = (float)(rsum / rows);
  double ss = 0.0;
  for (int i = 0; i < rows; ++i) {
    const float r = 1.0f / std::sqrt(rp[i] / rmean);
    for (int j = 0; j < cols; ++j) {
      const long k = (long)i * cols + j;
      up[k] = r * (1.0f / std::sqrt(cp[j])) * gp[k];
      ss += (double)up[k] * up[k];
    }
  }
  return ss;
}

double adafactor_unfactored(const Tensor& g, const Tensor& v, const Tensor& u, double beta2t, float eps1) {
  same("adafactor_unfactored", g, v), same("adafactor_unfactored", g, u);
  const long n = (long)g.numel();
  float *gp = f32(g, "adafactor"), *vp = f32(v, "adafactor"), *up = f32(u, "adafactor");
  const float b = (float)beta2t, c = (float)(1.0 - beta2t);
  if (g.is_cuda()) {
    double ss = 0.0;
    ON_CUDA(ss = gpu::adafactor_unfactored(gp, vp, up, n, b, c, eps1));
    return ss;
  }
  double ss = 0.0;
  for (long i = 0; i < n; ++i) {
    vp[i] = vp[i] * b + c * (gp[i] * gp[i] + eps1);
    up[i] = (1.0f / std::sqrt(vp[i])) * gp[i];
    ss += (double)up[i] * up[i];
  }
  return ss;
}

void adafactor_apply(const Tensor& p, const Tensor& u, const Tensor& m, float u_scale, double beta1, float decay) {
  same("adafactor_apply", p, u);
  if (m.defined()) same("adafactor_apply", p, m);
  const long n = (long)p.numel();
  float *pp = f32(p, "adafactor"), *up = f32(u, "adafactor"), *mp = m.defined() ? f32(m, "adafactor") : nullptr;
  const float b1 = (float)beta1, c1 = (float)(1.0 - beta1);
  if (p.is_cuda()) {
    ON_CUDA(gpu::adafactor_apply(pp, up, mp, n, u_scale, b1, c1, decay));
    return;
  }
#pragma omp parallel for schedule(static)
  for (long i = 0; i < n; ++i) {
    float ui = up[i] * u_scale;
    if (mp) ui = mp[i] = mp[i] * b1 + c1 * ui;
    float pi = pp[i];
    if (decay != 0.0f) pi += -decay * pi;
    pp[i] = pi - ui;
  }
}

double sum_squares(const Tensor& t) {
  const long n = (long)t.numel();
  const float* x = f32(t, "sum_squares");
  if (t.is_cuda()) {
    double s = 0.0;
    ON_CUDA(s = gpu::sum_squares(x, n));
    return s;
  }
  double ss = 0.0;  // serial: the same sum in the same order every run
  for (long i = 0; i < n; ++i) ss += (double)x[i] * x[i];
  return ss;
}

void scale_(const Tensor& t, float s) {
  const long n = (long)t.numel();
  float* x = f32(t, "scale_");
  if (t.is_cuda()) {
    ON_CUDA(gpu::scale(x, n, s));
    return;
  }
  for (long i = 0; i < n; ++i) x[i] *= s;
}

void lerp_(const Tensor& avg, const Tensor& x, float d) {
  same("lerp_", avg, x);
  const long n = (long)avg.numel();
  float *a = f32(avg, "lerp_"), *w = f32(x, "lerp_");
  if (avg.is_cuda()) {
    ON_CUDA(gpu::lerp(a, w, n, d));
    return;
  }
  for (long i = 0; i < n; ++i) a[i] = d * a[i] + (1.0f - d) * w[i];
}

void swap_values(const Tensor& a, const Tensor& b) {
  same("swap_values", a, b);
  if (a.dtype != b.dtype) fail("internal: swap_values of " + a.str() + " and " + b.str());
  if (a.is_cuda()) {
    Tensor t = clone(a);
    copy_into(a, b);
    copy_into(b, t);
    return;
  }
  char *x = (char*)a.raw(), *y = (char*)b.raw();
  for (size_t i = 0; i < a.nbytes(); ++i) std::swap(x[i], y[i]);
}

static float hash_uniform(uint32_t seed, long i) {
  uint32_t h = (uint32_t)i * 2654435761u ^ seed;
  h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
  return (h & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

void fill_uniform_(const Tensor& t, uint32_t seed, float bound, float offset) {
  const long n = (long)t.numel();
  if (t.is_cuda()) {
    if (t.dtype == DType::BF16) ON_CUDA(gpu::fill_uniform(t.data<gpu::bf16>(), n, seed, bound, offset));
    else ON_CUDA(gpu::fill_uniform_f32(f32(t, "fill_uniform_"), n, seed, bound, offset));
    return;
  }
  std::vector<float> v(n);
  for (long i = 0; i < n; ++i) v[i] = offset + bound * hash_uniform(seed, i);
  convert_host(t.raw(), t.dtype, v.data(), DType::F32, (size_t)n);
}

}  // namespace graft
