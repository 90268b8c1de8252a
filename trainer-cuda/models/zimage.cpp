#include "models/zimage.h"

#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>

#include "core/autograd.h"
#include "core/common.h"

namespace graft {

static const int kSeqMultiple = 32;  // diffusers' SEQ_MULTI_OF: image and caption lengths are padded to it

static int round_up(int n, int m) { return (n + m - 1) / m * m; }

// ------------------------------------------------------------------------------------------------
// Layouts

Layout zimage_diffusers_layout() {
  return Layout{"diffusers", [](const std::string& n) -> Stored {
    auto starts = [&](const char* p) { return n.rfind(p, 0) == 0; };
    if (starts("x_embedder.")) return Stored{{"all_x_embedder.2-1." + n.substr(11)}};
    if (starts("final_layer.")) return Stored{{"all_final_layer.2-1." + n.substr(12)}};
    const size_t at = n.find(".attention.");
    if (at != std::string::npos) {
      const std::string block = n.substr(0, at + 11), rest = n.substr(at + 11);
      if (rest == "qkv.weight") return Stored{{block + "to_q.weight", block + "to_k.weight", block + "to_v.weight"}};
      if (rest == "out.weight") return Stored{{block + "to_out.0.weight"}};
      if (rest == "q_norm.weight") return Stored{{block + "norm_q.weight"}};
      if (rest == "k_norm.weight") return Stored{{block + "norm_k.weight"}};
    }
    return Stored{{n}};
  }};
}

bool is_zimage_checkpoint(const Checkpoint& c) {
  std::string prefix;
  // Lumina 2 shares cap_embedder and the refiners; Z-Image's blocks modulate with adaLN_modulation.0.
  return c.has("all_x_embedder.2-1.weight") ||
         (find_prefix(c, "layers.0.adaLN_modulation.0.weight", &prefix) && c.has(prefix + "cap_embedder.1.weight"));
}

Layout zimage_layout(const Checkpoint& c) {
  if (c.has("all_x_embedder.2-1.weight")) return zimage_diffusers_layout();
  std::string prefix;
  if (find_prefix(c, "layers.0.adaLN_modulation.0.weight", &prefix) && c.has(prefix + "x_embedder.weight"))
    return identity_layout(prefix.empty() ? "Z-Image" : "ComfyUI", prefix);
  fail(c.path + ": not a Z-Image transformer: found none of 'all_x_embedder.2-1.weight' (diffusers layout) or "
       "'x_embedder.weight' with 'layers.0.adaLN_modulation.0.weight' (the original single file, ComfyUI's "
       "'model.diffusion_model.' prefix or none)");
}

ZImageConfig zimage_config(int n_layers) {
  ZImageConfig c;
  c.dim = 3840, c.heads = 30, c.head_dim = 128;
  c.n_layers = n_layers, c.n_refiner = 2;
  c.cap_dim = 2560;
  c.ffn_hidden = (int)(3840 / 3.0 * 8);
  c.adaln_dim = 256;
  return c;
}

// RoPE axes, theta, t_scale and eps: config.json beside the weights (diffusers), else the checkpoint's
// graft.* metadata (what save() writes), else Z-Image's values.
static void zimage_settings(ZImageConfig& c, const Checkpoint& ckpt) {
  const std::string text = folder_config_text(ckpt.path);
  const std::map<std::string, std::string>& md = ckpt.metadata();
  nlohmann::json j = nlohmann::json::object();
  if (!text.empty()) {
    j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) fail(ckpt.path + "/config.json: not valid JSON");
  } else if (md.count("graft.zimage")) {
    j = nlohmann::json::parse(md.at("graft.zimage"), nullptr, false);
    if (j.is_discarded() || !j.is_object()) fail(ckpt.path + ": metadata graft.zimage is not a JSON object");
  }
  const std::string where = text.empty() ? ckpt.path : ckpt.path + "/config.json";
  try {
    if (j.contains("axes_dims")) {
      const auto& a = j["axes_dims"];
      if (!a.is_array() || a.size() != 3) fail(where + ": axes_dims must be a list of 3 integers");
      for (int i = 0; i < 3; ++i) c.axes_dim[i] = a[i].get<int>();
    }
    c.theta = j.value("rope_theta", c.theta);
    c.t_scale = j.value("t_scale", c.t_scale);
    c.norm_eps = j.value("norm_eps", c.norm_eps);
    if (j.contains("all_patch_size") && j["all_patch_size"] != nlohmann::json::array({2}))
      fail(where + ": all_patch_size " + j["all_patch_size"].dump() + ": graft reads Z-Image with patch size 2 only");
  } catch (const nlohmann::json::exception& e) {
    fail(where + ": " + e.what());
  }
  int sum = 0;
  for (int a : c.axes_dim) {
    if (a <= 0 || a % 2) fail(where + ": RoPE axes must be positive and even");
    sum += a;
  }
  if (sum != c.head_dim)
    fail(where + ": RoPE axes " + std::to_string(c.axes_dim[0]) + ", " + std::to_string(c.axes_dim[1]) + ", " +
         std::to_string(c.axes_dim[2]) + " do not sum to the head dim " + std::to_string(c.head_dim) +
         " (give axes_dims in the transformer folder's config.json)");
}

