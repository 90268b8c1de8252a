// The FLUX autoencoder (BFL flux/modules/autoencoder.py), written once on ops/ops.h: encoder and
// decoder forwards on either device; gradients (the demo model's autoencoder is trained by graft
// itself) come from the tape.
//
// Structure, as BFL's:
//   Encoder: conv_in; per level i: num_res_blocks ResnetBlocks (ch*ch_mult[i] channels out), then a
//     Downsample (F.pad (0,1,0,1), 3x3 stride-2 conv) except after the last level; mid block_1,
//     attn_1, block_2; GroupNorm, swish, conv_out to 2*z_channels (mean, then logvar).
//   Decoder: conv_in; mid block_1, attn_1, block_2; levels run from num_resolutions-1 down to 0
//     (BFL's decoder.up list is indexed so up.{num_resolutions-1} runs first), each with
//     num_res_blocks+1 ResnetBlocks and, except level 0, an Upsample (nearest 2x, 3x3 conv);
//     GroupNorm, swish, conv_out.
//   ResnetBlock: x + conv2(swish(norm2(conv1(swish(norm1(x)))))), the skip through a 1x1
//     nin_shortcut when the channel count changes. AttnBlock: x + proj_out(attention(q, k, v))
//     with 1x1 q/k/v convs of the GroupNorm'd input, one head over the H*W positions.
//
// Canonical names are BFL's (ae.safetensors); diffusers' AutoencoderKL names (a vae/ folder) load
// too, detected from the names. Hyperparameters come from the tensor shapes (ch, ch_mult,
// num_res_blocks, z_channels, in/out channels); what shapes cannot tell comes from metadata, or a
// diffusers config.json beside the weights, with FLUX's values as defaults: "graft.groups"
// (norm_num_groups, 32), "graft.scale_factor" (scaling_factor, 0.3611), "graft.shift_factor"
// (shift_factor, 0.1159).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/module.h"
#include "models/weights.h"

namespace graft {

struct VaeConfig {
  int in_channels = 3;     // image channels into the encoder
  int out_channels = 3;    // image channels out of the decoder
  int ch = 128;
  std::vector<int> ch_mult = {1, 2, 4, 4};
  int num_res_blocks = 2;
  int z_channels = 16;
  int groups = 32;         // GroupNorm groups; must divide every channel count
  float scale_factor = 0.3611f;
  float shift_factor = 0.1159f;

  int levels() const { return (int)ch_mult.size(); }
  int downscale() const { return 1 << (levels() - 1); }  // image size / latent size
};

// FLUX.1's ae.safetensors: ch 128, ch_mult [1, 2, 4, 4], 2 res blocks, 16 latent channels.
VaeConfig flux_vae_config();

// The diffusers AutoencoderKL names of a FLUX autoencoder with `levels` levels.
Layout flux_vae_diffusers_layout(int levels);

struct FluxVae {
  struct Conv { Tensor W, b; int in = 0, out = 0, k = 0; };
  struct Norm { Tensor gamma, beta; int c = 0; };
  struct Resnet {
    int in = 0, out = 0;
    Norm norm1, norm2;
    Conv conv1, conv2, nin_shortcut;  // nin_shortcut only when in != out
    bool has_nin() const { return in != out; }
  };
  struct Attn { int c = 0; Norm norm; Conv q, k, v, proj_out; };
  struct Encoder {
    Conv conv_in;
    std::vector<std::vector<Resnet>> down;  // [level][block]
    std::vector<Conv> downsample;           // one per level except the last
    Resnet mid_block_1, mid_block_2;
    Attn mid_attn_1;
    Norm norm_out;
    Conv conv_out;
  };
  struct Decoder {
    Conv conv_in;
    Resnet mid_block_1, mid_block_2;
    Attn mid_attn_1;
    std::vector<std::vector<Resnet>> up;  // [level][block], BFL's index: up[levels-1] runs first
    std::vector<Conv> upsample;           // upsample[i] for levels i >= 1 (upsample[0] unused)
    Norm norm_out;
    Conv conv_out;
  };

  VaeConfig cfg;
  Device device;
  std::string path;  // the file it came from, for messages
  Encoder enc;
  Decoder dec;
  // Every tensor by BFL name, encoder then decoder, in the order they are made.
  std::vector<NamedParam> params();
  std::vector<NamedParam> decoder_params();

  // Throws Error naming the file and the missing or misshapen tensor or bad metadata value.
  static FluxVae load(const std::string& path, Device device = Device::cpu());
  // Random weights as a fresh model starts: convs ~ N(0, 1/fan_in), biases ~ N(0, 0.02^2), GroupNorm
  // scales 1 + N(0, 0.1^2) and shifts N(0, 0.1^2) (not exactly 1 and 0, so tests see their gradients).
  // Throws Error when cfg is inconsistent (groups not dividing a channel count, empty ch_mult, ...).
  static FluxVae random(const VaeConfig& cfg, uint64_t seed, Device device = Device::cpu());
  FluxVae(const VaeConfig& cfg, WeightLoader& w);
  FluxVae() = default;
  // Writes every tensor by its BFL name plus the graft.* metadata (atomic).
  void save(const std::string& path, DType dtype);
  // Writes a diffusers vae/ folder: diffusion_pytorch_model.safetensors in AutoencoderKL's names and
  // the config.json diffusers writes (the fields graft and diffusers read).
  void save_diffusers(const std::string& dir, DType dtype);

  // img [B, in_channels, H, W] in [-1, 1] -> the unscaled moments mean, logvar [B, z, h, w]; the
  // DiT latent is vae_latent_to_dit(mean).
  struct Moments { Tensor mean, logvar; };
  Moments encode(const Tensor& img) const;
  // z [B, z, h, w] (unscaled) -> img [B, out_channels, h * downscale(), w * downscale()].
  Tensor decode(const Tensor& z) const;
};

// A random checkpoint with the real names, for tests (as tiny.cpp's write_random_flux).
void write_random_vae(const std::string& path, const VaeConfig& cfg, uint64_t seed);

// Between the encoder's mean and the DiT's latent space (BFL's AutoEncoder.encode / decode), in place
// over n values: to_dit: z = scale * (mean - shift); from_dit: z / scale + shift.
void vae_latent_to_dit(const VaeConfig& cfg, float* z, long n);
void vae_latent_from_dit(const VaeConfig& cfg, float* z, long n);

}  // namespace graft
