#include "train/family.h"

#include <cstdio>

#include "core/common.h"

namespace graft {

ModelWidths widths_of(const FluxConfig& c) { return {c.context_dim, c.vec_dim, c.in_channels / 4}; }

ModelFamily model_family(const Job& job, const PlanInputs& plan) {
  ModelFamily f;
  f.arch = job.arch;
  char buf[160];
  if (job.arch == "zimage") {
    const ZImageConfig& c = f.zimage = plan.zimage;
    f.widths = {c.cap_dim, 0, c.in_channels};
    f.targets = zimage_lora_targets(c);
    f.lora_prefix = "diffusion_model.";
    std::snprintf(buf, sizeof buf, "Z-Image %s: dim %d, %d heads, %d layers + %d noise and %d context refiner blocks",
                  job.variant.c_str(), c.dim, c.heads, c.n_layers, c.n_refiner, c.n_refiner);
  } else {
    const FluxConfig& c = f.flux = plan.cfg;
    f.widths = widths_of(c);
    f.targets = flux_lora_targets(c, job.train_modulation);
    f.lora_prefix = "transformer.";
    std::snprintf(buf, sizeof buf, "hidden %d, %d heads, %d double + %d single blocks", c.hidden, c.heads, c.n_double,
                  c.n_single);
  }
  f.describe = buf;
  return f;
}

float sampler_cfg_scale(const std::string& arch, float g) {
  // ZImagePipeline guides as pos + g (pos - neg), and only above 1: the usual neg + (g + 1)(pos - neg),
  // none at 1 or below (Turbo's default).
  if (arch == "zimage") return g > 1.0f ? g + 1.0f : 1.0f;
  return g;
}

std::unique_ptr<Denoiser> load_denoiser(const Job& job, Device device, LoraSet* assistant) {
  if (job.arch != "zimage") {
    if (!job.assistant_lora.empty()) fail(job.file + ": model.assistant_lora is for Z-Image Turbo; this job's model is " + job.arch);
    return std::make_unique<FluxTransformer>(
        FluxTransformer::load(job.transformer, device, job.quantize, device.is_cuda() ? job.offload : 0.0));
  }
  const double offload = device.is_cuda() ? job.offload : 0.0;
  if (job.assistant_lora.empty())
    return std::make_unique<ZImageTransformer>(ZImageTransformer::load(job.transformer, device, job.quantize, offload));
  // The reference toolkit merges the assistant into the weights before it quantizes them, then
  // samples with the assistant at -1 so that samples show the adapter on the model as users have it.
  auto m = std::make_unique<ZImageTransformer>(ZImageTransformer::load(job.transformer, device));
  *assistant = lora_load(job.assistant_lora, zimage_lora_targets(m->cfg, true));
  lora_merge(m->linears(), *assistant, job.assistant_lora);
  if (job.quantize != WeightFormat::dense)
    for (Linear* l : m->quantized_linears()) l->quantize(job.quantize, device);
  m->offload_blocks(offload);
  for (LoraAdapter& a : assistant->adapters) a.scale = -a.scale;
  assistant->to(device);
  return m;
}

}  // namespace graft
