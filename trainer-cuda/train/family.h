// What differs between the model families the trainer runs (FLUX.1, Z-Image), in one place: the
// transformer's widths and LoRA targets known before it loads (from its checkpoint's headers), and
// loading it.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "models/denoiser.h"
#include "models/flux.h"
#include "models/zimage.h"
#include "train/job.h"
#include "train/lora.h"
#include "train/memory_plan.h"

namespace graft {

// The widths the transformer reads, which the text encoders and the autoencoder must give.
struct ModelWidths {
  int context_dim = 0, vec_dim = 0, latent_channels = 0;
};
ModelWidths widths_of(const FluxConfig& c);

// The transformer of a job, from the configuration the memory plan read from its checkpoint's headers.
struct ModelFamily {
  std::string arch;  // flux | zimage
  FluxConfig flux;
  ZImageConfig zimage;
  ModelWidths widths;
  std::vector<LoraTarget> targets;  // the layers the job's adapter trains
  std::string lora_prefix;          // its file's key prefix
  std::string describe;             // one line for the log
};
ModelFamily model_family(const Job& job, const PlanInputs& plan);

// The classifier-free guidance scale the sampler applies (uncond + scale (cond - uncond)) for the job's
// sample.guidance_scale, as the family's pipeline reads it.
float sampler_cfg_scale(const std::string& arch, float guidance_scale);

// The job's transformer on `device` in the job's format, the assistant adapter (model.assistant_lora)
// merged into its weights and returned in `assistant` with scale -1 per adapter: attached for
// samples, it takes the merge out again.
std::unique_ptr<Denoiser> load_denoiser(const Job& job, Device device, LoraSet* assistant);

}  // namespace graft
