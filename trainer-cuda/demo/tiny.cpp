#include "demo/tiny.h"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "core/common.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "demo/text_encoder.h"
#include "models/flux_vae.h"

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
