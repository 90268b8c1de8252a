// The T5 v1.1 encoder (FLUX.1's text_encoder_2, T5-XXL), as transformers' T5EncoderModel defines it:
// token embedding, pre-norm blocks of self-attention and a gated-GELU feed-forward, RMS-style
// "T5LayerNorm" (no mean, no bias, eps 1e-6), one relative-position bias (bidirectional buckets)
// computed for the first block and shared by all, no 1/sqrt(d) on the scores, a final norm.
// Written once on ops/ops.h, forward only. Tensor names are transformers' ("shared.weight",
// "encoder.block.N.layer.0.SelfAttention.q.weight", ...), under any prefix (ComfyUI's
// t5xxl_fp16.safetensors has none; combined files put one in front), in a file or a folder of
// shards (diffusers' text_encoder_2/).
//
// Sizes come from the tensor shapes; the head count from the relative-position table's width; a
// config.json beside the shards is checked against them (activation, eps).
#pragma once
#include <string>
#include <vector>

#include "models/module.h"

namespace graft {

struct T5Config {
  int vocab = 0, d_model = 0, d_kv = 0, heads = 0, d_ff = 0, layers = 0;
  int buckets = 32, max_distance = 128;
};

// T5-XXL v1.1's shape (FLUX.1's): vocab 32128, d_model 4096, 64 heads of 64, FFN 10240, 24 blocks.
T5Config t5_xxl_config();

// The bucket of a key at relative_position = key - query (bidirectional, as the encoder uses): half
// the buckets for keys after the query; within a half, distances below a quarter of the buckets
// each get their own, larger ones share log-spaced buckets up to max_distance.
int t5_relative_bucket(int relative_position, int buckets, int max_distance);

struct T5Encoder {
  struct Block {
    Tensor attn_norm, ff_norm;  // [d_model]
    Linear q, k, v, o;          // no biases
    Linear wi0, wi1, wo;        // gated-GELU: wo(gelu(wi0 x) * wi1 x)
  };
  T5Config cfg;
  Device device;
  std::string path;  // for messages
  Tensor embed;      // [vocab, d_model]
  Tensor rel_bias;   // [buckets, heads]
  std::vector<Block> blocks;
  Tensor final_norm;

  // quantize: its linear weights kept in that format (model.quantize_te), quantized as they load.
  static T5Encoder load(const std::string& path, Device device, WeightFormat quantize = WeightFormat::dense);
  T5Encoder(const T5Config& cfg, WeightLoader& w);
  T5Encoder() = default;
  std::vector<NamedParam> params();  // transformers' names, without a prefix

  // The relative-position bias of L tokens: fp32 [heads, L, L] on the encoder's device.
  Tensor position_bias(int L) const;
  // ids [B, L] -> the last hidden state [B, L, d_model] (after the final norm), in the compute
  // dtype of the encoder's device. No attention mask: FLUX feeds the padded ids as they are.
  Tensor forward(const std::vector<int>& ids, int B, int L) const;
};

}  // namespace graft
