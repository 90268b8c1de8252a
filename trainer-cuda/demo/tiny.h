// Project-written random FLUX-layout checkpoints and synthetic job folders, for tests and
// benchmarks (these machines reach no model hub).
#pragma once
#include <cstdint>
#include <string>

#include "demo/random_models.h"
#include "models/flux.h"

namespace graft {

// The shape `make-tiny` uses: hidden 64, 2 heads of 32, 2 double + 2 single blocks.
FluxConfig tiny_flux_config();

// <dir>/model/transformer.safetensors, <dir>/cache/{latents,text}/item_NNNN.safetensors (a small
// fixed synthetic dataset) and <dir>/job.json such that `graft-trainer train <dir>` runs.
void make_tiny(const std::string& dir, uint64_t seed);

// A complete random text-to-image model folder small enough for tests: transformer.safetensors
// (tiny_flux_config), text_encoder.safetensors (byte tokens, max_len 16, 1 layer of width 32),
// ae.safetensors (ch 8, ch_mult [1, 2]: pictures of 4k x 4l pixels give latents of 2k x 2l) and
// model.json, as Pipeline::load reads it.
void make_tiny_pipeline(const std::string& dir, uint64_t seed);

}  // namespace graft
