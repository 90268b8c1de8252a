// The demo model's text encoder: byte-level tokens into a small pre-norm transformer encoder.
// It plays both roles FLUX.1 gives its two text encoders: per-token context (T5's role, into
// txt_in) and a pooled vector (CLIP's pooled output, into vector_in). Bytes, so any trigger word
// gets its own tokens without a vocabulary to extend.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common.h"
#include "safetensors.h"

namespace graft {

// Token ids: 0 pad, 1 begin, 2 end, 3 + b for the UTF-8 byte b (vocabulary 259).
constexpr int kTokPad = 0, kTokBos = 1, kTokEos = 2, kTokByte0 = 3, kByteVocab = 259;

// [bos] bytes [eos], truncated (keeping eos) or padded with pad to exactly max_len.
std::vector<int> tokenize_bytes(const std::string& text, int max_len);

struct TextEncoderConfig {
  int vocab = kByteVocab;
  int dim = 64;
  int heads = 2;
  int layers = 2;
  int mlp = 256;
  int max_len = 48;
  int context_dim = 64;  // per-token output width (the transformer's txt_in input)
  int vec_dim = 64;      // pooled output width (the transformer's vector_in input)
};

struct TeLinear {
  std::string name;
  int in = 0, out = 0;
  std::vector<float> W, b, dW, db;
};

struct TeLayer {
  std::vector<float> norm1, dnorm1, norm2, dnorm2;  // RMSNorm scales [dim]
  TeLinear qkv, out, mlp0, mlp2;
};

// Tensor names: token_embedding.weight, position_embedding.weight, layers.N.{norm1,norm2}.scale,
// layers.N.attn.{qkv,out}.{weight,bias}, layers.N.mlp.{0,2}.{weight,bias}, final_norm.scale,
// context_proj.{weight,bias}, pooled_proj.{weight,bias}. Heads come from metadata "graft.heads".
struct TextEncoder {
  TextEncoderConfig cfg;
  std::vector<float> tok_emb, dtok_emb;  // [vocab, dim]
  std::vector<float> pos_emb, dpos_emb;  // [max_len, dim]
  std::vector<TeLayer> layers;
  std::vector<float> final_norm, dfinal_norm;
  TeLinear context_proj, pooled_proj;

  static TextEncoder load(const std::string& path);
  static TextEncoder random(const TextEncoderConfig& cfg, uint64_t seed);
  void save(const std::string& path, DType dtype, const std::map<std::string, std::string>& metadata);
  std::vector<ParamRef> params();
  void enable_grads();  // sizes (zeroed) gradients for every tensor
  void zero_grads();
};

struct TextEncoderActivations;

struct TextEncoderRunner {
  TextEncoder* te;
  TextEncoderActivations* acts;
  explicit TextEncoderRunner(TextEncoder* te);
  ~TextEncoderRunner();
  TextEncoderRunner(const TextEncoderRunner&) = delete;
  TextEncoderRunner& operator=(const TextEncoderRunner&) = delete;

  // ids [B, L] (L <= max_len) -> context [B, L, context_dim], pooled [B, vec_dim] (mean over positions).
  void forward(const std::vector<int>& ids, int B, int L, std::vector<float>& context, std::vector<float>& pooled);
  // Accumulates every weight's gradient (after enable_grads) for d context, d pooled.
  void backward(const std::vector<float>& dcontext, const std::vector<float>& dpooled);
};

}  // namespace graft
