#include "train/train_samples.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>

#include "core/common.h"
#include "core/image_io.h"
#include "demo/text_encoder.h"
#include "train/family.h"
#include "train/pipeline.h"
#include "train/timesteps.h"

namespace graft {

TrainSampler::TrainSampler(const Job& j, const PromptEncoder& te, const FluxVae* vae) : job(&j), ae(vae) {
  // Only the demo model's encoder reads bytes; every other family's ids come from its tokenizer,
  // which preparation runs.
  const bool bytes = te.parts.size() == 1 && te.parts[0].name == "text_encoder";
  auto ids = [&](const std::vector<int>& given, const std::string& text, const std::string& field) {
    if (!given.empty()) return given;
    if (!bytes) fail(j.file + ": " + field + " is missing (the model's tokenizer runs in preparation; prepare the job again)");
    return tokenize_bytes(text, te.ids_per_prompt());
  };
  for (size_t i = 0; i < j.sample.prompts.size(); ++i)
    conds.push_back(encode_prompt(te, ids(j.sample.prompts[i].tokens, j.sample.prompts[i].prompt,
                                          "sample.prompts[" + std::to_string(i) + "].tokens")));
  uncond = encode_prompt(te, ids(j.empty_tokens, "", "text.empty_tokens"));
}

std::vector<std::string> TrainSampler::run(const Denoiser& model, LoraSet& lora, int step) {
  const JobSample& s = job->sample;
  const std::string dir = job->output_dir + "/samples";
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) fail(dir + ": cannot create the samples folder");
  const int f = ae->cfg.downscale() * 2;  // latent pixels per image pixel, times the 2x2 patch
  std::vector<std::string> files;
  for (size_t i = 0; i < s.prompts.size(); ++i) {
    const JobSamplePrompt& p = s.prompts[i];
    const int W = p.width / f * f, H = p.height / f * f;
    if (W <= 0 || H <= 0) fail(job->file + ": sample size must be at least " + std::to_string(f) + " pixels");
    SampleParams sp;
    sp.steps = s.steps;
    sp.cfg_scale = sampler_cfg_scale(job->arch, s.cfg_scale);
    sp.guidance = s.guidance;
    sp.shift = s.resolution_shift ? flux_resolution_shift((H / f) * (W / f)) : s.shift;
    sp.seed = p.seed >= 0 ? (uint64_t)p.seed : s.seed + (s.walk_seed ? i : 0);
    const int C = ae->cfg.z_channels, h = H / ae->cfg.downscale(), w = W / ae->cfg.downscale();
    std::vector<float> z;
    with_lora_scale(lora, p.lora_scale, [&] { z = sample_latent(model, C, h, w, conds[i], &uncond, sp); });
    std::vector<float> img = decode_latent(*ae, z, h, w);
    char name[64];
    std::snprintf(name, sizeof name, "/%09d_%zu.png", step, i);
    png_write(dir + name, img.data(), W, H);
    files.push_back(dir + name);
  }
  return files;
}

}  // namespace graft
