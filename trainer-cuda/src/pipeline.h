// A text-to-image pipeline of three parts in one model folder: text encoder, FLUX-layout
// transformer, autoencoder. Used to sample the demo model (and, per family, real models later).
//
// Model folder: transformer.safetensors, text_encoder.safetensors, ae.safetensors and
// model.json {"text_max_len", "image_size", "sample": {"steps", "cfg_scale", "shift"}}.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "flux.h"
#include "flux_backend.h"
#include "lora.h"
#include "sampler.h"
#include "text_encoder.h"
#include "vae.h"

namespace graft {

// The text encoder's outputs fit the transformer's txt_in / vector_in and the autoencoder's latent
// channels its img_in; throws Error naming `where` (a model folder or job file) otherwise.
void check_model_parts(const FluxConfig& transformer, const TextEncoderConfig& te, const VaeConfig& ae,
                       const std::string& where);

struct Pipeline {
  std::string dir;
  FluxModel transformer;
  TextEncoder text_encoder;
  VaeModel ae;
  int image_size = 32;
  SampleParams defaults;

  static Pipeline load(const std::string& dir);
  TextCond encode_text(const std::string& prompt);
  // An image [3, size, size] in [-1, 1] for a prompt. `lora` may be null (base model).
  std::vector<float> generate(const std::string& prompt, int size, const SampleParams& p, LoraSet* lora);
};

}  // namespace graft
