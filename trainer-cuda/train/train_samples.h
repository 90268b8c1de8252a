// Sampling during training: the job's prompts through the text encoder, the transformer with the
// current adapter, and the autoencoder, written as samples/<9-digit step>_<prompt index>.png.
#pragma once
#include <string>
#include <vector>

#include "models/flux.h"
#include "models/flux_vae.h"
#include "train/job.h"
#include "train/lora.h"
#include "train/prompt_encoder.h"
#include "train/sampler.h"

namespace graft {

struct TrainSampler {
  const Job* job;
  const FluxVae* ae;            // the job's autoencoder (not owned)
  std::vector<TextCond> conds;  // one per prompt, encoded once
  TextCond uncond;              // the empty prompt, for classifier-free guidance

  // Encodes every prompt now (the job's tokens; for the demo model's byte-level encoder, else
  // tokenize_bytes of the text) and the empty prompt (text.empty_tokens, else tokenize_bytes("")),
  // so the text encoder is not needed afterwards.
  TrainSampler(const Job& job, const PromptEncoder& te, const FluxVae* ae);
  // Samples with the adapters attached to `model`, each prompt at its lora_scale. Returns the files written.
  std::vector<std::string> run(const Denoiser& model, LoraSet& lora, int step);
};

}  // namespace graft
