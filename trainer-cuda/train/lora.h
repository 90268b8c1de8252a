// LoRA adapters: their parameters, gradients and file format.
//
// An adapter acts on a slice of a base linear layer's output rows (models/module.h's LoraTarget), so
// one fused BFL layer (double_blocks.N.img_attn.qkv) carries one adapter per diffusers sub-layer
// (attn.to_q, to_k, to_v). That makes the saved file exactly the diffusers/PEFT layout other tools load.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "core/tensor.h"
#include "models/module.h"
#include "train/optimizers.h"

namespace graft {

struct LoraAdapter {
  LoraTarget target;
  int rank = 0;
  float scale = 1.0f;      // alpha / rank
  size_t a_off = 0;        // A [rank, in] at params[a_off]
  size_t b_off = 0;        // B [rows, rank] at params[b_off]
};

// Every adapter's A and B in one fp32 buffer on the training device (the optimizer's flat view),
// with a trainable view per matrix whose gradient lands in the matching slice of `grads`.
struct LoraSet {
  std::vector<LoraAdapter> adapters;
  Tensor params;  // fp32 [n]
  Tensor grads;   // fp32 [n], the same layout
  std::vector<Tensor> A, B;  // per adapter: [rank, in] and [rows, rank] views of params (leaves)

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

// New adapters: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform(a=sqrt(5))), B = 0,
// so the model starts unchanged. Deterministic in `seed`. On the host; LoraSet::to moves it.
LoraSet lora_create(const std::vector<LoraTarget>& targets, int rank, float alpha, uint64_t seed);

// Attaches each adapter of `lora` (null: none) to the layer it names, replacing what the layers
// had; throws Error when a module targets a layer the model lacks or does not fit it.
void lora_attach(const std::vector<Linear*>& layers, LoraSet* lora);

// The file other tools load: "transformer.<module>.lora_A.weight" [rank, in] and ".lora_B.weight"
// [rows, rank], with alpha/rank folded into B so it loads at strength 1 everywhere (PEFT files
// carry no alpha). Atomic write.
void lora_save(const LoraSet& set, const std::string& path, DType dtype,
               const std::map<std::string, std::string>& metadata);

// Runs fn with every adapter's scale multiplied by m (0: the base model alone), then puts the scales
// back, also when fn throws.
void with_lora_scale(LoraSet& lora, float m, const std::function<void()>& fn);

// Reads a LoRA file in that layout (optional "<module>.alpha" scalars honoured) against the
// targets a model offers; `strength` multiplies every adapter's scale. Throws Error naming the
// file and the offending key or shape. On the host.
LoraSet lora_load(const std::string& path, const std::vector<LoraTarget>& targets, float strength = 1.0f);

}  // namespace graft
