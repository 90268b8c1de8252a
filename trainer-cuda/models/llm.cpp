#include "models/llm.h"

#include <nlohmann/json.hpp>

#include "core/autograd.h"
#include "core/common.h"
#include "ops/ops.h"

namespace graft {

LlmConfig qwen3_4b_config() {
  LlmConfig c;
  c.hidden = 2560, c.intermediate = 9728, c.layers = 36, c.heads = 32, c.kv_heads = 8, c.head_dim = 128;
  c.vocab = 151936;
  return c;
}

std::string llm_config_json(const LlmConfig& c) {
  nlohmann::json j = {{"architectures", {"Qwen3ForCausalLM"}},
                      {"model_type", c.model_type},
                      {"hidden_size", c.hidden},
                      {"intermediate_size", c.intermediate},
                      {"num_hidden_layers", c.layers},
                      {"num_attention_heads", c.heads},
                      {"num_key_value_heads", c.kv_heads},
                      {"head_dim", c.head_dim},
                      {"rms_norm_eps", c.rms_eps},
                      {"rope_theta", c.rope_theta},
                      {"vocab_size", c.vocab},
                      {"max_position_embeddings", 40960},
                      {"attention_bias", false},
                      {"tie_word_embeddings", true},
                      {"hidden_act", "silu"}};
  return j.dump(2) + "\n";
}

// ------------------------------------------------------------------------------------------------
// Rotary rows. transformers rotates each head's halves (x_i with x_{i + D/2}); ops.h's rope rotates
// neighbouring pairs (x_{2i} with x_{2i+1}), as FLUX does. Reordering each head's rows of q_proj and
// k_proj (and their norms and biases) as (0, D/2, 1, D/2 + 1, ...) turns one into the other: q and k
// are permuted alike, so every score q . k is unchanged, and v and o are untouched.

static Tensor rotary_rows(const Tensor& t, int head_dim, bool to_pairs) {
  if (!t.defined() || t.shape.empty()) return t;
  std::vector<float> v = to_floats(t), out(v.size());
  const size_t rows = (size_t)t.shape[0], cols = v.size() / rows, half = head_dim / 2;
  for (size_t r = 0; r < rows; ++r) {
    const size_t head = r / head_dim * head_dim, i = r % head_dim;
    // pair order position i holds half-order row (i even: i/2; odd: half + i/2)
    const size_t half_row = head + (i % 2 ? half + i / 2 : i / 2);
    const size_t src = to_pairs ? half_row : r, dst = to_pairs ? r : half_row;
    std::copy_n(v.begin() + src * cols, cols, out.begin() + dst * cols);
  }
  return from_vector(out, t.shape, t.device(), t.dtype);
}

// ------------------------------------------------------------------------------------------------
// Loading

static LlmConfig llm_config_of(const WeightLoader& w, const Checkpoint& ckpt, const std::string& config_path) {
  LlmConfig c;
  w.shape("layers.0.self_attn.q_proj.weight");  // names the first part missing
  c.vocab = (int)w.dim("embed_tokens.weight", 0);
  c.hidden = (int)w.dim("embed_tokens.weight", 1);
  c.qk_norm = w.has("layers.0.self_attn.q_norm.weight");
  c.intermediate = (int)w.dim("layers.0.mlp.gate_proj.weight", 0);
  while (w.has("layers." + std::to_string(c.layers) + ".self_attn.q_proj.weight")) ++c.layers;
  std::string text, where = ckpt.path;
  if (!config_path.empty()) {
    text = read_text_file(config_path);
    where = config_path;
  } else {
    text = folder_config_text(ckpt.path);
    if (!text.empty()) where = ckpt.path + "/config.json";
  }
  const int q_rows = (int)w.dim("layers.0.self_attn.q_proj.weight", 0), kv_rows = (int)w.dim("layers.0.self_attn.k_proj.weight", 0);
  c.head_dim = c.qk_norm ? (int)w.dim("layers.0.self_attn.q_norm.weight", 0) : 128;
  if (!text.empty()) {
    nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) fail(where + ": not valid JSON");
    try {
      c.model_type = j.value("model_type", c.model_type);
      c.rms_eps = j.value("rms_norm_eps", c.rms_eps);
      c.rope_theta = j.value("rope_theta", c.rope_theta);
      // transformers 5 saves it inside rope_parameters
      if (j.contains("rope_parameters") && j["rope_parameters"].is_object())
        c.rope_theta = j["rope_parameters"].value("rope_theta", c.rope_theta);
      if (j.contains("num_attention_heads")) c.head_dim = j.value("head_dim", q_rows / j["num_attention_heads"].get<int>());
      if (j.contains("num_hidden_layers") && j["num_hidden_layers"].get<int>() != c.layers)
        fail(where + ": num_hidden_layers " + j["num_hidden_layers"].dump() + " but " + ckpt.path + " holds " +
             std::to_string(c.layers) + " layers");
      if (j.contains("hidden_size") && j["hidden_size"].get<int>() != c.hidden)
        fail(where + ": hidden_size " + j["hidden_size"].dump() + " but the embeddings are " + std::to_string(c.hidden) + " wide");
    } catch (const nlohmann::json::exception& e) {
      fail(where + ": " + e.what());
    }
  }
  if (c.head_dim <= 0 || q_rows % c.head_dim || kv_rows % c.head_dim || c.head_dim % 2)
    fail(where + ": q_proj's " + std::to_string(q_rows) + " and k_proj's " + std::to_string(kv_rows) +
         " rows are not whole heads of " + std::to_string(c.head_dim));
  c.heads = q_rows / c.head_dim;
  c.kv_heads = kv_rows / c.head_dim;
  if (c.heads % c.kv_heads)
    fail(where + ": " + std::to_string(c.heads) + " query heads do not share " + std::to_string(c.kv_heads) + " key/value heads evenly");
  return c;
}

