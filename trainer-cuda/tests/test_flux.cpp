// Model-level checks of the FLUX transformer, LoRA files, job.json and the optimizer.
// (The comparison against an independent PyTorch implementation is tests/test_flux_torch.py.)
#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>

#include "models/flux.h"
#include "train/job.h"
#include "train/lora.h"
#include "ops/cpu_ops.h"
#include "train/optim.h"
#include "core/rng.h"
#include "test.h"
#include "demo/tiny.h"

using namespace graft;

namespace {

std::string temp_dir() {
  char tmpl[] = "/tmp/graft-test-XXXXXX";
  if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
}

FluxConfig micro_config() {
  FluxConfig c;
  c.in_channels = 16;
  c.out_channels = 16;
  c.hidden = 16;
  c.heads = 2;
  c.head_dim = 8;
  c.mlp_hidden = 32;
  c.context_dim = 8;
  c.vec_dim = 4;
  c.n_double = 1;
  c.n_single = 1;
  c.guidance_embed = true;
  c.axes_dim[0] = 2;
  c.axes_dim[1] = 2;
  c.axes_dim[2] = 4;
  return c;
}

FluxInputs random_inputs(const FluxConfig& c, int B, int gh, int gw, int Lt, uint64_t seed) {
  FluxInputs in;
  in.B = B;
  in.L_img = gh * gw;
  in.L_txt = Lt;
  Rng rng(seed);
  auto fill = [&](std::vector<float>& v, size_t n) {
    v.resize(n);
    for (float& x : v) x = rng.normal();
  };
  fill(in.img, (size_t)B * in.L_img * c.in_channels);
  fill(in.txt, (size_t)B * Lt * c.context_dim);
  fill(in.y, (size_t)B * c.vec_dim);
  in.img_ids.resize((size_t)B * in.L_img * 3);
  flux_img_ids(in.img_ids.data(), B, gh, gw);
  in.txt_ids.assign((size_t)B * Lt * 3, 0.0f);
  for (int b = 0; b < B; ++b) {
    in.timesteps.push_back(rng.uniform());
    in.guidance.push_back(1.0f + 3.0f * rng.uniform());
  }
  return in;
}

// Random non-zero B so that every A gets a gradient too.
void randomize_lora(LoraSet& set, uint64_t seed) {
  Rng rng(seed, 3);
  for (float& p : set.params) p = 0.2f * rng.normal();
}

double loss_of(FluxRunner& r, const FluxInputs& in, const std::vector<float>& target) {
  std::vector<float> out;
  r.forward(in, out);
  double s = 0.0;
  for (size_t i = 0; i < out.size(); ++i) s += (double)(out[i] - target[i]) * (out[i] - target[i]);
  return s / out.size();
}

}  // namespace

TEST(flux_lora_gradients_match_finite_differences) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  write_random_flux(dir + "/m.safetensors", c, 5);
  FluxModel m = FluxModel::load(dir + "/m.safetensors");
  LoraSet lora = lora_create(flux_lora_targets(m.cfg, /*include_modulation=*/true), 2, 4.0f, 7);
  randomize_lora(lora, 8);
  FluxRunner r(&m, &lora);
  FluxInputs in = random_inputs(c, 2, 2, 3, 3, 9);
  std::vector<float> out, target;
  r.forward(in, out);
  Rng rng(10);
  target.resize(out.size());
  for (float& t : target) t = rng.normal();
  // Analytic gradient of mean squared error.
  r.forward(in, out);
  std::vector<float> dout(out.size(), 0.0f);
  mse_backward(dout.data(), out.data(), target.data(), (long)out.size(), 1.0f);
  lora.zero_grad();
  r.backward(dout);
  // Central differences on a spread of parameters across every adapter (A and B halves).
  const float eps = 1e-2f;
  double worst = 0.0;
  int checked = 0;
  for (size_t ai = 0; ai < lora.adapters.size(); ++ai) {
    const LoraAdapter& ad = lora.adapters[ai];
    size_t na = (size_t)ad.rank * ad.target.in, nb = (size_t)ad.target.rows * ad.rank;
    for (size_t k : {ad.a_off, ad.a_off + na / 2, ad.b_off, ad.b_off + nb - 1}) {
      float saved = lora.params[k];
      lora.params[k] = saved + eps;
      double lp = loss_of(r, in, target);
      lora.params[k] = saved - eps;
      double lm = loss_of(r, in, target);
      lora.params[k] = saved;
      double fd = (lp - lm) / (2 * eps), an = lora.grads[k];
      double err = std::fabs(fd - an) / std::max(1e-3, std::fabs(fd) + std::fabs(an));
      worst = std::max(worst, err);
      if (err > 2e-2) {
        std::printf("      %s param %zu: analytic %.6g vs finite difference %.6g\n", ad.target.module.c_str(), k, an, fd);
      }
      ++checked;
    }
  }
  std::printf("      %d LoRA parameters across %zu adapters, worst relative error %.2e\n", checked, lora.adapters.size(),
              worst);
  CHECK(worst < 2e-2);
}

