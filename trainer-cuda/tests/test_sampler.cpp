// FlowMatch Euler sampling: the schedule, and the sampler driven by an exact velocity field.
#include <cmath>

#include "ops/cpu_ops.h"
#include "core/rng.h"
#include "train/sampler.h"
#include "test.h"

using namespace graft;

namespace {

// The exact velocity for data that is a single point x0: v(x, t) = (x - x0) / t. The straight-line
// ODE has a linear solution, so Euler integration lands on x0 for any number of steps. The
// conditional prediction aims at x0, the unconditional one at -x0 (to check the guidance formula).
struct PointMassModel {
  std::vector<float> x0_tokens;  // [L, P]
  int forwards = 0;
  bool still = false;  // v = 0: the sample stays at its starting noise
  VelocityFn velocity() {
    return [this](const std::vector<float>& tokens, int B, float t) {
      ++forwards;
      const size_t n = x0_tokens.size();
      std::vector<float> out((size_t)B * n);
      for (int b = 0; b < B; ++b) {
        const float sign = b == 0 ? 1.0f : -1.0f;
        for (size_t j = 0; j < n; ++j) out[b * n + j] = still ? 0.0f : (tokens[j] - sign * x0_tokens[j]) / t;
      }
      return out;
    };
  }
};

}  // namespace

TEST(sampler_timesteps_with_shift) {
  std::vector<float> t = flow_timesteps(4, 1.0f);
  CHECK(t.size() == 5);
  CHECK_NEAR(t[0], 1.0, 1e-7);
  CHECK_NEAR(t[1], 0.75, 1e-7);
  CHECK_NEAR(t[4], 0.0, 1e-7);
  std::vector<float> s = flow_timesteps(4, 3.0f);  // shifted toward high noise
  CHECK_NEAR(s[0], 1.0, 1e-7);
  CHECK_NEAR(s[2], 3 * 0.5 / (1 + 2 * 0.5), 1e-6);
  CHECK(s[2] > t[2]);
  CHECK_THROWS(flow_timesteps(0, 1.0f), "steps");
}

TEST(sampler_lands_on_the_data_with_an_exact_velocity) {
  const int C = 2, H = 4, W = 6;
  std::vector<float> x0(C * H * W);
  Rng rng(5);
  for (float& v : x0) v = rng.normal();
  PointMassModel model;
  model.x0_tokens.resize(x0.size());
  cpu::patchify_forward(model.x0_tokens.data(), x0.data(), 1, C, H, W, 2);
  SampleParams p;
  p.steps = 7;
  p.shift = 2.0f;
  std::vector<float> x = flow_sample(model.velocity(), C, H, W, p);
  CHECK(model.forwards == 7);
  for (size_t i = 0; i < x.size(); ++i) CHECK_NEAR(x[i], x0[i], 1e-4);
  // Guidance: uncond aims at -x0, so uncond + 2 (cond - uncond) aims at 3 x0.
  p.cfg_scale = 2.0f;
  x = flow_sample(model.velocity(), C, H, W, p);
  for (size_t i = 0; i < x.size(); ++i) CHECK_NEAR(x[i], 3 * x0[i], 1e-3);
  // Same seed, same start; another seed, another start (seen with v = 0, which keeps x at its noise).
  p.cfg_scale = 1.0f;
  model.still = true;
  p.steps = 1;
  p.seed = 1;
  std::vector<float> a = flow_sample(model.velocity(), C, H, W, p);
  std::vector<float> b = flow_sample(model.velocity(), C, H, W, p);
  p.seed = 2;
  std::vector<float> c = flow_sample(model.velocity(), C, H, W, p);
  CHECK(a == b);
  CHECK(a != c);
}
