// LoRA adapters: their parameters, gradients and file format.
//
// An adapter acts on a slice of a base linear layer's output rows, so one fused BFL layer
// (double_blocks.N.img_attn.qkv) carries one adapter per diffusers sub-layer (attn.to_q, to_k,
// to_v). That makes the saved file exactly the diffusers/PEFT layout other tools load.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "safetensors.h"

namespace graft {

// Where an adapter goes: a diffusers module name and the slice of a base layer it updates.
struct LoraTarget {
  std::string module;      // diffusers name without prefix, e.g. "transformer_blocks.0.attn.to_q"
  std::string base;        // base (BFL) layer name, e.g. "double_blocks.0.img_attn.qkv"
  int row_offset = 0;      // first output row of the slice
  int rows = 0;            // output rows of the slice
  int in = 0;              // input features of the base layer
};

struct LoraAdapter {
  LoraTarget target;
  int rank = 0;
  float scale = 1.0f;      // alpha / rank
  size_t a_off = 0;        // A [rank, in] at params[a_off]
  size_t b_off = 0;        // B [rows, rank] at params[b_off]
};

struct LoraSet {
  std::vector<LoraAdapter> adapters;
  std::vector<float> params;  // every A and B, fp32 master weights
  std::vector<float> grads;   // same layout as params

  float* A(int i) { return params.data() + adapters[i].a_off; }
  float* B(int i) { return params.data() + adapters[i].b_off; }
  const float* A(int i) const { return params.data() + adapters[i].a_off; }
  const float* B(int i) const { return params.data() + adapters[i].b_off; }
  float* dA(int i) { return grads.data() + adapters[i].a_off; }
  float* dB(int i) { return grads.data() + adapters[i].b_off; }
  void zero_grad();
};

// New adapters: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform(a=sqrt(5))), B = 0,
// so the model starts unchanged. Deterministic in `seed`.
LoraSet lora_create(const std::vector<LoraTarget>& targets, int rank, float alpha, uint64_t seed);

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
// file and the offending key or shape.
LoraSet lora_load(const std::string& path, const std::vector<LoraTarget>& targets, float strength = 1.0f);

}  // namespace graft
