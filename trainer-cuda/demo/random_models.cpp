#include "demo/random_models.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>

#include <nlohmann/json.hpp>

#include "core/common.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "demo/tokenizer_files.h"
#include "models/flux_vae.h"
#include "models/weights.h"

namespace graft {

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

// A tensor's distribution, from its name and shape.
void draw(const std::string& name, const Shape& shape, uint64_t seed, float* out) {
  Rng rng(seed, 0x71E, name_hash(name));
  const size_t n = (size_t)shape_numel(shape);
  const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
  const bool modulation = name.find("_mod.lin") != std::string::npos || name.find("modulation.lin") != std::string::npos ||
                          name.find("adaLN_modulation") != std::string::npos;
  float mean = 0.0f, std = 0.02f;
  if (name.find(".scale") != std::string::npos || (!bias && shape.size() == 1)) mean = 1.0f, std = 0.1f;  // norms
  else if (!bias) std = (modulation ? kModGain : 1.0f) / std::sqrt((float)shape[1]);
  for (size_t i = 0; i < n; ++i) out[i] = mean + std * rng.normal();
}


// A tensor drawn whole, then rows [row0, row0 + rows) of it converted into dst.
void draw_rows(uint8_t* dst, DType dtype, const std::string& name, const Shape& shape, uint64_t seed, int64_t row0,
               int64_t rows, bool swap_halves = false) {
  std::vector<float> v((size_t)shape_numel(shape));
  draw(name, shape, seed, v.data());
  if (swap_halves) std::rotate(v.begin(), v.begin() + v.size() / 2, v.end());
  const int64_t row = shape_numel(shape) / shape[0];
  convert_host(dst, dtype, v.data() + row0 * row, DType::F32, (size_t)(rows * row));
}

std::string shard_name(const std::string& stem, int k, int n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "-%05d-of-%05d.safetensors", k + 1, n);
  return stem + buf;
}

// Shard k of n for a tensor starting `at` elements into a model of `total`: shards by size.
int shard_of(size_t at, size_t total, int n) { return (int)std::min<size_t>(n - 1, at * n / std::max<size_t>(total, 1)); }

// A model's tensors spread over n files by size, each source tensor in the shard its first element falls
// in, with the index json diffusers and transformers read (<stem>.safetensors.index.json).
struct Shards {
  std::string stem;
  int n;
  size_t total = 0, at = 0;
  std::vector<SafeTensorsWriter> writers;
  nlohmann::json weight_map = nlohmann::json::object();

  Shards(const TensorList& tensors, std::string stem_, int n_) : stem(std::move(stem_)), n(std::max(1, n_)), writers(n) {
    for (const auto& t : tensors) total += (size_t)shape_numel(t.second);
  }
  // The shard of the next source tensor, in the list's order.
  int next(const Shape& shape) {
    const int k = shard_of(at, total, n);
    at += (size_t)shape_numel(shape);
    return k;
  }
  void add(int k, const std::string& name, DType dtype, const Shape& shape, std::function<void(uint8_t*)> fill) {
    writers[k].add_lazy(name, dtype, shape, std::move(fill));
    weight_map[name] = shard_name(stem, k, n);
  }
  void write(const std::string& dir, const std::map<std::string, std::string>& metadata, DType dtype) {
    make_dirs(dir);
    for (int k = 0; k < n; ++k) {
      writers[k].metadata = metadata;
      writers[k].write(dir + "/" + shard_name(stem, k, n));
    }
    const size_t bytes = total * dtype_size(dtype);
    const std::string index = nlohmann::json({{"metadata", {{"total_size", bytes}}}, {"weight_map", weight_map}}).dump(2);
    write_file_atomic(dir + "/" + stem + ".safetensors.index.json", index.data(), index.size());
  }
};

// The tensors a model lists through a loader that hands out shapes only.
template <class Model, class Config>
TensorList tensors_of(const Config& c) {
  WeightLoader w(nullptr, identity_layout("shapes"), Device::cpu());
  w.shapes_only = true;
  Model m(c, w);
  TensorList out;
  for (NamedParam& p : m.params()) out.push_back({p.name, p.t->shape});
  return out;
}

void write_config(const std::string& dir, const nlohmann::json& j) {
  const std::string text = j.dump(2);
  write_file_atomic(dir + "/config.json", text.data(), text.size());
}

}  // namespace

