#include "tiny.h"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "common.h"
#include "rng.h"
#include "safetensors.h"
#include "text_encoder.h"
#include "vae.h"

namespace graft {

FluxConfig tiny_flux_config() {
  FluxConfig c;
  c.in_channels = 16;  // 4 latent channels x 2 x 2 patch (FLUX.1 has 16 channels; tiny keeps tests fast)
  c.out_channels = 16;
  c.hidden = 64;
  c.heads = 2;
  c.head_dim = 32;
  c.mlp_hidden = 256;
  c.context_dim = 32;
  c.vec_dim = 16;
  c.n_double = 2;
  c.n_single = 2;
  c.guidance_embed = true;
  c.axes_dim[0] = 4;
  c.axes_dim[1] = 14;
  c.axes_dim[2] = 14;
  return c;
}

namespace {

// Modulation layers start small, as in an adaLN-Zero-initialised DiT, so the residual stream of the
// random model still carries its input (a random model with O(1) gates scrambles it beyond what a
// LoRA can undo in a few hundred steps).
const float kModGain = 0.2f;

struct RandomWriter {
  SafeTensorsWriter w;
  Rng rng;
  explicit RandomWriter(uint64_t seed) : rng(seed, 0x71E, 0) {}

  void normal(const std::string& name, std::vector<int64_t> shape, float std, float mean = 0.0f) {
    std::vector<float> v(numel(shape));
    for (float& x : v) x = mean + std * rng.normal();
    w.add(name, DType::F32, shape, v.data());
  }
  void linear(const std::string& name, int in, int out, float gain = 1.0f) {
    normal(name + ".weight", {out, in}, gain / std::sqrt((float)in));
    normal(name + ".bias", {out}, 0.02f);
  }
};

}  // namespace

void write_random_flux(const std::string& path, const FluxConfig& c, uint64_t seed) {
  RandomWriter r(seed);
  const int C = c.hidden, M = c.mlp_hidden, D = c.head_dim;
  r.linear("img_in", c.in_channels, C);
  r.linear("txt_in", c.context_dim, C);
  r.linear("time_in.in_layer", 256, C);
  r.linear("time_in.out_layer", C, C);
  r.linear("vector_in.in_layer", c.vec_dim, C);
  r.linear("vector_in.out_layer", C, C);
  if (c.guidance_embed) {
    r.linear("guidance_in.in_layer", 256, C);
    r.linear("guidance_in.out_layer", C, C);
  }
  for (int i = 0; i < c.n_double; ++i) {
    std::string p = "double_blocks." + std::to_string(i) + ".";
    for (const char* s : {"img", "txt"}) {
      std::string sp = p + s;
      r.linear(sp + "_mod.lin", C, 6 * C, kModGain);
      r.linear(sp + "_attn.qkv", C, 3 * C);
      r.normal(sp + "_attn.norm.query_norm.scale", {D}, 0.1f, 1.0f);
      r.normal(sp + "_attn.norm.key_norm.scale", {D}, 0.1f, 1.0f);
      r.linear(sp + "_attn.proj", C, C);
      r.linear(sp + "_mlp.0", C, M);
      r.linear(sp + "_mlp.2", M, C);
    }
  }
  for (int i = 0; i < c.n_single; ++i) {
    std::string p = "single_blocks." + std::to_string(i) + ".";
    r.linear(p + "linear1", C, 3 * C + M);
    r.linear(p + "linear2", C + M, C);
    r.normal(p + "norm.query_norm.scale", {D}, 0.1f, 1.0f);
    r.normal(p + "norm.key_norm.scale", {D}, 0.1f, 1.0f);
    r.linear(p + "modulation.lin", C, 3 * C, kModGain);
  }
  r.linear("final_layer.adaLN_modulation.1", C, 2 * C, kModGain);
  r.linear("final_layer.linear", C, c.out_channels);
  r.w.metadata["graft.axes_dim"] =
      nlohmann::json({c.axes_dim[0], c.axes_dim[1], c.axes_dim[2]}).dump();
  r.w.metadata["graft.note"] = "random FLUX.1-layout checkpoint written by graft-trainer for tests";
  r.w.write(path);
}

void make_tiny(const std::string& dir, uint64_t seed) {
  FluxConfig c = tiny_flux_config();
  make_dirs(dir + "/model");
  make_dirs(dir + "/cache/latents");
  make_dirs(dir + "/cache/text");
  write_random_flux(dir + "/model/transformer.safetensors", c, seed);

  // A fixed small dataset: smooth latents (a few waves per channel, as real latents are smooth)
  // of 16 channels x 8 x 8, each with its own random text embedding.
  const int n_items = 4, LC = c.in_channels / 4, H = 8, W = 8, Lt = 8;
  nlohmann::json items = nlohmann::json::array();
  for (int i = 0; i < n_items; ++i) {
    Rng rng(seed, 0xDA7A, i);
    std::vector<float> lat((size_t)LC * H * W);
    for (int ch = 0; ch < LC; ++ch) {
      float a = rng.normal(), fx = 0.3f + rng.uniform(), fy = 0.3f + rng.uniform(), ph = 6.28f * rng.uniform();
      float bias = 0.5f * rng.normal();
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) lat[((size_t)ch * H + y) * W + x] = bias + a * std::sin(fx * x + fy * y + ph);
    }
    std::vector<float> txt((size_t)Lt * c.context_dim), yv(c.vec_dim);
    for (float& v : txt) v = rng.normal();
    for (float& v : yv) v = rng.normal();
    char name[64];
    std::snprintf(name, sizeof name, "item_%04d.safetensors", i);
    SafeTensorsWriter lw;
    lw.add("latent", DType::F32, {LC, H, W}, lat.data());
    lw.write(dir + "/cache/latents/" + name);
    SafeTensorsWriter tw;
    tw.add("txt", DType::F32, {Lt, c.context_dim}, txt.data());
    tw.add("y", DType::F32, {c.vec_dim}, yv.data());
    tw.write(dir + "/cache/text/" + name);
    items.push_back({{"latent", std::string("cache/latents/") + name}, {"text", std::string("cache/text/") + name}});
  }
  nlohmann::json job = {
      {"format", "graft-job/1"},
      {"name", "tiny"},
      {"device", "cpu"},
      {"trigger_word", "zxq"},
      {"model", {{"arch", "flux"}, {"transformer", "model/transformer.safetensors"}, {"name_or_path", "graft/tiny-random-flux"}}},
      {"network", {{"type", "lora"}, {"linear", 16}, {"linear_alpha", 16}}},
      {"train",
       {{"steps", 300}, {"batch_size", 2}, {"gradient_accumulation", 1}, {"lr", 5e-3}, {"lr_scheduler", "constant"},
        {"optimizer", "adamw"}, {"optimizer_params", {{"weight_decay", 1e-4}}}, {"max_grad_norm", 1.0},
        {"timestep_type", "sigmoid"}, {"seed", seed}, {"guidance", 1.0}}},
      {"save", {{"dtype", "fp32"}, {"save_every", 100}, {"max_step_saves_to_keep", 2}}},
      {"items", items},
  };
  std::string text = job.dump(2) + "\n";
  write_file_atomic(dir + "/job.json", text.data(), text.size());
}

void make_tiny_pipeline(const std::string& dir, uint64_t seed) {
  FluxConfig c = tiny_flux_config();
  make_dirs(dir);
  write_random_flux(dir + "/transformer.safetensors", c, seed);
  TextEncoderConfig tc;
  tc.dim = 32;
  tc.heads = 2;
  tc.layers = 1;
  tc.mlp = 64;
  tc.max_len = 16;
  tc.context_dim = c.context_dim;
  tc.vec_dim = c.vec_dim;
  TextEncoder::random(tc, seed + 1).save(dir + "/text_encoder.safetensors", DType::F32, {});
  VaeConfig vc;
  vc.ch = 8;
  vc.ch_mult = {1, 2};
  vc.num_res_blocks = 1;
  vc.z_channels = c.in_channels / 4;
  vc.groups = 4;
  write_random_vae(dir + "/ae.safetensors", vc, seed + 2);
  nlohmann::json model = {{"text_max_len", tc.max_len}, {"image_size", 16},
                          {"sample", {{"steps", 4}, {"cfg_scale", 1.0}, {"shift", 1.0}}}};
  std::string text = model.dump(2) + "\n";
  write_file_atomic(dir + "/model.json", text.data(), text.size());
}

}  // namespace graft