static ZImageConfig zimage_config_of(const WeightLoader& w, const Checkpoint& ckpt) {
  ZImageConfig c;
  w.shape("layers.0.attention.qkv.weight");  // throws naming the first stored part that is missing
  c.dim = (int)w.dim("x_embedder.weight", 0);
  const int P = (int)w.dim("x_embedder.weight", 1);
  if (P % 4) fail(ckpt.path + ": x_embedder takes " + std::to_string(P) + " features, not channels x 2 x 2");
  c.in_channels = P / 4;
  c.head_dim = (int)w.dim("layers.0.attention.q_norm.weight", 0);
  if (c.head_dim <= 0 || c.dim % c.head_dim)
    fail(ckpt.path + ": width " + std::to_string(c.dim) + " is not a multiple of the head dim " + std::to_string(c.head_dim));
  c.heads = c.dim / c.head_dim;
  c.cap_dim = (int)w.dim("cap_embedder.1.weight", 1);
  c.ffn_hidden = (int)w.dim("layers.0.feed_forward.w1.weight", 0);
  c.t_mid = (int)w.dim("t_embedder.mlp.0.weight", 0);
  c.adaln_dim = (int)w.dim("t_embedder.mlp.2.weight", 0);
  while (w.has("layers." + std::to_string(c.n_layers) + ".attention.qkv.weight")) ++c.n_layers;
  while (w.has("noise_refiner." + std::to_string(c.n_refiner) + ".attention.qkv.weight")) ++c.n_refiner;
  int n_context = 0;
  while (w.has("context_refiner." + std::to_string(n_context) + ".attention.qkv.weight")) ++n_context;
  if (n_context != c.n_refiner)
    fail(ckpt.path + ": " + std::to_string(c.n_refiner) + " noise-refiner blocks but " + std::to_string(n_context) +
         " context-refiner blocks");
  zimage_settings(c, ckpt);
  return c;
}

int zimage_block_of(const std::string& name) { return name.rfind("layers.", 0) == 0 ? std::atoi(name.c_str() + 7) : -1; }

ZImageTransformer ZImageTransformer::load(const std::string& path, Device device, WeightFormat quantize, double offload) {
  Checkpoint ckpt = Checkpoint::open(path);
  WeightLoader w(&ckpt, zimage_layout(ckpt), device);
  w.quantize = quantize;
  const ZImageConfig cfg = zimage_config_of(w, ckpt);
  const int count = offload_count(cfg.n_layers, offload);
  if (count > 0)
    w.offload = [count](const std::string& name) {
      const int k = zimage_block_of(name);
      return k >= 0 && k < count;
    };
  ZImageTransformer m(cfg, w);
  if (count > 0) m.offload_blocks(offload);
  m.path = path;
  return m;
}

std::vector<const Linear*> ZImageTransformer::block_linears(int k) const {
  const Block& b = layers.at(k);
  return {&b.adaln, &b.qkv, &b.out, &b.w1, &b.w2, &b.w3};
}

