// update_ops.h on both devices; compiled twice (ops/dispatch.h).
#include "ops/update_ops.h"

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

void adamw_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, float lr, float beta1,
                  float beta2, float eps, float weight_decay, long t) {
  same("adamw_update", p, g), same("adamw_update", p, m), same("adamw_update", p, v);
  const double bc1 = 1.0 - std::pow((double)beta1, (double)t);
  const double bc2 = 1.0 - std::pow((double)beta2, (double)t);
  const float step_size = (float)(lr / bc1);
  const float bc2_sqrt = (float)std::sqrt(bc2);
  const float decay = 1.0f - lr * weight_decay;
  const long n = (long)p.numel();
  float *pp = f32(p, "adamw"), *gp = f32(g, "adamw"), *mp = f32(m, "adamw"), *vp = f32(v, "adamw");
  if (p.is_cuda()) {
    ON_CUDA(gpu::adamw_update(pp, gp, mp, vp, n, beta1, beta2, eps, decay, step_size, bc2_sqrt));
    return;
  }
#pragma omp parallel for schedule(static)
  for (long i = 0; i < n; ++i) {
    mp[i] = beta1 * mp[i] + (1.0f - beta1) * gp[i];
    vp[i] = beta2 * vp[i] + (1.0f - beta2) * gp[i] * gp[i];
    pp[i] *= decay;
    pp[i] -= step_size * mp[i] / (std::sqrt(vp[i]) / bc2_sqrt + eps);
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