void write_random_flux(const std::string& path, const FluxConfig& c, uint64_t seed, const RandomFluxOptions& o) {
  const TensorList tensors = tensors_of<FluxTransformer>(c);
  const std::string axes = nlohmann::json({c.axes_dim[0], c.axes_dim[1], c.axes_dim[2]}).dump();
  if (o.layout == "bfl" || o.layout == "comfyui") {
    RandomWriteOptions w;
    w.dtype = o.dtype;
    w.prefix = o.layout == "comfyui" ? "model.diffusion_model." : "";
    w.metadata = {{"graft.axes_dim", axes}, {"graft.note", "random FLUX.1-layout checkpoint written by graft-trainer for tests"}};
    write_random_tensors(path, tensors, seed, w);
    return;
  }
  if (o.layout != "diffusers") fail("random FLUX checkpoint: unknown layout '" + o.layout + "' (bfl, comfyui, diffusers)");
  // diffusers: fused BFL tensors split into their parts (q, k, v of hidden rows each; the single
  // blocks' MLP input takes the rest), the final modulation's halves swapped, shards by size.
  const Layout layout = flux_diffusers_layout();
  Shards shards(tensors, "diffusion_pytorch_model", o.shards);
  for (const auto& [name, shape] : tensors) {
    const int k = shards.next(shape);
    const Stored st = layout.map(name);
    int64_t row0 = 0;
    for (size_t i = 0; i < st.parts.size(); ++i) {
      const int64_t rows = i + 1 < st.parts.size() ? c.hidden : shape[0] - row0;
      Shape part = shape;
      part[0] = rows;
      const DType dt = o.dtype;
      const bool swap = st.swap_halves;
      shards.add(k, st.parts[i], dt, part, [=](uint8_t* dst) { draw_rows(dst, dt, name, shape, seed, row0, rows, swap); });
      row0 += rows;
    }
  }
  shards.write(path, {{"graft.axes_dim", axes}}, o.dtype);
}

void write_random_tensors(const std::string& path, const TensorList& tensors, uint64_t seed, const RandomWriteOptions& o) {
  const int n = o.shards;
  if (n <= 1) {
    SafeTensorsWriter w;
    w.metadata = o.metadata;
    for (const auto& [name, shape] : tensors)
      w.add_lazy(o.prefix + name, o.dtype, shape, [=](uint8_t* dst) { draw_rows(dst, o.dtype, name, shape, seed, 0, shape[0]); });
    if (n == 1) make_dirs(path);
    w.write(n == 1 ? path + "/" + o.stem + ".safetensors" : path);
    return;
  }
  Shards shards(tensors, o.stem, n);
  for (const auto& [name, shape] : tensors)
    shards.add(shards.next(shape), o.prefix + name, o.dtype, shape,
               [=](uint8_t* dst) { draw_rows(dst, o.dtype, name, shape, seed, 0, shape[0]); });
  shards.write(path, o.metadata, o.dtype);
}

void write_random_t5(const std::string& path, const T5Config& c, uint64_t seed, const RandomWriteOptions& o) {
  write_random_tensors(path, tensors_of<T5Encoder>(c), seed, o);
  if (o.shards <= 0) return;
  write_config(path, {{"architectures", {"T5EncoderModel"}}, {"model_type", "t5"}, {"d_model", c.d_model},
                      {"d_kv", c.d_kv}, {"d_ff", c.d_ff}, {"num_layers", c.layers}, {"num_heads", c.heads},
                      {"vocab_size", c.vocab}, {"relative_attention_num_buckets", c.buckets},
                      {"relative_attention_max_distance", c.max_distance}, {"feed_forward_proj", "gated-gelu"},
                      {"dense_act_fn", "gelu_new"}, {"is_gated_act", true}, {"layer_norm_epsilon", 1e-6},
                      {"pad_token_id", 0}, {"eos_token_id", 1}, {"torch_dtype", dtype_name(o.dtype)}});
}

void write_random_clip(const std::string& path, const ClipConfig& c, uint64_t seed, const RandomWriteOptions& o) {
  write_random_tensors(path, tensors_of<ClipTextModel>(c), seed, o);
  if (o.shards <= 0) return;
  write_config(path, {{"architectures", {"CLIPTextModel"}}, {"model_type", "clip_text_model"}, {"hidden_size", c.width},
                      {"intermediate_size", c.mlp}, {"num_hidden_layers", c.layers}, {"num_attention_heads", c.heads},
                      {"max_position_embeddings", c.positions}, {"vocab_size", c.vocab}, {"hidden_act", "quick_gelu"},
                      {"layer_norm_eps", 1e-5}, {"bos_token_id", 0}, {"eos_token_id", c.eos_id < 0 ? 2 : c.eos_id},
                      {"pad_token_id", 1}, {"projection_dim", c.width}, {"torch_dtype", dtype_name(o.dtype)}});
}