// Full training (every weight) and the input gradients that train the text encoder through the
// transformer, against central differences: a few entries of every tensor of the checkpoint.
TEST(flux_full_and_input_gradients_match_finite_differences) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  write_random_flux(dir + "/m.safetensors", c, 31);
  FluxModel m = FluxModel::load(dir + "/m.safetensors");
  m.enable_full_grads();
  FluxRunner r(&m, nullptr);
  FluxInputs in = random_inputs(c, 2, 2, 2, 3, 32);
  std::vector<float> out, target;
  r.forward(in, out);
  Rng rng(33);
  target.resize(out.size());
  for (float& t : target) t = rng.normal();
  std::vector<float> dout(out.size(), 0.0f);
  mse_backward(dout.data(), out.data(), target.data(), (long)out.size(), 1.0f);
  FluxInputGrads dinputs;
  r.backward(dout, &dinputs);
  const float eps = 1e-2f;
  double worst = 0.0;
  std::string worst_name;
  auto check = [&](const std::string& name, float& x, double analytic) {
    float saved = x;
    x = saved + eps;
    double lp = loss_of(r, in, target);
    x = saved - eps;
    double lm = loss_of(r, in, target);
    x = saved;
    double fd = (lp - lm) / (2 * eps);
    double err = std::fabs(fd - analytic) / std::max(1e-3, std::fabs(fd) + std::fabs(analytic));
    if (err > worst) worst = err, worst_name = name;
  };
  int n = 0;
  for (ParamRef& p : m.params()) {
    CHECK(p.grad->size() == p.value->size());
    size_t size = p.value->size();
    for (size_t k : {(size_t)0, size / 3, size - 1}) {
      check(p.name, (*p.value)[k], (*p.grad)[k]);
      ++n;
    }
  }
  for (size_t k : {(size_t)0, in.txt.size() / 2, in.txt.size() - 1}) check("input txt", in.txt[k], dinputs.txt[k]);
  for (size_t k : {(size_t)0, in.y.size() - 1}) check("input y", in.y[k], dinputs.y[k]);
  std::printf("      %d weights of %zu tensors and the txt/y inputs, worst relative error %.2e (%s)\n", n,
              m.params().size(), worst, worst_name.c_str());
  CHECK(worst < 2e-2);
}

TEST(flux_model_save_round_trips) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  write_random_flux(dir + "/m.safetensors", c, 41);
  FluxModel m = FluxModel::load(dir + "/m.safetensors");
  m.save(dir + "/again.safetensors", DType::F32, {{"note", "x"}});
  FluxModel back = FluxModel::load(dir + "/again.safetensors");
  FluxInputs in = random_inputs(c, 1, 2, 2, 2, 42);
  std::vector<float> a, b;
  FluxRunner ra(&m, nullptr), rb(&back, nullptr);
  ra.forward(in, a);
  rb.forward(in, b);
  CHECK(a == b);
  CHECK(SafeTensorsFile::open(dir + "/again.safetensors").tensors.size() ==
        SafeTensorsFile::open(dir + "/m.safetensors").tensors.size());
}

TEST(flux_zero_lora_leaves_the_model_unchanged) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  write_random_flux(dir + "/m.safetensors", c, 11);
  FluxModel m = FluxModel::load(dir + "/m.safetensors");
  FluxInputs in = random_inputs(c, 1, 3, 2, 4, 12);
  std::vector<float> base, adapted;
  {
    FluxRunner r(&m, nullptr);
    r.forward(in, base);
  }
  LoraSet lora = lora_create(flux_lora_targets(m.cfg, false), 4, 4.0f, 13);  // B = 0
  FluxRunner r(&m, &lora);
  r.forward(in, adapted);
  CHECK(base.size() == adapted.size());
  for (size_t i = 0; i < base.size(); ++i) CHECK_NEAR(base[i], adapted[i], 1e-6);
}

