// The demo model's word contrast term (demo_model.h): which pictures it takes, and its
// gradient, through text encoder and transformer, against finite differences of the whole objective.
#include <stdlib.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "demo/demo_model.h"
#include "ops/cpu_ops.h"
#include "core/autograd.h"
#include "test.h"
#include "demo/tiny.h"

using namespace graft;

namespace {

// Four pictures: two at high noise (taken), one at low noise and one with an empty caption (left out).
struct ContrastFixture {
  TextEncoder te;
  FluxTransformer dit;
  std::vector<NamedParam> dit_params, te_params;
  std::vector<Scene> scenes = {random_scene(1, 0), random_scene(1, 1), random_scene(1, 2)};
  std::vector<int> pick = {0, 1, 2, -1};
  std::vector<int> ids;
  FluxInputs in;
  std::vector<float> target;
  Tensor pe;
  static constexpr int B = 4, L = 48, gh = 2, P = 16;

  explicit ContrastFixture(const std::string& dir) {
    TextEncoderConfig tc;
    tc.dim = 8, tc.heads = 2, tc.layers = 1, tc.mlp = 16, tc.max_len = L, tc.context_dim = 8, tc.vec_dim = 4;
    te = TextEncoder::random(tc, 5);
    FluxConfig c;
    c.in_channels = c.out_channels = P;
    c.hidden = 16, c.heads = 2, c.head_dim = 8, c.mlp_hidden = 32, c.context_dim = 8, c.vec_dim = 4;
    c.n_double = 1, c.n_single = 1, c.guidance_embed = false;
    c.axes_dim[0] = 2, c.axes_dim[1] = 2, c.axes_dim[2] = 4;
    write_random_flux(dir + "/m.safetensors", c, 41);
    dit = FluxTransformer::load(dir + "/m.safetensors", Device::cpu());
    dit_params = dit.params();
    te_params = te.params();
    make_trainable(dit_params);
    make_trainable(te_params);
    Rng rng(42);
    // Non-zero modulation and output weights (a training run's starting point has them at zero), so
    // every weight has a gradient.
    for (NamedParam& p : dit_params)
      for (int64_t i = 0; i < p.t->numel(); ++i) p.t->data<float>()[i] += 0.05f * rng.normal();
    for (int b = 0; b < B; ++b) {
      std::vector<int> t = tokenize_bytes(pick[b] < 0 ? "" : caption(scenes[pick[b]]), L);
      ids.insert(ids.end(), t.begin(), t.end());
    }
    in.B = B, in.L_img = gh * gh, in.L_txt = L;
    in.img.resize((size_t)B * gh * gh * P);
    for (float& v : in.img) v = rng.normal();
    in.img_ids.resize((size_t)B * gh * gh * 3);
    flux_img_ids(in.img_ids.data(), B, gh, gh);
    in.txt_ids.assign((size_t)B * L * 3, 0.0f);
    in.timesteps = {0.7f, 0.9f, 0.3f, 0.95f};
    target.resize(in.img.size());
    for (float& v : target) v = rng.normal();
    pe = dit.rope_for(in);
  }

  // The true captions' predictions, through the text encoder and the transformer.
  Tensor forward_tensor() {
    TextEncoder::Output o = te.forward(ids, B, L);
    return dit.forward(from_vector(in.img, {B, in.L_img, P}, Device::cpu()), o.context, o.pooled,
                       from_vector(in.timesteps, {B}, Device::cpu()), Tensor(), pe);
  }
  std::vector<float> forward() {
    NoGrad no_grad;
    return to_floats(forward_tensor());
  }
};

}  // namespace