namespace {

void write_json_file(const std::string& path, const nlohmann::json& j) {
  const std::string text = j.dump(2);
  write_file_atomic(path, text.data(), text.size());
}

// The transformer's config.json as diffusers writes it for FluxTransformer2DModel.
nlohmann::json flux_diffusers_config(const FluxConfig& c) {
  return {{"_class_name", "FluxTransformer2DModel"}, {"attention_head_dim", c.head_dim}, {"guidance_embeds", c.guidance_embed},
          {"in_channels", c.in_channels}, {"out_channels", c.out_channels}, {"joint_attention_dim", c.context_dim},
          {"num_attention_heads", c.heads}, {"num_layers", c.n_double}, {"num_single_layers", c.n_single},
          {"patch_size", 1}, {"pooled_projection_dim", c.vec_dim},
          {"axes_dims_rope", {c.axes_dim[0], c.axes_dim[1], c.axes_dim[2]}}};
}

}  // namespace

void write_random_flux_model(const std::string& dir, const RandomFluxModelOptions& o) {
  if (o.layout != "diffusers" && o.layout != "bfl" && o.layout != "comfyui")
    fail("random FLUX model: unknown layout '" + o.layout + "' (diffusers, bfl, comfyui)");
  if (o.variant != "dev" && o.variant != "schnell") fail("random FLUX model: unknown variant '" + o.variant + "' (dev, schnell)");
  FluxConfig fc;
  T5Config tc;
  ClipConfig cc;
  VaeConfig vc = flux_vae_config();
  if (o.shape == "dev") {
    fc = flux1_dev_config();
    tc = t5_xxl_config();
    cc = clip_l_config();
  } else if (o.shape == "tiny") {
    fc = flux1_dev_config(2, 2);
    fc.hidden = 64, fc.heads = 2, fc.head_dim = 32, fc.mlp_hidden = 256, fc.context_dim = 64, fc.vec_dim = 64;
    fc.axes_dim[0] = 4, fc.axes_dim[1] = 14, fc.axes_dim[2] = 14;
    tc.vocab = t5_tokenizer_vocab_size(), tc.d_model = 64, tc.d_kv = 16, tc.heads = 4, tc.d_ff = 96, tc.layers = 2;
    // One head of 64, CLIP-L's head size: a ComfyUI clip_l file has no config.json to say otherwise.
    cc.vocab = clip_tokenizer_vocab_size(), cc.width = 64, cc.heads = 1, cc.layers = 2, cc.mlp = 128, cc.positions = 77;
    vc.ch = 8, vc.ch_mult = {1, 2}, vc.num_res_blocks = 1, vc.z_channels = 4, vc.groups = 4;
    fc.in_channels = fc.out_channels = vc.z_channels * 4;
  } else {
    fail("random FLUX model: unknown shape '" + o.shape + "' (tiny, dev)");
  }
  if (o.n_double >= 0) fc.n_double = o.n_double;
  if (o.n_single >= 0) fc.n_single = o.n_single;
  fc.guidance_embed = o.variant == "dev";
  const std::string file = "flux1-" + o.variant + ".safetensors";
  FluxVae vae = FluxVae::random(vc, o.seed);
  RandomWriteOptions te;
  te.dtype = o.dtype;
  make_dirs(dir);
  if (o.layout == "comfyui") {
    make_dirs(dir + "/diffusion_models");
    write_random_flux(dir + "/diffusion_models/" + file, fc, o.seed, RandomFluxOptions{o.dtype, "comfyui", 1});
    make_dirs(dir + "/vae");
    vae.save(dir + "/vae/ae.safetensors", o.dtype);
    make_dirs(dir + "/text_encoders");
    write_random_clip(dir + "/text_encoders/clip_l.safetensors", cc, o.seed, te);
    write_random_t5(dir + "/text_encoders/t5xxl_fp16.safetensors", tc, o.seed, te);
    return;
  }
  write_random_flux(dir + "/transformer", fc, o.seed, RandomFluxOptions{o.dtype, "diffusers", 3});
  write_json_file(dir + "/transformer/config.json", flux_diffusers_config(fc));
  te.shards = 1;
  write_random_clip(dir + "/text_encoder", cc, o.seed, te);
  te.shards = 2;
  write_random_t5(dir + "/text_encoder_2", tc, o.seed, te);
  vae.save_diffusers(dir + "/vae", o.dtype);
  write_clip_tokenizer(dir + "/tokenizer", false);
  write_t5_tokenizer(dir + "/tokenizer_2");
  make_dirs(dir + "/scheduler");
  write_json_file(dir + "/scheduler/scheduler_config.json",
                  {{"_class_name", "FlowMatchEulerDiscreteScheduler"}, {"base_image_seq_len", 256}, {"base_shift", 0.5},
                   {"max_image_seq_len", 4096}, {"max_shift", 1.15}, {"num_train_timesteps", 1000}, {"shift", 3.0},
                   {"use_dynamic_shifting", true}});
  write_json_file(dir + "/model_index.json",
                  {{"_class_name", "FluxPipeline"}, {"scheduler", {"diffusers", "FlowMatchEulerDiscreteScheduler"}},
                   {"text_encoder", {"transformers", "CLIPTextModel"}}, {"text_encoder_2", {"transformers", "T5EncoderModel"}},
                   {"tokenizer", {"transformers", "CLIPTokenizer"}}, {"tokenizer_2", {"transformers", "T5TokenizerFast"}},
                   {"transformer", {"diffusers", "FluxTransformer2DModel"}}, {"vae", {"diffusers", "AutoencoderKL"}}});
  if (o.layout == "bfl") {
    write_random_flux(dir + "/" + file, fc, o.seed, RandomFluxOptions{o.dtype, "bfl", 1});
    vae.save(dir + "/ae.safetensors", o.dtype);
  }
}

