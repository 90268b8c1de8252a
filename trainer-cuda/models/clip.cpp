#include "models/clip.h"

#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>

#include "core/common.h"
#include "ops/ops.h"

namespace graft {

static const float kClipNormEps = 1e-5f;
static const int kClipHeadSize = 64;  // CLIP-L's and CLIP-G's; a config.json overrides it

ClipConfig clip_l_config() {
  ClipConfig c;
  c.vocab = 49408;
  c.width = 768;
  c.heads = 12;
  c.layers = 12;
  c.mlp = 3072;
  c.positions = 77;
  return c;
}

int clip_pooled_position(const int* ids, int L, int eos_id) {
  if (eos_id < 0) return (int)(std::max_element(ids, ids + L) - ids);
  for (int l = 0; l < L; ++l)
    if (ids[l] == eos_id) return l;
  return 0;  // as transformers' argmax over a row without it; a tokenizer that truncates keeps the token
}

static std::string layer_name(int i) { return "text_model.encoder.layers." + std::to_string(i) + "."; }

ClipTextModel::ClipTextModel(const ClipConfig& c, WeightLoader& w) : cfg(c), device(w.device) {
  tok_emb = w.get("text_model.embeddings.token_embedding.weight", {c.vocab, c.width});
  pos_emb = w.get("text_model.embeddings.position_embedding.weight", {c.positions, c.width});
  for (int i = 0; i < c.layers; ++i) {
    const std::string n = layer_name(i);
    Layer l;
    l.ln1_w = w.get(n + "layer_norm1.weight", {c.width});
    l.ln1_b = w.get(n + "layer_norm1.bias", {c.width});
    l.q = Linear(w, n + "self_attn.q_proj", c.width, c.width);
    l.k = Linear(w, n + "self_attn.k_proj", c.width, c.width);
    l.v = Linear(w, n + "self_attn.v_proj", c.width, c.width);
    l.o = Linear(w, n + "self_attn.out_proj", c.width, c.width);
    l.ln2_w = w.get(n + "layer_norm2.weight", {c.width});
    l.ln2_b = w.get(n + "layer_norm2.bias", {c.width});
    l.fc1 = Linear(w, n + "mlp.fc1", c.width, c.mlp);
    l.fc2 = Linear(w, n + "mlp.fc2", c.mlp, c.width);
    layers.push_back(std::move(l));
  }
  final_w = w.get("text_model.final_layer_norm.weight", {c.width});
  final_b = w.get("text_model.final_layer_norm.bias", {c.width});
}

std::vector<NamedParam> ClipTextModel::params() {
  std::vector<NamedParam> p = {{"text_model.embeddings.token_embedding.weight", &tok_emb},
                               {"text_model.embeddings.position_embedding.weight", &pos_emb}};
  for (size_t i = 0; i < layers.size(); ++i) {
    Layer& l = layers[i];
    const std::string n = layer_name((int)i);
    p.push_back({n + "layer_norm1.weight", &l.ln1_w});
    p.push_back({n + "layer_norm1.bias", &l.ln1_b});
    l.q.collect(p), l.k.collect(p), l.v.collect(p), l.o.collect(p);
    p.push_back({n + "layer_norm2.weight", &l.ln2_w});
    p.push_back({n + "layer_norm2.bias", &l.ln2_b});
    l.fc1.collect(p), l.fc2.collect(p);
  }
  p.push_back({"text_model.final_layer_norm.weight", &final_w});
  p.push_back({"text_model.final_layer_norm.bias", &final_b});
  return p;
}

// Heads, activation and the pooling rule from a config.json beside the weights.
static void apply_config(const std::string& path, ClipConfig& c) {
  const std::string text = folder_config_text(path);
  if (text.empty()) return;
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail(path + "/config.json: not valid JSON");
  const std::string act = j.value("hidden_act", std::string("quick_gelu"));
  if (act != "quick_gelu")
    fail(path + "/config.json: hidden_act is '" + act + "'; graft's CLIP text model runs quick_gelu (CLIP-L, as FLUX.1 uses)");
  const double eps = j.value("layer_norm_eps", 1e-5);
  if (std::fabs(eps - 1e-5) > 1e-12) fail(path + "/config.json: layer_norm_eps " + std::to_string(eps) + " (graft's CLIP norms use 1e-5)");
  c.heads = j.value("num_attention_heads", c.heads);
  const int eos = j.value("eos_token_id", 2);
  c.eos_id = eos == 2 ? -1 : eos;
}

ClipTextModel ClipTextModel::load(const std::string& path, Device device, WeightFormat quantize) {
  Checkpoint ckpt = Checkpoint::open(path);
  std::string prefix;
  if (!find_prefix(ckpt, "text_model.final_layer_norm.weight", &prefix))
    fail(path + ": not a CLIP text model: no tensor 'text_model.final_layer_norm.weight' (under any prefix)");
  WeightLoader w(&ckpt, identity_layout(prefix.empty() ? "CLIP" : "CLIP under '" + prefix + "'", prefix), device);
  w.quantize = quantize;
  for (const char* n : {"text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight"})
    if (!w.has(n)) fail(w.problem(n, "is missing"));
  ClipConfig c;
  c.vocab = (int)w.dim("text_model.embeddings.token_embedding.weight", 0);
  c.width = (int)w.dim("text_model.embeddings.token_embedding.weight", 1);
  c.positions = (int)w.dim("text_model.embeddings.position_embedding.weight", 0);
  c.heads = std::max(1, c.width / kClipHeadSize);
  apply_config(path, c);
  if (c.heads <= 0 || c.width % c.heads)
    fail(path + ": CLIP width " + std::to_string(c.width) + " does not split into " + std::to_string(c.heads) + " heads");
  while (w.has(layer_name(c.layers) + "self_attn.q_proj.weight")) ++c.layers;
  if (c.layers == 0) fail(w.problem(layer_name(0) + "self_attn.q_proj.weight", "is missing"));
  c.mlp = (int)w.dim(layer_name(0) + "mlp.fc1.weight", 0);
  ClipTextModel m(c, w);
  m.path = path;
  return m;
}

ClipTextModel::Output ClipTextModel::forward(const std::vector<int>& ids, int B, int L) const {
  if (L > cfg.positions) fail("CLIP text model: " + std::to_string(L) + " tokens, more than its " + std::to_string(cfg.positions) + " positions");
  if ((int)ids.size() != B * L) fail("CLIP text model: expected " + std::to_string(B * L) + " token ids, got " + std::to_string(ids.size()));
  std::vector<int> positions((size_t)B * L);
  for (size_t i = 0; i < positions.size(); ++i) positions[i] = (int)(i % L);
  Tensor x = add(embedding(from_ints(ids, {B, L}, device), tok_emb), embedding(from_ints(positions, {B, L}, device), pos_emb));
  const AttentionOptions causal{0.0f, true, Tensor()};
  for (const Layer& l : layers) {
    Tensor h = affine(layernorm(x, kClipNormEps), l.ln1_w, l.ln1_b);
    x = add(x, l.o(attention(l.q(h), l.k(h), l.v(h), cfg.heads, causal)));
    h = affine(layernorm(x, kClipNormEps), l.ln2_w, l.ln2_b);
    x = add(x, l.fc2(quick_gelu(l.fc1(h))));
  }
  Tensor hidden = affine(layernorm(x, kClipNormEps), final_w, final_b);
  std::vector<Tensor> rows;
  for (int b = 0; b < B; ++b) {
    const int p = clip_pooled_position(ids.data() + (size_t)b * L, L, cfg.eos_id);
    rows.push_back(reshape(narrow(narrow(hidden, 0, b, 1), 1, p, 1), {1, cfg.width}));
  }
  return {hidden, cat(rows, 0)};
}

}  // namespace graft