ZImageTransformer ZImageTransformer::shapes(const std::string& path) {
  Checkpoint ckpt = Checkpoint::open(path);
  WeightLoader w(&ckpt, zimage_layout(ckpt), Device::cpu());
  w.shapes_only = true;
  ZImageTransformer m(zimage_config_of(w, ckpt), w);
  m.path = path;
  return m;
}

ZImageTransformer ZImageTransformer::random(const ZImageConfig& cfg, Device device, uint64_t seed, WeightFormat quantize) {
  WeightLoader w(nullptr, identity_layout("random"), device, seed);
  w.quantize = quantize;
  ZImageTransformer m(cfg, w);
  m.path = "(random)";
  return m;
}

// ------------------------------------------------------------------------------------------------
// Patch feature order. graft patchifies latents as FLUX does, features (c, ph, pw); Z-Image's are
// (ph, pw, c). The model keeps x_embedder's columns and final_layer.linear's rows in graft's order
// (permuted as they load, back when saved), so the trainer's batches and sampler serve both models.

static size_t flux_index(int c, int k) { return (size_t)c * 4 + k; }      // k = ph * 2 + pw
static size_t z_index(int c, int k, int C) { return (size_t)k * C + c; }

std::vector<float> zimage_from_flux_patches(const std::vector<float>& x, size_t tokens, int C) {
  std::vector<float> out(x.size());
  const size_t P = (size_t)C * 4;
  for (size_t t = 0; t < tokens; ++t)
    for (int c = 0; c < C; ++c)
      for (int k = 0; k < 4; ++k) out[t * P + z_index(c, k, C)] = x[t * P + flux_index(c, k)];
  return out;
}

std::vector<float> zimage_to_flux_patches(const std::vector<float>& x, size_t tokens, int C) {
  std::vector<float> out(x.size());
  const size_t P = (size_t)C * 4;
  for (size_t t = 0; t < tokens; ++t)
    for (int c = 0; c < C; ++c)
      for (int k = 0; k < 4; ++k) out[t * P + flux_index(c, k)] = x[t * P + z_index(c, k, C)];
  return out;
}

// W's rows (or, `columns`, its columns) from Z-Image's patch order to graft's (`to_flux`) or back;
// a bias is a one-column W. Same dtype and device.
static Tensor permute_patches(const Tensor& W, int C, bool columns, bool to_flux) {
  if (!W.defined() || W.shape.empty()) return W;  // shapes only
  std::vector<float> v = to_floats(W), out(v.size());
  const size_t P = (size_t)C * 4;
  if (columns) {
    const size_t rows = v.size() / P;
    for (size_t r = 0; r < rows; ++r) {
      std::vector<float> row(v.begin() + r * P, v.begin() + (r + 1) * P);
      row = to_flux ? zimage_to_flux_patches(row, 1, C) : zimage_from_flux_patches(row, 1, C);
      std::copy(row.begin(), row.end(), out.begin() + r * P);
    }
  } else {
    const size_t cols = v.size() / P;
    for (int c = 0; c < C; ++c)
      for (int k = 0; k < 4; ++k) {
        const size_t f = flux_index(c, k), z = z_index(c, k, C);
        const size_t dst = to_flux ? f : z, src = to_flux ? z : f;
        std::copy_n(v.begin() + src * cols, cols, out.begin() + dst * cols);
      }
  }
  return from_vector(out, W.shape, W.device(), W.dtype);
}

