#include "models/t5.h"

#include <cmath>

#include <nlohmann/json.hpp>

#include "core/common.h"
#include "ops/ops.h"

namespace graft {

T5Config t5_xxl_config() {
  T5Config c;
  c.vocab = 32128;
  c.d_model = 4096;
  c.d_kv = 64;
  c.heads = 64;
  c.d_ff = 10240;
  c.layers = 24;
  return c;
}

int t5_relative_bucket(int rel, int buckets, int max_distance) {
  const int half = buckets / 2, max_exact = half / 2;
  int bucket = rel > 0 ? half : 0;
  const int a = std::abs(rel);
  if (a < max_exact) return bucket + a;
  // In float32 as transformers computes it, so the boundaries fall where the trained model's do.
  const float large = std::log((float)a / (float)max_exact) / (float)std::log((double)max_distance / max_exact) *
                      (float)(half - max_exact);
  return bucket + std::min(max_exact + (int)large, half - 1);
}

static std::string block_name(int i, int layer) {
  return "encoder.block." + std::to_string(i) + ".layer." + std::to_string(layer) + ".";
}

T5Encoder::T5Encoder(const T5Config& c, WeightLoader& w) : cfg(c), device(w.device) {
  const int inner = c.heads * c.d_kv;
  embed = w.get("shared.weight", {c.vocab, c.d_model});
  for (int i = 0; i < c.layers; ++i) {
    const std::string a = block_name(i, 0) + "SelfAttention.", f = block_name(i, 1);
    Block b;
    b.attn_norm = w.get(block_name(i, 0) + "layer_norm.weight", {c.d_model});
    b.q = Linear(w, a + "q", c.d_model, inner, Bias::no);
    b.k = Linear(w, a + "k", c.d_model, inner, Bias::no);
    b.v = Linear(w, a + "v", c.d_model, inner, Bias::no);
    b.o = Linear(w, a + "o", inner, c.d_model, Bias::no);
    if (i == 0) rel_bias = w.get(a + "relative_attention_bias.weight", {c.buckets, c.heads});
    b.ff_norm = w.get(f + "layer_norm.weight", {c.d_model});
    b.wi0 = Linear(w, f + "DenseReluDense.wi_0", c.d_model, c.d_ff, Bias::no);
    b.wi1 = Linear(w, f + "DenseReluDense.wi_1", c.d_model, c.d_ff, Bias::no);
    b.wo = Linear(w, f + "DenseReluDense.wo", c.d_ff, c.d_model, Bias::no);
    blocks.push_back(std::move(b));
  }
  final_norm = w.get("encoder.final_layer_norm.weight", {c.d_model});
}

std::vector<NamedParam> T5Encoder::params() {
  std::vector<NamedParam> p = {{"shared.weight", &embed}};
  for (size_t i = 0; i < blocks.size(); ++i) {
    Block& b = blocks[i];
    p.push_back({block_name((int)i, 0) + "layer_norm.weight", &b.attn_norm});
    b.q.collect(p), b.k.collect(p), b.v.collect(p), b.o.collect(p);
    if (i == 0) p.push_back({block_name(0, 0) + "SelfAttention.relative_attention_bias.weight", &rel_bias});
    p.push_back({block_name((int)i, 1) + "layer_norm.weight", &b.ff_norm});
    b.wi0.collect(p), b.wi1.collect(p), b.wo.collect(p);
  }
  p.push_back({"encoder.final_layer_norm.weight", &final_norm});
  return p;
}

// What a config.json beside the weights says that the shapes cannot: it must describe the T5 this
// code runs (v1.1's gated GELU, eps 1e-6), and its head count and buckets are taken as given.
static void apply_config(const std::string& path, T5Config& c) {
  const std::string text = folder_config_text(path);
  if (text.empty()) return;
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail(path + "/config.json: not valid JSON");
  const std::string act = j.value("feed_forward_proj", std::string("gated-gelu"));
  if (act != "gated-gelu")
    fail(path + "/config.json: feed_forward_proj is '" + act + "'; graft runs T5 v1.1 encoders (gated-gelu), as FLUX.1 uses");
  const double eps = j.value("layer_norm_epsilon", 1e-6);
  if (std::fabs(eps - 1e-6) > 1e-12)
    fail(path + "/config.json: layer_norm_epsilon " + std::to_string(eps) + " (graft's T5 norms use 1e-6)");
  c.heads = j.value("num_heads", c.heads);
  c.buckets = j.value("relative_attention_num_buckets", c.buckets);
  c.max_distance = j.value("relative_attention_max_distance", c.max_distance);
}

T5Encoder T5Encoder::load(const std::string& path, Device device, WeightFormat quantize) {
  Checkpoint ckpt = Checkpoint::open(path);
  std::string prefix;
  if (!find_prefix(ckpt, "encoder.final_layer_norm.weight", &prefix))
    fail(path + ": not a T5 encoder: no tensor 'encoder.final_layer_norm.weight' (under any prefix)");
  // transformers ties shared.weight and encoder.embed_tokens.weight; a file may hold either.
  const bool shared = ckpt.has(prefix + "shared.weight");
  Layout layout{prefix.empty() ? "T5" : "T5 under '" + prefix + "'", [prefix, shared](const std::string& n) {
                  if (n == "shared.weight" && !shared) return Stored{{prefix + "encoder.embed_tokens.weight"}, false};
                  return Stored{{prefix + n}, false};
                }};
  WeightLoader w(&ckpt, layout, device);
  w.quantize = quantize;
  T5Config c;
  const std::string rel = block_name(0, 0) + "SelfAttention.relative_attention_bias.weight";
  if (!w.has("shared.weight")) fail(w.problem("shared.weight", "is missing"));
  if (!w.has(rel)) fail(w.problem(rel, "is missing"));
  c.vocab = (int)w.dim("shared.weight", 0);
  c.d_model = (int)w.dim("shared.weight", 1);
  c.buckets = (int)w.dim(rel, 0);
  c.heads = (int)w.dim(rel, 1);
  apply_config(path, c);
  while (w.has(block_name(c.layers, 0) + "SelfAttention.q.weight")) ++c.layers;
  if (c.layers == 0) fail(w.problem(block_name(0, 0) + "SelfAttention.q.weight", "is missing"));
  const int64_t inner = w.dim(block_name(0, 0) + "SelfAttention.q.weight", 0);
  if (c.heads <= 0 || inner % c.heads)
    fail(path + ": T5 attention width " + std::to_string(inner) + " does not split into " + std::to_string(c.heads) + " heads");
  c.d_kv = (int)(inner / c.heads);
  c.d_ff = (int)w.dim(block_name(0, 1) + "DenseReluDense.wi_0.weight", 0);
  T5Encoder m(c, w);
  m.path = path;
  return m;
}

Tensor T5Encoder::position_bias(int L) const {
  const std::vector<float> table = to_floats(rel_bias);  // [buckets, heads]: small
  const int H = cfg.heads;
  std::vector<float> bias((size_t)H * L * L);
  for (int i = 0; i < L; ++i)
    for (int j = 0; j < L; ++j) {
      const int b = t5_relative_bucket(j - i, cfg.buckets, cfg.max_distance);
      for (int h = 0; h < H; ++h) bias[((size_t)h * L + i) * L + j] = table[(size_t)b * H + h];
    }
  return from_vector(bias, {H, L, L}, device, DType::F32);
}

Tensor T5Encoder::forward(const std::vector<int>& ids, int B, int L) const {
  if ((int)ids.size() != B * L) fail("T5 encoder: expected " + std::to_string(B * L) + " token ids, got " + std::to_string(ids.size()));
  const AttentionOptions opt{1.0f, false, position_bias(L)};
  Tensor x = embedding(from_ints(ids, {B, L}, device), embed);
  for (const Block& b : blocks) {
    Tensor h = rmsnorm(x, b.attn_norm);
    x = add(x, b.o(attention(b.q(h), b.k(h), b.v(h), cfg.heads, opt)));
    h = rmsnorm(x, b.ff_norm);
    x = add(x, b.wo(mul(gelu(b.wi0(h)), b.wi1(h))));
  }
  return rmsnorm(x, final_norm);
}

}  // namespace graft
