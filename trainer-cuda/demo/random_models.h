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
#include "models/llm.h"
#include "models/t5.h"
#include "models/zimage.h"

namespace graft {

// A model's tensors by name, in order.
using TensorList = std::vector<std::pair<std::string, Shape>>;

// How a random checkpoint is written: its dtype, and where the tensors go (names under `prefix`):
// `shards` 0 writes the one file `path`; 1 the folder `path` with `<stem>.safetensors`; N > 1 the
// folder with `<stem>-0000K-of-0000N.safetensors` shards and `<stem>.safetensors.index.json`, as
// diffusers and transformers save.
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

// A random T5 encoder / CLIP text model with transformers' names. A folder (shards >= 1) also gets
// the config.json transformers writes (the fields graft and diffusers read).
void write_random_t5(const std::string& path, const T5Config& cfg, uint64_t seed, const RandomWriteOptions& o);
void write_random_clip(const std::string& path, const ClipConfig& cfg, uint64_t seed, const RandomWriteOptions& o);

// A whole random FLUX.1 model in the layouts users have it in, every part with the real structure and
// names, the same values in every layout (one seed). `dir`:
//   diffusers: model_index.json, transformer/ (shards + index + config.json), text_encoder/ (CLIP-L),
//              text_encoder_2/ (T5, shards), vae/, tokenizer/ (vocab.json + merges.txt, no
//              tokenizer.json, as FLUX.1-dev's), tokenizer_2/ (tokenizer.json, spiece.model),
//              scheduler/ — as black-forest-labs/FLUX.1-dev's repo holds them;
//   bfl:       the same, plus BFL's single files flux1-<variant>.safetensors and ae.safetensors at
//              the top (the real repo has both);
//   comfyui:   diffusion_models/flux1-<variant>.safetensors (under model.diffusion_model.),
//              vae/ae.safetensors, text_encoders/clip_l.safetensors and t5xxl_fp16.safetensors:
//              ComfyUI's models/ folder (no tokenizers: ComfyUI carries its own).
struct RandomFluxModelOptions {
  std::string layout = "diffusers";
  std::string variant = "dev";  // dev (guidance embedding, T5 512 tokens) or schnell (256)
  std::string shape = "tiny";   // tiny: every part 64 wide (tests); dev: FLUX.1's real sizes
  int n_double = -1, n_single = -1;  // the transformer's depth (-1: the shape's)
  DType dtype = DType::F32;
  uint64_t seed = 1;
};
void write_random_flux_model(const std::string& dir, const RandomFluxModelOptions& o);

// A random Z-Image transformer: layout "comfyui" (one file, canonical names under
// model.diffusion_model., the RoPE settings in graft.zimage metadata), "zimage" (the same without
// the prefix) or "diffusers" (a folder of `shards` shards with their index and config.json).
void write_random_zimage(const std::string& path, const ZImageConfig& cfg, uint64_t seed, const std::string& layout,
                         DType dtype, int shards = 2);
// A random decoder LLM in transformers' names ("model." prefix); a folder (shards >= 1) gets its
// config.json.
void write_random_llm(const std::string& path, const LlmConfig& cfg, uint64_t seed, const RandomWriteOptions& o);

// A whole random Z-Image model (Turbo's file set). diffusers: model_index.json, transformer/ (shards,
// config.json), text_encoder/ (Qwen3, shards, config.json), tokenizer/, vae/ (FLUX's autoencoder),
// scheduler/ — as Tongyi-MAI/Z-Image-Turbo's repo holds them; comfyui: diffusion_models/
// z_image_turbo_bf16.safetensors, text_encoders/qwen_3_4b.safetensors, vae/ae.safetensors.
// shape tiny (tests) or full (Z-Image's 6B and Qwen3-4B).
struct RandomZImageModelOptions {
  std::string layout = "diffusers";
  std::string shape = "tiny";
  int n_layers = -1;
  DType dtype = DType::F32;
  uint64_t seed = 1;
};
void write_random_zimage_model(const std::string& dir, const RandomZImageModelOptions& o);
// The tiny shapes of the above: a Z-Image transformer 64 wide, and the Qwen3 it reads.
ZImageConfig tiny_zimage_config();
LlmConfig tiny_qwen3_config();

}  // namespace graft