static int resolve_index(int index, int layers, const std::string& where) {
  const int resolved = index < 0 ? layers + 1 + index : index;  // hidden_states has layers + 1 entries
  if (resolved < 0 || resolved > layers)
    fail(where + ": hidden state " + std::to_string(index) + " of a model with " + std::to_string(layers) + " layers");
  return resolved;
}

DecoderLlm::DecoderLlm(const LlmConfig& c, WeightLoader& w, int hidden_index) : cfg(c), device(w.device), index(hidden_index) {
  const int D = c.hidden, Hd = c.head_dim;
  const int resolved = resolve_index(hidden_index, c.layers, w.ckpt ? w.ckpt->path : "decoder LLM");
  const bool final = hidden_index == -1 || resolved == c.layers;
  const int n = final ? c.layers : resolved;
  embed = w.get("embed_tokens.weight", {c.vocab, D});
  for (int i = 0; i < n; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    Layer l;
    l.in_norm = w.get(p + "input_layernorm.weight", {D});
    l.post_norm = w.get(p + "post_attention_layernorm.weight", {D});
    {
      // q and k load dense for their rows to be reordered, then take the job's format.
      const WeightFormat fmt = w.quantize;
      w.quantize = WeightFormat::dense;
      l.q = Linear(w, p + "self_attn.q_proj", D, c.heads * Hd, Bias::optional);
      l.k = Linear(w, p + "self_attn.k_proj", D, c.kv_heads * Hd, Bias::optional);
      w.quantize = fmt;
      for (Linear* lin : {&l.q, &l.k}) {
        lin->W = rotary_rows(lin->W, Hd, true);
        lin->b = rotary_rows(lin->b, Hd, true);
        if (fmt != WeightFormat::dense && !w.shapes_only) lin->quantize(fmt, device);
      }
    }
    l.v = Linear(w, p + "self_attn.v_proj", D, c.kv_heads * Hd, Bias::optional);
    l.o = Linear(w, p + "self_attn.o_proj", c.heads * Hd, D, Bias::no);
    if (c.qk_norm) {
      l.q_norm = rotary_rows(w.get(p + "self_attn.q_norm.weight", {Hd}), Hd, true);
      l.k_norm = rotary_rows(w.get(p + "self_attn.k_norm.weight", {Hd}), Hd, true);
    }
    l.gate = Linear(w, p + "mlp.gate_proj", D, c.intermediate, Bias::no);
    l.up = Linear(w, p + "mlp.up_proj", D, c.intermediate, Bias::no);
    l.down = Linear(w, p + "mlp.down_proj", c.intermediate, D, Bias::no);
    layers.push_back(std::move(l));
  }
  if (final) final_norm = w.get("norm.weight", {D});
}

DecoderLlm DecoderLlm::load(const std::string& path, Device device, int hidden_index, WeightFormat quantize,
                            const std::string& config) {
  Checkpoint ckpt = Checkpoint::open(path);
  std::string prefix;
  if (!find_prefix(ckpt, "layers.0.self_attn.q_proj.weight", &prefix))
    fail(path + ": not a decoder LLM: no tensor named '[model.]layers.0.self_attn.q_proj.weight'");
  WeightLoader w(&ckpt, identity_layout(prefix.empty() ? "transformers" : prefix, prefix), device);
  w.quantize = quantize;
  DecoderLlm m(llm_config_of(w, ckpt, config), w, hidden_index);
  m.path = path;
  return m;
}

DecoderLlm DecoderLlm::random(const LlmConfig& cfg, Device device, uint64_t seed, int hidden_index) {
  WeightLoader w(nullptr, identity_layout("random"), device, seed);
  DecoderLlm m(cfg, w, hidden_index);
  m.path = "(random)";
  return m;
}

