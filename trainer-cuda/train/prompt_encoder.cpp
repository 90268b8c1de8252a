#include "train/prompt_encoder.h"

#include "core/common.h"
#include "demo/text_encoder.h"
#include "models/clip.h"
#include "models/llm.h"
#include "models/t5.h"
#include "ops/ops.h"

namespace graft {

int PromptEncoder::ids_per_prompt() const {
  int n = 0;
  for (const Part& p : parts) n += p.max_len;
  return n;
}

int PromptEncoder::prompt_length(const int*) const { return txt_len; }

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
    return {o.context, o.pooled, {}};
  }
};

struct FluxPromptEncoder : PromptEncoder {
  ClipTextModel clip;
  T5Encoder t5;
  Output encode(const std::vector<int>& ids, int B) const override {
    check_ids(*this, ids, B);
    const int n = ids_per_prompt(), Lc = parts[0].max_len, Lt = parts[1].max_len;
    Tensor y = clip.forward(part_ids(ids, B, n, 0, Lc), B, Lc).pooled;
    return {t5.forward(part_ids(ids, B, n, Lc, Lt), B, Lt), y, {}};
  }
};

// Z-Image's: each prompt alone through Qwen3 up to its last token (attention is causal, so the
// padding after it changes nothing the pipeline keeps).
struct LlmPromptEncoder : PromptEncoder {
  DecoderLlm llm;
  TextPart part;  // its length and pad id
  bool ragged() const override { return true; }
  int prompt_length(const int* ids) const override { return part.length(ids); }
  Output encode(const std::vector<int>& ids, int B) const override {
    check_ids(*this, ids, B);
    const int L = txt_len, D = context_dim;
    std::vector<float> txt((size_t)B * L * D, 0.0f);
    Output o;
    for (int b = 0; b < B; ++b) {
      const int* p = ids.data() + (size_t)b * L;
      const int n = prompt_length(p);
      const std::vector<float> h = to_floats(llm.forward(std::vector<int>(p, p + n), 1, n));
      std::copy(h.begin(), h.end(), txt.begin() + (size_t)b * L * D);
      o.lens.push_back(n);
    }
    o.txt = from_vector(txt, {B, L, D}, llm.device, compute_dtype(llm.device));
    return o;
  }
};

}  // namespace

std::unique_ptr<PromptEncoder> load_prompt_encoder(const std::vector<TextPart>& parts, Device device,
                                                   const std::string& job_file, WeightFormat quantize,
                                                   const std::string& llm_config) {
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
  if (parts.size() == 1 && parts[0].name == "qwen3") {
    auto pe = std::make_unique<LlmPromptEncoder>();
    pe->llm = DecoderLlm::load(parts[0].path, device, -2, quantize, llm_config);  // Z-Image reads hidden_states[-2]
    pe->part = parts[0];
    pe->parts = {{"qwen3", parts[0].path, parts[0].max_len, pe->llm.cfg.vocab}};
    pe->txt_len = parts[0].max_len, pe->context_dim = pe->llm.cfg.hidden, pe->vec_dim = 0;
    return pe;
  }
  fail(job_file + ": text encoders {" + names + "}: graft knows {text_encoder} (the demo model), {clip_l, t5} (FLUX.1) "
       "and {qwen3} (Z-Image)");
}

}  // namespace graft
