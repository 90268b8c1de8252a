#include "train/sampler.h"

#include <algorithm>

#include "core/common.h"
#include "core/autograd.h"
#include "ops/cpu_ops.h"
#include "core/rng.h"

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

std::vector<float> flow_sample(const VelocityFn& velocity, int C, int H, int W, const SampleParams& p) {
  if (H % 2 || W % 2) fail("sampler: latent sides must be even");
  const bool guided = p.cfg_scale != 1.0f;
  const int B = guided ? 2 : 1, Li = (H / 2) * (W / 2), P = C * 4;
  const size_t n = (size_t)C * H * W;
  std::vector<float> x(n);
  Rng rng(p.seed, 0x5A3, 0);
  for (float& v : x) v = rng.normal();
  const std::vector<float> ts = flow_timesteps(p.steps, p.shift);
  std::vector<float> v(n), tokens((size_t)Li * P);
  for (int i = 0; i < p.steps; ++i) {
    cpu::patchify_forward(tokens.data(), x.data(), 1, C, H, W, 2);
    std::vector<float> out = velocity(tokens, B, ts[i]);
    if (guided)  // uncond + scale * (cond - uncond), on the tokens
      for (size_t j = 0; j < tokens.size(); ++j) out[j] = out[tokens.size() + j] + p.cfg_scale * (out[j] - out[tokens.size() + j]);
    std::fill(v.begin(), v.end(), 0.0f);
    cpu::unpatchify_forward(v.data(), out.data(), 1, C, H, W, 2);
    const float step = ts[i + 1] - ts[i];  // negative: t runs from 1 to 0
    for (size_t j = 0; j < n; ++j) x[j] += step * v[j];
  }
  return x;
}

std::vector<float> sample_latent(const Denoiser& model, int C, int H, int W, const TextCond& cond,
                                 const TextCond* uncond, const SampleParams& p) {
  NoGrad no_grad;
  if (C != model.latent_channels()) fail("sampler: latent channels do not match the transformer");
  if (H % 2 || W % 2) fail("sampler: latent sides must be even");
  const bool guided = p.cfg_scale != 1.0f;
  if (guided && !uncond) fail("sampler: classifier-free guidance needs an unconditional prompt");
  if (guided && uncond->L != cond.L && !model.ragged_text())
    fail("sampler: classifier-free guidance needs an unconditional prompt of the same length");
  const int B = guided ? 2 : 1, gh = H / 2, gw = W / 2, Li = gh * gw, P = C * 4;
  // The prompt and the unconditional one, in one batch; a shorter one padded with zero rows.
  FluxInputs in;
  in.B = B;
  in.L_img = Li;
  in.L_txt = guided ? std::max(cond.L, uncond->L) : cond.L;
  in.img_ids.resize((size_t)B * Li * 3);
  flux_img_ids(in.img_ids.data(), B, gh, gw);
  in.txt_ids.assign((size_t)B * in.L_txt * 3, 0.0f);
  const size_t width = cond.L ? cond.txt.size() / cond.L : 0;
  in.txt.assign((size_t)B * in.L_txt * width, 0.0f);
  for (int b = 0; b < B; ++b) {
    const TextCond& t = b == 0 ? cond : *uncond;
    std::copy(t.txt.begin(), t.txt.end(), in.txt.begin() + (size_t)b * in.L_txt * width);
    in.y.insert(in.y.end(), t.y.begin(), t.y.end());
    in.txt_lens.push_back(t.L);
  }
  if (!model.ragged_text()) in.txt_lens.clear();
  in.guidance.assign(B, p.guidance);
  in.img.resize((size_t)B * Li * P);
  return flow_sample([&](const std::vector<float>& tokens, int b_count, float t) {
    for (int b = 0; b < b_count; ++b) std::copy(tokens.begin(), tokens.end(), in.img.begin() + (size_t)b * Li * P);
    in.timesteps.assign(b_count, t);
    return to_floats(model.forward(in));
  }, C, H, W, p);
}

}  // namespace graft
