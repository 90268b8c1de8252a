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
  VaeModel* ae;                 // the job's autoencoder (not owned)
  std::vector<TextCond> conds;  // one per prompt, encoded once
  TextCond uncond;              // the empty prompt, for classifier-free guidance

  // Encodes every prompt now (the job's tokens, else tokenize_bytes of the text) and the empty prompt
  // (text.empty_tokens, else tokenize_bytes("")), so the text encoder is not needed afterwards.
  TrainSampler(const Job& job, TextEncoder& te, VaeModel* ae);
  // Returns the files written.
  std::vector<std::string> run(FluxBackend& model, LoraSet& lora, const FluxConfig& cfg, int step);
};

}  // namespace graft
