// The FLUX autoencoder (BFL flux/modules/autoencoder.py), built from the ops in ops.h and
// ops_image.h: encoder and decoder forwards, and backwards that give the gradients of every
// weight (the demo model's autoencoder is trained by graft itself) and of the input.
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
// Hyperparameters come from the tensor shapes of a checkpoint (ch, ch_mult, num_res_blocks,
// z_channels, in/out channels); what shapes cannot tell comes from metadata, with FLUX's values as
// defaults: "graft.groups" (GroupNorm groups, 32), "graft.scale_factor" (0.3611),
// "graft.shift_factor" (0.1159).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "safetensors.h"

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

// A parameter tensor's name (BFL), shape and place in the model's flat buffers.
struct VaeTensor {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0, size = 0;
};

// Layers hold offsets into VaeModel::params (and the same offsets into grads).
struct VaeConv { size_t w = 0, b = 0; int in = 0, out = 0, k = 0; };
struct VaeNorm { size_t gamma = 0, beta = 0; int c = 0; };
struct VaeResnet {
  int in = 0, out = 0;
  VaeNorm norm1, norm2;
  VaeConv conv1, conv2, nin_shortcut;  // nin_shortcut only when in != out
  bool has_nin() const { return in != out; }
};
struct VaeAttn { int c = 0; VaeNorm norm; VaeConv q, k, v, proj_out; };

struct VaeEncoder {
  VaeConv conv_in;
  std::vector<std::vector<VaeResnet>> down;  // [level][block]
  std::vector<VaeConv> downsample;           // one per level except the last
  VaeResnet mid_block_1, mid_block_2;
  VaeAttn mid_attn_1;
  VaeNorm norm_out;
  VaeConv conv_out;
};

struct VaeDecoder {
  VaeConv conv_in;
  VaeResnet mid_block_1, mid_block_2;
  VaeAttn mid_attn_1;
  std::vector<std::vector<VaeResnet>> up;  // [level][block], BFL's index: up[levels-1] runs first
  std::vector<VaeConv> upsample;           // upsample[i] for levels i >= 1 (upsample[0] unused)
  VaeNorm norm_out;
  VaeConv conv_out;
};

struct VaeModel {
  VaeConfig cfg;
  std::string path;                // file it was loaded from, for messages
  std::vector<VaeTensor> tensors;  // every parameter, by its BFL name
  std::vector<float> params;       // all weights, fp32, one allocation
  std::vector<float> grads;        // same layout as params
  VaeEncoder enc;
  VaeDecoder dec;

  // The layout of `cfg` with zero weights. Throws Error when cfg is inconsistent (groups not
  // dividing a channel count, empty ch_mult, ...).
  static VaeModel create(const VaeConfig& cfg);
  // Loads by the real FLUX ae.safetensors names; throws Error naming the file and the missing or
  // misshapen tensor or bad metadata value.
  static VaeModel load(const std::string& path);
  // Writes every tensor by its BFL name plus the graft.* metadata (atomic).
  void save(const std::string& path, DType dtype) const;

  const VaeTensor& tensor(const std::string& name) const;  // throws when absent
  float* param(const std::string& name) { return params.data() + tensor(name).offset; }
  float* grad(const std::string& name) { return grads.data() + tensor(name).offset; }
  void zero_grad();
};

// Random weights as a fresh model starts: convs ~ N(0, 1/fan_in), biases ~ N(0, 0.02^2), GroupNorm
// scales 1 + N(0, 0.1^2) and shifts N(0, 0.1^2) (not exactly 1 and 0, so tests see their gradients).
void vae_init_random(VaeModel& m, uint64_t seed);
// A random checkpoint with the real names, for tests (as tiny.cpp's write_random_flux).
void write_random_vae(const std::string& path, const VaeConfig& cfg, uint64_t seed);

// Between the encoder's mean and the DiT's latent space (BFL's AutoEncoder.encode / decode), in place
// over n values: to_dit: z = scale * (mean - shift); from_dit: z / scale + shift.
void vae_latent_to_dit(const VaeConfig& cfg, float* z, long n);
void vae_latent_from_dit(const VaeConfig& cfg, float* z, long n);

// The reparameterised sample of the diagonal Gaussian: z = mean + exp(logvar / 2) * noise
// (BFL's DiagonalGaussian with sample=True, the noise given). Backward accumulates as ops.h.
void gaussian_sample_forward(float* z, const float* mean, const float* logvar, const float* noise, long n);
void gaussian_sample_backward(float* dmean, float* dlogvar, const float* dz, const float* logvar, const float* noise,
                              long n);
// KL divergence to N(0, 1), averaged over the n latent values:
//   kl = (1/n) sum 0.5 * (mean^2 + exp(logvar) - 1 - logvar).
float gaussian_kl_forward(const float* mean, const float* logvar, long n);
void gaussian_kl_backward(float* dmean, float* dlogvar, const float* mean, const float* logvar, long n, float dkl);

// Activations kept by each forward for its backward; sized on use.
struct VaeEncoderActs;
struct VaeDecoderActs;

// Forward/backward engine over a model. The encoder and decoder keep separate activations, so an
// encode, a decode of its sample and both backwards can run in one training step.
struct VaeRunner {
  VaeModel* model = nullptr;
  VaeEncoderActs* enc = nullptr;
  VaeDecoderActs* dec = nullptr;

  explicit VaeRunner(VaeModel* m);
  ~VaeRunner();
  VaeRunner(const VaeRunner&) = delete;
  VaeRunner& operator=(const VaeRunner&) = delete;

  // img [B, in_channels, H, W] in [-1, 1] -> mean, logvar [B, z_channels, h, w] (h = H after each
  // downsample, H / downscale() when divisible). The unscaled moments; the DiT latent is
  // vae_latent_to_dit(mean). Writes h and w when given.
  void encode(const float* img, int B, int H, int W, std::vector<float>& mean, std::vector<float>& logvar,
              int* h = nullptr, int* w = nullptr);
  // Accumulates every encoder weight's gradient into model->grads and, when dimg is not nullptr,
  // dL/dimg into dimg. dmean or dlogvar may be nullptr (a zero gradient).
  void encode_backward(const float* dmean, const float* dlogvar, float* dimg);

  // z [B, z_channels, h, w] (unscaled: vae_latent_from_dit of a DiT latent) -> img [B, out_channels,
  // h * downscale(), w * downscale()].
  void decode(const float* z, int B, int h, int w, std::vector<float>& img);
  // Accumulates every decoder weight's gradient and, when dz is not nullptr, dL/dz into dz.
  void decode_backward(const float* dimg, float* dz);
};

}  // namespace graft
