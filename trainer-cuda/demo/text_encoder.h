// The demo model's text encoder: byte-level tokens into a small pre-norm transformer encoder.
// It plays both roles FLUX.1 gives its two text encoders: per-token context (T5's role, into
// txt_in) and a pooled vector (CLIP's pooled output, into vector_in). Bytes, so any trigger word
// gets its own tokens without a vocabulary to extend. Written once on ops/ops.h, like every model.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "models/module.h"

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

// Tensor names: token_embedding.weight, position_embedding.weight, layers.N.{norm1,norm2}.scale,
// layers.N.attn.{qkv,out}.{weight,bias}, layers.N.mlp.{0,2}.{weight,bias}, final_norm.scale,
// context_proj.{weight,bias}, pooled_proj.{weight,bias}. Heads come from metadata "graft.heads".
struct TextEncoder {
  struct Layer {
    Tensor norm1, norm2;  // RMSNorm scales [dim]
    Linear qkv, out, mlp0, mlp2;
  };
  TextEncoderConfig cfg;
  Device device;
  Tensor tok_emb, pos_emb;  // [vocab, dim], [max_len, dim]
  std::vector<Layer> layers;
  Tensor final_norm;
  Linear context_proj, pooled_proj;

  // quantize: its linear weights kept in that format (model.quantize_te), quantized as they load.
  static TextEncoder load(const std::string& path, Device device = Device::cpu(), WeightFormat quantize = WeightFormat::dense);
  static TextEncoder random(const TextEncoderConfig& cfg, uint64_t seed, Device device = Device::cpu());
  void save(const std::string& path, DType dtype, const std::map<std::string, std::string>& metadata);
  std::vector<NamedParam> params();

  // ids [B, L] (L <= max_len) -> context [B, L, context_dim] and pooled [B, vec_dim] (the mean over
  // positions, projected), in the compute dtype of the encoder's device.
  struct Output { Tensor context, pooled; };
  Output forward(const std::vector<int>& ids, int B, int L) const;
};

}  // namespace graft