void write_random_zimage(const std::string& path, const ZImageConfig& c, uint64_t seed, const std::string& layout,
                         DType dtype, int n_shards) {
  const TensorList tensors = tensors_of<ZImageTransformer>(c);
  const std::string settings = nlohmann::json({{"axes_dims", {c.axes_dim[0], c.axes_dim[1], c.axes_dim[2]}},
                                               {"rope_theta", c.theta}, {"t_scale", c.t_scale}, {"norm_eps", c.norm_eps}}).dump();
  if (layout == "comfyui" || layout == "zimage") {
    RandomWriteOptions w;
    w.dtype = dtype;
    w.prefix = layout == "comfyui" ? "model.diffusion_model." : "";
    w.metadata = {{"graft.zimage", settings}, {"graft.note", "random Z-Image checkpoint written by graft-trainer for tests"}};
    write_random_tensors(path, tensors, seed, w);
    return;
  }
  if (layout != "diffusers") fail("random Z-Image checkpoint: unknown layout '" + layout + "' (comfyui, zimage, diffusers)");
  // diffusers: the fused qkv split into to_q, to_k, to_v (dim rows each); shards by size.
  const Layout names = zimage_diffusers_layout();
  Shards shards(tensors, "diffusion_pytorch_model", n_shards);
  for (const auto& [name, shape] : tensors) {
    const int k = shards.next(shape);
    const Stored st = names.map(name);
    const int64_t rows = shape[0] / (int64_t)st.parts.size();
    for (size_t i = 0; i < st.parts.size(); ++i) {
      Shape part = shape;
      part[0] = rows;
      const int64_t row0 = (int64_t)i * rows;
      shards.add(k, st.parts[i], dtype, part, [=](uint8_t* dst) { draw_rows(dst, dtype, name, shape, seed, row0, rows); });
    }
  }
  shards.write(path, {}, dtype);
  const std::string config = zimage_diffusers_config(c);
  write_file_atomic(path + "/config.json", config.data(), config.size());
}

