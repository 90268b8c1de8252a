#include "train/prompt_encoder.h"

#include "core/common.h"
#include "demo/text_encoder.h"
#include "models/clip.h"
#include "models/t5.h"
#include "ops/ops.h"

namespace graft {

int PromptEncoder::ids_per_prompt() const {
  int n = 0;
  for (const Part& p : parts) n += p.max_len;
  return n;
}

namespace {

// The ids of part k of each of B prompts, gathered from the concatenated lists.
std::vector<int> part_ids(const std::vector<int>& ids, int B, int per_prompt, int offset, int len) {
  std::vector<int> out((size_t)B * len);
  for (int b = 0; b < B; ++b)
    std::copy(ids.begin() + (size_t)b * per_prompt + offset, ids.begin() + (size_t)b * per_prompt + offset + len,
              out.begin() + (size_t)b * len);
  return out;
}

void check_ids(const PromptEncoder& pe, const std::vector<int>& ids, int B) {
  if ((int64_t)ids.size() != (int64_t)B * pe.ids_per_prompt())
    fail("internal: prompt encoder: " + std::to_string(ids.size()) + " ids for " + std::to_string(B) + " prompts of " +
         std::to_string(pe.ids_per_prompt()));
}

struct DemoPromptEncoder : PromptEncoder {
  TextEncoder te;
  Output encode(const std::vector<int>& ids, int B) const override {
    check_ids(*this, ids, B);
    TextEncoder::Output o = te.forward(ids, B, txt_len);
    return {o.context, o.pooled};
  }
};

struct FluxPromptEncoder : PromptEncoder {
  ClipTextModel clip;
  T5Encoder t5;
  Output encode(const std::vector<int>& ids, int B) const override {
    check_ids(*this, ids, B);
    const int n = ids_per_prompt(), Lc = parts[0].max_len, Lt = parts[1].max_len;
    Tensor y = clip.forward(part_ids(ids, B, n, 0, Lc), B, Lc).pooled;
    return {t5.forward(part_ids(ids, B, n, Lc, Lt), B, Lt), y};
  }
};

}  // namespace

std::unique_ptr<PromptEncoder> load_prompt_encoder(const std::vector<TextPart>& parts, Device device,
                                                   const std::string& job_file, WeightFormat quantize) {
  std::string names;
  for (const TextPart& p : parts) {
    names += (names.empty() ? "" : ", ") + p.name;
    if (p.path.empty()) fail(job_file + ": model.text_encoders." + p.name + " is missing (the checkpoint of that text encoder)");
  }
  if (parts.size() == 1 && parts[0].name == "text_encoder") {
    auto pe = std::make_unique<DemoPromptEncoder>();
    pe->te = TextEncoder::load(parts[0].path, device, quantize);
    const TextEncoderConfig& c = pe->te.cfg;
    pe->parts = {{parts[0].name, parts[0].path, c.max_len, c.vocab}};
    pe->txt_len = c.max_len, pe->context_dim = c.context_dim, pe->vec_dim = c.vec_dim;
    return pe;
  }
  if (parts.size() == 2 && parts[0].name == "clip_l" && parts[1].name == "t5") {
    auto pe = std::make_unique<FluxPromptEncoder>();
    pe->clip = ClipTextModel::load(parts[0].path, device, quantize);
    pe->t5 = T5Encoder::load(parts[1].path, device, quantize);
    // CLIP reads up to its positions; T5 has no length limit of its own (relative positions), so
    // the job's length (FLUX.1-dev 512, schnell 256) is its.
    pe->parts = {{"clip_l", parts[0].path, pe->clip.cfg.positions, pe->clip.cfg.vocab},
                 {"t5", parts[1].path, parts[1].max_len, pe->t5.cfg.vocab}};
    pe->txt_len = parts[1].max_len, pe->context_dim = pe->t5.cfg.d_model, pe->vec_dim = pe->clip.cfg.width;
    return pe;
  }
  fail(job_file + ": text encoders {" + names + "}: graft knows {text_encoder} (the demo model) and {clip_l, t5} (FLUX.1)");
}

}  // namespace graft
