// LoRA and LoKr adapters: their parameters, gradients and file format.
//
// An adapter acts on a slice of a base linear layer's output rows (models/module.h's LoraTarget), so
// one fused BFL layer (double_blocks.N.img_attn.qkv) carries one adapter per diffusers sub-layer
// (attn.to_q, to_k, to_v). That makes the saved file exactly the diffusers/PEFT layout other tools load.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <utility>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "core/tensor.h"
#include "models/module.h"
#include "train/optimizers.h"

namespace graft {

// One trainable matrix of an adapter: [rows, cols] at params[offset], saved as "<module>.<key>".
struct AdapterMatrix {
  std::string key;  // "lora_A.weight", "lora_B.weight", "lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b"
  size_t offset = 0;
  int rows = 0, cols = 0;
};

struct LoraAdapter {
  LoraTarget target;
  bool lokr = false;
  int rank = 0;            // LoRA's rank; LoKr's rank of w2 (0: w2 is a full matrix)
  float alpha = 0.0f;      // as saved with a LoKr file
  float scale = 1.0f;      // alpha / rank (LoKr with w2 full: 1, as LyCORIS)
  // LoRA: lora_A [rank, in], lora_B [rows, rank]. LoKr: lokr_w1 [a, c], then lokr_w2 [b, d] or
  // lokr_w2_a [b, rank] and lokr_w2_b [rank, d], with rows = a b and in = c d.
  std::vector<AdapterMatrix> mats;
};

// Every adapter's matrices in one fp32 buffer on the training device (the optimizer's flat view),
// with a trainable view per matrix whose gradient lands in the matching slice of `grads`.
struct LoraSet {
  std::vector<LoraAdapter> adapters;
  Tensor params;  // fp32 [n]
  Tensor grads;   // fp32 [n], the same layout
  std::vector<std::vector<Tensor>> views;  // per adapter, per matrix: a view of params (a leaf)
  // What the saved file puts before each module name: "transformer." (FLUX, diffusers/PEFT) or
  // "diffusion_model." (Z-Image, as the reference toolkit saves it for ComfyUI).
  std::string prefix = "transformer.";

  size_t size() const { return (size_t)params.numel(); }
  Device device() const { return params.device(); }
  // Moves params to `device` (grads start at zero there) and makes the views anew.
  void to(Device device);
  void zero_grad();
  std::vector<float> host_params() const { return to_floats(params); }
  void set_params(const std::vector<float>& values);  // same size; the views stay valid
  // Each trainable matrix's place in params, for the optimizers that work per tensor.
  std::vector<ParamSegment> segments() const;
};

// LoKr's split of a dimension into two factors (m <= n, m n = dim) as the reference toolkit's
// (LyCORIS') factorization: `factor` itself when it divides dim, else the most balanced split with
// m at most factor (-1: no limit).
std::pair<int, int> lokr_factorization(int dim, int factor);

// New adapters: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform(a=sqrt(5))), B = 0,
// so the model starts unchanged. Deterministic in `seed`. On the host; LoraSet::to moves it.
LoraSet lora_create(const std::vector<LoraTarget>& targets, int rank, float alpha, uint64_t seed);

// New LoKr adapters as LyCORIS makes them: w1 [a, c] with a, b = factorization(rows) and c, d =
// factorization(in); w2 [b, d] full when full_rank or rank >= max(b, d) / 2, else w2_a [b, rank] @
// w2_b [rank, d]. w1 and w2_a ~ kaiming_uniform(a=sqrt(5)), w2 (or w2_b) = 0: the model starts
// unchanged. Scale alpha / rank, or 1 with w2 full.
LoraSet lokr_create(const std::vector<LoraTarget>& targets, int rank, float alpha, int factor, bool full_rank,
                    uint64_t seed);

// The matrices lora_create (lokr: lokr_create) would make for `targets`, as optimizer segments in
// the same order, without making them: the memory plan's adapter and optimizer sizes.
std::vector<ParamSegment> adapter_layout(const std::vector<LoraTarget>& targets, int rank, bool lokr, int factor,
                                         bool full_rank);

// Attaches each adapter of `lora` (null: none) to the layer it names, replacing what the layers
// had; throws Error when a module targets a layer the model lacks or does not fit it.
void lora_attach(const std::vector<Linear*>& layers, LoraSet* lora);
// The same, beside what the layers have (a second set: the assistant adapter while sampling).
void lora_attach_more(const std::vector<Linear*>& layers, LoraSet* lora);

// Adds each LoRA adapter's update scale * B A into its layer's dense weight (kept in its dtype and on
// its device): the reference toolkit's merge_in. Throws naming `what` for a LoKr or a quantized layer.
void lora_merge(const std::vector<Linear*>& layers, const LoraSet& lora, const std::string& what);

// The file other tools load. LoRA: "<prefix><module>.lora_A.weight" [rank, in] and
// ".lora_B.weight" [rows, rank], with alpha/rank folded into B so it loads at strength 1 everywhere
// (PEFT files carry no alpha). LoKr: "transformer.<module>.lokr_w1", ".lokr_w2" (or ".lokr_w2_a",
// ".lokr_w2_b") and ".alpha", the names ComfyUI's LoKr loader reads. Atomic write.
void lora_save(const LoraSet& set, const std::string& path, DType dtype,
               const std::map<std::string, std::string>& metadata);

// Runs fn with every adapter's scale multiplied by m (0: the base model alone), then puts the scales
// back, also when fn throws.
void with_lora_scale(LoraSet& lora, float m, const std::function<void()>& fn);

// Reads a LoRA or LoKr file in that layout (optional "<module>.alpha" scalars honoured) against the
// targets a model offers; `strength` multiplies every adapter's scale. Throws Error naming the
// file and the offending key or shape. On the host.
LoraSet lora_load(const std::string& path, const std::vector<LoraTarget>& targets, float strength = 1.0f);

}  // namespace graft