ZImageTransformer::ZImageTransformer(const ZImageConfig& c, WeightLoader& w) : cfg(c) {
  device = w.device;
  const int D = c.dim, P = c.patch_features(), Hd = c.head_dim;
  {
    // The two layers whose patch order is permuted stay dense (NF4's blocks would cross the rows
    // permuted); they are the model's smallest.
    const WeightFormat q = w.quantize;
    w.quantize = WeightFormat::dense;
    x_embedder = Linear(w, "x_embedder", P, D);
    final_linear = Linear(w, "final_layer.linear", D, P);
    w.quantize = q;
    x_embedder.W = permute_patches(x_embedder.W, c.in_channels, true, true);
    final_linear.W = permute_patches(final_linear.W, c.in_channels, false, true);
    final_linear.b = permute_patches(final_linear.b, c.in_channels, false, true);
    final_linear.w_scale = permute_patches(final_linear.w_scale, c.in_channels, false, true);  // a scaled fp8 file's
  }
  t_mlp0 = Linear(w, "t_embedder.mlp.0", 256, c.t_mid);
  t_mlp2 = Linear(w, "t_embedder.mlp.2", c.t_mid, c.adaln_dim);
  cap_norm = w.get("cap_embedder.0.weight", {c.cap_dim});
  cap_linear = Linear(w, "cap_embedder.1", c.cap_dim, D);
  x_pad = w.get("x_pad_token", {1, D});
  cap_pad = w.get("cap_pad_token", {1, D});
  auto block = [&](const std::string& p, bool modulated) {
    Block b;
    b.modulated = modulated;
    if (modulated) b.adaln = Linear(w, p + "adaLN_modulation.0", c.adaln_dim, 4 * D);
    b.qkv = Linear(w, p + "attention.qkv", D, 3 * D, Bias::no);
    b.out = Linear(w, p + "attention.out", D, D, Bias::no);
    b.q_norm = w.get(p + "attention.q_norm.weight", {Hd});
    b.k_norm = w.get(p + "attention.k_norm.weight", {Hd});
    b.attn_norm1 = w.get(p + "attention_norm1.weight", {D});
    b.attn_norm2 = w.get(p + "attention_norm2.weight", {D});
    b.ffn_norm1 = w.get(p + "ffn_norm1.weight", {D});
    b.ffn_norm2 = w.get(p + "ffn_norm2.weight", {D});
    b.w1 = Linear(w, p + "feed_forward.w1", D, c.ffn_hidden, Bias::no);
    b.w2 = Linear(w, p + "feed_forward.w2", c.ffn_hidden, D, Bias::no);
    b.w3 = Linear(w, p + "feed_forward.w3", D, c.ffn_hidden, Bias::no);
    return b;
  };
  for (int i = 0; i < c.n_refiner; ++i) noise_refiner.push_back(block("noise_refiner." + std::to_string(i) + ".", true));
  for (int i = 0; i < c.n_refiner; ++i) context_refiner.push_back(block("context_refiner." + std::to_string(i) + ".", false));
  for (int i = 0; i < c.n_layers; ++i) layers.push_back(block("layers." + std::to_string(i) + ".", true));
  final_mod = Linear(w, "final_layer.adaLN_modulation.1", c.adaln_dim, D);
  if (!w.shapes_only) neg_one = from_vector(std::vector<float>((size_t)P, -1.0f), {P}, device);
}

std::vector<Linear*> ZImageTransformer::linears() {
  std::vector<Linear*> v = {&x_embedder, &t_mlp0, &t_mlp2, &cap_linear};
  for (auto* blocks : {&noise_refiner, &context_refiner, &layers})
    for (Block& b : *blocks) {
      if (b.modulated) v.push_back(&b.adaln);
      v.insert(v.end(), {&b.qkv, &b.out, &b.w1, &b.w2, &b.w3});
    }
  v.insert(v.end(), {&final_mod, &final_linear});
  return v;
}

std::vector<Linear*> ZImageTransformer::quantized_linears() {
  std::vector<Linear*> v;
  for (Linear* l : linears())
    if (l != &x_embedder && l != &final_linear) v.push_back(l);
  return v;
}

std::vector<NamedParam> ZImageTransformer::params() {
  std::vector<NamedParam> p;
  for (Linear* l : {&x_embedder, &t_mlp0, &t_mlp2}) l->collect(p);
  p.push_back({"cap_embedder.0.weight", &cap_norm});
  cap_linear.collect(p);
  p.push_back({"x_pad_token", &x_pad});
  p.push_back({"cap_pad_token", &cap_pad});
  auto blocks = [&](std::vector<Block>& bs, const std::string& name) {
    for (size_t i = 0; i < bs.size(); ++i) {
      Block& b = bs[i];
      const std::string n = name + "." + std::to_string(i) + ".";
      if (b.modulated) b.adaln.collect(p);
      b.qkv.collect(p);
      b.out.collect(p);
      p.push_back({n + "attention.q_norm.weight", &b.q_norm});
      p.push_back({n + "attention.k_norm.weight", &b.k_norm});
      p.push_back({n + "attention_norm1.weight", &b.attn_norm1});
      p.push_back({n + "attention_norm2.weight", &b.attn_norm2});
      p.push_back({n + "ffn_norm1.weight", &b.ffn_norm1});
      p.push_back({n + "ffn_norm2.weight", &b.ffn_norm2});
      for (Linear* l : {&b.w1, &b.w2, &b.w3}) l->collect(p);
    }
  };
  blocks(noise_refiner, "noise_refiner");
  blocks(context_refiner, "context_refiner");
  blocks(layers, "layers");
  final_mod.collect(p);
  final_linear.collect(p);
  return p;
}

