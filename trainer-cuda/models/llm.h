// A decoder-only LLM as a text encoder (transformers' Qwen3Model; Qwen2, Llama and Mistral have the same
// shape), config-driven: grouped-query causal attention with RoPE, optional per-head RMS QK-norm
// (Qwen3) and q/k/v biases (Qwen2), RMSNorm, a SwiGLU MLP. A diffusion pipeline reads one of its
// hidden states (Z-Image: the second to last, hidden_states[-2]), so only the layers up to it load.
//
// Weights in transformers' names ("model.layers.N.self_attn.q_proj.weight", with or without
// "model."): a folder (config.json + model.safetensors or shards) or a single file (ComfyUI's
// text_encoders/qwen_3_4b.safetensors). Sizes come from the tensor shapes; rope_theta and
// rms_norm_eps from config.json (or `config` given apart), else the model type's values.
#pragma once
#include <string>
#include <vector>

#include "models/module.h"
#include "models/weights.h"

namespace graft {

struct LlmConfig {
  std::string model_type = "qwen3";
  int hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, vocab = 0;
  float rms_eps = 1e-6f, rope_theta = 1000000.0f;
  bool qk_norm = true;
};

// Qwen3-4B (Z-Image's text encoder): 36 layers, hidden 2560, 32 query and 8 key/value heads of 128.
LlmConfig qwen3_4b_config();
// transformers' config.json for a model of this shape.
std::string llm_config_json(const LlmConfig& c);

struct DecoderLlm {
  struct Layer {
    Tensor in_norm, post_norm, q_norm, k_norm;
    Linear q, k, v, o, gate, up, down;
  };
  LlmConfig cfg;
  Device device;
  std::string path;
  Tensor embed;               // [vocab, hidden]
  std::vector<Layer> layers;  // those hidden state `index` needs
  Tensor final_norm;          // loaded when index is -1 (after the last layer)
  int index = -2;

  // hidden_index as transformers' hidden_states[index]: 0 the embeddings, i after i layers, negative
  // from the end (-1 after the final norm, -2 the input of the last layer). config: a config.json
  // to read instead of the folder's ("" : the folder's, or none).
  static DecoderLlm load(const std::string& path, Device device, int hidden_index = -2,
                         WeightFormat quantize = WeightFormat::dense, const std::string& config = "");
  static DecoderLlm random(const LlmConfig& cfg, Device device, uint64_t seed, int hidden_index = -2);
  DecoderLlm(const LlmConfig& cfg, WeightLoader& w, int hidden_index);
  DecoderLlm() = default;

  std::vector<NamedParam> params();  // every tensor it holds, by transformers' name without "model."

  // ids [B, L] (every position a token; a prompt's padding is cut off by the caller: the attention is
  // causal, so what follows a token never changes it) -> hidden_states[index] [B, L, hidden].
  Tensor forward(const std::vector<int>& ids, int B, int L) const;

  // Every tensor in transformers' names, in a form load() reads back (the rotary rows put back);
  // only a whole model (loaded with hidden index -1).
  void save(const std::string& file, DType dtype);
};

}  // namespace graft
