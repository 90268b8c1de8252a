// The FLUX.1 transformer (BFL's flux/model.py), written once on ops/ops.h: the same code runs on
// the CPU and on CUDA, and its backward is the tape's. Canonical tensor names are BFL's; it loads
// from the BFL layout, from ComfyUI's (BFL names under "model.diffusion_model."), and from
// diffusers' (x_embedder, transformer_blocks.N.attn.to_q ..., a folder of shards), detected from
// the names (flux_layout).
//
// Hyperparameters come from the checkpoint's tensor shapes (as stable-diffusion.cpp does); only the
// RoPE axis split, which shapes cannot tell, comes from the metadata key "graft.axes_dim" or
// FLUX's rule (head_dim/8, then the rest split in two).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/denoiser.h"
#include "models/module.h"
#include "models/weights.h"

namespace graft {

struct FluxConfig {
  int in_channels = 0;    // img_in input: latent channels x 2 x 2
  int out_channels = 0;   // final_layer output per token
  int hidden = 0;
  int heads = 0;
  int head_dim = 0;
  int mlp_hidden = 0;
  int context_dim = 0;    // txt_in input (T5 width in FLUX.1)
  int vec_dim = 0;        // vector_in input (CLIP pooled width in FLUX.1)
  int n_double = 0;
  int n_single = 0;
  bool guidance_embed = false;
  int axes_dim[3] = {0, 0, 0};
  float theta = 10000.0f;
};

// FLUX.1-dev's shape (hidden 3072, 24 heads of 128, MLP 12288, T5-XXL context 4096, CLIP pooled 768,
// guidance embedding) with `n_double` + `n_single` blocks (19 + 38 in the real model).
FluxConfig flux1_dev_config(int n_double = 19, int n_single = 38);

// What one training step keeps for backward (the tape's saved tensors) for B sequences of Li image
// and Lt text tokens, with LoRA of `rank` on every block layer: `act_bytes` per activation (the
// device's compute dtype), fp32 row statistics, and attention's saved state (the L x L probabilities
// on the CPU, `flash`: a log-sum-exp per row). With checkpointing, the block inputs only. `transient`
// gets the most a backward adds on top at once: one block recomputed (checkpointing) and the
// gradients of its activations.
struct FluxActivations { double kept = 0, transient = 0; };
FluxActivations flux_activation_bytes(const FluxConfig& c, int64_t B, int64_t Li, int64_t Lt, int rank,
                                      bool checkpointing, int act_bytes, bool flash);

// Which of the known layouts a checkpoint is in, from its tensor names; throws naming the path and
// the names it looked for when none fits.
Layout flux_layout(const Checkpoint& ckpt);
// The diffusers names of a FLUX transformer (the map from BFL names).
Layout flux_diffusers_layout();

// Inputs as FLUX.1's forward takes them on the host (img already 2x2-patchified), B batch items.
struct FluxInputs {
  int B = 0, L_img = 0, L_txt = 0;
  std::vector<float> img;        // [B, L_img, in_channels]
  std::vector<float> img_ids;    // [B, L_img, 3]
  std::vector<float> txt;        // [B, L_txt, context_dim]
  std::vector<float> txt_ids;    // [B, L_txt, 3]
  std::vector<float> timesteps;  // [B], in [0, 1]
  std::vector<float> y;          // [B, vec_dim]
  std::vector<float> guidance;   // [B] (used when the model has guidance_in)
  // Each item's caption length when captions differ in length (Z-Image's, padded to L_txt rows);
  // empty: every item has L_txt.
  std::vector<int> txt_lens;
};

// Reads FluxInputs from a safetensors file with tensors named img, img_ids, txt, txt_ids,
// timesteps, y, guidance; checks every shape against the model.
FluxInputs flux_inputs_load(const SafeTensorsFile& f, const FluxConfig& cfg);

// Position ids of FLUX: text tokens (0,0,0); image token (0, row, col) on the patch grid.
void flux_img_ids(float* ids, int B, int grid_h, int grid_w);

struct FluxTransformer : Denoiser {
  struct Stream { Linear mod, qkv, proj, mlp0, mlp2; Tensor q_scale, k_scale; };
  struct DoubleBlock { Stream img, txt; };
  struct SingleBlock { Linear mod, linear1, linear2; Tensor q_scale, k_scale; };

  FluxConfig cfg;
  std::string path;  // the checkpoint, for messages ("(random)" without one)
  Linear img_in, txt_in, time_in0, time_in1, vector_in0, vector_in1, guidance_in0, guidance_in1;
  Linear final_mod, final_linear;
  std::vector<DoubleBlock> doubles;
  std::vector<SingleBlock> singles;
  // The model of `path` (a file, or a diffusers folder) on `device`, its layout detected.
  // quantize: every linear weight kept in that format (ops/quant.h), quantized as it loads.
  // offload: the share of the blocks (the first ones) offloaded as they load (offload_blocks).
  static FluxTransformer load(const std::string& path, Device device, WeightFormat quantize = WeightFormat::dense,
                              double offload = 0);
  // The model of `path` with every tensor's name, shape and stored dtype checked and none read
  // (undefined tensors that carry their shape and dtype): the memory plan's pass before loading.
  static FluxTransformer shapes(const std::string& path);
  // Random weights of shape `cfg` made on the device (quantized as `quantize` says): benchmarks at
  // real size.
  static FluxTransformer random(const FluxConfig& cfg, Device device, uint64_t seed,
                                WeightFormat quantize = WeightFormat::dense);
  // Reads every tensor of `cfg` through `w`.
  FluxTransformer(const FluxConfig& cfg, WeightLoader& w);
  FluxTransformer() = default;

  // Layer offloading's blocks (Denoiser::offload_blocks): the double blocks, then the single ones.
  std::vector<const Linear*> block_linears(int k) const override;
  int block_count() const override { return (int)(doubles.size() + singles.size()); }

  std::vector<Linear*> linears() override;
  std::vector<NamedParam> params();  // every tensor by its BFL name, in BFL order
  int latent_channels() const override { return cfg.in_channels / 4; }

  // img [B, L_img, in_channels], txt [B, L_txt, context_dim], y [B, vec_dim] in the compute dtype
  // of the model's device; timesteps and guidance fp32 [B]; pe = rope_table of the joint ids
  // [txt; img] -> [B, L_img, out_channels].
  Tensor forward(const Tensor& img, const Tensor& txt, const Tensor& y, const Tensor& timesteps,
                 const Tensor& guidance, const Tensor& pe) const;
  // The same from host inputs (moved to the model's device).
  Tensor forward(const FluxInputs& in) const override;
  // The RoPE table of a batch's ids (txt first, then img, per item).
  Tensor rope_for(const FluxInputs& in) const;

  // Writes every tensor by its BFL name (atomic), with the RoPE axes in the metadata.
  void save(const std::string& path, DType dtype, const std::map<std::string, std::string>& metadata);
};

// How many blocks (the first ones, in forward order) layer offloading moves for a share `fraction`.
int offload_count(const FluxConfig& cfg, double fraction);
// The block, in forward order (double blocks, then single ones), a canonical tensor name belongs to;
// -1 outside the blocks.
int flux_block_of(const FluxConfig& cfg, const std::string& name);

// The layers the reference toolkit trains for FLUX.1, named as diffusers names them (the LoRA file's
// layout): attention q/k/v/out and MLPs of both streams, single-block linear1 (split into
// to_q/to_k/to_v/proj_mlp) and linear2 (proj_out); the modulation layers only when asked.
std::vector<LoraTarget> flux_lora_targets(const FluxConfig& cfg, bool include_modulation);

}  // namespace graft