std::string zimage_diffusers_config(const ZImageConfig& c) {
  nlohmann::json j = {{"_class_name", "ZImageTransformer2DModel"},
                      {"all_patch_size", {2}},
                      {"all_f_patch_size", {1}},
                      {"in_channels", c.in_channels},
                      {"dim", c.dim},
                      {"n_layers", c.n_layers},
                      {"n_refiner_layers", c.n_refiner},
                      {"n_heads", c.heads},
                      {"n_kv_heads", c.heads},
                      {"norm_eps", c.norm_eps},
                      {"qk_norm", true},
                      {"cap_feat_dim", c.cap_dim},
                      {"rope_theta", c.theta},
                      {"t_scale", c.t_scale},
                      {"axes_dims", {c.axes_dim[0], c.axes_dim[1], c.axes_dim[2]}},
                      {"axes_lens", {1536, 512, 512}}};
  return j.dump(2) + "\n";
}

void ZImageTransformer::save(const std::string& out, DType dtype, const std::string& layout) {
  if (layout != "comfyui" && layout != "diffusers") fail("Z-Image save: layout '" + layout + "': comfyui or diffusers");
  const Layout names = layout == "diffusers" ? zimage_diffusers_layout() : identity_layout("comfyui");
  SafeTensorsWriter w;
  w.metadata["graft.zimage"] = nlohmann::json({{"axes_dims", {cfg.axes_dim[0], cfg.axes_dim[1], cfg.axes_dim[2]}},
                                               {"rope_theta", cfg.theta},
                                               {"t_scale", cfg.t_scale},
                                               {"norm_eps", cfg.norm_eps}}).dump();
  const int C = cfg.in_channels;
  for (NamedParam& p : params()) {
    Tensor t = *p.t;
    if (p.name == "x_embedder.weight") t = permute_patches(t, C, true, false);
    if (p.name == "final_layer.linear.weight" || p.name == "final_layer.linear.bias") t = permute_patches(t, C, false, false);
    std::vector<float> v = to_floats(t);
    const Stored st = names.map(p.name);
    const int64_t rows = t.shape[0] / (int64_t)st.parts.size();
    const size_t per = (size_t)(v.size() / st.parts.size());
    for (size_t i = 0; i < st.parts.size(); ++i) {
      Shape s = t.shape;
      s[0] = rows;
      w.add(st.parts[i], dtype, s, v.data() + i * per);
    }
  }
  w.write(out);
}

// ------------------------------------------------------------------------------------------------
// Forward

namespace {

// Softmax attention where item b sees only its first lens[b] positions (empty: all of them). A
// shorter item runs on its own rows; its padding rows come out zero (nothing reads them).
Tensor attend(const Tensor& q, const Tensor& k, const Tensor& v, int heads, const std::vector<int>& lens) {
  const int64_t B = q.size(0), L = q.size(1);
  bool full = true;
  for (int n : lens) full = full && n == L;
  if (full) return attention(q, k, v, heads);
  std::vector<Tensor> items;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = lens[b];
    auto rows = [&](const Tensor& t) { return narrow(narrow(t, 0, b, 1), 1, 0, n); };
    Tensor a = attention(rows(q), rows(k), rows(v), heads);
    if (n < L) a = cat({a, zeros({1, L - n, q.size(2)}, q.dtype, q.device())}, 1);
    items.push_back(a);
  }
  return cat(items, 0);
}

