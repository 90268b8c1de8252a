// FlowMatch Euler sampling: from noise at t = 1 to a latent at t = 0 along the velocity the model
// predicts, with the family's time shift and classifier-free guidance against an unconditional
// (empty-prompt) prediction. Seed-reproducible.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "models/flux.h"

namespace graft {

struct SampleParams {
  int steps = 20;
  float cfg_scale = 1.0f;   // 1 = conditional prediction only (no unconditional pass)
  float guidance = 3.5f;    // the guidance embedding's input, for models that have guidance_in
  float shift = 1.0f;       // time shift: t' = shift t / (1 + (shift - 1) t); > 1 spends more steps at high noise
  uint64_t seed = 42;
};

// The timesteps t_0 = 1 > t_1 > ... > t_steps = 0 after the shift.
std::vector<float> flow_timesteps(int steps, float shift);

// One text conditioning: per-token context [L_txt, context_dim] and pooled vector [vec_dim].
struct TextCond {
  int L = 0;
  std::vector<float> txt, y;
};

// The velocity a model predicts at time t for `B` copies of the patchified latent tokens [L_img, P]:
// [B, L_img, P], the first for the prompt and, when B = 2, the second for the unconditional prompt.
using VelocityFn = std::function<std::vector<float>(const std::vector<float>& tokens, int B, float t)>;

// Euler steps along `velocity` from the seed's noise, with guidance uncond + cfg (cond - uncond) when
// cfg_scale != 1: the latent [C, H, W].
std::vector<float> flow_sample(const VelocityFn& velocity, int C, int H, int W, const SampleParams& p);

// Returns the latent [C, H, W] (the transformer's latent space) for one prompt, the model run on its
// own device without recording gradients. `uncond` is used when cfg_scale != 1.
std::vector<float> sample_latent(const Denoiser& model, int C, int H, int W, const TextCond& cond,
                                 const TextCond* uncond, const SampleParams& p);

}  // namespace graft