TEST(word_contrast_gradients_match_finite_differences) {
  char tmpl[] = "/tmp/graft-contrast-XXXXXX";
  CHECK(mkdtemp(tmpl) != nullptr);
  ContrastFixture f(tmpl);
  // A margin no gap reaches keeps the hinge open for both pictures, so the objective is smooth:
  // J = flow loss + weight / B * sum over taken pictures of (margin - gap).
  const float weight = 0.7f, margin = 100.0f;
  WordContrast contrast(&f.dit, &f.te, weight, margin, /*count_share=*/0.5f, f.B, f.L, f.gh, f.P);
  Tensor out_t;
  auto objective = [&](std::vector<float>& dtrue) {
    out_t = f.forward_tensor();
    const std::vector<float> out = to_floats(out_t);
    const double flow = cpu::mse_forward(out.data(), f.target.data(), (long)out.size());
    dtrue.assign(out.size(), 0.0f);
    cpu::mse_backward(dtrue.data(), out.data(), f.target.data(), (long)out.size(), 1.0f);
    Rng rng(9);  // the same wrong words at every evaluation
    const double gap = contrast.step(f.scenes, f.pick, f.in, out, f.target, dtrue, rng);
    return flow + weight / f.B * contrast.rows.size() * (margin - gap);
  };
  std::vector<float> dout;
  objective(dout);
  CHECK((contrast.rows == std::vector<int>{0, 1}));  // low noise and the empty caption are left out
  backward(out_t, from_vector(dout, out_t.shape, Device::cpu()));
  contrast.backward();

  const float eps = 1e-2f;
  double worst = 0.0;
  std::string worst_name;
  int n = 0;
  std::vector<float> scratch;
  auto check = [&](const std::string& name, float& x, double analytic) {
    NoGrad no_grad;
    const float saved = x;
    x = saved + eps;
    const double jp = objective(scratch);
    x = saved - eps;
    const double jm = objective(scratch);
    x = saved;
    const double fd = (jp - jm) / (2 * eps);
    const double err = std::fabs(fd - analytic) / std::max(1e-3, std::fabs(fd) + std::fabs(analytic));
    if (err > worst) worst = err, worst_name = name + " fd " + std::to_string(fd) + " analytic " + std::to_string(analytic);
    ++n;
  };
  auto value = [](NamedParam& p, size_t k) -> float& { return p.t->data<float>()[k]; };
  auto grad = [](NamedParam& p, size_t k) { return (double)p.t->meta->grad.data<float>()[k]; };
  for (NamedParam& p : f.dit_params) {
    const size_t size = (size_t)p.t->numel();
    for (size_t k : {(size_t)0, size / 3, size - 1}) check(p.name, value(p, k), grad(p, k));
  }
  for (NamedParam& p : f.te_params) {
    const size_t size = (size_t)p.t->numel();
    std::vector<size_t> idx = {0, size / 2, size - 1};
    // The rows of bytes that the shape words differ in, which only the contrast pass sees in part.
    if (p.name == "token_embedding.weight")
      idx = {(size_t)(kTokByte0 + 'c') * f.te.cfg.dim, (size_t)(kTokByte0 + 'q') * f.te.cfg.dim + 3,
             (size_t)(kTokByte0 + 'd') * f.te.cfg.dim + 1};
    for (size_t k : idx) check(p.name, value(p, k), grad(p, k));
  }
  std::printf("      %d weights, worst relative error %.2e (%s)\n", n, worst, worst_name.c_str());
  CHECK(worst < 2e-2);
}

TEST(word_contrast_is_silent_once_the_gap_is_made) {
  char tmpl[] = "/tmp/graft-contrast-XXXXXX";
  CHECK(mkdtemp(tmpl) != nullptr);
  ContrastFixture f(tmpl);
  const std::vector<float> out = f.forward();
  std::vector<float> plain(out.size(), 0.0f);
  cpu::mse_backward(plain.data(), out.data(), f.target.data(), (long)out.size(), 1.0f);
  // A margin below any gap: the term adds nothing to the gradient of the true captions, and the
  // wrong captions' pass gets none.
  WordContrast met(&f.dit, &f.te, 1.0f, -100.0f, 0.5f, f.B, f.L, f.gh, f.P);
  std::vector<float> dtrue = plain;
  Rng rng(9);
  NoGrad no_grad;
  met.step(f.scenes, f.pick, f.in, out, f.target, dtrue, rng);
  CHECK(dtrue == plain);
  double wrong = 0.0;
  for (float v : met.dout) wrong += std::fabs(v);
  CHECK(wrong == 0.0);
  // Weight 0 (the option's default): no pass at all.
  WordContrast off(&f.dit, &f.te, 0.0f, 0.02f, 0.5f, f.B, f.L, f.gh, f.P);
  CHECK(off.step(f.scenes, f.pick, f.in, out, f.target, dtrue, rng) == 0.0f && off.rows.empty());
}

TEST(wrong_words_change_the_shape_or_the_count_alone) {
  Rng rng(3);
  int seen_counts[2][4] = {};  // [large][count] of the wrong captions
  for (uint64_t i = 0; i < 400; ++i) {
    const Scene s = random_scene(1, i);
    const Scene shape = with_wrong_word(s, false, rng), count = with_wrong_word(s, true, rng);
    CHECK(shape.shape != s.shape && shape.word == shape_name(shape.shape) && shape.count == s.count);
    CHECK(count.count != s.count && count.shape == s.shape && count.word == s.word);
    CHECK(count.count >= 1 && count.count <= (s.large ? 2 : 3));  // never a count the training pictures lack
    ++seen_counts[s.large][count.count];
  }
  CHECK(seen_counts[1][3] == 0 && seen_counts[1][1] > 0 && seen_counts[1][2] > 0);
  CHECK(seen_counts[0][1] > 0 && seen_counts[0][2] > 0 && seen_counts[0][3] > 0);

  // Through the term: with count_share 1 every wrong caption names the true shape with another count.
  char tmpl[] = "/tmp/graft-contrast-XXXXXX";
  CHECK(mkdtemp(tmpl) != nullptr);
  ContrastFixture f(tmpl);
  const std::vector<float> out = f.forward();
  std::vector<float> dtrue(out.size(), 0.0f);
  WordContrast counts(&f.dit, &f.te, 1.0f, 0.02f, 1.0f, f.B, f.L, f.gh, f.P);
  counts.step(f.scenes, f.pick, f.in, out, f.target, dtrue, rng);
  CHECK(counts.wrong_captions.size() == 2 && counts.n_count == 2);
  for (size_t a = 0; a < counts.rows.size(); ++a) {
    const Scene& s = f.scenes[f.pick[counts.rows[a]]];
    CHECK(counts.count_rows[a]);
    CHECK(counts.wrong_captions[a] != caption(s));
    CHECK(counts.wrong_captions[a].find(std::string(shape_name(s.shape))) != std::string::npos);
  }
}