TEST(flux_lora_file_reloads_to_the_same_predictions) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  write_random_flux(dir + "/m.safetensors", c, 21);
  FluxModel m = FluxModel::load(dir + "/m.safetensors");
  auto targets = flux_lora_targets(m.cfg, false);
  LoraSet lora = lora_create(targets, 4, 8.0f, 22);  // alpha != rank: the scale is folded into B on save
  randomize_lora(lora, 23);
  FluxInputs in = random_inputs(c, 2, 2, 2, 3, 24);
  std::vector<float> before, after;
  {
    FluxRunner r(&m, &lora);
    r.forward(in, before);
  }
  lora_save(lora, dir + "/l.safetensors", DType::F32, {{"software", "graft"}});
  SafeTensorsFile f = SafeTensorsFile::open(dir + "/l.safetensors");
  CHECK(f.has("transformer.transformer_blocks.0.attn.to_q.lora_A.weight"));
  CHECK(f.has("transformer.transformer_blocks.0.ff_context.net.2.lora_B.weight"));
  CHECK(f.has("transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight"));
  CHECK(f.has("transformer.single_transformer_blocks.0.proj_out.lora_B.weight"));
  CHECK(!f.has("transformer.transformer_blocks.0.norm1.linear.lora_A.weight"));  // modulation off by default
  CHECK(f.metadata.at("software") == "graft");
  LoraSet back = lora_load(dir + "/l.safetensors", flux_lora_targets(m.cfg, true));
  CHECK(back.adapters.size() == lora.adapters.size());
  FluxRunner r(&m, &back);
  r.forward(in, after);
  for (size_t i = 0; i < before.size(); ++i) CHECK_NEAR(before[i], after[i], 1e-5 * (1 + std::fabs(before[i])));
}

TEST(flux_lora_file_for_another_model_is_refused) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  LoraSet lora = lora_create(flux_lora_targets(c, false), 2, 2.0f, 1);
  lora_save(lora, dir + "/l.safetensors", DType::BF16, {});
  FluxConfig other = c;
  other.hidden = 32;  // same names, other widths
  other.heads = 4;
  CHECK_THROWS(lora_load(dir + "/l.safetensors", flux_lora_targets(other, false)), "expected [rank, 32]");
  FluxConfig fewer = c;
  fewer.n_single = 0;
  CHECK_THROWS(lora_load(dir + "/l.safetensors", flux_lora_targets(fewer, false)), "which this model does not have");
}

TEST(flux_load_names_the_missing_tensor) {
  std::string dir = temp_dir();
  FluxConfig c = micro_config();
  write_random_flux(dir + "/m.safetensors", c, 1);
  SafeTensorsFile f = SafeTensorsFile::open(dir + "/m.safetensors");
  SafeTensorsWriter w;
  w.metadata = f.metadata;
  for (const TensorInfo& t : f.tensors) {
    if (t.name == "single_blocks.0.linear2.bias") continue;
    std::vector<float> v = f.read_f32(t.name);
    w.add(t.name, DType::BF16, t.shape, v.data());
  }
  w.write(dir + "/broken.safetensors");
  CHECK_THROWS(FluxModel::load(dir + "/broken.safetensors"), "single_blocks.0.linear2.bias");
  CHECK_THROWS(FluxModel::load(dir + "/broken.safetensors"), "broken.safetensors");
  // A file that is not a FLUX transformer at all.
  SafeTensorsWriter x;
  float one = 1.0f;
  x.add("x_embedder.weight", DType::F32, {1}, &one);
  x.write(dir + "/diffusers.safetensors");
  CHECK_THROWS(FluxModel::load(dir + "/diffusers.safetensors"), "diffusers layout");
}

TEST(flux_config_is_read_from_shapes) {
  std::string dir = temp_dir();
  FluxConfig c = tiny_flux_config();
  write_random_flux(dir + "/m.safetensors", c, 3);
  FluxModel m = FluxModel::load(dir + "/m.safetensors");
  CHECK(m.cfg.hidden == 64 && m.cfg.heads == 2 && m.cfg.head_dim == 32 && m.cfg.mlp_hidden == 256);
  CHECK(m.cfg.n_double == 2 && m.cfg.n_single == 2 && m.cfg.guidance_embed);
  CHECK(m.cfg.context_dim == 32 && m.cfg.vec_dim == 16 && m.cfg.in_channels == 16 && m.cfg.out_channels == 16);
  CHECK(m.cfg.axes_dim[0] == 4 && m.cfg.axes_dim[1] == 14 && m.cfg.axes_dim[2] == 14);
  // 14 LoRA targets per double block + 5 per single block, modulation off.
  CHECK(flux_lora_targets(m.cfg, false).size() == 2 * 12 + 2 * 5);
}

