// The Z-Image transformer (Tongyi-MAI's S3-DiT: diffusers' ZImageTransformer2DModel, ComfyUI's
// NextDiT with z_image_modulation), written once on ops/ops.h like FLUX. One stream of
// [image tokens; caption tokens] through `layers`, after a noise refiner (image tokens, modulated by
// the timestep) and a context refiner (caption tokens, unmodulated). Each block: RMSNorm, attention
// with per-head RMS QK-norm and 3-axis RoPE, RMSNorm after it; a SwiGLU FFN the same way; the
// timestep modulates with scale-only adaLN and tanh gates.
//
// Canonical tensor names are the original checkpoint's (ComfyUI's single file, with or without
// "model.diffusion_model."): x_embedder, final_layer, layers.N.attention.qkv / .out / .q_norm /
// .k_norm. The diffusers layout (all_x_embedder.2-1, attention.to_q ..., a folder of shards) is read
// through a name map, as FLUX's is. Hyperparameters come from the tensor shapes, and from the
// folder's config.json (axes_dims, rope_theta, t_scale, norm_eps) when there is one.
//
// Sequences: the image tokens (patch 2, features ordered (ph, pw, c)) and each caption are padded to
// a multiple of 32 with the learnt pad tokens, which attention sees; captions of different lengths in
// one batch are padded further at the end, and those positions are kept out of attention.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "models/denoiser.h"
#include "models/flux.h"
#include "models/module.h"
#include "models/weights.h"

namespace graft {

struct ZImageConfig {
  int in_channels = 16;   // latent channels (patch features are 4x this)
  int patch = 2;
  int dim = 0, heads = 0, head_dim = 0;
  int n_layers = 0, n_refiner = 0;
  int cap_dim = 0;        // the text encoder's width (Qwen3-4B: 2560)
  int ffn_hidden = 0;     // int(dim / 3 * 8)
  int adaln_dim = 0;      // min(dim, 256): the timestep embedding every modulation reads
  int t_mid = 1024;       // the timestep MLP's hidden width
  int axes_dim[3] = {32, 48, 48};
  float theta = 256.0f;
  float t_scale = 1000.0f;
  float norm_eps = 1e-5f;
  int patch_features() const { return patch * patch * in_channels; }
};

// Z-Image's real shape (6B: dim 3840, 30 heads of 128, 30 layers, 2 + 2 refiner blocks, Qwen3-4B's
// 2560-wide hidden states) with `n_layers` main layers.
ZImageConfig zimage_config(int n_layers = 30);

// How the checkpoint stores it, from its names; throws naming what it looked for.
Layout zimage_layout(const Checkpoint& ckpt);
Layout zimage_diffusers_layout();
// Whether a checkpoint (file or folder) holds a Z-Image transformer, from its names.
bool is_zimage_checkpoint(const Checkpoint& ckpt);

struct ZImageTransformer : Denoiser {
  struct Block {
    bool modulated = true;
    Linear adaln, qkv, out, w1, w2, w3;
    Tensor q_norm, k_norm, attn_norm1, attn_norm2, ffn_norm1, ffn_norm2;
  };

  ZImageConfig cfg;
  std::string path;
  Linear x_embedder, t_mlp0, t_mlp2, cap_linear, final_mod, final_linear;
  Tensor cap_norm, x_pad, cap_pad;
  std::vector<Block> noise_refiner, context_refiner, layers;
  Tensor neg_one;  // [patch_features] of -1: forward()'s sign flip, as an affine

  // offload: the share of `layers` (the first ones) offloaded as they load (Denoiser::offload_blocks).
  static ZImageTransformer load(const std::string& path, Device device, WeightFormat quantize = WeightFormat::dense,
                                double offload = 0);
  static ZImageTransformer shapes(const std::string& path);
  static ZImageTransformer random(const ZImageConfig& cfg, Device device, uint64_t seed,
                                  WeightFormat quantize = WeightFormat::dense);
  ZImageTransformer(const ZImageConfig& cfg, WeightLoader& w);
  ZImageTransformer() = default;

  std::vector<Linear*> linears() override;
  // The linears a quantized model keeps quantized: all but x_embedder and final_layer.linear.
  std::vector<Linear*> quantized_linears();
  int latent_channels() const override { return cfg.in_channels; }
  bool ragged_text() const override { return true; }
  // Layer offloading's blocks: the 30 `layers` (the refiners, 4 blocks on fewer tokens, stay).
  int block_count() const override { return (int)layers.size(); }
  std::vector<const Linear*> block_linears(int k) const override;
  std::vector<NamedParam> params();  // every tensor by its canonical name

  // diffusers' ZImageTransformer2DModel forward on graft's batch layout: img [B, L_img, P] patches in
  // FLUX's (c, ph, pw) order with img_ids (0, row, col), timesteps the model's own t (1: the clean
  // image), captions txt [B, L_txt, cap_dim] with in.txt_lens -> [B, L_img, P].
  Tensor forward_model(const FluxInputs& in) const;
  // The trainer's convention, FLUX's: timesteps the noise level sigma, the velocity noise - x0 out.
  // Z-Image predicts x0 - noise at t = 1 - sigma (its pipeline negates the output).
  Tensor forward(const FluxInputs& in) const override;

  // Writes every tensor by its canonical name (atomic), the RoPE axes, theta and t_scale in the
  // metadata; `layout` "diffusers" writes diffusers' names instead (with config.json beside it
  // written by the caller).
  void save(const std::string& path, DType dtype, const std::string& layout = "comfyui");
};

// What one training step keeps for backward for B sequences of Li image and Lt caption tokens with
// LoRA of `rank` on the layers (as flux_activation_bytes counts FLUX's): `act_bytes` per activation,
// fp32 row statistics, attention's saved state (`flash`: a log-sum-exp per row; else L x L
// probabilities); with checkpointing, the layers' inputs only.
FluxActivations zimage_activation_bytes(const ZImageConfig& c, int64_t B, int64_t Li, int64_t Lt, int rank,
                                        bool checkpointing, int act_bytes, bool flash);

// The block of `layers` a canonical tensor name belongs to; -1 outside them.
int zimage_block_of(const std::string& name);

// Patch features between FLUX's (c, ph, pw) order and Z-Image's (ph, pw, c), for `tokens` tokens of C
// channels (patch 2).
std::vector<float> zimage_from_flux_patches(const std::vector<float>& x, size_t tokens, int C);
std::vector<float> zimage_to_flux_patches(const std::vector<float>& x, size_t tokens, int C);

// The layers the reference toolkit trains for Z-Image (every linear in `layers`: attention q, k, v
// (slices of the fused qkv), out, the FFN's w1, w2, w3 and adaLN_modulation.0), named as diffusers
// names them: the LoRA file's "diffusion_model.<module>" keys. `refiners`: the refiner blocks' too
// (what an adapter from elsewhere may also hold).
std::vector<LoraTarget> zimage_lora_targets(const ZImageConfig& cfg, bool refiners = false);

// diffusers' config.json for a transformer folder of this shape.
std::string zimage_diffusers_config(const ZImageConfig& cfg);

}  // namespace graft
