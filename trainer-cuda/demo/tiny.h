// Project-written random FLUX-layout checkpoints and synthetic job folders, for tests and
// benchmarks (these machines reach no model hub).
#pragma once
#include <cstdint>
#include <string>

#include "models/flux.h"

namespace graft {

// The shape `make-tiny` uses: hidden 64, 2 heads of 32, 2 double + 2 single blocks.
FluxConfig tiny_flux_config();

// How a random checkpoint is written: its dtype and layout ("bfl"; "comfyui": BFL names under
// model.diffusion_model.; "diffusers": a folder with diffusion_pytorch_model-0000K-of-0000N
// shards and their index), the same values in every layout.
struct RandomFluxOptions {
  DType dtype = DType::F32;
  std::string layout = "bfl";
  int shards = 1;  // diffusers only
};

// Writes a random checkpoint with the real tensor names. Weights ~ N(0, 1/fan_in) so that
// activations stay O(1); QK-norm scales near 1; "graft.axes_dim" in the metadata. Each tensor is
// drawn from its own stream (seed, name) and written as it is drawn, so the file can be larger
// than memory. `path` is the file (bfl, comfyui) or the folder (diffusers).
void write_random_flux(const std::string& path, const FluxConfig& cfg, uint64_t seed,
                       const RandomFluxOptions& options = RandomFluxOptions());

// <dir>/model/transformer.safetensors, <dir>/cache/{latents,text}/item_NNNN.safetensors (a small
// fixed synthetic dataset) and <dir>/job.json such that `graft-trainer train <dir>` runs.
void make_tiny(const std::string& dir, uint64_t seed);

// A complete random text-to-image model folder small enough for tests: transformer.safetensors
// (tiny_flux_config), text_encoder.safetensors (byte tokens, max_len 16, 1 layer of width 32),
// ae.safetensors (ch 8, ch_mult [1, 2]: pictures of 4k x 4l pixels give latents of 2k x 2l) and
// model.json, as Pipeline::load reads it.
void make_tiny_pipeline(const std::string& dir, uint64_t seed);

}  // namespace graft
