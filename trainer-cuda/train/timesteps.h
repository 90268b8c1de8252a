// Training timesteps (SPEC section 6): which noise levels t in [0, 1] a step trains on (Timestep Type),
// a bias toward high or low noise (Timestep Bias), and the per-timestep loss weight of "weighted".
// t = 1 is pure noise, t = 0 the clean latent (x_t = (1 - t) x0 + t noise).
#pragma once
#include <string>

#include "core/rng.h"

namespace graft {

struct TimestepRule {
  std::string type = "sigmoid";  // linear | sigmoid | weighted | shift | lognorm_blend
  std::string bias = "balanced"; // balanced | content (favour t near 1: structure) | style (t near 0: detail)
  // "shift"'s time shift: 0 is FLUX's, by resolution; a model with a fixed one (Z-Image's 3) gives it.
  float static_shift = 0.0f;
};

// One draw for a picture of `image_tokens` transformer tokens (the resolution "shift" depends on).
//   linear, weighted: uniform; sigmoid: sigmoid of a standard normal (mid timesteps);
//   shift: uniform through the time shift (FLUX's by resolution, more high noise for more tokens; or
//          the rule's static_shift);
//   lognorm_blend: 3 in 4 from 1 - x / e^1 with x log-normal(0, 1/3) (early-middle), else uniform.
// A bias other than balanced replaces the type's draw with the reference toolkit's cubic one:
// content t = 1 - u^3, style t = u^3.
float timestep_draw(const TimestepRule& rule, int image_tokens, Rng& rng);

// The loss weight of a picture drawn at t: 1, except "weighted": a bell around t = 0.5, zero at the
// ends, with mean 1 over uniform t (so the loss keeps its scale).
float timestep_weight(const TimestepRule& rule, float t);

// FLUX's resolution time shift, exp(mu) with mu linear in the token count (0.5 at 256 tokens, 1.16 at
// 4096): t' = s t / (1 + (s - 1) t).
float flux_resolution_shift(int image_tokens);

}  // namespace graft