void write_random_llm(const std::string& path, const LlmConfig& c, uint64_t seed, const RandomWriteOptions& o) {
  const int64_t D = c.hidden, Hd = c.head_dim;
  TensorList t = {{"model.embed_tokens.weight", {c.vocab, D}}};
  for (int i = 0; i < c.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    t.push_back({p + "input_layernorm.weight", {D}});
    t.push_back({p + "self_attn.q_proj.weight", {c.heads * Hd, D}});
    t.push_back({p + "self_attn.k_proj.weight", {c.kv_heads * Hd, D}});
    t.push_back({p + "self_attn.v_proj.weight", {c.kv_heads * Hd, D}});
    t.push_back({p + "self_attn.o_proj.weight", {D, c.heads * Hd}});
    if (c.qk_norm) {
      t.push_back({p + "self_attn.q_norm.weight", {Hd}});
      t.push_back({p + "self_attn.k_norm.weight", {Hd}});
    }
    t.push_back({p + "post_attention_layernorm.weight", {D}});
    t.push_back({p + "mlp.gate_proj.weight", {c.intermediate, D}});
    t.push_back({p + "mlp.up_proj.weight", {c.intermediate, D}});
    t.push_back({p + "mlp.down_proj.weight", {D, c.intermediate}});
  }
  t.push_back({"model.norm.weight", {D}});
  write_random_tensors(path, t, seed, o);
  if (o.shards <= 0) return;
  const std::string config = llm_config_json(c);
  write_file_atomic(path + "/config.json", config.data(), config.size());
}

ZImageConfig tiny_zimage_config() {
  ZImageConfig c;
  c.in_channels = 4;  // the tiny autoencoder's latent channels
  c.dim = 64, c.heads = 2, c.head_dim = 32;
  c.n_layers = 2, c.n_refiner = 1;
  c.cap_dim = tiny_qwen3_config().hidden;
  c.ffn_hidden = (int)(64 / 3.0 * 8);
  c.adaln_dim = 64;  // min(dim, 256)
  c.axes_dim[0] = 8, c.axes_dim[1] = 12, c.axes_dim[2] = 12;
  return c;
}

LlmConfig tiny_qwen3_config() {
  LlmConfig c;
  c.hidden = 48, c.intermediate = 96, c.layers = 3, c.heads = 4, c.kv_heads = 2, c.head_dim = 16;
  c.vocab = qwen_tokenizer_vocab_size();
  return c;
}

void write_random_zimage_model(const std::string& dir, const RandomZImageModelOptions& o) {
  if (o.layout != "diffusers" && o.layout != "comfyui") fail("random Z-Image model: unknown layout '" + o.layout + "' (diffusers, comfyui)");
  ZImageConfig zc;
  LlmConfig lc;
  VaeConfig vc = flux_vae_config();
  if (o.shape == "full") {
    zc = zimage_config();
    lc = qwen3_4b_config();
  } else if (o.shape == "tiny") {
    zc = tiny_zimage_config();
    lc = tiny_qwen3_config();
    vc.ch = 8, vc.ch_mult = {1, 2}, vc.num_res_blocks = 1, vc.z_channels = 4, vc.groups = 4;
  } else {
    fail("random Z-Image model: unknown shape '" + o.shape + "' (tiny, full)");
  }
  if (o.n_layers >= 0) zc.n_layers = o.n_layers;
  FluxVae vae = FluxVae::random(vc, o.seed);
  make_dirs(dir);
  RandomWriteOptions te;
  te.dtype = o.dtype;
  if (o.layout == "comfyui") {
    make_dirs(dir + "/diffusion_models");
    write_random_zimage(dir + "/diffusion_models/z_image_turbo_bf16.safetensors", zc, o.seed, "comfyui", o.dtype);
    make_dirs(dir + "/vae");
    vae.save(dir + "/vae/ae.safetensors", o.dtype);
    make_dirs(dir + "/text_encoders");
    write_random_llm(dir + "/text_encoders/qwen_3_4b.safetensors", lc, o.seed, te);
    return;
  }
  write_random_zimage(dir + "/transformer", zc, o.seed, "diffusers", o.dtype, 3);
  te.shards = 2;
  write_random_llm(dir + "/text_encoder", lc, o.seed, te);
  write_qwen_tokenizer(dir + "/tokenizer");
  vae.save_diffusers(dir + "/vae", o.dtype);
  make_dirs(dir + "/scheduler");
  write_json_file(dir + "/scheduler/scheduler_config.json",
                  {{"_class_name", "FlowMatchEulerDiscreteScheduler"}, {"num_train_timesteps", 1000},
                   {"use_dynamic_shifting", false}, {"shift", 3.0}});
  write_json_file(dir + "/model_index.json",
                  {{"_class_name", "ZImagePipeline"}, {"scheduler", {"diffusers", "FlowMatchEulerDiscreteScheduler"}},
                   {"text_encoder", {"transformers", "Qwen3Model"}}, {"tokenizer", {"transformers", "Qwen2Tokenizer"}},
                   {"transformer", {"diffusers", "ZImageTransformer2DModel"}}, {"vae", {"diffusers", "AutoencoderKL"}}});
}

}  // namespace graft
