#include "sampler.h"

#include <algorithm>

#include "common.h"
#include "ops.h"
#include "rng.h"

namespace graft {

std::vector<float> flow_timesteps(int steps, float shift) {
  if (steps < 1) fail("sample steps must be at least 1, got " + std::to_string(steps));
  if (!(shift > 0.0f)) fail("sample time shift must be > 0, got " + std::to_string(shift));
  std::vector<float> t(steps + 1);
  for (int i = 0; i <= steps; ++i) {
    float u = 1.0f - (float)i / steps;
    t[i] = shift * u / (1.0f + (shift - 1.0f) * u);
  }
  return t;
}

std::vector<float> sample_latent(FluxBackend& model, const FluxConfig& cfg, int C, int H, int W, const TextCond& cond,
                                 const TextCond* uncond, const SampleParams& p) {
  if (C * 4 != cfg.in_channels) fail("sampler: latent channels do not match the transformer");
  if (H % 2 || W % 2) fail("sampler: latent sides must be even");
  const bool guided = p.cfg_scale != 1.0f;
  if (guided && (!uncond || uncond->L != cond.L)) fail("sampler: classifier-free guidance needs an unconditional prompt of the same length");
  const int B = guided ? 2 : 1, gh = H / 2, gw = W / 2, Li = gh * gw, P = C * 4;
  const size_t n = (size_t)C * H * W;

  std::vector<float> x(n);
  Rng rng(p.seed, 0x5A3, 0);
  for (float& v : x) v = rng.normal();

  FluxInputs in;
  in.B = B;
  in.L_img = Li;
  in.L_txt = cond.L;
  in.img_ids.resize((size_t)B * Li * 3);
  flux_img_ids(in.img_ids.data(), B, gh, gw);
  in.txt_ids.assign((size_t)B * cond.L * 3, 0.0f);
  in.txt = cond.txt;
  in.y = cond.y;
  if (guided) {
    in.txt.insert(in.txt.end(), uncond->txt.begin(), uncond->txt.end());
    in.y.insert(in.y.end(), uncond->y.begin(), uncond->y.end());
  }
  in.guidance.assign(B, p.guidance);
  in.img.resize((size_t)B * Li * P);

  const std::vector<float> ts = flow_timesteps(p.steps, p.shift);
  std::vector<float> out, v(n), tokens((size_t)Li * P);
  for (int i = 0; i < p.steps; ++i) {
    patchify_forward(tokens.data(), x.data(), 1, C, H, W, 2);
    for (int b = 0; b < B; ++b) std::copy(tokens.begin(), tokens.end(), in.img.begin() + (size_t)b * Li * P);
    in.timesteps.assign(B, ts[i]);
    model.forward(in, out);
    if (guided)  // uncond + scale * (cond - uncond), on the tokens
      for (size_t j = 0; j < tokens.size(); ++j) out[j] = out[tokens.size() + j] + p.cfg_scale * (out[j] - out[tokens.size() + j]);
    std::fill(v.begin(), v.end(), 0.0f);
    unpatchify_forward(v.data(), out.data(), 1, C, H, W, 2);
    const float dt = ts[i + 1] - ts[i];  // negative: t runs from 1 to 0
    for (size_t j = 0; j < n; ++j) x[j] += dt * v[j];
  }
  return x;
}

}  // namespace graft
