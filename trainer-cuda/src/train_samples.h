// Sampling during training: the job's prompts through the text encoder, the transformer with the
// current adapter, and the autoencoder, written as samples/<9-digit step>_<prompt index>.png.
#pragma once
#include <string>
#include <vector>

#include "flux_backend.h"
#include "job.h"
#include "sampler.h"
#include "text_encoder.h"
#include "vae.h"

namespace graft {

struct TrainSampler {
  const Job* job;
  TextEncoder te;
  VaeModel ae;
  std::vector<TextCond> conds;  // one per prompt, encoded once
  TextCond uncond;              // the empty prompt, for classifier-free guidance

  explicit TrainSampler(const Job& job);  // loads the text encoder and autoencoder; throws Error
  // Returns the files written.
  std::vector<std::string> run(FluxBackend& model, LoraSet& lora, const FluxConfig& cfg, int step);
};

}  // namespace graft
