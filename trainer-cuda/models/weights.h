// Where a model's weights come from. A model asks for its tensors by canonical dotted names (for
// FLUX: BFL's, e.g. "double_blocks.3.img_attn.qkv.weight"); a Layout says how a checkpoint stores
// each one (another name, several tensors to concatenate, halves swapped), and the WeightLoader
// reads them through it from a memory-mapped Checkpoint onto the model's device, one tensor at a
// time, in the checkpoint's own dtype. What is missing or misshapen is one line naming the file,
// the stored tensor and the layout it was read as.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/safetensors.h"
#include "core/tensor.h"
#include "ops/quant.h"

namespace graft {

// One safetensors file, or a folder of shards listed by a "*.safetensors.index.json" (diffusers,
// transformers), or a folder holding a single .safetensors file, read as one set of tensors.
struct Checkpoint {
  std::string path;  // as the user gave it
  std::vector<SafeTensorsFile> files;

  static Checkpoint open(const std::string& path);
  bool has(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws naming the path
  const SafeTensorsFile& file_of(const std::string& name) const;
  Tensor tensor(const std::string& name) const;  // a read-only view into the mapping
  std::vector<std::string> names() const;
  // The first file's metadata (shards repeat it, when they carry any).
  const std::map<std::string, std::string>& metadata() const { return files.at(0).metadata; }

 private:
  std::unordered_map<std::string, std::pair<int, int>> index_;  // name -> (file, tensor)
};

// The dtype a float tensor stored as `stored` is kept in on `device`: bf16 on CUDA for 16- and 32-bit
// floats (the GPU kernels' storage), as stored otherwise (fp8 everywhere, anything on the CPU).
DType kept_dtype(DType stored, Device device);

// How one canonical tensor is stored.
struct Stored {
  std::vector<std::string> parts;  // stored names, concatenated along dim 0 in order
  bool swap_halves = false;        // dim 0's two halves exchanged (diffusers' (scale, shift) order)
};

// A checkpoint layout: its name for messages and the map from canonical to stored names.
struct Layout {
  std::string name;
  std::function<Stored(const std::string& canonical)> map;
};
Layout identity_layout(const std::string& name, const std::string& prefix = "");

// The prefix under which a checkpoint stores a model whose tensor `anchor` it holds (e.g. "" for
// "encoder.final_layer_norm.weight", "text_encoders.t5xxl.transformer." in a combined file), or
// false when no name ends with it. The shortest prefix wins.
bool find_prefix(const Checkpoint& ckpt, const std::string& anchor, std::string* prefix);

// A model folder's config.json as text ("" when `path` is a file or the folder has none), for the
// hyperparameters tensor shapes cannot tell (heads, eps, activation).
std::string folder_config_text(const std::string& path);

// Reads a model's weights. With `ckpt` null it makes random ones instead, on the device, from
// `seed` (benchmarks at real sizes, where no checkpoint exists): uniform with std 1/sqrt(fan_in)
// for weights (times 0.2 for adaLN modulation layers, as make-tiny's checkpoints), near 1 for norm
// scales, small for biases.
struct WeightLoader {
  const Checkpoint* ckpt = nullptr;
  Layout layout;
  Device device;
  uint64_t seed = 1;
  // Hand out shapes only (undefined tensors with their shape; with a checkpoint, its stored dtype,
  // every name and shape checked as get() checks them): a model's tensors listed, or a checkpoint
  // checked, at any size without memory.
  bool shapes_only = false;
  size_t handed_out = 0;  // tensors given so far: random weights draw from a stream per tensor
  // The format linear layers keep their weights in (the job's model.quantize; models/module.h's
  // Linear quantizes each one as it loads).
  WeightFormat quantize = WeightFormat::dense;
  // Linear layers whose name it accepts go to pinned host memory as each loads (layer offloading, on
  // CUDA), so the device never holds more than one of them.
  std::function<bool(const std::string&)> offload;

  mutable int scaled_ = -1;  // scaled_checkpoint(), once known

  WeightLoader(const Checkpoint* ckpt, Layout layout, Device device, uint64_t seed = 1);
  bool has(const std::string& name) const;
  Shape shape(const std::string& name) const;  // throws when missing
  int64_t dim(const std::string& name, int d) const;
  // The tensor, checked against `expect`. On the CPU a tensor stored as one part stays a view into
  // the mapping; on CUDA it is copied to the device (bf16 for 16- and 32-bit floats) and its pages
  // released from host memory.
  Tensor get(const std::string& name, const Shape& expect);
  // Whether the checkpoint is a scaled fp8 one (ComfyUI's: a "scaled_fp8" marker or any
  // "*.scale_weight"), where each fp8 weight must have its scale.
  bool scaled_checkpoint() const;
  // Drops the stored pages of `name` from host memory (a weight kept in another form: quantized).
  void release(const std::string& name) const;
  // One line about a tensor: "<file>: tensor 'x_embedder.bias' is missing (img_in.bias in the
  // diffusers layout)"; `part` names one part of a tensor stored in several.
  std::string problem(const std::string& name, const std::string& what, int part = -1) const;
};

}  // namespace graft
