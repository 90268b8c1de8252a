// A model family's text encoders behind one interface: a prompt's token ids (every encoder's list,
// concatenated as job.json's TextParts) in, the transformer's text conditioning out: per-token
// context txt [B, txt_len, context_dim] and a pooled vector y [B, vec_dim].
//   demo model: one TextEncoder (part "text_encoder") gives both.
//   FLUX.1: CLIP-L (part "clip_l", 77 ids) gives y, its pooled output; T5-XXL (part "t5", 512 ids
//   for dev, 256 for schnell) gives txt, its last hidden state.
//   Z-Image: Qwen3 (part "qwen3", 512 ids padded with pad_id) gives txt, the hidden state before its
//   last layer, only as long as the prompt's tokens; no pooled vector.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "train/job.h"

namespace graft {

struct PromptEncoder {
  struct Part {
    std::string name, path;
    int max_len = 0, vocab = 0;
  };
  std::vector<Part> parts;  // in the order a prompt's ids are concatenated
  int txt_len = 0, context_dim = 0, vec_dim = 0;

  virtual ~PromptEncoder() = default;
  int ids_per_prompt() const;
  // The rows of txt a prompt's ids (ids_per_prompt() of them) give: txt_len, or with a padded
  // part, as many as its tokens.
  virtual int prompt_length(const int* ids) const;
  virtual bool ragged() const { return false; }  // prompts of their own lengths
  // B prompts of ids_per_prompt() ids each; outputs in the compute dtype of the encoders' device.
  // Prompts of their own lengths (lens, prompt_length each) fill the first rows of their txt_len,
  // zeros after; y is undefined when vec_dim is 0.
  struct Output { Tensor txt, y; std::vector<int> lens; };
  virtual Output encode(const std::vector<int>& ids, int B) const = 0;
};

// The encoders of `parts` on `device`, by their names: {"text_encoder"} is the demo model's,
// {"clip_l", "t5"} FLUX.1's. Throws naming the job file for any other set.
// {"qwen3"} Z-Image's (llm_config: its config.json when the checkpoint is a single file).
std::unique_ptr<PromptEncoder> load_prompt_encoder(const std::vector<TextPart>& parts, Device device,
                                                   const std::string& job_file, WeightFormat quantize = WeightFormat::dense,
                                                   const std::string& llm_config = "");

}  // namespace graft
