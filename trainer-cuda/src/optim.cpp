#include "optim.h"

#include <algorithm>
#include <cmath>

namespace graft {

void AdamW::step(float* p, const float* g, size_t n, float lr) {
  if (m.size() != n) m.assign(n, 0.0f);
  if (v.size() != n) v.assign(n, 0.0f);
  ++t;
  const double bc1 = 1.0 - std::pow((double)beta1, (double)t);
  const double bc2 = 1.0 - std::pow((double)beta2, (double)t);
  const float step_size = (float)(lr / bc1);
  const float bc2_sqrt = (float)std::sqrt(bc2);
  const float decay = 1.0f - lr * weight_decay;
#pragma omp parallel for schedule(static)
  for (long i = 0; i < (long)n; ++i) {
    m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
    v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
    p[i] *= decay;
    p[i] -= step_size * m[i] / (std::sqrt(v[i]) / bc2_sqrt + eps);
  }
}

void WeightEma::update() {
  const float d = std::min(decay, (1.0f + n) / (10.0f + n));
  ++n;
  for (size_t t = 0; t < live.size(); ++t) {
    const std::vector<float>& w = *live[t];
    std::vector<float>& a = avg[t];
    for (size_t i = 0; i < a.size(); ++i) a[i] = d * a[i] + (1.0f - d) * w[i];
  }
}

void WeightEma::swap() {
  for (size_t t = 0; t < live.size(); ++t) live[t]->swap(avg[t]);
}

float clip_grad_norm(float* g, size_t n, float max_norm) {
  double ss = 0.0;  // serial sum in double: deterministic and exact enough
  for (size_t i = 0; i < n; ++i) ss += (double)g[i] * g[i];
  float norm = (float)std::sqrt(ss);
  if (max_norm > 0.0f && norm > max_norm) {
    float s = max_norm / (norm + 1e-6f);
    for (size_t i = 0; i < n; ++i) g[i] *= s;
  }
  return norm;
}

float lr_at(const std::string& schedule, float base, int step, int total, int warmup) {
  if (schedule == "constant") return base;
  if (warmup > 0 && step <= warmup) return base * (float)step / (float)warmup;
  if (schedule == "constant_with_warmup") return base;
  double span = std::max(1, total - warmup);
  double progress = std::min(1.0, std::max(0.0, (double)(step - warmup) / span));
  if (schedule == "linear") return (float)(base * (1.0 - progress));
  return (float)(base * 0.5 * (1.0 + std::cos(M_PI * progress)));  // cosine
}

}  // namespace graft