TEST(job_errors_name_the_field) {
  std::string dir = temp_dir();
  CHECK_THROWS(job_load(dir + "/nope"), "job folder not found");
  CHECK_THROWS(job_load(dir), "job.json: cannot read");
  write_text(dir + "/job.json", "{\"name\": \"x\", ");
  CHECK_THROWS(job_load(dir), "not valid JSON");
  write_text(dir + "/job.json", "{\"name\": \"x\", \"model\": {\"transformer\": \"m\"}, \"train\": {\"lr\": \"fast\"}}");
  CHECK_THROWS(job_load(dir), "train.lr must be a number");
  write_text(dir + "/job.json", "{\"name\": \"x\", \"model\": {\"transformer\": \"m\"}, \"train\": {\"steps\": 0}}");
  CHECK_THROWS(job_load(dir), "train.steps must be an integer in [1,");
  write_text(dir + "/job.json", "{\"name\": \"x\", \"model\": {\"transformer\": \"m\"}, \"train\": {\"optimizer\": \"sgd\"}}");
  CHECK_THROWS(job_load(dir), "one of adamw, adamw8bit");
  write_text(dir + "/job.json", "{\"name\": \"x\", \"model\": {\"transformer\": \"m\"}}");
  CHECK_THROWS(job_load(dir), "no training data: needs datasets");
  write_text(dir + "/job.json", "{\"name\": \"x\", \"model\": {\"transformer\": \"m\"}, \"items\": []}");
  CHECK_THROWS(job_load(dir), "items must be a non-empty list");
  write_text(dir + "/job.json", "{\"model\": {\"transformer\": \"m\"}}");
  CHECK_THROWS(job_load(dir), "name is missing");
}

TEST(adamw_matches_hand_computation) {
  // Two updates of torch.optim.AdamW(lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.5) on p=1,
  // grads 0.5 then -1, worked by hand.
  AdamW opt;
  opt.beta1 = 0.9f;
  opt.beta2 = 0.99f;
  opt.weight_decay = 0.5f;
  float p = 1.0f, g1 = 0.5f, g2 = -1.0f;
  opt.step(&p, &g1, 1, 0.1f);
  double m = 0.05, v = 0.0025;
  double pe = 1.0 * (1 - 0.05) - 0.1 * (m / 0.1) / (std::sqrt(v / 0.01) + 1e-8);
  CHECK_NEAR(p, pe, 1e-6);
  opt.step(&p, &g2, 1, 0.1f);
  m = 0.9 * m + 0.1 * -1.0;
  v = 0.99 * v + 0.01 * 1.0;
  pe = pe * (1 - 0.05) - 0.1 * (m / (1 - 0.81)) / (std::sqrt(v / (1 - 0.9801)) + 1e-8);
  CHECK_NEAR(p, pe, 1e-6);
}

TEST(grad_clipping_and_lr_schedules) {
  float g[2] = {3.0f, 4.0f};
  CHECK_NEAR(clip_grad_norm(g, 2, 1.0f), 5.0, 1e-6);
  CHECK_NEAR(std::sqrt(g[0] * g[0] + g[1] * g[1]), 1.0, 1e-5);
  float h[2] = {0.3f, 0.4f};
  clip_grad_norm(h, 2, 1.0f);  // under the limit: untouched
  CHECK_NEAR(h[0], 0.3, 1e-7);
  CHECK_NEAR(lr_at("constant", 1e-3f, 7, 100, 10), 1e-3, 1e-9);
  CHECK_NEAR(lr_at("constant_with_warmup", 1e-3f, 5, 100, 10), 5e-4, 1e-9);
  CHECK_NEAR(lr_at("constant_with_warmup", 1e-3f, 50, 100, 10), 1e-3, 1e-9);
  CHECK_NEAR(lr_at("linear", 1e-3f, 55, 100, 10), 1e-3 * (1 - 45.0 / 90.0), 1e-9);
  CHECK_NEAR(lr_at("cosine", 1e-3f, 100, 100, 0), 0.0, 1e-9);
  CHECK_NEAR(lr_at("cosine", 1e-3f, 50, 100, 0), 5e-4, 1e-9);
}
