// Building blocks of the models: parameters by dotted name, and the linear layer adapters attach to.
// A model is a plain struct of these, written forward-only on ops/ops.h; its backward is the tape's.
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/weights.h"
#include "ops/ops.h"

namespace graft {

// A parameter by its canonical name, pointing at the model's own tensor (so full training can
// replace it with a trainable fp32 copy in place).
struct NamedParam {
  std::string name;
  Tensor* t;
};

// Where an adapter goes: the module name an adapter file uses (diffusers names for FLUX) and the
// slice of the base layer's output it updates, so one fused BFL layer (qkv) carries one adapter per
// diffusers sub-layer (to_q, to_k, to_v) and the saved file is exactly the layout other tools load.
struct LoraTarget {
  std::string module;      // e.g. "transformer_blocks.0.attn.to_q"
  std::string base;        // the model's layer, e.g. "double_blocks.0.img_attn.qkv"
  int row_offset = 0;      // first output row of the slice
  int rows = 0;            // output rows of the slice
  int in = 0;              // input features of the base layer
};

// An adapter on a slice of a linear layer's output (train/lora.h attaches them); the scale is read
// at every forward, so a sampler can turn the adapter down or off.
struct AttachedAdapter {
  bool lokr = false;
  // fp32 leaves. LoRA: A [rank, in], B [rows, rank]. LoKr: w1 [a, c], w2 [b, d] or w2_a [b, rank]
  // and w2_b [rank, d] (ops.h's LokrRef).
  std::vector<Tensor> mats;
  int row_offset = 0, rows = 0;
  const float* scale = nullptr;
};

// Whether a linear layer has a bias: always (FLUX's), when the checkpoint has one (BFL's qkv), never
// (T5's).
enum class Bias { yes, optional, no };

struct Linear {
  std::string name;  // canonical name without ".weight", e.g. "double_blocks.0.img_attn.qkv"
  int in = 0, out = 0;
  Tensor W, b;       // [out, in], [out]
  bool has_bias = false;
  // A per-output-channel scale [out] (fp32) of a quantized W (fp8 or int8 codes): the layer computes
  // with W * w_scale per row (ops.h's QuantWeight). ComfyUI's "scaled" fp8 files store it as
  // name.scale_weight (one value for the tensor).
  Tensor w_scale;
  // NF4: W holds the codes (U8, two per byte) and this the absmax of each block of 64 (ops/quant.h).
  Tensor w_absmax;
  std::vector<AttachedAdapter> adapters;

  Linear() = default;
  // Reads name.weight [out, in] and name.bias [out] as `bias` says, and name.scale_weight when the
  // checkpoint has it.
  Linear(WeightLoader& w, const std::string& name, int in, int out, Bias bias = Bias::yes);
  Tensor operator()(const Tensor& x) const;
  void collect(std::vector<NamedParam>& out);
  // W in a quantized format on `device` (WeightLoader::quantize): fp8 or int8 codes with w_scale, or
  // NF4 codes with w_absmax.
  void quantize(WeightFormat f, Device device);
  size_t weight_bytes() const;  // W with its scales
  // W, its scales and the bias into pinned host memory (layer offloading): products stream them in.
  void offload();
  std::vector<Tensor> frozen() const;  // W, its scales and the bias (what offload moves)
};

// Makes every parameter a trainable fp32 leaf on its device (a copy: mapped weights are read-only),
// for full training; their gradients accumulate until zero_grads().
void make_trainable(std::vector<NamedParam>& params);
void zero_grads(const std::vector<NamedParam>& params);

}  // namespace graft