std::vector<NamedParam> DecoderLlm::params() {
  std::vector<NamedParam> p = {{"embed_tokens.weight", &embed}};
  for (size_t i = 0; i < layers.size(); ++i) {
    Layer& l = layers[i];
    const std::string n = "layers." + std::to_string(i) + ".";
    p.push_back({n + "input_layernorm.weight", &l.in_norm});
    p.push_back({n + "post_attention_layernorm.weight", &l.post_norm});
    for (Linear* lin : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) lin->collect(p);
    if (cfg.qk_norm) {
      p.push_back({n + "self_attn.q_norm.weight", &l.q_norm});
      p.push_back({n + "self_attn.k_norm.weight", &l.k_norm});
    }
  }
  if (final_norm.defined() || !final_norm.shape.empty()) p.push_back({"norm.weight", &final_norm});
  return p;
}

void DecoderLlm::save(const std::string& file, DType dtype) {
  if ((int)layers.size() != cfg.layers || !final_norm.defined())
    fail(file + ": cannot save a decoder LLM loaded up to hidden state " + std::to_string(index) +
         " (it holds " + std::to_string(layers.size()) + " of " + std::to_string(cfg.layers) + " layers); load it with -1");
  SafeTensorsWriter w;
  w.metadata["format"] = "pt";
  auto put = [&](const std::string& name, const Tensor& t) {
    if (!t.defined()) return;
    std::vector<float> v = to_floats(t);
    w.add("model." + name, dtype, t.shape, v.data());
  };
  const int Hd = cfg.head_dim;
  put("embed_tokens.weight", embed);
  for (size_t i = 0; i < layers.size(); ++i) {
    const Layer& l = layers[i];
    const std::string p = "layers." + std::to_string(i) + ".";
    put(p + "input_layernorm.weight", l.in_norm);
    put(p + "post_attention_layernorm.weight", l.post_norm);
    put(p + "self_attn.q_proj.weight", rotary_rows(l.q.W, Hd, false));
    put(p + "self_attn.k_proj.weight", rotary_rows(l.k.W, Hd, false));
    put(p + "self_attn.v_proj.weight", l.v.W);
    put(p + "self_attn.o_proj.weight", l.o.W);
    if (cfg.qk_norm) {
      put(p + "self_attn.q_norm.weight", rotary_rows(l.q_norm, Hd, false));
      put(p + "self_attn.k_norm.weight", rotary_rows(l.k_norm, Hd, false));
    }
    put(p + "mlp.gate_proj.weight", l.gate.W);
    put(p + "mlp.up_proj.weight", l.up.W);
    put(p + "mlp.down_proj.weight", l.down.W);
  }
  put("norm.weight", final_norm);
  w.write(file);
}

// ------------------------------------------------------------------------------------------------
// Forward

// k or v [B, L, kv_heads * D] -> [B, L, heads * D], each key/value head serving heads / kv_heads
// query heads in a row (transformers' repeat_kv).
static Tensor repeat_kv(const Tensor& x, int kv_heads, int heads, int D) {
  if (kv_heads == heads) return x;
  const int64_t B = x.size(0), L = x.size(1);
  const Tensor one = reshape(x, {B * L, kv_heads, 1, D});
  return reshape(cat(std::vector<Tensor>((size_t)(heads / kv_heads), one), 2), {B, L, (int64_t)heads * D});
}

Tensor DecoderLlm::forward(const std::vector<int>& ids, int B, int L) const {
  const LlmConfig& c = cfg;
  if ((int64_t)ids.size() != (int64_t)B * L) fail("decoder LLM: " + std::to_string(ids.size()) + " ids for " + std::to_string(B) + " x " + std::to_string(L));
  const int H = c.heads, KV = c.kv_heads, Hd = c.head_dim;
  std::vector<float> pos((size_t)B * L);
  for (int b = 0; b < B; ++b)
    for (int l = 0; l < L; ++l) pos[(size_t)b * L + l] = (float)l;
  const Tensor pe = rope_table(pos, B * L, {Hd}, c.rope_theta, device);
  Tensor x = embedding(from_ints(ids, {B, L}, device), embed);
  const AttentionOptions causal{0.0f, true, Tensor()};
  for (const Layer& l : layers) {
    const Tensor h = rmsnorm(x, l.in_norm, c.rms_eps);
    Tensor q = l.q(h), k = l.k(h);
    if (c.qk_norm) q = rmsnorm(q, l.q_norm, c.rms_eps), k = rmsnorm(k, l.k_norm, c.rms_eps);
    q = rope(q, pe, H);
    k = rope(k, pe, KV);
    const Tensor a = attention(q, repeat_kv(k, KV, H, Hd), repeat_kv(l.v(h), KV, H, Hd), H, causal);
    x = add(x, l.o(a));
    const Tensor m = rmsnorm(x, l.post_norm, c.rms_eps);
    x = add(x, l.down(mul(silu(l.gate(m)), l.up(m))));
  }
  if (final_norm.defined()) x = rmsnorm(x, final_norm, c.rms_eps);
  return x;
}

}  // namespace graft