// One block (diffusers' ZImageTransformerBlock): x [B, L, D]; adaln [B, adaln_dim] (modulated blocks).
Tensor zimage_block(const ZImageTransformer::Block& w, const ZImageConfig& c, const Tensor& x, const Tensor& adaln,
                    const Tensor& pe, const std::vector<int>& lens) {
  const int D = c.dim, H = c.heads;
  const float eps = c.norm_eps, qk_eps = 1e-5f;  // diffusers' Attention(qk_norm="rms_norm", eps=1e-5)
  Tensor mod, gate;  // scale_msa, gate_msa, scale_mlp, gate_mlp; the gates through tanh
  if (w.modulated) {
    mod = w.adaln(adaln);
    gate = tanh(mod);
  }
  Tensor h = rmsnorm(x, w.attn_norm1, eps);
  if (w.modulated) h = modulate(h, mod, -1, 0);
  Tensor qkv = w.qkv(h);
  Tensor q = rope(rmsnorm(narrow(qkv, -1, 0, D), w.q_norm, qk_eps), pe, H);
  Tensor k = rope(rmsnorm(narrow(qkv, -1, D, D), w.k_norm, qk_eps), pe, H);
  Tensor a = rmsnorm(w.out(attend(q, k, narrow(qkv, -1, 2 * D, D), H, lens)), w.attn_norm2, eps);
  Tensor x1 = w.modulated ? gate_residual(x, a, gate, 1) : add(x, a);
  Tensor f = rmsnorm(x1, w.ffn_norm1, eps);
  if (w.modulated) f = modulate(f, mod, -1, 2);
  f = rmsnorm(w.w2(mul(silu(w.w1(f)), w.w3(f))), w.ffn_norm2, eps);
  return w.modulated ? gate_residual(x1, f, gate, 3) : add(x1, f);
}

// rows pad tokens [B, rows, D] from a learnt [1, D] token.
Tensor pad_tokens(const Tensor& token, int64_t B, int64_t rows, Device device) {
  return embedding(from_ints(std::vector<int>((size_t)(B * rows), 0), {B, rows}, device), token);
}

}  // namespace

