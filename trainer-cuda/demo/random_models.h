// Random checkpoints with the real tensor names, in the real layouts, at any size: what tests and
// benchmarks load where no model hub can be reached. Each tensor is drawn from its own stream
// (seed, name) and written as it is drawn, so a file can be larger than memory; the same seed gives
// the same values in every layout.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "models/clip.h"
#include "models/flux.h"
#include "models/t5.h"

namespace graft {

// A model's tensors by name, in order.
using TensorList = std::vector<std::pair<std::string, Shape>>;

// How a random checkpoint is written: its dtype, and where the tensors go: `shards` 0 writes the one
// file `path` (names under `prefix`); N >= 1 writes the folder `path` with `<stem>-0000K-of-0000N
// .safetensors` shards and `<stem>.safetensors.index.json`, as diffusers and transformers save.
struct RandomWriteOptions {
  DType dtype = DType::F32;
  std::string prefix;
  int shards = 0;
  std::string stem = "model";
  std::map<std::string, std::string> metadata;
};

// Weights ~ N(0, 1/fan_in) (times 0.2 for adaLN modulation, as an adaLN-Zero DiT starts) so that
// activations stay O(1); norm scales near 1; biases small.
void write_random_tensors(const std::string& path, const TensorList& tensors, uint64_t seed, const RandomWriteOptions& o);

// How a random FLUX transformer is written: its dtype and layout ("bfl"; "comfyui": BFL names under
// model.diffusion_model.; "diffusers": a folder with diffusion_pytorch_model-0000K-of-0000N
// shards and their index), the same values in every layout.
struct RandomFluxOptions {
  DType dtype = DType::F32;
  std::string layout = "bfl";
  int shards = 1;  // diffusers only
};

// A random FLUX transformer with "graft.axes_dim" in the metadata. `path` is the file (bfl,
// comfyui) or the folder (diffusers).
void write_random_flux(const std::string& path, const FluxConfig& cfg, uint64_t seed,
                       const RandomFluxOptions& options = RandomFluxOptions());

// A random T5 encoder / CLIP text model with transformers' names. With shards >= 1 the folder also
// gets the config.json transformers writes (the fields graft and diffusers read).
void write_random_t5(const std::string& path, const T5Config& cfg, uint64_t seed, const RandomWriteOptions& o);
void write_random_clip(const std::string& path, const ClipConfig& cfg, uint64_t seed, const RandomWriteOptions& o);

}  // namespace graft
