#include "demo/text_encoder.h"

#include <cmath>
#include <cstdlib>

#include "core/common.h"
#include "core/rng.h"
#include "ops/ops.h"

namespace graft {

std::vector<int> tokenize_bytes(const std::string& text, int max_len) {
  if (max_len < 2) fail("text encoder max_len must be at least 2, got " + std::to_string(max_len));
  std::vector<int> ids = {kTokBos};
  for (unsigned char c : text) {
    if ((int)ids.size() == max_len - 1) break;
    ids.push_back(kTokByte0 + c);
  }
  ids.push_back(kTokEos);
  ids.resize(max_len, kTokPad);
  return ids;
}

static void check_config(const TextEncoderConfig& c, const std::string& where) {
  if (c.heads <= 0 || c.dim % c.heads || (c.dim / c.heads) % 2)
    fail(where + ": text encoder width " + std::to_string(c.dim) + " must split into " + std::to_string(c.heads) +
         " heads of even size");
}

// Every tensor of `c` through `w`.
static TextEncoder build(const TextEncoderConfig& c, WeightLoader& w) {
  TextEncoder te;
  te.cfg = c;
  te.device = w.device;
  te.tok_emb = w.get("token_embedding.weight", {c.vocab, c.dim});
  te.pos_emb = w.get("position_embedding.weight", {c.max_len, c.dim});
  for (int i = 0; i < c.layers; ++i) {
    const std::string n = "layers." + std::to_string(i) + ".";
    TextEncoder::Layer l;
    l.norm1 = w.get(n + "norm1.scale", {c.dim});
    l.qkv = Linear(w, n + "attn.qkv", c.dim, 3 * c.dim);
    l.out = Linear(w, n + "attn.out", c.dim, c.dim);
    l.norm2 = w.get(n + "norm2.scale", {c.dim});
    l.mlp0 = Linear(w, n + "mlp.0", c.dim, c.mlp);
    l.mlp2 = Linear(w, n + "mlp.2", c.mlp, c.dim);
    te.layers.push_back(std::move(l));
  }
  te.final_norm = w.get("final_norm.scale", {c.dim});
  te.context_proj = Linear(w, "context_proj", c.dim, c.context_dim);
  te.pooled_proj = Linear(w, "pooled_proj", c.dim, c.vec_dim);
  return te;
}

std::vector<NamedParam> TextEncoder::params() {
  std::vector<NamedParam> p = {{"token_embedding.weight", &tok_emb}, {"position_embedding.weight", &pos_emb}};
  for (size_t i = 0; i < layers.size(); ++i) {
    Layer& l = layers[i];
    const std::string n = "layers." + std::to_string(i) + ".";
    p.push_back({n + "norm1.scale", &l.norm1});
    l.qkv.collect(p);
    l.out.collect(p);
    p.push_back({n + "norm2.scale", &l.norm2});
    l.mlp0.collect(p);
    l.mlp2.collect(p);
  }
  p.push_back({"final_norm.scale", &final_norm});
  context_proj.collect(p);
  pooled_proj.collect(p);
  return p;
}

TextEncoder TextEncoder::random(const TextEncoderConfig& c, uint64_t seed, Device device) {
  check_config(c, "text encoder");
  WeightLoader w(nullptr, identity_layout("random"), Device::cpu());
  TextEncoder te = build(c, w);
  Rng rng(seed, 0x7E, 0);
  for (NamedParam& p : te.params()) {
    const Shape& s = p.t->shape;
    const bool scale = p.name.find(".scale") != std::string::npos;
    const bool bias = p.name.size() > 5 && p.name.compare(p.name.size() - 5, 5, ".bias") == 0;
    const float std = s.size() == 2 ? (p.name.find("embedding") != std::string::npos ? 0.5f : 1.0f / std::sqrt((float)s[1])) : 0.0f;
    std::vector<float> v((size_t)shape_numel(s));
    for (float& x : v) x = scale ? 1.0f : bias ? 0.0f : std * rng.normal();
    *p.t = from_vector(v, s, device, DType::F32);
  }
  te.device = device;
  return te;
}

TextEncoder TextEncoder::load(const std::string& path, Device device, WeightFormat quantize) {
  Checkpoint ckpt = Checkpoint::open(path);
  if (!ckpt.has("token_embedding.weight"))
    fail(path + ": not a graft text encoder: tensor 'token_embedding.weight' is missing");
  WeightLoader w(&ckpt, identity_layout("graft text encoder"), device);
  w.quantize = quantize;
  TextEncoderConfig c;
  c.vocab = (int)w.dim("token_embedding.weight", 0);
  c.dim = (int)w.dim("token_embedding.weight", 1);
  c.max_len = (int)w.dim("position_embedding.weight", 0);
  c.layers = 0;
  while (ckpt.has("layers." + std::to_string(c.layers) + ".attn.qkv.weight")) ++c.layers;
  c.mlp = c.layers ? (int)w.dim("layers.0.mlp.0.weight", 0) : 4 * c.dim;
  c.context_dim = (int)w.dim("context_proj.weight", 0);
  c.vec_dim = (int)w.dim("pooled_proj.weight", 0);
  auto it = ckpt.metadata().find("graft.heads");
  c.heads = it != ckpt.metadata().end() ? std::atoi(it->second.c_str()) : std::max(1, c.dim / 32);
  check_config(c, path);
  return build(c, w);
}

void TextEncoder::save(const std::string& path, DType dtype, const std::map<std::string, std::string>& metadata) {
  SafeTensorsWriter w;
  w.metadata = metadata;
  w.metadata["graft.heads"] = std::to_string(cfg.heads);
  for (NamedParam& p : params()) {
    std::vector<float> v = to_floats(*p.t);
    w.add(p.name, dtype, p.t->shape, v.data());
  }
  w.write(path);
}

TextEncoder::Output TextEncoder::forward(const std::vector<int>& ids, int B, int L) const {
  const TextEncoderConfig& c = cfg;
  if (L > c.max_len) fail("text encoder: " + std::to_string(L) + " tokens, more than its " + std::to_string(c.max_len));
  if ((int)ids.size() != B * L) fail("text encoder: expected " + std::to_string(B * L) + " token ids");
  std::vector<int> positions((size_t)B * L);
  for (int b = 0; b < B; ++b)
    for (int l = 0; l < L; ++l) positions[(size_t)b * L + l] = l;
  Tensor x = add(embedding(from_ints(ids, {B, L}, device), tok_emb), embedding(from_ints(positions, {B, L}, device), pos_emb));
  const int C = c.dim, H = c.heads;
  for (const Layer& l : layers) {
    Tensor qkv = l.qkv(rmsnorm(x, l.norm1));
    Tensor attn = attention(narrow(qkv, -1, 0, C), narrow(qkv, -1, C, C), narrow(qkv, -1, 2 * C, C), H);
    Tensor x1 = add(x, l.out(attn));
    x = add(x1, l.mlp2(gelu(l.mlp0(rmsnorm(x1, l.norm2)))));
  }
  Tensor xf = rmsnorm(x, final_norm);
  return {context_proj(xf), pooled_proj(mean_tokens(xf))};
}

}  // namespace graft