Tensor ZImageTransformer::forward_model(const FluxInputs& in) const {
  const ZImageConfig& c = cfg;
  const int B = in.B, Li = in.L_img, P = c.patch_features(), D = c.dim;
  const DType dt = compute_dtype(device);
  if (in.img.size() != (size_t)B * Li * P || in.timesteps.size() != (size_t)B ||
      in.txt.size() != (size_t)B * in.L_txt * c.cap_dim || in.img_ids.size() != (size_t)B * Li * 3)
    fail("Z-Image forward: inputs do not fit a model with " + std::to_string(P) + " patch features and captions " +
         std::to_string(c.cap_dim) + " wide");
  // The patch grid from the image ids (0, row, col).
  int gh = 0, gw = 0;
  for (int l = 0; l < Li; ++l) {
    gh = std::max(gh, (int)in.img_ids[(size_t)l * 3 + 1] + 1);
    gw = std::max(gw, (int)in.img_ids[(size_t)l * 3 + 2] + 1);
  }
  if (gh * gw != Li) fail("Z-Image forward: image ids do not form a grid of " + std::to_string(Li) + " tokens");
  std::vector<int> cap_lens = in.txt_lens.empty() ? std::vector<int>(B, in.L_txt) : in.txt_lens;
  if ((int)cap_lens.size() != B) fail("Z-Image forward: " + std::to_string(cap_lens.size()) + " caption lengths for " + std::to_string(B) + " items");
  const int Lx = round_up(Li, kSeqMultiple);
  std::vector<int> cap_pad_len(B), unified(B);
  int cap_max = 0, U = 0;
  for (int b = 0; b < B; ++b) {
    if (cap_lens[b] < 1 || cap_lens[b] > in.L_txt) fail("Z-Image forward: caption length " + std::to_string(cap_lens[b]) + " outside [1, " + std::to_string(in.L_txt) + "]");
    cap_pad_len[b] = round_up(cap_lens[b], kSeqMultiple);
    unified[b] = Lx + cap_pad_len[b];
    cap_max = std::max(cap_max, cap_pad_len[b]);
    U = std::max(U, unified[b]);
  }
  const std::vector<int> axes = {c.axes_dim[0], c.axes_dim[1], c.axes_dim[2]};

  // Positions: caption token i at (1 + i, 0, 0) over its padded length; image tokens at
  // (caption's padded length + 1, row, col); image pad tokens and batch padding at (0, 0, 0).
  auto image_ids = [&](int b, float* ids) {
    for (int l = 0; l < Li; ++l) {
      ids[l * 3] = (float)(cap_pad_len[b] + 1);
      ids[l * 3 + 1] = (float)(l / gw);
      ids[l * 3 + 2] = (float)(l % gw);
    }
  };
  auto caption_ids = [&](int b, float* ids) {
    for (int i = 0; i < cap_pad_len[b]; ++i) ids[i * 3] = (float)(1 + i);
  };
  std::vector<float> x_ids((size_t)B * Lx * 3, 0.0f), c_ids((size_t)B * cap_max * 3, 0.0f), u_ids((size_t)B * U * 3, 0.0f);
  for (int b = 0; b < B; ++b) {
    image_ids(b, &x_ids[(size_t)b * Lx * 3]);
    caption_ids(b, &c_ids[(size_t)b * cap_max * 3]);
    image_ids(b, &u_ids[(size_t)b * U * 3]);
    caption_ids(b, &u_ids[((size_t)b * U + Lx) * 3]);
  }

  const Tensor t = from_vector(in.timesteps, {B}, device);
  const Tensor adaln = t_mlp2(silu(t_mlp0(timestep_embedding(t, 256, c.t_scale, 10000.0f))));

  // Image tokens, padded with the learnt pad token, through the noise refiner.
  Tensor x = x_embedder(from_vector(in.img, {B, Li, P}, device, dt));
  if (Lx > Li) x = cat({x, pad_tokens(x_pad, B, Lx - Li, device)}, 1);
  const Tensor x_pe = rope_table(x_ids, B * Lx, axes, c.theta, device);
  for (const Block& w : noise_refiner) x = zimage_block(w, c, x, adaln, x_pe, {});

  // Captions: each its own rows, then its pad tokens, then zeros up to the longest.
  Tensor cap = cap_linear(rmsnorm(from_vector(in.txt, {B, in.L_txt, c.cap_dim}, device, dt), cap_norm, c.norm_eps));
  {
    std::vector<Tensor> items;
    for (int b = 0; b < B; ++b) {
      std::vector<Tensor> parts = {narrow(B == 1 ? cap : narrow(cap, 0, b, 1), 1, 0, cap_lens[b])};
      if (cap_pad_len[b] > cap_lens[b]) parts.push_back(pad_tokens(cap_pad, 1, cap_pad_len[b] - cap_lens[b], device));
      if (cap_max > cap_pad_len[b]) parts.push_back(zeros({1, cap_max - cap_pad_len[b], D}, dt, device));
      items.push_back(parts.size() == 1 ? parts[0] : cat(parts, 1));
    }
    cap = items.size() == 1 ? items[0] : cat(items, 0);
  }
  const Tensor c_pe = rope_table(c_ids, B * cap_max, axes, c.theta, device);
  for (const Block& w : context_refiner) cap = zimage_block(w, c, cap, Tensor(), c_pe, cap_pad_len);

  // One sequence per item: [image tokens; caption tokens], the batch padded to the longest.
  Tensor u;
  if (std::all_of(unified.begin(), unified.end(), [&](int n) { return n == U; })) {
    u = cat({x, cap}, 1);
  } else {
    std::vector<Tensor> items;
    for (int b = 0; b < B; ++b) {
      std::vector<Tensor> parts = {narrow(x, 0, b, 1), narrow(narrow(cap, 0, b, 1), 1, 0, cap_pad_len[b])};
      if (U > unified[b]) parts.push_back(zeros({1, U - unified[b], D}, dt, device));
      items.push_back(cat(parts, 1));
    }
    u = cat(items, 0);
  }
  x = cap = Tensor();
  const Tensor u_pe = rope_table(u_ids, B * U, axes, c.theta, device);
  // Layer offloading's calls around each layer (a no-op without a streamer).
  const BlockSchedule sched{streamer, block_count()};
  u = sched.start({u})[0];
  int k = 0;
  for (const Block& w : layers) {
    sched.before(k);
    // By value: checkpoint() runs it again in backward, after this function has returned.
    auto block = [&w, &c, unified](const std::vector<Tensor>& v) {
      return std::vector<Tensor>{zimage_block(w, c, v[0], v[1], v[2], unified)};
    };
    u = sched.after(k++, checkpointing ? checkpoint(block, {u, adaln, u_pe}) : block({u, adaln, u_pe}))[0];
  }
  // The final layer on the image tokens: LayerNorm, scale-only adaLN (through SiLU), linear.
  Tensor h = modulate(layernorm(narrow(u, 1, 0, Li), 1e-6f), final_mod(silu(adaln)), -1, 0);
  return final_linear(h);
}

