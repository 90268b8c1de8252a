#include "train/timesteps.h"

#include <algorithm>
#include <cmath>

namespace graft {

float flux_resolution_shift(int image_tokens) {
  const double mu = 0.5 + (image_tokens - 256.0) * (1.15 - 0.5) / (4096.0 - 256.0);
  return (float)std::exp(mu);
}

float timestep_draw(const TimestepRule& rule, int image_tokens, Rng& rng) {
  if (rule.bias == "content" || rule.bias == "style") {
    const float u = rng.uniform(), c = u * u * u;
    return rule.bias == "content" ? 1.0f - c : c;
  }
  if (rule.type == "sigmoid") return 1.0f / (1.0f + std::exp(-rng.normal()));
  if (rule.type == "shift") {
    const float s = rule.static_shift > 0 ? rule.static_shift : flux_resolution_shift(image_tokens), u = rng.uniform();
    return s * u / (1.0f + (s - 1.0f) * u);
  }
  if (rule.type == "lognorm_blend") {
    // The reference scales its log-normal draws by their maximum over a 1000-step schedule (about
    // e^(3 sigma)); a fixed e^1 keeps each draw independent of the others.
    const float u = rng.uniform();
    if (u < 0.75f) return std::clamp(1.0f - std::exp(rng.normal() / 3.0f) / (float)M_E, 0.0f, 1.0f);
    return rng.uniform();
  }
  return rng.uniform();  // linear, weighted
}

float timestep_weight(const TimestepRule& rule, float t) {
  if (rule.type != "weighted") return 1.0f;
  // exp(-2 (t - 1/2)^2) minus its value at the ends, divided by its mean over [0, 1]:
  // integral of exp(-2 x^2) over [-1/2, 1/2] is sqrt(pi / 2) erf(1 / sqrt(2)).
  static const double floor = std::exp(-0.5);
  static const double mean = std::sqrt(M_PI / 2.0) * std::erf(1.0 / std::sqrt(2.0)) - floor;
  const double d = t - 0.5;
  return (float)std::max(0.0, (std::exp(-2.0 * d * d) - floor) / mean);
}

}  // namespace graft
