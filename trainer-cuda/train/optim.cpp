#include "train/optim.h"

#include <algorithm>
#include <cmath>

#include "ops/update_ops.h"

namespace graft {

void AdamW::step(const Tensor& p, const Tensor& g, float lr) {
  if (!m.defined() || m.numel() != p.numel()) m = zeros(p.shape, DType::F32, p.device(), "AdamW moments");
  if (!v.defined() || v.numel() != p.numel()) v = zeros(p.shape, DType::F32, p.device(), "AdamW moments");
  ++t;
  adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t);
}

void MultiAdam::add(const Tensor& param, const Tensor& grad, float weight_decay) {
  params.push_back(param);
  grads.push_back(grad);
  AdamW a;
  a.weight_decay = weight_decay;
  opts.push_back(a);
}

float MultiAdam::clip(float max_norm) { return clip_grad_norm(grads, max_norm); }

void MultiAdam::step(float lr) {
  for (size_t i = 0; i < params.size(); ++i) opts[i].step(params[i], grads[i], lr);
}

void WeightEma::update() {
  const float d = std::min(decay, (1.0f + n) / (10.0f + n));
  ++n;
  for (size_t t = 0; t < live.size(); ++t) lerp_(avg[t], live[t], d);
}

void WeightEma::swap() {
  for (size_t t = 0; t < live.size(); ++t) swap_values(live[t], avg[t]);
}

float clip_grad_norm(const std::vector<Tensor>& grads, float max_norm) {
  double ss = 0.0;
  for (const Tensor& g : grads) ss += sum_squares(g);
  float norm = (float)std::sqrt(ss);
  if (max_norm > 0.0f && norm > max_norm) {
    float s = max_norm / (norm + 1e-6f);
    for (const Tensor& g : grads) scale_(g, s);
  }
  return norm;
}

float LrSchedule::at(int step) const {
  if (type == "constant") return base;
  if (warmup > 0 && step <= warmup) return base * (float)step / (float)warmup;
  if (type == "constant_with_warmup") return base;
  if (type == "cosine_with_restarts") {
    long t = step - 1 - warmup, len = cycle_steps > 0 ? cycle_steps : std::max(1, total - warmup);
    while (t >= len) t -= len, len *= std::max(1, cycle_mult);
    return (float)(eta_min + (base - eta_min) * 0.5 * (1.0 + std::cos(M_PI * (double)t / (double)len)));
  }
  double span = std::max(1, total - warmup);
  double progress = std::min(1.0, std::max(0.0, (double)(step - warmup) / span));
  if (type == "linear") return (float)(base * (1.0 - progress));
  return (float)(eta_min + (base - eta_min) * 0.5 * (1.0 + std::cos(M_PI * progress)));  // cosine
}

float lr_at(const std::string& schedule, float base, int step, int total, int warmup) {
  LrSchedule s;
  s.type = schedule, s.base = base, s.total = total, s.warmup = warmup;
  return s.at(step);
}

const std::vector<std::string>& lr_schedule_names() {
  static const std::vector<std::string> names = {"constant", "constant_with_warmup", "linear", "cosine",
                                                 "cosine_with_restarts"};
  return names;
}

}  // namespace graft
