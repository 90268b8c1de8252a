// The CLIP text model (FLUX.1's text_encoder, CLIP ViT-L/14's text tower), as transformers'
// CLIPTextModel defines it: token + learned position embeddings, pre-norm blocks of causal
// self-attention and an MLP with quick GELU, LayerNorms with affine (eps 1e-5), a final LayerNorm.
// FLUX takes the pooled output: the final hidden state at the end-of-text token. Written once on
// ops/ops.h, forward only. Tensor names are transformers' ("text_model.embeddings.token_embedding.weight",
// "text_model.encoder.layers.N.self_attn.q_proj.weight", ...), under any prefix (ComfyUI's
// clip_l.safetensors has none; combined files put one in front), in a file or a folder of shards.
//
// Sizes come from the tensor shapes; heads, activation and the end-of-text rule from a config.json
// beside the weights when there is one, else CLIP-L's (heads of 64, quick GELU, the largest id).
#pragma once
#include <string>
#include <vector>

#include "models/module.h"

namespace graft {

struct ClipConfig {
  int vocab = 0, width = 0, heads = 0, layers = 0, mlp = 0, positions = 0;
  // The pooled position: the first token with this id, or (-1) the first position of the largest id
  // (transformers' rule for configs whose eos_token_id is the legacy 2, as CLIP-L's: its
  // <|endoftext|> is the vocabulary's last id).
  int eos_id = -1;
};

// CLIP ViT-L/14's text model (FLUX.1's): vocab 49408, width 768, 12 heads, 12 layers, MLP 3072,
// 77 positions.
ClipConfig clip_l_config();

// The position pooled for one sequence of ids under `eos_id` (ClipConfig::eos_id).
int clip_pooled_position(const int* ids, int L, int eos_id);

struct ClipTextModel {
  struct Layer {
    Tensor ln1_w, ln1_b, ln2_w, ln2_b;  // [width]
    Linear q, k, v, o, fc1, fc2;
  };
  ClipConfig cfg;
  Device device;
  std::string path;  // for messages
  Tensor tok_emb, pos_emb;  // [vocab, width], [positions, width]
  std::vector<Layer> layers;
  Tensor final_w, final_b;

  // quantize: its linear weights kept in that format (model.quantize_te), quantized as they load.
  static ClipTextModel load(const std::string& path, Device device, WeightFormat quantize = WeightFormat::dense);
  ClipTextModel(const ClipConfig& cfg, WeightLoader& w);
  ClipTextModel() = default;
  std::vector<NamedParam> params();  // transformers' names, without a prefix

  // ids [B, L] (L <= positions) -> the last hidden state [B, L, width] (after the final norm) and
  // the pooled output [B, width], in the compute dtype of the model's device.
  struct Output { Tensor hidden, pooled; };
  Output forward(const std::vector<int>& ids, int B, int L) const;
};

}  // namespace graft
