// Project-written random FLUX-layout checkpoints and synthetic job folders, for tests and
// benchmarks (these machines reach no model hub).
#pragma once
#include <cstdint>
#include <string>

#include "flux.h"

namespace graft {

// The shape `make-tiny` uses: hidden 64, 2 heads of 32, 2 double + 2 single blocks.
FluxConfig tiny_flux_config();

// Writes a random checkpoint with the real BFL tensor names. Weights ~ N(0, 1/fan_in) so that
// activations stay O(1); QK-norm scales near 1; "graft.axes_dim" in the metadata.
void write_random_flux(const std::string& path, const FluxConfig& cfg, uint64_t seed);

// <dir>/model/transformer.safetensors, <dir>/cache/{latents,text}/item_NNNN.safetensors (a small
// fixed synthetic dataset) and <dir>/job.json such that `graft-trainer train <dir>` runs.
void make_tiny(const std::string& dir, uint64_t seed);

}  // namespace graft