Tensor ZImageTransformer::forward(const FluxInputs& in) const {
  FluxInputs zin = in;
  for (float& s : zin.timesteps) s = 1.0f - s;
  return affine(forward_model(zin), neg_one, Tensor());
}

FluxActivations zimage_activation_bytes(const ZImageConfig& c, int64_t B, int64_t Li, int64_t Lt, int rank,
                                        bool checkpointing, int act_bytes, bool flash) {
  const double C = c.dim, F = c.ffn_hidden, H = c.heads, r = rank, a = act_bytes;
  const double L = round_up((int)Li, kSeqMultiple) + round_up((int)Lt, kSeqMultiple), tokens = (double)B * L;
  // Per token and layer, from what the ops of zimage_block record (measured on the tape, see
  // tests/test_zimage_train.cpp): 16 activations of the width (the block input, both norms' inputs of
  // each half and their modulations, q and k before their norms and after RoPE, v, the attention
  // output, the projection and its norm's output, the residual, w2's output and its norm's), 4 of the
  // FFN's (w1, its SiLU, w3, their product), x A^T of each of the 8 LoRAs, the norms' row statistics
  // (2 per head for q, k), and the attention's state. The refiners keep nothing: no adapter sits in
  // them or before them.
  const double attn_state = flash ? H * 4 : H * L * 4;
  const double layer = ((16 * C + 4 * F + 8 * r) * a + (4 + 2 * H) * 4 + attn_state) * tokens;
  const double final_layer = 3 * C * a * (double)B * (double)Li;
  FluxActivations out;
  if (checkpointing) {
    out.kept = c.n_layers * C * a * tokens + final_layer;  // each layer's input
    out.transient = 1.5 * layer;
  } else {
    out.kept = c.n_layers * layer + final_layer;
    out.transient = 0.5 * layer;
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// LoRA targets

std::vector<LoraTarget> zimage_lora_targets(const ZImageConfig& c, bool refiners) {
  const int D = c.dim, F = c.ffn_hidden;
  std::vector<LoraTarget> t;
  auto block = [&](const std::string& b, bool modulated) {
    const std::string qkv = b + "attention.qkv";
    t.push_back({b + "attention.to_q", qkv, 0, D, D});
    t.push_back({b + "attention.to_k", qkv, D, D, D});
    t.push_back({b + "attention.to_v", qkv, 2 * D, D, D});
    t.push_back({b + "attention.to_out.0", b + "attention.out", 0, D, D});
    t.push_back({b + "feed_forward.w1", b + "feed_forward.w1", 0, F, D});
    t.push_back({b + "feed_forward.w2", b + "feed_forward.w2", 0, D, F});
    t.push_back({b + "feed_forward.w3", b + "feed_forward.w3", 0, F, D});
    if (modulated) t.push_back({b + "adaLN_modulation.0", b + "adaLN_modulation.0", 0, 4 * D, c.adaln_dim});
  };
  for (int i = 0; i < c.n_layers; ++i) block("layers." + std::to_string(i) + ".", true);
  if (refiners)
    for (int i = 0; i < c.n_refiner; ++i) {
      block("noise_refiner." + std::to_string(i) + ".", true);
      block("context_refiner." + std::to_string(i) + ".", false);
    }
  return t;
}

}  // namespace graft
