#include "train_samples.h"

#include <sys/stat.h>

#include <cstdio>

#include "common.h"
#include "image_io.h"

namespace graft {

TrainSampler::TrainSampler(const Job& j, TextEncoder& te, VaeModel* vae) : job(&j), ae(vae) {
  TextEncoderRunner r(&te);
  auto encode = [&](const std::vector<int>& ids) {
    TextCond t;
    t.L = (int)ids.size();
    r.forward(ids, 1, t.L, t.txt, t.y);
    return t;
  };
  const int L = te.cfg.max_len;
  for (const JobSamplePrompt& p : j.sample.prompts) conds.push_back(encode(p.tokens.empty() ? tokenize_bytes(p.prompt, L) : p.tokens));
  uncond = encode(j.empty_tokens.empty() ? tokenize_bytes("", L) : j.empty_tokens);
}

std::vector<std::string> TrainSampler::run(FluxBackend& model, LoraSet& lora, const FluxConfig& cfg, int step) {
  const JobSample& s = job->sample;
  const std::string dir = job->output_dir + "/samples";
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) fail(dir + ": cannot create the samples folder");
  const int f = ae->cfg.downscale() * 2;  // latent pixels per image pixel, times the 2x2 patch
  VaeRunner vr(ae);
  std::vector<std::string> files;
  for (size_t i = 0; i < s.prompts.size(); ++i) {
    const JobSamplePrompt& p = s.prompts[i];
    const int W = p.width / f * f, H = p.height / f * f;
    if (W <= 0 || H <= 0) fail(job->file + ": sample size must be at least " + std::to_string(f) + " pixels");
    SampleParams sp;
    sp.steps = s.steps;
    sp.cfg_scale = s.cfg_scale;
    sp.guidance = s.guidance;
    sp.shift = s.shift;
    sp.seed = p.seed >= 0 ? (uint64_t)p.seed : s.seed + (s.walk_seed ? i : 0);
    const int C = ae->cfg.z_channels, h = H / ae->cfg.downscale(), w = W / ae->cfg.downscale();
    std::vector<float> z;
    with_lora_scale(lora, p.lora_scale, [&] { z = sample_latent(model, cfg, C, h, w, conds[i], &uncond, sp); });
    vae_latent_from_dit(ae->cfg, z.data(), (long)z.size());
    std::vector<float> img;
    vr.decode(z.data(), 1, h, w, img);
    char name[64];
    std::snprintf(name, sizeof name, "/%09d_%zu.png", step, i);
    png_write(dir + name, img.data(), W, H);
    files.push_back(dir + name);
  }
  return files;
}

}  // namespace graft
