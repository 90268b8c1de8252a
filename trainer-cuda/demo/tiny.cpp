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

namespace {

// Modulation layers start small, as in an adaLN-Zero-initialised DiT, so the residual stream of the
// random model still carries its input (a random model with O(1) gates scrambles it beyond what a
// LoRA can undo in a few hundred steps).
const float kModGain = 0.2f;

uint64_t name_hash(const std::string& s) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// A tensor's distribution, from its BFL name and shape.
void draw(const std::string& name, const Shape& shape, uint64_t seed, float* out) {
  Rng rng(seed, 0x71E, name_hash(name));
  const size_t n = (size_t)shape_numel(shape);
  const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
  const bool modulation = name.find("_mod.lin") != std::string::npos || name.find("modulation.lin") != std::string::npos ||
                          name.find("adaLN_modulation") != std::string::npos;
  float mean = 0.0f, std = 0.02f;
  if (name.find(".scale") != std::string::npos) mean = 1.0f, std = 0.1f;
  else if (!bias) std = (modulation ? kModGain : 1.0f) / std::sqrt((float)shape[1]);
  for (size_t i = 0; i < n; ++i) out[i] = mean + std * rng.normal();
}

}  // namespace

void write_random_flux(const std::string& path, const FluxConfig& c, uint64_t seed, const RandomFluxOptions& o) {
  // The model's own list of tensors (names and shapes), without allocating any.
  std::vector<std::pair<std::string, Shape>> tensors;
  {
    WeightLoader w(nullptr, identity_layout("shapes"), Device::cpu());
    w.shapes_only = true;
    FluxTransformer m(c, w);
    for (NamedParam& p : m.params()) tensors.push_back({p.name, p.t->shape});
  }
  const std::string axes = nlohmann::json({c.axes_dim[0], c.axes_dim[1], c.axes_dim[2]}).dump();
  auto lazy = [&](SafeTensorsWriter& w, const std::string& stored, const std::string& name, const Shape& shape,
                  int64_t row0, int64_t rows) {
    Shape part = shape;
    part[0] = rows;
    w.add_lazy(stored, o.dtype, part, [=](uint8_t* dst) {
      std::vector<float> v((size_t)shape_numel(shape));
      draw(name, shape, seed, v.data());
      const int64_t row = shape_numel(shape) / shape[0];
      std::vector<float> block(v.begin() + row0 * row, v.begin() + (row0 + rows) * row);
      convert_host(dst, o.dtype, block.data(), DType::F32, block.size());
    });
  };
  if (o.layout == "bfl" || o.layout == "comfyui") {
    SafeTensorsWriter w;
    const std::string prefix = o.layout == "comfyui" ? "model.diffusion_model." : "";
    for (const auto& [name, shape] : tensors) lazy(w, prefix + name, name, shape, 0, shape[0]);
    w.metadata["graft.axes_dim"] = axes;
    w.metadata["graft.note"] = "random FLUX.1-layout checkpoint written by graft-trainer for tests";
    w.write(path);
    return;
  }
  if (o.layout != "diffusers") fail("random FLUX checkpoint: unknown layout '" + o.layout + "' (bfl, comfyui, diffusers)");
  // diffusers: fused BFL tensors split into their parts (q, k, v of hidden rows each; the single
  // blocks' MLP input takes the rest), the final modulation's halves swapped, shards by size.
  make_dirs(path);
  const Layout layout = flux_diffusers_layout();
  const int shards = std::max(1, o.shards);
  std::vector<SafeTensorsWriter> writers(shards);
  nlohmann::json weight_map = nlohmann::json::object();
  size_t total = 0, at = 0;
  for (const auto& t : tensors) total += (size_t)shape_numel(t.second);
  auto file_name = [&](int k) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "diffusion_pytorch_model-%05d-of-%05d.safetensors", k + 1, shards);
    return std::string(buf);
  };
  for (const auto& [name, shape] : tensors) {
    const int k = (int)std::min<size_t>(shards - 1, at * shards / std::max<size_t>(total, 1));
    at += (size_t)shape_numel(shape);
    Stored st = layout.map(name);
    if (st.swap_halves) {
      SafeTensorsWriter& w = writers[k];
      w.add_lazy(st.parts[0], o.dtype, shape, [=](uint8_t* dst) {
        std::vector<float> v((size_t)shape_numel(shape)), swapped(v.size());
        draw(name, shape, seed, v.data());
        const size_t half = v.size() / 2;
        std::copy(v.begin() + half, v.end(), swapped.begin());
        std::copy(v.begin(), v.begin() + half, swapped.begin() + half);
        convert_host(dst, o.dtype, swapped.data(), DType::F32, swapped.size());
      });
      weight_map[st.parts[0]] = file_name(k);
      continue;
    }
    int64_t row0 = 0;
    for (size_t i = 0; i < st.parts.size(); ++i) {
      const int64_t rows = i + 1 < st.parts.size() ? c.hidden : shape[0] - row0;
      lazy(writers[k], st.parts[i], name, shape, row0, rows);
      weight_map[st.parts[i]] = file_name(k);
      row0 += rows;
    }
  }
  for (int k = 0; k < shards; ++k) {
    writers[k].metadata["graft.axes_dim"] = axes;
    writers[k].write(path + "/" + file_name(k));
  }
  const std::string index = nlohmann::json({{"metadata", {{"total_size", total * dtype_size(o.dtype)}}},
                                            {"weight_map", weight_map}}).dump(2);
  write_file_atomic(path + "/diffusion_pytorch_model.safetensors.index.json", index.data(), index.size());
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
