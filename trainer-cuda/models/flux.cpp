#include "models/flux.h"

#include <nlohmann/json.hpp>

#include "core/autograd.h"
#include "core/common.h"

namespace graft {

// ------------------------------------------------------------------------------------------------
// Layouts

Layout flux_diffusers_layout() {
  // BFL name -> diffusers parts. Fused BFL layers are diffusers' separate ones stacked (qkv; the
  // single blocks' linear1 = to_q, to_k, to_v, proj_mlp); the final modulation stores (scale,
  // shift) where BFL has (shift, scale).
  return Layout{"diffusers", [](const std::string& n) -> Stored {
    static const std::map<std::string, std::string> top = {
        {"img_in", "x_embedder"},
        {"txt_in", "context_embedder"},
        {"time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"},
        {"time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"},
        {"guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"},
        {"guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"},
        {"vector_in.in_layer", "time_text_embed.text_embedder.linear_1"},
        {"vector_in.out_layer", "time_text_embed.text_embedder.linear_2"},
        {"final_layer.linear", "proj_out"},
        {"final_layer.adaLN_modulation.1", "norm_out.linear"},
    };
    static const std::map<std::string, std::vector<std::string>> dbl = {
        {"img_mod.lin", {"norm1.linear"}},
        {"txt_mod.lin", {"norm1_context.linear"}},
        {"img_attn.qkv", {"attn.to_q", "attn.to_k", "attn.to_v"}},
        {"txt_attn.qkv", {"attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"}},
        {"img_attn.proj", {"attn.to_out.0"}},
        {"txt_attn.proj", {"attn.to_add_out"}},
        {"img_mlp.0", {"ff.net.0.proj"}},
        {"img_mlp.2", {"ff.net.2"}},
        {"txt_mlp.0", {"ff_context.net.0.proj"}},
        {"txt_mlp.2", {"ff_context.net.2"}},
        {"img_attn.norm.query_norm", {"attn.norm_q"}},
        {"img_attn.norm.key_norm", {"attn.norm_k"}},
        {"txt_attn.norm.query_norm", {"attn.norm_added_q"}},
        {"txt_attn.norm.key_norm", {"attn.norm_added_k"}},
    };
    static const std::map<std::string, std::vector<std::string>> sgl = {
        {"modulation.lin", {"norm.linear"}},
        {"linear1", {"attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"}},
        {"linear2", {"proj_out"}},
        {"norm.query_norm", {"attn.norm_q"}},
        {"norm.key_norm", {"attn.norm_k"}},
    };
    // Split "module.suffix" with suffix weight / bias / scale (the norms' "scale" is diffusers' "weight").
    const size_t dot = n.rfind('.');
    if (dot == std::string::npos) return {};
    const std::string module = n.substr(0, dot), suffix = n.substr(dot + 1);
    const std::string stored_suffix = suffix == "scale" ? "weight" : suffix;
    auto found = top.find(module);
    if (found != top.end()) return Stored{{found->second + "." + stored_suffix}, module == "final_layer.adaLN_modulation.1"};
    for (const auto& [prefix, table, to] : {std::make_tuple(std::string("double_blocks."), &dbl, std::string("transformer_blocks.")),
                                            std::make_tuple(std::string("single_blocks."), &sgl, std::string("single_transformer_blocks."))}) {
      if (module.compare(0, prefix.size(), prefix) != 0) continue;
      const size_t end = module.find('.', prefix.size());
      if (end == std::string::npos) return {};
      const std::string index = module.substr(prefix.size(), end - prefix.size()), rest = module.substr(end + 1);
      auto it = table->find(rest);
      if (it == table->end()) return {};
      Stored s;
      for (const std::string& part : it->second) s.parts.push_back(to + index + "." + part + "." + stored_suffix);
      return s;
    }
    return {};
  }};
}

Layout flux_layout(const Checkpoint& c) {
  if (c.has("img_in.weight")) return identity_layout("BFL");
  if (c.has("model.diffusion_model.img_in.weight")) return identity_layout("ComfyUI", "model.diffusion_model.");
  if (c.has("x_embedder.weight")) return flux_diffusers_layout();
  fail(c.path + ": not a FLUX.1 transformer: found none of 'img_in.weight' (BFL layout), "
       "'model.diffusion_model.img_in.weight' (ComfyUI) or 'x_embedder.weight' (diffusers)");
}

FluxConfig flux1_dev_config(int n_double, int n_single) {
  FluxConfig c;
  c.in_channels = 64;  // 16 latent channels x 2 x 2
  c.out_channels = 64;
  c.hidden = 3072;
  c.heads = 24;
  c.head_dim = 128;
  c.mlp_hidden = 12288;
  c.context_dim = 4096;
  c.vec_dim = 768;
  c.n_double = n_double;
  c.n_single = n_single;
  c.guidance_embed = true;
  c.axes_dim[0] = 16;
  c.axes_dim[1] = 56;
  c.axes_dim[2] = 56;
  return c;
}

// ------------------------------------------------------------------------------------------------
// Loading

static void rope_axes(FluxConfig& c, const std::map<std::string, std::string>& metadata, const std::string& path) {
  auto it = metadata.find("graft.axes_dim");
  if (it != metadata.end()) {
    nlohmann::json j = nlohmann::json::parse(it->second, nullptr, false);
    if (!j.is_array() || j.size() != 3)
      fail(path + ": metadata graft.axes_dim must be a list of 3 even integers, got '" + it->second + "'");
    for (int i = 0; i < 3; ++i) {
      if (!j[i].is_number_integer()) fail(path + ": metadata graft.axes_dim has a non-integer entry");
      c.axes_dim[i] = j[i].get<int>();
    }
  } else {
    // FLUX.1's split for head_dim 128 is [16, 56, 56]; the same proportions for other widths.
    int a0 = (c.head_dim / 8) & ~1;
    int rest = (c.head_dim - a0) / 2 & ~1;
    c.axes_dim[0] = c.head_dim - 2 * rest;
    c.axes_dim[1] = rest;
    c.axes_dim[2] = rest;
  }
  int sum = c.axes_dim[0] + c.axes_dim[1] + c.axes_dim[2];
  for (int a : c.axes_dim)
    if (a <= 0 || a % 2) fail(path + ": RoPE axes must be positive and even");
  if (sum != c.head_dim)
    fail(path + ": RoPE axes sum to " + std::to_string(sum) + " but the head dim is " + std::to_string(c.head_dim));
}

// The configuration a checkpoint's shapes give, read through its layout.
static FluxConfig flux_config_of(const WeightLoader& w, const Checkpoint& ckpt) {
  FluxConfig c;
  const std::string& path = ckpt.path;
  w.shape("double_blocks.0.img_attn.qkv.weight");  // throws naming the first stored part that is missing
  c.hidden = (int)w.dim("img_in.weight", 0);
  c.in_channels = (int)w.dim("img_in.weight", 1);
  c.context_dim = (int)w.dim("txt_in.weight", 1);
  c.vec_dim = (int)w.dim("vector_in.in_layer.weight", 1);
  c.head_dim = (int)w.dim("double_blocks.0.img_attn.norm.query_norm.scale", 0);
  if (c.head_dim <= 0 || c.hidden % c.head_dim)
    fail(path + ": hidden size " + std::to_string(c.hidden) + " is not a multiple of the head dim " + std::to_string(c.head_dim));
  c.heads = c.hidden / c.head_dim;
  c.mlp_hidden = (int)w.dim("double_blocks.0.img_mlp.0.weight", 0);
  c.out_channels = (int)w.dim("final_layer.linear.weight", 0);
  c.guidance_embed = w.has("guidance_in.in_layer.weight");
  while (w.has("double_blocks." + std::to_string(c.n_double) + ".img_attn.qkv.weight")) ++c.n_double;
  while (w.has("single_blocks." + std::to_string(c.n_single) + ".linear1.weight")) ++c.n_single;
  rope_axes(c, ckpt.metadata(), path);
  return c;
}

FluxActivations flux_activation_bytes(const FluxConfig& c, int64_t B, int64_t Li, int64_t Lt, int rank,
                                      bool checkpointing, int act_bytes, bool flash) {
  const double C = c.hidden, M = c.mlp_hidden, H = c.heads, r = rank, a = act_bytes;
  const double L = (double)(Li + Lt), tokens = (double)B * L;
  // Per token and block, counted from what each op records (models/flux.cpp's blocks on ops.h):
  // a double block's stream keeps ln1, mod1, q and k before their norms, its attention slice, the
  // projection, x1, ln2, mod2, both MLP activations, the MLP output and the block output; the joint
  // attention keeps q, k, v and its output. A single block keeps ln, mod, q, k before and after RoPE,
  // v, the attention output, the MLP input, the concatenation, linear2's output and its own output.
  // Each LoRA keeps x A^T (rank values); each norm its row statistics.
  const double attn_state = flash ? H * 4 : H * L * 4;  // per token: log-sum-exp, or a row of probabilities
  const double dbl = (15 * C + 2 * M + 6 * r) * a + (4 + 2 * H) * 4 + attn_state;
  const double sgl = (11 * C + 2 * M + 5 * r) * a + (2 + 2 * H) * 4 + attn_state;
  const double final_layer = 3 * C * a * (double)B * (double)Li;  // its norm, modulation and linear inputs
  FluxActivations out;
  // A backward holds the gradients of about half a block's activations at once (measured: 0.45 on a
  // small model, tests/test_flux.cpp); with checkpointing, the recomputed block besides.
  const double block = std::max(c.n_double > 0 ? dbl : 0.0, c.n_single > 0 ? sgl : 0.0) * tokens;
  if (checkpointing) {
    out.kept = (c.n_double + c.n_single) * C * a * tokens + final_layer;  // each block's input
    out.transient = 1.5 * block;
  } else {
    out.kept = (c.n_double * dbl + c.n_single * sgl + C * a) * tokens + final_layer;  // + the embedded input
    out.transient = 0.5 * block;
  }
  return out;
}

FluxTransformer FluxTransformer::load(const std::string& path, Device device, WeightFormat quantize, double offload) {
  Checkpoint ckpt = Checkpoint::open(path);
  WeightLoader w(&ckpt, flux_layout(ckpt), device);
  w.quantize = quantize;
  const FluxConfig cfg = flux_config_of(w, ckpt);
  const int count = offload_count(cfg, offload);
  if (count > 0)
    w.offload = [count, &cfg](const std::string& name) {
      const int k = flux_block_of(cfg, name);
      return k >= 0 && k < count;
    };
  FluxTransformer m(cfg, w);
  if (count > 0) m.offload_blocks(offload);
  m.path = path;
  return m;
}

FluxTransformer FluxTransformer::shapes(const std::string& path) {
  Checkpoint ckpt = Checkpoint::open(path);
  WeightLoader w(&ckpt, flux_layout(ckpt), Device::cpu());
  w.shapes_only = true;
  FluxTransformer m(flux_config_of(w, ckpt), w);
  m.path = path;
  return m;
}

FluxTransformer FluxTransformer::random(const FluxConfig& cfg, Device device, uint64_t seed, WeightFormat quantize) {
  WeightLoader w(nullptr, identity_layout("random"), device, seed);
  w.quantize = quantize;
  FluxTransformer m(cfg, w);
  m.path = "(random)";
  return m;
}

FluxTransformer::FluxTransformer(const FluxConfig& c, WeightLoader& w) : cfg(c) {
  device = w.device;
  const int C = c.hidden, M = c.mlp_hidden, D = c.head_dim;
  img_in = Linear(w, "img_in", c.in_channels, C);
  txt_in = Linear(w, "txt_in", c.context_dim, C);
  time_in0 = Linear(w, "time_in.in_layer", 256, C);
  time_in1 = Linear(w, "time_in.out_layer", C, C);
  vector_in0 = Linear(w, "vector_in.in_layer", c.vec_dim, C);
  vector_in1 = Linear(w, "vector_in.out_layer", C, C);
  if (c.guidance_embed) {
    guidance_in0 = Linear(w, "guidance_in.in_layer", 256, C);
    guidance_in1 = Linear(w, "guidance_in.out_layer", C, C);
  }
  for (int i = 0; i < c.n_double; ++i) {
    const std::string p = "double_blocks." + std::to_string(i) + ".";
    DoubleBlock d;
    for (int s = 0; s < 2; ++s) {
      const std::string sp = p + (s == 0 ? "img" : "txt");
      Stream& st = s == 0 ? d.img : d.txt;
      st.mod = Linear(w, sp + "_mod.lin", C, 6 * C);
      st.qkv = Linear(w, sp + "_attn.qkv", C, 3 * C, Bias::optional);
      st.proj = Linear(w, sp + "_attn.proj", C, C);
      st.mlp0 = Linear(w, sp + "_mlp.0", C, M);
      st.mlp2 = Linear(w, sp + "_mlp.2", M, C);
      st.q_scale = w.get(sp + "_attn.norm.query_norm.scale", {D});
      st.k_scale = w.get(sp + "_attn.norm.key_norm.scale", {D});
    }
    doubles.push_back(std::move(d));
  }
  for (int i = 0; i < c.n_single; ++i) {
    const std::string p = "single_blocks." + std::to_string(i) + ".";
    SingleBlock s;
    s.mod = Linear(w, p + "modulation.lin", C, 3 * C);
    s.linear1 = Linear(w, p + "linear1", C, 3 * C + M);
    s.linear2 = Linear(w, p + "linear2", C + M, C);
    s.q_scale = w.get(p + "norm.query_norm.scale", {D});
    s.k_scale = w.get(p + "norm.key_norm.scale", {D});
    singles.push_back(std::move(s));
  }
  final_mod = Linear(w, "final_layer.adaLN_modulation.1", C, 2 * C);
  final_linear = Linear(w, "final_layer.linear", C, c.out_channels);
}

std::vector<const Linear*> FluxTransformer::block_linears(int k) const {
  if (k < (int)doubles.size()) {
    const DoubleBlock& d = doubles[k];
    std::vector<const Linear*> v;
    for (const Stream* s : {&d.img, &d.txt}) v.insert(v.end(), {&s->mod, &s->qkv, &s->proj, &s->mlp0, &s->mlp2});
    return v;
  }
  const SingleBlock& s = singles.at(k - doubles.size());
  return {&s.mod, &s.linear1, &s.linear2};
}

int flux_block_of(const FluxConfig& cfg, const std::string& name) {
  // "double_blocks." and "single_blocks." are both 14 characters
  if (name.rfind("double_blocks.", 0) == 0) return std::atoi(name.c_str() + 14);
  if (name.rfind("single_blocks.", 0) == 0) return cfg.n_double + std::atoi(name.c_str() + 14);
  return -1;
}

int offload_count(const FluxConfig& cfg, double fraction) { return offload_count(cfg.n_double + cfg.n_single, fraction); }

std::vector<Linear*> FluxTransformer::linears() {
  std::vector<Linear*> v = {&img_in, &txt_in, &time_in0, &time_in1, &vector_in0, &vector_in1};
  if (cfg.guidance_embed) v.insert(v.end(), {&guidance_in0, &guidance_in1});
  for (auto& d : doubles)
    for (Stream* s : {&d.img, &d.txt}) v.insert(v.end(), {&s->mod, &s->qkv, &s->proj, &s->mlp0, &s->mlp2});
  for (auto& s : singles) v.insert(v.end(), {&s.mod, &s.linear1, &s.linear2});
  v.insert(v.end(), {&final_mod, &final_linear});
  return v;
}

std::vector<NamedParam> FluxTransformer::params() {
  std::vector<NamedParam> p;
  for (Linear* l : {&img_in, &txt_in, &time_in0, &time_in1, &vector_in0, &vector_in1}) l->collect(p);
  if (cfg.guidance_embed) guidance_in0.collect(p), guidance_in1.collect(p);
  for (size_t i = 0; i < doubles.size(); ++i)
    for (int s = 0; s < 2; ++s) {
      Stream& w = s == 0 ? doubles[i].img : doubles[i].txt;
      const std::string n = "double_blocks." + std::to_string(i) + (s == 0 ? ".img_attn.norm." : ".txt_attn.norm.");
      for (Linear* l : {&w.mod, &w.qkv, &w.proj, &w.mlp0, &w.mlp2}) l->collect(p);
      p.push_back({n + "query_norm.scale", &w.q_scale});
      p.push_back({n + "key_norm.scale", &w.k_scale});
    }
  for (size_t i = 0; i < singles.size(); ++i) {
    SingleBlock& w = singles[i];
    const std::string n = "single_blocks." + std::to_string(i) + ".norm.";
    for (Linear* l : {&w.mod, &w.linear1, &w.linear2}) l->collect(p);
    p.push_back({n + "query_norm.scale", &w.q_scale});
    p.push_back({n + "key_norm.scale", &w.k_scale});
  }
  final_mod.collect(p);
  final_linear.collect(p);
  return p;
}

void FluxTransformer::save(const std::string& out, DType dtype, const std::map<std::string, std::string>& metadata) {
  SafeTensorsWriter w;
  w.metadata = metadata;
  w.metadata["graft.axes_dim"] = nlohmann::json({cfg.axes_dim[0], cfg.axes_dim[1], cfg.axes_dim[2]}).dump();
  for (NamedParam& p : params()) {
    std::vector<float> v = to_floats(*p.t);
    w.add(p.name, dtype, p.t->shape, v.data());
  }
  w.write(out);
}

// ------------------------------------------------------------------------------------------------
// Inputs

FluxInputs flux_inputs_load(const SafeTensorsFile& f, const FluxConfig& c) {
  FluxInputs in;
  const TensorInfo& img = f.info("img");
  const TensorInfo& txt = f.info("txt");
  if (img.shape.size() != 3) fail(f.path + ": tensor 'img' must be [B, L_img, " + std::to_string(c.in_channels) + "], got " + shape_str(img.shape));
  if (txt.shape.size() != 3) fail(f.path + ": tensor 'txt' must be [B, L_txt, " + std::to_string(c.context_dim) + "], got " + shape_str(txt.shape));
  in.B = (int)img.shape[0];
  in.L_img = (int)img.shape[1];
  in.L_txt = (int)txt.shape[1];
  const int64_t B = in.B;
  in.img = f.read_f32("img", {B, in.L_img, c.in_channels});
  in.img_ids = f.read_f32("img_ids", {B, in.L_img, 3});
  in.txt = f.read_f32("txt", {B, in.L_txt, c.context_dim});
  in.txt_ids = f.read_f32("txt_ids", {B, in.L_txt, 3});
  in.timesteps = f.read_f32("timesteps", {B});
  in.y = f.read_f32("y", {B, c.vec_dim});
  if (c.guidance_embed) in.guidance = f.read_f32("guidance", {B});
  return in;
}

void flux_img_ids(float* ids, int B, int gh, int gw) {
  for (int b = 0; b < B; ++b)
    for (int r = 0; r < gh; ++r)
      for (int q = 0; q < gw; ++q) {
        float* p = ids + (((size_t)b * gh + r) * gw + q) * 3;
        p[0] = 0.0f;
        p[1] = (float)r;
        p[2] = (float)q;
      }
}

// ------------------------------------------------------------------------------------------------
// Forward

namespace {

// BFL's MLPEmbedder: out_layer(silu(in_layer(x))).
Tensor mlp_embed(const Linear& in_layer, const Linear& out_layer, const Tensor& x) {
  return out_layer(silu(in_layer(x)));
}

// One stream's modulated input and its q, k (RMS-normed per head) and v, [B, Ls, C] each.
struct StreamQKV { Tensor mod, q, k, v; };
StreamQKV stream_qkv(const FluxTransformer::Stream& w, const Tensor& x, const Tensor& svec, int C) {
  StreamQKV s;
  s.mod = w.mod(svec);  // shift1, scale1, gate1, shift2, scale2, gate2
  Tensor qkv = w.qkv(modulate(layernorm(x), s.mod, 0, 1));
  s.q = rmsnorm(narrow(qkv, -1, 0, C), w.q_scale);
  s.k = rmsnorm(narrow(qkv, -1, C, C), w.k_scale);
  s.v = narrow(qkv, -1, 2 * C, C);
  return s;
}

// The stream after its attention output: the projected residual, then the modulated MLP.
Tensor stream_out(const FluxTransformer::Stream& w, const Tensor& x, const Tensor& attn, const Tensor& mod) {
  Tensor x1 = gate_residual(x, w.proj(attn), mod, 2);
  Tensor h = w.mlp2(gelu(w.mlp0(modulate(layernorm(x1), mod, 3, 4))));
  return gate_residual(x1, h, mod, 5);
}

// BFL's DoubleStreamBlock: joint attention over [txt; img], each stream with its own weights.
std::vector<Tensor> double_block(const FluxTransformer::DoubleBlock& w, const FluxConfig& c, const Tensor& img,
                                 const Tensor& txt, const Tensor& svec, const Tensor& pe) {
  const int C = c.hidden, H = c.heads;
  const int64_t Lt = txt.size(1), Li = img.size(1);
  StreamQKV t = stream_qkv(w.txt, txt, svec, C), i = stream_qkv(w.img, img, svec, C);
  Tensor q = rope(cat({t.q, i.q}, 1), pe, H), k = rope(cat({t.k, i.k}, 1), pe, H), v = cat({t.v, i.v}, 1);
  Tensor attn = attention(q, k, v, H);
  Tensor txt_out = stream_out(w.txt, txt, narrow(attn, 1, 0, Lt), t.mod);
  Tensor img_out = stream_out(w.img, img, narrow(attn, 1, Lt, Li), i.mod);
  return {img_out, txt_out};
}

// BFL's SingleStreamBlock: one fused projection to q, k, v and the MLP input, one back.
Tensor single_block(const FluxTransformer::SingleBlock& w, const FluxConfig& c, const Tensor& x, const Tensor& svec,
                    const Tensor& pe) {
  const int C = c.hidden, M = c.mlp_hidden, H = c.heads;
  Tensor mod = w.mod(svec);  // shift, scale, gate
  Tensor lin1 = w.linear1(modulate(layernorm(x), mod, 0, 1));
  Tensor q = rmsnorm(narrow(lin1, -1, 0, C), w.q_scale), k = rmsnorm(narrow(lin1, -1, C, C), w.k_scale);
  Tensor attn = attention(rope(q, pe, H), rope(k, pe, H), narrow(lin1, -1, 2 * C, C), H);
  Tensor out = w.linear2(cat({attn, gelu(narrow(lin1, -1, 3 * C, M))}, -1));
  return gate_residual(x, out, mod, 2);
}

}  // namespace

Tensor FluxTransformer::forward(const Tensor& img_tokens, const Tensor& txt_tokens, const Tensor& y,
                                const Tensor& timesteps, const Tensor& guidance, const Tensor& pe) const {
  const FluxConfig& c = cfg;
  const int64_t B = img_tokens.size(0), Li = img_tokens.size(1), Lt = txt_tokens.size(1);
  if (img_tokens.size(2) != c.in_channels || txt_tokens.size(2) != c.context_dim || y.size(-1) != c.vec_dim)
    fail("FLUX forward: inputs img " + shape_str(img_tokens.shape) + ", txt " + shape_str(txt_tokens.shape) + ", y " +
         shape_str(y.shape) + " do not fit a model with in_channels " + std::to_string(c.in_channels) + ", context " +
         std::to_string(c.context_dim) + ", pooled " + std::to_string(c.vec_dim));

  // The conditioning vector: time (+ guidance) + pooled text; every modulation reads silu(vec).
  Tensor vec = mlp_embed(time_in0, time_in1, timestep_embedding(timesteps, 256));
  if (c.guidance_embed) {
    if (!guidance.defined() || guidance.numel() != B)
      fail("this model has guidance_in: a guidance value per batch item is needed");
    vec = add(vec, mlp_embed(guidance_in0, guidance_in1, timestep_embedding(guidance, 256)));
  }
  vec = add(vec, mlp_embed(vector_in0, vector_in1, y));
  const Tensor svec = silu(vec);

  // Layer offloading's calls around each block (a no-op without a streamer).
  const BlockSchedule sched{streamer, block_count()};
  Tensor img = img_in(img_tokens), txt = txt_in(txt_tokens);
  {
    std::vector<Tensor> in = sched.start({img, txt});
    img = in[0], txt = in[1];
  }
  int k = 0;
  for (const DoubleBlock& w : doubles) {
    sched.before(k);
    auto block = [&w, &c](const std::vector<Tensor>& in) { return double_block(w, c, in[0], in[1], in[2], in[3]); };
    std::vector<Tensor> out = sched.after(k++, checkpointing ? checkpoint(block, {img, txt, svec, pe}) : block({img, txt, svec, pe}));
    img = out[0], txt = out[1];
  }
  Tensor x = cat({txt, img}, 1);
  txt = img = Tensor();  // the joint sequence is what the rest reads
  for (const SingleBlock& w : singles) {
    sched.before(k);
    auto block = [&w, &c](const std::vector<Tensor>& in) {
      return std::vector<Tensor>{single_block(w, c, in[0], in[1], in[2])};
    };
    x = sched.after(k++, checkpointing ? checkpoint(block, {x, svec, pe}) : block({x, svec, pe}))[0];
  }
  // Final layer on the image tokens: shift comes FIRST in FLUX's LastLayer.
  Tensor final_in = narrow(x, 1, Lt, Li);
  return final_linear(modulate(layernorm(final_in), final_mod(svec), 0, 1));
}

Tensor FluxTransformer::rope_for(const FluxInputs& in) const {
  const int B = in.B, Li = in.L_img, Lt = in.L_txt, L = Li + Lt;
  if (in.txt_ids.size() != (size_t)B * Lt * 3 || in.img_ids.size() != (size_t)B * Li * 3)
    fail("FLUX forward: txt_ids / img_ids do not match the batch");
  std::vector<float> ids((size_t)B * L * 3);
  for (int b = 0; b < B; ++b) {
    std::copy_n(&in.txt_ids[(size_t)b * Lt * 3], (size_t)Lt * 3, &ids[(size_t)b * L * 3]);
    std::copy_n(&in.img_ids[(size_t)b * Li * 3], (size_t)Li * 3, &ids[((size_t)b * L + Lt) * 3]);
  }
  return rope_table(ids, B * L, {cfg.axes_dim[0], cfg.axes_dim[1], cfg.axes_dim[2]}, cfg.theta, device);
}

Tensor FluxTransformer::forward(const FluxInputs& in) const {
  const FluxConfig& c = cfg;
  const DType dt = compute_dtype(device);
  auto need = [&](const std::vector<float>& v, size_t n, const char* what) {
    if (v.size() != n)
      fail(std::string("FLUX forward: input '") + what + "' has " + std::to_string(v.size()) + " values, expected " +
           std::to_string(n));
  };
  need(in.img, (size_t)in.B * in.L_img * c.in_channels, "img");
  need(in.txt, (size_t)in.B * in.L_txt * c.context_dim, "txt");
  need(in.y, (size_t)in.B * c.vec_dim, "y");
  need(in.timesteps, (size_t)in.B, "timesteps");
  Tensor img = from_vector(in.img, {in.B, in.L_img, c.in_channels}, device, dt);
  Tensor txt = from_vector(in.txt, {in.B, in.L_txt, c.context_dim}, device, dt);
  Tensor y = from_vector(in.y, {in.B, c.vec_dim}, device, dt);
  Tensor t = from_vector(in.timesteps, {in.B}, device);
  Tensor g;
  if (c.guidance_embed) {
    if ((int)in.guidance.size() != in.B) fail("this model has guidance_in: a guidance value per batch item is needed");
    g = from_vector(in.guidance, {in.B}, device);
  }
  return forward(img, txt, y, t, g, rope_for(in));
}

// ------------------------------------------------------------------------------------------------
// LoRA targets

std::vector<LoraTarget> flux_lora_targets(const FluxConfig& c, bool include_modulation) {
  // The module names are diffusers' (the LoRA file's layout), read from the same name map that loads
  // diffusers checkpoints: a fused BFL layer gets one adapter per part it is stacked from.
  const Layout diffusers = flux_diffusers_layout();
  const int C = c.hidden, M = c.mlp_hidden;
  std::vector<LoraTarget> t;
  auto add = [&](const std::string& base, int in, int out) {
    const Stored st = diffusers.map(base + ".weight");
    int off = 0;
    for (size_t i = 0; i < st.parts.size(); ++i) {
      const int rows = i + 1 < st.parts.size() ? C : out - off;  // q, k, v of hidden rows; the MLP input the rest
      const std::string& part = st.parts[i];
      t.push_back({part.substr(0, part.size() - std::string(".weight").size()), base, off, rows, in});
      off += rows;
    }
  };
  for (int i = 0; i < c.n_double; ++i) {
    const std::string b = "double_blocks." + std::to_string(i) + ".";
    add(b + "img_attn.qkv", C, 3 * C);
    add(b + "img_attn.proj", C, C);
    add(b + "txt_attn.qkv", C, 3 * C);
    add(b + "txt_attn.proj", C, C);
    add(b + "img_mlp.0", C, M);
    add(b + "img_mlp.2", M, C);
    add(b + "txt_mlp.0", C, M);
    add(b + "txt_mlp.2", M, C);
    if (include_modulation) {
      add(b + "img_mod.lin", C, 6 * C);
      add(b + "txt_mod.lin", C, 6 * C);
    }
  }
  for (int i = 0; i < c.n_single; ++i) {
    const std::string b = "single_blocks." + std::to_string(i) + ".";
    add(b + "linear1", C, 3 * C + M);
    add(b + "linear2", C + M, C);
    if (include_modulation) add(b + "modulation.lin", C, 3 * C);
  }
  return t;
}

}  // namespace graft
