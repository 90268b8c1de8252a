// A text-to-image pipeline of three parts in one model folder: text encoder, FLUX-layout
// transformer, autoencoder. Used to sample the demo model (and, per family, real models later).
//
// Model folder: transformer.safetensors, text_encoder.safetensors, ae.safetensors and
// model.json {"text_max_len", "image_size", "sample": {"steps", "cfg_scale", "shift"}}.
#pragma once
#include <string>
#include <vector>

#include <memory>

#include "demo/text_encoder.h"
#include "models/flux.h"
#include "models/flux_vae.h"
#include "train/family.h"
#include "train/lora.h"
#include "train/prompt_encoder.h"
#include "train/sampler.h"

namespace graft {

// The text encoders' outputs fit the transformer's txt_in / vector_in and the autoencoder's latent
// channels its img_in; throws Error naming `where` (a model folder or job file) otherwise.
void check_model_parts(const ModelWidths& transformer, const PromptEncoder& te, const VaeConfig& ae,
                       const std::string& where);

// One prompt's ids through the text encoders, as the sampler takes it (host values).
TextCond encode_prompt(const PromptEncoder& te, const std::vector<int>& ids);

// z (the transformer's latent space, [C, h, w] on the host) through the autoencoder's decoder: an
// image [3, h * f, w * f] in [-1, 1].
std::vector<float> decode_latent(const FluxVae& ae, std::vector<float> z, int h, int w);

struct Pipeline {
  std::string dir;
  FluxTransformer transformer;
  std::unique_ptr<PromptEncoder> text_encoder;  // the demo model's one TextEncoder
  FluxVae ae;
  int image_size = 32;
  SampleParams defaults;

  static Pipeline load(const std::string& dir, Device device = Device::cpu());
  TextCond encode_text(const std::string& prompt) const;
  // An image [3, size, size] in [-1, 1] for a prompt. `lora` may be null (base model); it is
  // attached to the transformer for this call.
  std::vector<float> generate(const std::string& prompt, int size, const SampleParams& p, LoraSet* lora);
};

}  // namespace graft
